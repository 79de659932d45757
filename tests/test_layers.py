"""Tests of clstm.layers: gradients by finite differences, PyTorch parity,
dropout statistics, sequence helpers and input validation."""

import numpy as np
import pytest

from clstm.layers import (
    Dense,
    Dropout,
    Embedding,
    last_valid_step,
    last_valid_step_backward,
    lengths_to_mask,
)
from clstm.losses import softmax_cross_entropy
from reference import numerical_gradient as numgrad  # tests/ is on sys.path


# ---------------------------------------------------------------- Embedding

def test_embedding_forward_shape_and_padding_row():
    emb = Embedding(10, 4, padding_idx=2, seed=0)
    assert emb.params["weight"].shape == (10, 4)
    assert emb.params["weight"].dtype == np.float32
    assert np.all(emb.params["weight"][2] == 0)
    idx = np.array([[1, 2, 3], [2, 9, 0]])
    y = emb.forward(idx)
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y, emb.params["weight"][idx])
    assert emb.backward(np.ones_like(y)) is None


def test_embedding_gradcheck_float64():
    rng = np.random.default_rng(1)
    emb = Embedding(6, 3, padding_idx=4, seed=1, dtype="float64")
    # Repeated indices and the padding index exercise the scatter-add.
    idx = np.array([[0, 4, 1], [1, 1, 5], [4, 0, 1]])
    R = rng.standard_normal(idx.shape + (3,))
    emb.forward(idx)
    emb.backward(R)
    W = emb.params["weight"]
    num = numgrad(lambda: float(np.sum(emb.forward(idx) * R)), W)
    num[4] = 0.0   # the padding row is frozen by design
    np.testing.assert_allclose(emb.grads["weight"], num, rtol=1e-6,
                               atol=1e-8)
    assert np.all(emb.grads["weight"][4] == 0)
    assert np.all(emb.grads["weight"][[2, 3]] == 0)


def test_embedding_grads_accumulate_and_zero():
    emb = Embedding(5, 2, seed=0, dtype="float64")
    idx = np.array([0, 3, 3])
    emb.forward(idx)
    emb.backward(np.ones((3, 2)))
    once = emb.grads["weight"].copy()
    emb.backward(np.ones((3, 2)))
    np.testing.assert_array_equal(emb.grads["weight"], 2 * once)
    np.testing.assert_array_equal(once[3], [2.0, 2.0])
    g = emb.grads["weight"]
    emb.zero_grad()
    assert emb.grads["weight"] is g and not g.any()


