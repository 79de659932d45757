"""The ready models and Sequential with a GRU in place of the LSTM (``cell="gru"``, or a
GRU layer): training, equality with hand-built PyTorch models (outputs and gradients),
LastStep on a bidirectional GRU with lengths, truncated BPTT carrying h alone, streaming
steps and generation, save/load (and old files without ``cell``), bad ``cell`` values."""
import json

import numpy as np
import pytest

import clstm
from clstm.gru import GRU
from clstm.io import CONFIG_KEY, from_torch_state_dict, load, save, to_torch_state_dict
from clstm.layers import Dense, Dropout, Embedding
from clstm.losses import softmax_cross_entropy
from clstm.models import Classifier, LanguageModel, LastStep, Regressor, Sequential
from clstm.optim import Adam
from clstm.tbptt import batchify, reset_state, tbptt_chunks

RNG = np.random.default_rng(0)
TOKENS = RNG.integers(0, 9, (5, 6))
FEATURES = RNG.standard_normal((5, 6, 3))


def torch_named(arrays, prefixes):
    """{"1.weight_ih_l0": ...} -> {"rnn.weight_ih_l0": ...} for prefixes {1: "rnn"}."""
    out = {}
    for name, value in arrays.items():
        index, rest = name.split(".", 1)
        prefix = prefixes[int(index)]
        out[f"{prefix}.{rest}" if prefix else rest] = value
    return out


def grads_copy(model):
    return {n: g.copy() for n, g in model.grads.items()}


# ------------------------------------------------------------------ the layer plan

def test_cell_gru_builds_a_gru_where_the_lstm_was_and_lstm_stays_the_default():
    reg = Regressor(3, 5, cell="gru", seed=0)
    assert type(reg.layers[0]) is GRU
    assert list(reg.params) == ["0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0",
                                "0.bias_hh_l0", "2.weight", "2.bias"]
    assert reg.params["0.weight_ih_l0"].shape == (15, 3)  # r, z, n: 3H rows
    assert type(Regressor(3, 5, seed=0).layers[0]) is clstm.LSTM
    clf = Classifier(hidden_size=4, num_classes=3, vocab_size=7, num_layers=2,
                     bidirectional=True, cell="gru", seed=0)
    gru = clf.layers[1]
    assert type(gru) is GRU and gru.num_layers == 2 and gru.bidirectional
    assert clf.layers[3].in_features == 8
    lm = LanguageModel(10, 3, 4, cell="gru", seed=0)
    assert type(lm.layers[1]) is GRU and lm.get_config()["cell"] == "gru"
    assert LanguageModel(10, 3, 4, seed=0).get_config()["cell"] == "lstm"


def test_a_gru_model_keeps_one_flat_buffer_that_its_layers_read():
    model = Classifier(hidden_size=4, num_classes=3, vocab_size=7, cell="gru", seed=0)
    for name, p in model.params.items():
        assert np.shares_memory(p, model.flat_params), name
    assert np.shares_memory(model.layers[1].flat_params, model.flat_params)
    before = model.predict_proba(np.array([[1, 2, 3]]))
    model.flat_params *= 0.5
    assert not np.allclose(model.predict_proba(np.array([[1, 2, 3]])), before)


@pytest.mark.parametrize("make", [
    lambda cell: Regressor(2, 3, cell=cell),
    lambda cell: Classifier(2, 3, 2, cell=cell),
    lambda cell: LanguageModel(5, 2, 3, cell=cell),
])
@pytest.mark.parametrize("cell, exc", [("rnn", ValueError), ("GRU", ValueError),
                                       ("", ValueError), (None, TypeError), (1, TypeError)])
def test_a_bad_cell_is_refused_naming_the_accepted_ones(make, cell, exc):
    with pytest.raises(exc, match=r"cell: expected one of 'lstm', 'gru', got "):
        make(cell)


