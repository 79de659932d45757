"""Tests of clstm.models: Sequential's chaining and flat parameters, fit/evaluate/predict
of the ready models, variable-length sequences, generation, reproducibility and input
errors."""

import io
import sys

import numpy as np
import pytest

import clstm
import clstm.training
from clstm.layers import Dense, Embedding
from clstm.losses import softmax_cross_entropy
from clstm.models import Classifier, LanguageModel, LastStep, Regressor, Sequential
from clstm.optim import SGD, Adam
from clstm.tbptt import batchify, tbptt_chunks


def numgrad_at(f, x, indices, eps=1e-6):
    """Central finite differences of ``f()`` w.r.t. the given entries of ``x``."""
    out = []
    for idx in indices:
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        out.append((fp - fm) / (2 * eps))
    return np.array(out)


def sample_indices(shape, n, rng):
    flat = rng.choice(int(np.prod(shape)), size=min(n, int(np.prod(shape))), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def grads_copy(model):
    return {n: g.copy() for n, g in model.grads.items()}


# ---------------------------------------------------------------- Sequential plumbing

def test_sequential_parameters_live_in_one_flat_buffer_that_the_layers_read():
    model = Classifier(hidden_size=4, num_classes=3, vocab_size=7, embed_dim=3, seed=0)
    assert model.flat_params.size == sum(p.size for p in model.params.values())
    for name, p in model.params.items():
        assert np.shares_memory(p, model.flat_params), name
        assert np.shares_memory(model.grads[name], model.flat_grads), name
    lstm = model.layers[1]
    assert np.shares_memory(lstm.flat_params, model.flat_params)
    assert Adam(model).is_flat

    x = np.array([[1, 2, 3]])
    before = model.predict_proba(x)
    model.flat_params *= 0.5  # one vector op must reach every layer
    assert not np.allclose(model.predict_proba(x), before)


def test_sequential_names_are_prefixed_by_layer_index_like_torch_sequential():
    model = LanguageModel(10, 3, 4, seed=0)
    assert list(model.params) == ["0.weight", "1.weight_ih_l0", "1.weight_hh_l0",
                                  "1.bias_ih_l0", "1.bias_hh_l0", "2.weight", "2.bias"]


def test_zero_grad_clears_every_gradient_after_a_backward():
    model = Regressor(2, 3, dtype="float64", seed=0)
    model.loss_and_grad(np.ones((2, 4, 2)), np.ones(2))
    assert np.abs(model.flat_grads).max() > 0
    model.zero_grad()
    assert not model.flat_grads.any()


def test_mixed_dtypes_fall_back_to_per_array_parameters_and_still_train():
    layers = [clstm.LSTM(2, 4, dtype="float64", seed=0), LastStep(),
              Dense(4, 1, dtype="float32", seed=0)]
    model = Sequential(layers, loss="mse")
    assert model.flat_params is None
    x = np.random.default_rng(0).standard_normal((16, 3, 2))
    history = model.fit(x, x[:, :, 0].sum(1), epochs=3, optimizer=SGD(model, lr=0.1),
                        verbose=0, seed=0)
    assert history["loss"][-1] < history["loss"][0]


# Per cell: the classifier's options and how many entries of each parameter are checked.
DIFFERENTIATED_CLASSIFIERS = {"lstm": (dict(), 8),
                              "gru": (dict(bidirectional=True, cell="gru"), 6)}


@pytest.mark.parametrize("cell", sorted(DIFFERENTIATED_CLASSIFIERS))
def test_sequential_backward_matches_finite_differences(cell):
    rng = np.random.default_rng(1)
    options, entries = DIFFERENTIATED_CLASSIFIERS[cell]
    model = Classifier(hidden_size=4, num_classes=3, vocab_size=6, embed_dim=3,
                       num_layers=2, dtype="float64", seed=2, **options)
    x = rng.integers(0, 6, (3, 5))
    y = np.array([0, 2, 1])
    lengths = np.array([5, 2, 4])
    model.loss_and_grad(x, y, lengths=lengths)
    grads = grads_copy(model)

    def loss():
        return model.loss_and_grad(x, y, lengths=lengths)

    for name, p in model.params.items():
        idx = sample_indices(p.shape, entries, rng)
        np.testing.assert_allclose([grads[name][i] for i in idx], numgrad_at(loss, p, idx),
                                   rtol=1e-5, atol=1e-8, err_msg=name)


def test_backward_returns_the_input_gradient_only_when_asked():
    model = Regressor(2, 3, dtype="float64", seed=0)
    x = np.ones((4, 2, 2))
    out, _ = model.forward(x)
    assert model.backward(np.ones_like(out)) is None
    out, _ = model.forward(x)
    assert model.backward(np.ones_like(out), input_grad=True).shape == x.shape


# ------------------------------------------------------------------ fitting quickly

def test_regressor_fit_reduces_the_loss_on_a_running_sum():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (128, 8, 1))
    y = 0.25 * x.sum(axis=(1, 2))
    model = Regressor(1, 16, seed=0)
    history = model.fit(x, y, epochs=12, batch_size=16, seed=0,
                        optimizer=Adam(model, lr=1e-2), verbose=0).history_
    assert history["loss"][-1] < 0.2 * history["loss"][0]