def test_embedding_matches_torch_padding_idx():
    torch = pytest.importorskip("torch")
    temb = torch.nn.Embedding(7, 5, padding_idx=0).double()
    emb = Embedding(7, 5, padding_idx=0, dtype="float64")
    emb.params["weight"][...] = temb.weight.detach().numpy()
    idx = np.array([[0, 1, 6], [3, 0, 3], [6, 6, 2], [0, 0, 5]])  # (T, B)
    R = np.random.default_rng(2).standard_normal(idx.shape + (5,))
    ty = temb(torch.from_numpy(idx))
    (ty * torch.from_numpy(R)).sum().backward()
    y = emb.forward(idx)
    emb.backward(R)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(emb.grads["weight"], temb.weight.grad.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_embedding_negative_padding_idx_and_seed():
    a = Embedding(5, 3, padding_idx=-1, seed=7)
    b = Embedding(5, 3, padding_idx=4, seed=7)
    assert a.padding_idx == 4
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    c = Embedding(5, 3, padding_idx=4, seed=7, dtype="float64")
    np.testing.assert_allclose(c.params["weight"], b.params["weight"],
                               rtol=1e-6)


def test_embedding_bad_input():
    emb = Embedding(10, 2, seed=0)
    with pytest.raises(TypeError, match="integer.*float64"):
        emb.forward(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer.*bool"):
        emb.forward(np.array([True, False]))
    with pytest.raises(ValueError, match=r"\[0, 10\).*max 10"):
        emb.forward(np.array([3, 10]))
    with pytest.raises(ValueError, match=r"\[0, 10\).*min -1"):
        emb.forward(np.array([-1, 3]))
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(10, 2, padding_idx=10)
    with pytest.raises(ValueError, match="dtype"):
        Embedding(10, 2, dtype="float16")
    with pytest.raises(ValueError, match="expected a forward pass"):
        Embedding(3, 2).backward(np.zeros((1, 2)))
    emb.forward(np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"\(1, 2, 2\).*\(2, 2\)"):
        emb.backward(np.zeros((2, 2)))


# -------------------------------------------------------------------- Dense

@pytest.mark.parametrize("shape", [(3, 2, 4), (5, 4), (4,)])
def test_dense_gradcheck_float64(shape):
    rng = np.random.default_rng(3)
    d = Dense(4, 3, seed=3, dtype="float64")
    x = rng.standard_normal(shape)
    R = rng.standard_normal(shape[:-1] + (3,))
    y = d.forward(x)
    assert y.shape == shape[:-1] + (3,)
    dx = d.backward(R)

    def f():
        return float(np.sum(d.forward(x) * R))

    np.testing.assert_allclose(dx, numgrad(f, x), rtol=1e-6, atol=1e-8)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(d.grads[name], numgrad(f, d.params[name]),
                                   rtol=1e-6, atol=1e-8)


def test_dense_matches_torch_linear_time_major():
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(6, 4).double()
    d = Dense(6, 4, dtype="float64")
    d.params["weight"][...] = lin.weight.detach().numpy()
    d.params["bias"][...] = lin.bias.detach().numpy()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 6))                  # (T, B, H)
    R = rng.standard_normal((5, 3, 4))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = lin(tx)
    (ty * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(d.forward(x), ty.detach().numpy(), rtol=1e-12)
    dx = d.backward(R)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(d.grads["weight"], lin.weight.grad.numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(d.grads["bias"], lin.bias.grad.numpy(),
                               rtol=1e-12)


def test_dense_init_nobias_dtype_and_flags():
    d = Dense(16, 8, seed=0)
    assert d.params["weight"].shape == (8, 16)
    assert d.params["bias"].shape == (8,)
    assert d.dtype == np.float32
    assert np.abs(d.params["weight"]).max() <= 0.25
    np.testing.assert_array_equal(d.params["weight"],
                                  Dense(16, 8, seed=0).params["weight"])
    nb = Dense(3, 2, bias=False, seed=0, dtype="float64")
    assert set(nb.params) == set(nb.grads) == {"weight"}
    x = np.ones((2, 3))
    np.testing.assert_allclose(nb.forward(x), x @ nb.params["weight"].T)
    assert nb.backward(np.ones((2, 2)), input_grad=False) is None
    np.testing.assert_allclose(nb.grads["weight"], 2 * np.ones((2, 3)))
    y32 = d.forward(np.ones((2, 16)))   # float64 input is cast
    assert y32.dtype == np.float32
    assert d.eval() is d and not d.training and d.train().training


def test_dense_grads_accumulate():
    d = Dense(3, 2, seed=0, dtype="float64")
    x = np.arange(6.0).reshape(2, 3)
    d.forward(x)
    d.backward(np.ones((2, 2)))
    g = {k: v.copy() for k, v in d.grads.items()}
    d.forward(x)
    d.backward(np.ones((2, 2)))
    for k in g:
        np.testing.assert_allclose(d.grads[k], 2 * g[k])
    d.zero_grad()
    assert not any(v.any() for v in d.grads.values())


def test_dense_bad_input():
    d = Dense(4, 3)
    with pytest.raises(ValueError, match="last axis 4.*\\(2, 5\\)"):
        d.forward(np.zeros((2, 5)))
    with pytest.raises(TypeError, match="complex"):
        d.forward(np.zeros((2, 4), dtype=complex))
    with pytest.raises(ValueError, match="expected a forward pass"):
        Dense(2, 2).backward(np.zeros((1, 2)))
    d.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="dy"):
        d.backward(np.zeros((2, 4)))


# ------------------------------------------------------------------ Dropout

def test_dropout_statistics_and_backward():
    p = 0.3
    drop = Dropout(p, seed=0)
    x = np.ones((400, 500), dtype=np.float32)
    y = drop.forward(x)
    assert y.dtype == np.float32
    zero_frac = np.mean(y == 0)
    assert abs(zero_frac - p) < 0.01
    assert abs(y.mean() - 1.0) < 0.01               # inverted scaling
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-6)
    # Backward applies the same mask: with x = 1, dx for dy = 1 equals y.
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), y)


def test_dropout_eval_identity_and_p0():
    x = np.random.default_rng(5).standard_normal((3, 4, 5))
    drop = Dropout(0.5, seed=1).eval()
    np.testing.assert_array_equal(drop.forward(x), x)
    np.testing.assert_array_equal(drop.backward(x), x)
    np.testing.assert_array_equal(Dropout(0.0).forward(x), x)