def test_set_params_switches_the_cell_with_fresh_layers():
    model = Classifier(2, 3, 2, seed=0)
    assert model.get_params()["cell"] == "lstm"
    model.set_params(cell="gru")
    assert type(model.layers[0]) is GRU and model.get_params()["cell"] == "gru"
    base = pytest.importorskip("sklearn.base")
    assert type(base.clone(model).layers[0]) is GRU


def test_sequential_refuses_a_batch_first_gru():
    with pytest.raises(ValueError, match=r"layer 0 \(GRU\) has batch_first=True; "
                                         r"expected a time-major GRU"):
        Sequential([GRU(2, 3, batch_first=True), LastStep()])
    with pytest.raises(ValueError, match=r"layer 1 \(LSTM\) has batch_first=True"):
        Sequential([Embedding(4, 2), clstm.LSTM(2, 3, batch_first=True)])


def test_a_state_list_of_the_wrong_length_names_both_kinds_of_state():
    model = LanguageModel(5, 2, 3, cell="gru", seed=0)
    with pytest.raises(ValueError, match=r"a list of 1 states .*h for a GRU.*length 2"):
        model.forward(np.zeros((2, 1), int), [None, None])


# ------------------------------------------------------------------ training

def test_regressor_gru_learns_a_running_sum():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (128, 8, 1))
    y = 0.25 * x.sum(axis=(1, 2))
    model = Regressor(1, 16, cell="gru", seed=0)
    history = model.fit(x, y, epochs=12, batch_size=16, seed=0,
                        optimizer=Adam(model, lr=1e-2), verbose=0).history_
    assert history["loss"][-1] < 0.2 * history["loss"][0]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_gru_learns_from_the_last_valid_token_of_padded_sequences(bidirectional):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, (192, 7))
    lengths = rng.integers(1, 8, 192)
    y = x[np.arange(192), lengths - 1] % 3
    model = Classifier(hidden_size=16, num_classes=3, vocab_size=6, embed_dim=8,
                       bidirectional=bidirectional, cell="gru", seed=1)
    history = model.fit(x, y, epochs=10, batch_size=32, lengths=lengths, seed=1,
                        optimizer=Adam(model, lr=2e-2), verbose=0).history_
    assert history["accuracy"][-1] > 0.9
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    assert model.score(x, y, lengths=lengths) > 0.9