def test_classifier_learns_from_the_last_valid_token_of_padded_sequences():
    """Only the token at lengths-1 decides the class, so learning it at all shows the
    classifier reads the last valid step, not the padded end."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, (192, 7))
    lengths = rng.integers(1, 8, 192)
    y = x[np.arange(192), lengths - 1] % 3
    model = Classifier(hidden_size=16, num_classes=3, vocab_size=6, embed_dim=8, seed=1)
    history = model.fit(x, y, epochs=10, batch_size=32, lengths=lengths, seed=1,
                        optimizer=Adam(model, lr=2e-2), verbose=0).history_
    assert history["accuracy"][-1] > 0.9
    assert history["loss"][-1] < 0.3 * history["loss"][0]


def test_language_model_learns_a_periodic_stream_with_truncated_bptt():
    stream = np.tile(np.arange(12), 120)
    model = LanguageModel(12, 8, 16, seed=0)
    history = model.fit(stream, epochs=3, batch_size=8, bptt=10,
                        optimizer=Adam(model, lr=1e-2), verbose=0).history_
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9


def test_language_model_fits_sequences_with_targets_shifted_by_one():
    rng = np.random.default_rng(2)
    starts = rng.integers(0, 9, 64)
    x = (starts[:, None] + np.arange(10)) % 9  # each sequence counts up mod 9
    model = LanguageModel(9, 8, 16, seed=0)
    history = model.fit(x, epochs=8, batch_size=16, bptt=4, seed=0,
                        optimizer=Adam(model, lr=2e-2), validation_data=x[:16], verbose=0).history_
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert len(history["val_loss"]) == 8


# ------------------------------------------------------------------ reproducibility

def fit_fresh_classifier():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((48, 6, 2))
    y = (x[:, :, 0].sum(1) > 0).astype(int)
    model = Classifier(2, 8, 2, num_layers=2, dropout=0.3, seed=7)
    history = model.fit(x, y, epochs=3, batch_size=8, seed=11, verbose=0).history_
    return history, model.flat_params.copy()


def test_a_seeded_run_repeats_exactly_dropout_and_shuffling_included():
    h1, w1 = fit_fresh_classifier()
    h2, w2 = fit_fresh_classifier()
    assert h1 == h2
    np.testing.assert_array_equal(w1, w2)


def test_generate_repeats_with_a_seed_and_keeps_the_training_mode():
    model = LanguageModel(20, 4, 8, dropout=0.5, num_layers=2, seed=0)
    a = model.generate([1, 2, 3], 15, temperature=1.0, seed=5)
    b = model.generate(np.array([1, 2, 3]), 15, temperature=1.0, seed=5)
    c = model.generate([1, 2, 3], 15, temperature=1.0, seed=6)
    assert a.shape == (15,) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 20
    assert model.training
    assert model.generate([1], 0).shape == (0,)


def test_greedy_generation_follows_the_argmax_of_a_whole_sequence_forward():
    """With carried state, step-by-step generation sees what one forward would."""
    model = LanguageModel(10, 4, 8, seed=1, dtype="float64")
    prompt = np.array([3, 1, 4])
    out = model.generate(prompt, 6, temperature=0)
    logits, _ = model.forward(np.concatenate([prompt, out])[:, None])
    np.testing.assert_array_equal(out, logits[len(prompt) - 1:-1, 0].argmax(-1))


# ------------------------------------------------------- evaluate, predict, history

def test_evaluate_and_predict_shapes_for_each_model():
    rng = np.random.default_rng(4)
    reg = Regressor(3, 5, output_size=2, seed=0)
    x = rng.standard_normal((10, 4, 3))
    assert reg.predict(x, batch_size=3).shape == (10, 2)
    assert set(reg.evaluate(x, np.zeros((10, 2)))) == {"loss"}
    assert Regressor(3, 5, seed=0).predict(x).shape == (10, 1)

    clf = Classifier(3, 5, 4, seed=0)
    p = clf.predict_proba(x)
    assert p.shape == (10, 4)
    np.testing.assert_array_equal(clf.predict(x), p.argmax(1))
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert set(clf.evaluate(x, np.zeros(10, int))) == {"loss", "accuracy"}

    lm = LanguageModel(7, 3, 5, seed=0)
    tokens = rng.integers(0, 7, (6, 9))
    assert lm.predict(tokens).shape == (6, 9, 7)
    assert set(lm.evaluate(tokens)) == {"loss", "accuracy"}


def test_stream_evaluation_carries_state_like_one_whole_forward():
    model = LanguageModel(9, 4, 6, num_layers=2, dtype="float64", seed=3)
    stream = np.random.default_rng(5).integers(0, 9, 200)
    data = batchify(stream, 4)
    logits, _ = model.forward(data[:-1])
    expected, _ = softmax_cross_entropy(logits, data[1:])
    got = model.evaluate(stream, batch_size=4, bptt=7)["loss"]
    assert got == pytest.approx(expected, rel=1e-12)


def test_validation_data_appears_in_the_history_every_epoch():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 3, 2))
    y = rng.integers(0, 2, 20)
    model = Classifier(2, 4, 2, seed=0)
    history = model.fit(x, y, epochs=3, validation_data=(x[:5], y[:5]), verbose=0).history_
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.values())
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(x[:5], y[:5])["loss"])


def test_a_callback_returning_true_stops_training_after_that_epoch():
    seen = []
    model = Regressor(1, 3, seed=0)
    x = np.ones((4, 2, 1))
    history = model.fit(x, np.ones(4), epochs=10, verbose=0,
                        callbacks=[lambda epoch, logs: seen.append(epoch) or epoch == 1]).history_
    assert seen == [0, 1]
    assert len(history["loss"]) == 2


def test_fit_prints_one_line_per_epoch_with_throughput(capsys):
    model = LanguageModel(5, 2, 3, seed=0)
    model.fit(np.arange(100) % 5, epochs=2, batch_size=4, bptt=5)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("epoch 2/2 - loss ") and "tokens/s" in lines[1]
    assert "\r" not in "".join(lines)
    Regressor(1, 2, seed=0).fit(np.ones((3, 2, 1)), np.ones(3), epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_fit_redraws_a_live_line_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    # the built-in line, which fit draws when tqdm is not installed
    monkeypatch.setattr(clstm.training, "_tqdm", lambda: None)
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    Regressor(1, 2, seed=0).fit(np.ones((8, 2, 1)), np.ones(8), epochs=1, batch_size=2)
    text = term.getvalue()
    assert text.startswith("\repoch 1/1 [")
    assert "samples/s" in text and text.endswith("\n")


def test_fit_continues_with_the_optimizer_of_the_previous_fit():
    model = Regressor(1, 2, seed=0)
    model.fit(np.ones((3, 2, 1)), np.ones(3), verbose=0)
    opt = model.optimizer
    model.fit(np.ones((3, 2, 1)), np.ones(3), verbose=0)
    assert model.optimizer is opt and opt.step_count == 2


# ---------------------------------------------------------------- variable lengths

def padded_problem(rng, garbage):
    lengths = np.array([1, 4, 6, 2])
    x = rng.standard_normal((4, 6, 2))
    for b, n in enumerate(lengths):
        x[b, n:] = garbage
    return x, np.array([0, 2, 1, 2]), lengths


# Per cell: the classifier's options and the tolerance of a prediction alone vs in the
# batch (the GRU's bidirectional stack sums in another order: 1e-12).
PADDED_CLASSIFIERS = {"lstm": (dict(), 1e-13),
                      "gru": (dict(bidirectional=True, cell="gru"), 1e-12)}


@pytest.mark.parametrize("cell", sorted(PADDED_CLASSIFIERS))
@pytest.mark.parametrize("garbage", [1e3, np.nan])
def test_padding_changes_neither_predictions_nor_gradients(garbage, cell):
    rng = np.random.default_rng(6)
    x, y, lengths = padded_problem(rng, garbage)
    options, rtol = PADDED_CLASSIFIERS[cell]
    model = Classifier(2, 5, 3, num_layers=2, dtype="float64", seed=4, **options)
    batch_pred = model.predict_proba(x, lengths=lengths)
    model.loss_and_grad(x, y, lengths=lengths)
    batch_grads = grads_copy(model)

    mean_grads = {n: 0 for n in batch_grads}
    for b, n in enumerate(lengths):
        alone = x[b:b + 1, :n]
        np.testing.assert_allclose(batch_pred[b:b + 1], model.predict_proba(alone),
                                   rtol=rtol)
        model.loss_and_grad(alone, y[b:b + 1])
        for name, g in model.grads.items():
            mean_grads[name] = mean_grads[name] + g / len(lengths)
    for name, g in batch_grads.items():
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, mean_grads[name], rtol=1e-10, atol=1e-13,
                                   err_msg=name)


def test_last_step_alone_keeps_finite_padding_out_of_outputs_and_gradients():
    """At the layer level, without the zeroing that fit/predict add: LastStep reads
    y[length-1] and back-propagates zeros from the padded steps."""
    rng = np.random.default_rng(7)
    x, y, lengths = padded_problem(rng, 1e3)
    model = Sequential([clstm.LSTM(2, 5, dtype="float64", seed=0), LastStep(),
                        Dense(5, 3, dtype="float64", seed=0)])
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    model.zero_grad()
    logits, _ = model.forward(xt, lengths=lengths)
    _, dlogits = softmax_cross_entropy(logits, y, reduction="sum")
    model.backward(dlogits)
    batch_grads = grads_copy(model)

    total = {n: 0 for n in batch_grads}
    for b, n in enumerate(lengths):
        model.zero_grad()
        single, _ = model.forward(xt[:n, b:b + 1])
        np.testing.assert_allclose(logits[b:b + 1], single, rtol=1e-13)
        _, d = softmax_cross_entropy(single, y[b:b + 1], reduction="sum")
        model.backward(d)
        for name, g in model.grads.items():
            total[name] = total[name] + g
    for name, g in batch_grads.items():
        np.testing.assert_allclose(g, total[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_token_padding_may_hold_ids_outside_the_vocabulary():
    model = Classifier(hidden_size=4, num_classes=2, vocab_size=5, seed=0)
    x = np.array([[1, 2, 99, -1], [3, 4, 0, 1]])
    p = model.predict_proba(x, lengths=np.array([2, 4]))
    np.testing.assert_allclose(p[0], model.predict_proba(x[:1, :2])[0], rtol=1e-6)


# -------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make_args, words", [
    (lambda: (np.ones((10, 5)), np.ones(10)), r"x: expected shape \(N, T, 3\) "
                                              r"\(batch-first\), got shape \(10, 5\)"),
    (lambda: (np.ones((10, 5, 2)), np.ones(10)), r"expected shape \(N, T, 3\).*\(10, 5, 2\)"),
    (lambda: (np.ones((10, 5, 3)), np.ones(9)), r"y: expected 10 samples \(as x\), "
                                                r"got shape \(9,\)"),
    (lambda: (np.ones((10, 5, 3)), np.ones((10, 2))), r"y: expected shape \(10, 1\), "
                                                      r"got shape \(10, 2\)"),
    (lambda: (np.ones((0, 5, 3)), np.ones(0)), "at least one sequence"),
])
def test_regressor_fit_rejects_bad_shapes_naming_expected_and_got(make_args, words):
    model = Regressor(3, 4, seed=0)
    with pytest.raises(ValueError, match=words):
        model.fit(*make_args(), verbose=0)


def test_classifier_rejects_bad_labels_lengths_and_token_types():
    model = Classifier(hidden_size=4, num_classes=3, vocab_size=5, seed=0)
    x = np.zeros((4, 5), dtype=int)
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\), got min 0, max 3"):
        model.fit(x, np.array([0, 1, 2, 3]), verbose=0)
    with pytest.raises(ValueError, match=r"lengths: expected integers in \[1, 5\] of shape "
                                         r"\(4,\), got .*min 0"):
        model.fit(x, np.zeros(4, int), lengths=np.array([0, 1, 2, 3]), verbose=0)
    with pytest.raises(ValueError, match=r"shape \(4,\), got shape \(3,\)"):
        model.evaluate(x, np.zeros(4, int), lengths=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="expected integer token ids, got dtype float64"):
        model.predict(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"token ids of shape \(N, T\).*got shape \(4, 5, 1\)"):
        model.predict(np.zeros((4, 5, 1), dtype=int))
    with pytest.raises(ValueError, match="exactly one of input_size"):
        Classifier(3, 4, 2, vocab_size=5)


def test_fit_rejects_bad_training_arguments():
    model = Regressor(1, 2, seed=0)
    x, y = np.ones((4, 3, 1)), np.ones(4)
    with pytest.raises(ValueError, match="epochs: expected an int >= 1, got 0"):
        model.fit(x, y, epochs=0)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        model.fit(x, y, batch_size=0)
    with pytest.raises(ValueError, match="bptt: expected None"):
        model.fit(x, y, bptt=2)
    with pytest.raises(ValueError, match=r"validation_data: expected \(x_val, y_val\)"):
        model.fit(x, y, validation_data=x)
    with pytest.raises(ValueError, match="y_val: expected 4 samples"):
        model.fit(x, y, validation_data=(x, y[:2]))
    lm = LanguageModel(5, 2, 3, seed=0)
    with pytest.raises(ValueError, match="expected None for a 1-D token stream"):
        lm.fit(np.arange(20) % 5, np.arange(20) % 5)
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        lm.generate([7], 3)


def test_forward_rejects_a_state_list_of_the_wrong_length():
    model = LanguageModel(5, 2, 3, seed=0)
    with pytest.raises(ValueError, match="a list of 1 .* got a list of length 2"):
        model.forward(np.zeros((2, 1), int), [None, None])


def test_language_model_sequence_loss_ignores_tokens_after_each_length():
    model = LanguageModel(6, 3, 4, dtype="float64", seed=0)
    rng = np.random.default_rng(8)
    x = rng.integers(0, 6, (4, 7))
    lengths = np.array([2, 7, 4, 5])
    other = x.copy()
    for b, n in enumerate(lengths):
        other[b, n:] = rng.integers(0, 6, 7 - n)
    a = model.evaluate(x, lengths=lengths)
    b = model.evaluate(other, lengths=lengths)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-13)
    assert a["loss"] != pytest.approx(model.evaluate(x)["loss"])


def test_a_model_without_a_loss_predicts_but_cannot_fit():
    model = Sequential([Embedding(5, 3, seed=0), clstm.LSTM(3, 4, seed=0)])
    assert model.predict(np.zeros((2, 6), int)).shape == (2, 6, 4)
    with pytest.raises(ValueError, match="this model has no loss"):
        model.fit(np.zeros((2, 6), int), np.zeros((2, 6, 4)), verbose=0)


def test_a_stream_too_short_for_the_batch_size_is_refused():
    with pytest.raises(ValueError, match="at least 2 tokens per stream, got 10 tokens for "
                                         "8 streams"):
        LanguageModel(5, 2, 3, seed=0).fit(np.arange(10) % 5, batch_size=8, verbose=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stream_fit_is_the_documented_tbptt_loop_with_a_reset_each_epoch(cell):
    stream = np.random.default_rng(9).integers(0, 7, 150)
    fitted = LanguageModel(7, 3, 5, cell=cell, dtype="float64", seed=2)
    fitted.fit(stream, epochs=2, batch_size=4, bptt=6, optimizer=SGD(fitted, lr=0.5),
               verbose=0)

    manual = LanguageModel(7, 3, 5, cell=cell, dtype="float64", seed=2)
    opt = SGD(manual, lr=0.5)
    data = batchify(stream, 4)
    for _ in range(2):
        state = None
        for x, y in tbptt_chunks(data, 6):
            manual.zero_grad()
            logits, state = manual.forward(x, state)
            manual.backward(softmax_cross_entropy(logits, y)[1])
            opt.step()
    np.testing.assert_array_equal(fitted.flat_params, manual.flat_params)


def test_fit_shows_its_progress_through_tqdm_when_installed(capsys):
    pytest.importorskip("tqdm")
    Regressor(1, 2, seed=0).fit(np.ones((8, 2, 1)), np.ones(8), epochs=1, batch_size=2)
    out, err = capsys.readouterr()
    assert "epoch 1/1:" in err and "/4 [" in err and "batch/s" in err   # tqdm's bar
    assert out.startswith("epoch 1/1 - loss ") and out.endswith("\n")   # the epoch's line