def test_dropout_seed_reproducible():
    x = np.ones((50, 20))
    a, b = Dropout(0.5, seed=42), Dropout(0.5, seed=42)
    c = Dropout(0.5, seed=43)
    ya1, ya2 = a.forward(x), a.forward(x)
    np.testing.assert_array_equal(ya1, b.forward(x))
    np.testing.assert_array_equal(ya2, b.forward(x))
    assert not np.array_equal(ya1, ya2)           # fresh mask per call
    assert not np.array_equal(ya1, c.forward(x))


def test_dropout_gradcheck_float64():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 4))
    R = rng.standard_normal((3, 2, 4))
    drop = Dropout(0.4, seed=9)
    drop.forward(x)
    dx = drop.backward(R)
    # A fresh layer with the same seed redraws the same mask every call.
    num = numgrad(lambda: float(np.sum(Dropout(0.4, seed=9).forward(x) * R)),
                  x)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(p)


def test_dropout_bad_input():
    with pytest.raises(TypeError, match="int64"):
        Dropout(0.5).forward(np.arange(4))
    drop = Dropout(0.5, dtype="float64")
    assert drop.forward(np.arange(4)).dtype == np.float64
    with pytest.raises(ValueError, match="shape"):
        drop.backward(np.zeros(5))


# ---------------------------------------------------------- sequence helpers

def test_last_valid_step_and_backward():
    rng = np.random.default_rng(7)
    T, B, H = 5, 4, 3
    y = rng.standard_normal((T, B, H))
    lengths = np.array([5, 1, 3, 2])
    last = last_valid_step(y, lengths)
    assert last.shape == (B, H)
    for b in range(B):
        np.testing.assert_array_equal(last[b], y[lengths[b] - 1, b])
    R = rng.standard_normal((B, H))
    dy = last_valid_step_backward(R, lengths, T)
    num = numgrad(lambda: float(np.sum(last_valid_step(y, lengths) * R)), y)
    np.testing.assert_allclose(dy, num, rtol=1e-6, atol=1e-8)
    assert np.count_nonzero(np.any(dy != 0, axis=2)) == B


def test_lengths_to_mask():
    m = lengths_to_mask([3, 1, 2], 4)
    assert m.dtype == bool and m.shape == (4, 3)
    np.testing.assert_array_equal(
        m.T, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])


def test_lengths_validation():
    y = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        last_valid_step(y, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        last_valid_step(y, np.array([5, 2]))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        last_valid_step(y, np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        last_valid_step(y, np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        last_valid_step_backward(np.zeros((2, 3)), np.array([1, 7]), 4)
    with pytest.raises(ValueError):
        lengths_to_mask(np.array([[1, 2]]), 4)
    with pytest.raises(ValueError):
        lengths_to_mask([0, 2], 4)


# -------------------------------------------------------------- composition

def test_chain_embedding_dense_last_step_cross_entropy():
    """The layers compose by hand: the end-to-end gradient of a small
    sequence classifier matches finite differences."""
    rng = np.random.default_rng(8)
    T, B, V, D, C = 4, 3, 6, 3, 2
    emb = Embedding(V, D, padding_idx=0, seed=1, dtype="float64")
    dense = Dense(D, C, seed=2, dtype="float64")
    drop = Dropout(0.5, seed=3).eval()
    idx = rng.integers(1, V, size=(T, B))
    lengths = np.array([4, 2, 3])
    idx[lengths_to_mask(lengths, T) == 0] = 0          # pad
    targets = np.array([0, 1, 1])

    def loss_and_grad():
        h = drop.forward(emb.forward(idx))
        logits = dense.forward(last_valid_step(h, lengths))
        return softmax_cross_entropy(logits, targets)

    loss, dlogits = loss_and_grad()
    dh = last_valid_step_backward(dense.backward(dlogits), lengths, T)
    emb.backward(drop.backward(dh))
    f = lambda: loss_and_grad()[0]  # noqa: E731
    num_w = numgrad(f, emb.params["weight"])
    num_w[0] = 0.0
    np.testing.assert_allclose(emb.grads["weight"], num_w, rtol=1e-5,
                               atol=1e-8)
    np.testing.assert_allclose(dense.grads["weight"],
                               numgrad(f, dense.params["weight"]),
                               rtol=1e-5, atol=1e-8)