def test_bidirectional_regressor_gru_reads_the_first_step_through_the_reverse_direction():
    """The target is each sequence's first value: the reverse direction's h_n (read at
    step 0 by LastStep) has it last, so a bidirectional GRU learns it easily."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (96, 12, 2))
    lengths = rng.integers(2, 13, 96)
    model = Regressor(2, 8, bidirectional=True, cell="gru", dtype="float64", seed=0)
    history = model.fit(x, x[:, 0, 0], lengths=lengths, epochs=15, batch_size=16, seed=0,
                        optimizer=Adam(model, lr=2e-2), verbose=0).history_
    assert history["loss"][-1] < 0.1 * history["loss"][0]


def test_language_model_gru_learns_a_periodic_stream_with_truncated_bptt():
    stream = np.tile(np.arange(12), 120)
    model = LanguageModel(12, 8, 16, cell="gru", seed=0)
    history = model.fit(stream, epochs=3, batch_size=8, bptt=10,
                        optimizer=Adam(model, lr=1e-2), verbose=0).history_
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9


def test_language_model_gru_fits_sequences_with_lengths_and_validation():
    rng = np.random.default_rng(2)
    starts = rng.integers(0, 9, 64)
    x = (starts[:, None] + np.arange(10)) % 9
    lengths = rng.integers(3, 11, 64)
    model = LanguageModel(9, 8, 16, cell="gru", seed=0)
    history = model.fit(x, epochs=8, batch_size=16, lengths=lengths, seed=0,
                        optimizer=Adam(model, lr=2e-2), validation_data=x[:16],
                        verbose=0).history_
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert len(history["val_loss"]) == 8
    assert model.predict(x[:4], lengths=lengths[:4]).shape == (4, 10, 9)


# ------------------------------------------------------- PyTorch, built by hand

def test_language_model_gru_equals_a_torch_model_with_the_same_layers():
    torch = pytest.importorskip("torch")

    class TorchLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(9, 3)
            self.rnn = torch.nn.GRU(3, 4, num_layers=2)
            self.fc = torch.nn.Linear(4, 9)

        def forward(self, idx):
            return self.fc(self.rnn(self.embed(idx))[0])

    torch.manual_seed(0)
    net = TorchLM().double()
    model = LanguageModel(9, 3, 4, num_layers=2, cell="gru", dtype="float64")
    prefixes = {0: "embed", 1: "rnn", 2: "fc"}
    from_torch_state_dict(model, net.state_dict(), prefixes)
    idx = torch.from_numpy(TOKENS.T)
    out = net(idx)
    loss = torch.nn.functional.cross_entropy(out.reshape(-1, 9),
                                             torch.from_numpy(TOKENS.T).reshape(-1))
    loss.backward()
    got, _ = model.forward(TOKENS.T)
    np.testing.assert_allclose(got, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    # the same loss and every gradient through Sequential.backward
    model.zero_grad()
    ours, dlogits = softmax_cross_entropy(got, TOKENS.T)
    model.backward(dlogits)
    assert ours == pytest.approx(loss.item(), rel=1e-12)
    ours = torch_named(model.grads, prefixes)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(ours[name], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    fresh = TorchLM().double()
    fresh.load_state_dict(to_torch_state_dict(model, prefixes))
    with torch.no_grad():
        np.testing.assert_allclose(fresh(idx).numpy(), got, rtol=1e-12)


def torch_classifier(torch, vocab, embed, hidden, classes, layers, bidirectional):
    """Embedding -> GRU on packed sequences -> h_n of the last layer (both directions)
    -> Linear: the PyTorch model Classifier(cell="gru") stands for."""

    class TorchClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, embed)
            self.rnn = torch.nn.GRU(embed, hidden, num_layers=layers,
                                    bidirectional=bidirectional)
            self.fc = torch.nn.Linear(hidden * (2 if bidirectional else 1), classes)

        def forward(self, idx, lengths):
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                self.embed(idx), lengths, enforce_sorted=False)
            _, h_n = self.rnn(packed)
            D = 2 if bidirectional else 1
            last = torch.cat([h_n[-D + d] for d in range(D)], dim=1)
            return self.fc(last)

    return TorchClassifier()


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True), (1, True)])
def test_classifier_gru_with_lengths_equals_torch_on_packed_sequences(layers, bidirectional):
    """Outputs, loss and every gradient: the classifier's LastStep on a (bidirectional)
    GRU with lengths reads exactly the last layer's h_n."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.integers(1, 8, (6, 7))
    lengths = np.array([7, 1, 4, 6, 2, 5])
    x[np.arange(7) >= lengths[:, None]] = 0
    y = rng.integers(0, 3, 6)
    torch.manual_seed(1)
    net = torch_classifier(torch, 8, 3, 4, 3, layers, bidirectional).double()
    model = Classifier(hidden_size=4, num_classes=3, vocab_size=8, embed_dim=3,
                       num_layers=layers, bidirectional=bidirectional, cell="gru",
                       dtype="float64")
    prefixes = {0: "embed", 1: "rnn", 3: "fc"}
    from_torch_state_dict(model, net.state_dict(), prefixes)

    logits = net(torch.from_numpy(x.T), torch.from_numpy(lengths))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    np.testing.assert_allclose(model.predict_proba(x, lengths=lengths),
                               torch.softmax(logits, 1).detach().numpy(), rtol=1e-10,
                               atol=1e-13)
    assert model.loss_and_grad(x, y, lengths=lengths) == pytest.approx(loss.item(),
                                                                      rel=1e-12)
    ours = torch_named(model.grads, prefixes)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(ours[name], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_regressor_gru_equals_torch_gru_and_linear_on_the_last_step():
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    rnn, fc = torch.nn.GRU(3, 5).double(), torch.nn.Linear(5, 2).double()
    model = Regressor(3, 5, output_size=2, cell="gru", dtype="float64")
    from_torch_state_dict(model, {**rnn.state_dict(),
                                  **{f"fc.{k}": v for k, v in fc.state_dict().items()}},
                          {0: "", 2: "fc"})
    with torch.no_grad():
        expected = fc(rnn(torch.from_numpy(FEATURES.transpose(1, 0, 2).copy()))[0][-1])
    np.testing.assert_allclose(model.predict(FEATURES), expected.numpy(), rtol=1e-10,
                               atol=1e-13)


# (The classifier's backward against finite differences, and padding changing neither
# its predictions nor its gradients: test_models.py, per cell.)


# ------------------------------------------------------------- LastStep on a GRU

def test_last_step_bidirectional_on_a_gru_with_lengths_is_the_last_layers_h_n():
    rng = np.random.default_rng(4)
    gru = GRU(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    model = Sequential([gru, LastStep(bidirectional=True)])
    x = rng.standard_normal((7, 5, 3))
    lengths = np.array([7, 3, 1, 5, 7])
    last, (h_n,) = model.forward(x, lengths=lengths)
    np.testing.assert_array_equal(last, np.concatenate([h_n[2], h_n[3]], axis=1))
    # and each row is its sequence run alone
    for b, n in enumerate(lengths):
        alone, _ = model.forward(x[:n, b:b + 1])
        np.testing.assert_allclose(last[b:b + 1], alone, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------ truncated BPTT, h only

@pytest.mark.parametrize("k", [1, 4, 7, 23])
def test_gru_chunks_with_carried_h_reproduce_one_forward(k):
    net = GRU(3, 5, num_layers=2, dtype="float64", seed=2)
    x = np.random.default_rng(3).standard_normal((23, 4, 3))
    y_full, h_full = net.forward(x)
    h, ys = None, []
    for t in range(0, 23, k):
        y, h = net.forward(x[t:t + k], h)
        assert isinstance(h, np.ndarray) and h.shape == (2, 4, 5)   # h alone, no c
        ys.append(y)
    np.testing.assert_allclose(np.concatenate(ys), y_full, rtol=0, atol=1e-13)
    np.testing.assert_allclose(h, h_full, rtol=0, atol=1e-13)


def test_language_model_gru_state_carries_across_chunks_like_a_whole_forward():
    model = LanguageModel(11, 4, 6, num_layers=2, cell="gru", dtype="float64", seed=0)
    model.eval()
    data = batchify(np.random.default_rng(4).integers(0, 11, 60), 3)
    full, _ = model.forward(data)
    state, outs = None, []
    for xc, _ in tbptt_chunks(data, 6, targets=data):
        out, state = model.forward(xc, state)
        assert len(state) == 1 and isinstance(state[0], np.ndarray)
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs), full, rtol=0, atol=1e-13)


# (A GRU's stream fit is the documented TBPTT loop: test_models.py, per cell.)


def test_gru_stream_evaluation_carries_h_like_one_whole_forward():
    model = LanguageModel(9, 4, 6, num_layers=2, cell="gru", dtype="float64", seed=3)
    stream = np.random.default_rng(5).integers(0, 9, 200)
    data = batchify(stream, 4)
    logits, _ = model.forward(data[:-1])
    expected, _ = softmax_cross_entropy(logits, data[1:])
    assert model.evaluate(stream, batch_size=4, bptt=7)["loss"] == \
        pytest.approx(expected, rel=1e-12)


def test_gru_sequence_fit_with_bptt_chunks_carries_h_between_chunks():
    """fit(bptt=k) on (N, T) sequences: the chunks of a batch run from the state the
    previous chunk left, so their forward outputs are one whole forward's."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 6, (4, 12))
    model = LanguageModel(6, 3, 5, cell="gru", dtype="float64", seed=1)
    steps = list(model._steps(x[:, :-1], x[:, 1:], None, np.arange(4), 4, 4))
    assert len(steps) == 3 and [s[4] for s in steps] == [True, False, False]
    full, _ = model.forward(np.ascontiguousarray(x[:, :-1].T))
    state, outs = None, []
    for xt, _, _, _, reset in steps:
        out, state = model.forward(xt, None if reset else state)
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs), full, rtol=0, atol=1e-13)


def test_gru_chunk_gradient_is_the_full_gradient_minus_what_crosses_the_boundary():
    rng = np.random.default_rng(5)
    net = GRU(3, 4, dtype="float64", seed=6)
    prefix, chunk = rng.standard_normal((12, 2, 3)), rng.standard_normal((5, 2, 3))
    R = rng.standard_normal((5, 2, 4))
    _, h = net.forward(prefix)
    net.zero_grad()
    net.forward(chunk, h)
    _, dh0 = net.backward(R)
    truncated = grads_copy(net)

    dy = np.zeros((17, 2, 4))
    dy[12:] = R
    net.zero_grad()
    net.forward(np.concatenate([prefix, chunk]))
    net.backward(dy)
    full = grads_copy(net)

    net.zero_grad()
    net.forward(prefix)
    net.backward(np.zeros((12, 2, 4)), dh0)
    for name in full:
        assert np.abs(net.grads[name]).max() > 1e-6, "the test needs a real difference"
        np.testing.assert_allclose(truncated[name] + net.grads[name], full[name],
                                   rtol=1e-10, atol=1e-12, err_msg=name)


def test_reset_state_zeroes_rows_of_a_gru_h_and_of_a_mixed_model_state():
    h = np.arange(24, dtype=float).reshape(2, 3, 4)
    out = reset_state(h, [1])
    assert isinstance(out, np.ndarray) and not out[:, 1].any()
    np.testing.assert_array_equal(out[:, [0, 2]], h[:, [0, 2]])
    assert h[:, 1].any()  # a copy
    pair = (h + 1, h + 2)
    mixed = reset_state([h, None, pair], np.array([True, False, False]))
    assert not mixed[0][:, 0].any() and mixed[1] is None
    assert not mixed[2][0][:, 0].any() and not mixed[2][1][:, 0].any()
    with pytest.raises(ValueError, match=r"h of shape \(num_layers, B, H\), got \(3, 4\)"):
        reset_state(h[0], [0])
    with pytest.raises(ValueError, match=r"rows in \[0, 3\)"):
        reset_state(h, [3])


def test_a_reset_gru_row_continues_as_if_its_sequence_started_fresh():
    net = GRU(2, 3, dtype="float64", seed=0)
    rng = np.random.default_rng(2)
    first, second = rng.standard_normal((4, 2, 2)), rng.standard_normal((5, 2, 2))
    _, h = net.forward(first)
    y, _ = net.forward(second, reset_state(h, [1]))
    fresh, _ = net.forward(second[:, 1:2])
    np.testing.assert_allclose(y[:, 1:2], fresh, rtol=0, atol=1e-14)


# ------------------------------------------------------- streaming and generation

def test_sequential_gru_steps_equal_one_whole_forward():
    model = Sequential([Embedding(7, 3, seed=0), GRU(3, 5, num_layers=2, seed=1),
                        Dense(5, 7, seed=2)])
    ids = np.random.default_rng(0).integers(0, 7, (9, 2))
    full, (h_full,) = model.forward(ids)
    state, outs = None, []
    for t in range(9):
        out, state = model.step(ids[t], state)
        outs.append(out)
    np.testing.assert_allclose(np.stack(outs), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state[0], h_full, rtol=1e-5, atol=1e-6)


def test_greedy_gru_generation_follows_the_argmax_of_a_whole_forward():
    model = LanguageModel(10, 4, 8, cell="gru", seed=1, dtype="float64")
    prompt = np.array([3, 1, 4])
    out = model.generate(prompt, 6, temperature=0)
    logits, _ = model.forward(np.concatenate([prompt, out])[:, None])
    np.testing.assert_array_equal(out, logits[len(prompt) - 1:-1, 0].argmax(-1))


def test_gru_generation_repeats_with_a_seed_and_keeps_the_training_mode():
    model = LanguageModel(20, 4, 8, dropout=0.5, num_layers=2, cell="gru", seed=0)
    a = model.generate([1, 2, 3], 15, seed=5)
    np.testing.assert_array_equal(a, model.generate([1, 2, 3], 15, seed=5))
    assert not np.array_equal(a, model.generate([1, 2, 3], 15, seed=6))
    assert model.training


# ----------------------------------------------------------------------- save/load

GRU_MODELS = {
    "LanguageModel": lambda: LanguageModel(9, 3, 4, num_layers=2, dropout=0.2, cell="gru",
                                           seed=1),
    "Regressor": lambda: Regressor(3, 4, output_size=2, bidirectional=True, cell="gru",
                                   dtype="float64", seed=1),
    "Classifier(features)": lambda: Classifier(3, 4, 5, cell="gru", seed=1),
    "Classifier(tokens)": lambda: Classifier(hidden_size=4, num_classes=2, vocab_size=9,
                                             embed_dim=3, padding_idx=0, num_layers=2,
                                             bidirectional=True, cell="gru", seed=1),
    "Sequential": lambda: Sequential([Embedding(9, 3, seed=1),
                                      GRU(3, 4, num_layers=2, bias=False, seed=2),
                                      Dropout(0.1), Dense(4, 2, seed=3)], loss="mse"),
}


def predictions(model):
    if type(model) is Sequential:
        return model.forward(TOKENS.T)[0]
    if isinstance(model, Regressor) or (isinstance(model, Classifier)
                                        and model.get_config()["vocab_size"] is None):
        x = FEATURES
    else:
        x = TOKENS
    lengths = np.array([6, 2, 5, 1, 3])
    if isinstance(model, Classifier):
        return model.predict_proba(x, lengths=lengths)
    return model.predict(x, lengths=lengths)


@pytest.mark.parametrize("kind", list(GRU_MODELS))
def test_gru_models_round_trip_through_save_and_load(tmp_path, kind):
    model = GRU_MODELS[kind]()
    for p in model.params.values():
        p[...] = RNG.standard_normal(p.shape)
    save(model, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert type(loaded) is type(model) and repr(loaded) == repr(model)
    assert any(type(layer) is GRU for layer in loaded.layers)
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value, err_msg=name)
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(predictions(loaded), predictions(model))


def rewrite_config(path, change):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays[CONFIG_KEY].tobytes())
    change(header["config"])
    arrays[CONFIG_KEY] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("make", [
    lambda: LanguageModel(9, 3, 4, seed=1),
    lambda: Regressor(3, 4, seed=1),
    lambda: Classifier(hidden_size=4, num_classes=2, vocab_size=9, seed=1),
])
def test_a_file_saved_before_the_cell_argument_loads_as_an_lstm(tmp_path, make):
    model = make()
    save(model, tmp_path / "m.npz")
    rewrite_config(tmp_path / "m.npz", lambda config: config.pop("cell"))
    loaded = load(tmp_path / "m.npz")
    assert type(loaded.layers[0 if isinstance(model, Regressor) else 1]) is clstm.LSTM
    assert loaded.get_config()["cell"] == "lstm"
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)


def test_a_file_with_a_bad_cell_or_gru_weights_under_an_lstm_config_is_refused(tmp_path):
    save(Classifier(3, 4, 2, cell="gru", seed=0), tmp_path / "m.npz")
    good = tmp_path / "m.npz"
    rewrite_config(good, lambda config: config.update(cell="rnn"))
    with pytest.raises(ValueError, match=r'config.cell: expected one of "lstm", "gru", '
                                         r"got 'rnn'"):
        load(good)
    save(Classifier(3, 4, 2, cell="gru", seed=0), good)
    rewrite_config(good, lambda config: config.update(cell="lstm"))  # 3H rows, not 4H
    with pytest.raises(ValueError, match=r"'0.weight_ih_l0'.*\(16, 3\).*\(12, 3\)"):
        load(good)
