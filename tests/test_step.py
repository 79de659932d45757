"""LSTM.step, the serving path: one time step per call with carried state, nothing saved
for backward. It must agree with forward over the whole sequence."""
import numpy as np
import pytest

import clstm

# The kernels at every ISA level this CPU runs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isa_level")


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("batch", [1, 4])
def test_steps_one_at_a_time_equal_one_forward(num_layers, peephole, batch):
    rng = np.random.default_rng(0)
    net = clstm.LSTM(5, 6, num_layers, dtype="float64", peephole=peephole, seed=1)
    x = rng.standard_normal((7, batch, 5))
    h0 = rng.standard_normal((num_layers, batch, 6))
    c0 = rng.standard_normal((num_layers, batch, 6))
    y_full, (h_full, c_full) = net.forward(x, (h0, c0))
    state = (h0, c0)
    for t in range(7):
        y_t, state = net.step(x[t], state)
        np.testing.assert_allclose(y_t, y_full[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[0], h_full, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[1], c_full, rtol=1e-12, atol=1e-14)


def test_step_without_state_starts_from_zeros():
    net = clstm.LSTM(3, 4, 2, dtype="float64", seed=0)
    x = np.random.default_rng(1).standard_normal((2, 3))
    y_step, _ = net.step(x)
    y_full, _ = net.forward(x[None])
    np.testing.assert_allclose(y_step, y_full[0], rtol=1e-12)


def test_unbatched_step():
    net = clstm.LSTM(3, 4, 2, dtype="float64", seed=0)
    x = np.random.default_rng(1).standard_normal(3)
    y, (h, c) = net.step(x)
    assert y.shape == (4,) and h.shape == (2, 4) and c.shape == (2, 4)
    y_batched, _ = net.step(x[None])
    np.testing.assert_allclose(y, y_batched[0])
    y2, _ = net.step(x, (h, c))
    y_full, _ = net.forward(np.stack([x, x]))
    np.testing.assert_allclose(y2, y_full[1], rtol=1e-12)


def test_step_does_not_modify_the_state_passed_in():
    net = clstm.LSTM(3, 4, seed=0)
    h = np.ones((1, 2, 4), np.float32)
    c = np.ones((1, 2, 4), np.float32)
    net.step(np.ones((2, 3), np.float32), (h, c))
    assert np.all(h == 1) and np.all(c == 1)


@pytest.mark.parametrize("x, error, match", [
    (np.zeros((2, 5)), ValueError, "expected one time step"),
    (np.zeros((1, 2, 3)), ValueError, "expected one time step"),
    (np.zeros((0, 3)), ValueError, "expected one time step"),
    (np.zeros((2, 3), complex), TypeError, "real numbers"),
])
def test_step_rejects_bad_input(x, error, match):
    net = clstm.LSTM(3, 4)
    with pytest.raises(error, match=match):
        net.step(x)


def test_step_rejects_a_state_of_the_wrong_shape():
    net = clstm.LSTM(3, 4, 2)
    with pytest.raises(ValueError, match="expected shape"):
        net.step(np.zeros((2, 3)), (np.zeros((1, 2, 4)), np.zeros((2, 2, 4))))


def test_sequential_step_by_step_equals_its_forward_over_the_sequence():
    import clstm as _clstm
    rng = np.random.default_rng(30)
    model = _clstm.Sequential([_clstm.Embedding(9, 4, seed=1),
                               _clstm.LSTM(4, 6, 2, dtype="float64", seed=2, dropout=0.3),
                               _clstm.Dropout(0.5), _clstm.Dense(6, 3, seed=3,
                                                                dtype="float64")])
    tokens = rng.integers(0, 9, (7, 2))                  # (T, B)
    model.eval()
    want, want_state = model.forward(tokens)
    model.train()
    state, outs = None, []
    for t in range(tokens.shape[0]):
        out, state = model.step(tokens[t], state)
        outs.append(out)
    np.testing.assert_allclose(np.stack(outs), want, rtol=1e-12, atol=1e-13)
    for (h, c), (wh, wc) in zip(state, want_state):
        np.testing.assert_allclose(h, wh, rtol=1e-12)
        np.testing.assert_allclose(c, wc, rtol=1e-12)


def test_language_model_generate_runs_on_steps_and_matches_full_forwards():
    import clstm as _clstm
    lm = _clstm.LanguageModel(11, 4, 8, num_layers=2, seed=5)
    prompt = np.array([1, 2, 3])
    tokens = lm.generate(prompt, 12, temperature=0, seed=0)
    # greedy decoding by full forwards over the growing sequence gives the same tokens
    seq = list(prompt)
    for _ in range(12):
        probs = lm.predict(np.array([seq]))
        seq.append(int(probs[0, -1].argmax()))
    np.testing.assert_array_equal(tokens, seq[3:])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("I, H", [(37, 45), (64, 64), (3, 130)])
def test_batch_of_one_step_equals_forward_at_vector_sizes(dtype, I, H):
    # At B = 1 the step's products are the own matrix-vector kernel (src/gemv.c): whole
    # vectors, the rows past the last group of four and the columns past the last vector.
    rng = np.random.default_rng(5)
    net = clstm.LSTM(I, H, 2, dtype=dtype, peephole=True, seed=2)
    x = rng.standard_normal((4, 1, I)).astype(dtype)
    y_full, (h_full, c_full) = net.forward(x)
    state = None
    for t in range(4):
        y_t, state = net.step(x[t], state)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_t, y_full[-1], **tol)
    np.testing.assert_allclose(state[1], c_full, **tol)
