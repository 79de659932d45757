"""Tests of clstm.io: save/load round trips, atomic writes, refusal of damaged, foreign or
pickled files with clear errors, and Keras / PyTorch weight conversion."""

import json
import os
import pickle

import numpy as np
import pytest

import clstm
from clstm.io import (CONFIG_KEY, from_torch_state_dict, load, lstm_from_keras,
                      lstm_from_keras_layers, lstm_to_keras, lstm_to_keras_layers, save,
                      to_torch_state_dict)
from clstm.layers import Dense, Dropout, Embedding
from clstm.models import Classifier, LanguageModel, LastStep, Regressor, Sequential

RNG = np.random.default_rng(0)
TOKENS = RNG.integers(0, 9, (5, 6))
FEATURES = RNG.standard_normal((5, 6, 3))


def predictions(model):
    if isinstance(model, clstm.LSTM):
        return model.forward(FEATURES.transpose(1, 0, 2))[0]
    if isinstance(model, Sequential) and type(model) is Sequential:
        return model.forward(TOKENS.T)[0]
    x = FEATURES if isinstance(model, Regressor) or (
        isinstance(model, Classifier) and model.get_config()["vocab_size"] is None) else TOKENS
    return model.predict_proba(x) if isinstance(model, Classifier) else model.predict(x)


MODELS = {
    "LSTM": lambda: clstm.LSTM(3, 4, num_layers=2, peephole=True, dtype="float64", seed=1),
    "Sequential": lambda: Sequential([Embedding(9, 3, padding_idx=0, seed=1),
                                      clstm.LSTM(3, 4, seed=2), Dropout(0.1),
                                      Dense(4, 2, bias=False, seed=3)], loss="mse"),
    "LanguageModel": lambda: LanguageModel(9, 3, 4, num_layers=2, dropout=0.2, seed=1),
    "Regressor": lambda: Regressor(3, 4, output_size=2, dtype="float64", seed=np.int64(1)),
    "Classifier(features)": lambda: Classifier(3, 4, 5, seed=1),
    "Classifier(tokens)": lambda: Classifier(hidden_size=4, num_classes=2, vocab_size=9,
                                             embed_dim=3, padding_idx=0, seed=1),
}


def write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def read_npz(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def config_array(header):
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


@pytest.fixture
def saved(tmp_path):
    """A saved Regressor: (path, model)."""
    model = MODELS["Regressor"]()
    path = tmp_path / "model.npz"
    save(model, path)
    return path, model


# -------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind", list(MODELS))
def test_round_trip_gives_the_same_model_and_the_same_predictions(tmp_path, kind):
    model = MODELS[kind]()
    for p in model.params.values():  # trained-looking weights, not the seeded ones
        p[...] = RNG.standard_normal(p.shape)
    path = tmp_path / "m.npz"
    save(model, path)
    loaded = load(str(path))
    assert type(loaded) is type(model)
    assert repr(loaded) == repr(model)
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value, err_msg=name)
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(predictions(loaded), predictions(model))


def test_a_loaded_model_keeps_its_flat_parameter_buffer(saved):
    path, _ = saved
    loaded = load(path)
    assert all(np.shares_memory(p, loaded.flat_params) for p in loaded.params.values())


def test_the_file_is_a_plain_npz_with_a_json_config(saved):
    path, model = saved
    arrays = read_npz(path)
    header = json.loads(arrays.pop(CONFIG_KEY).tobytes())
    assert header["format_version"] == 1 and header["class"] == "Regressor"
    assert header["config"] == model.get_config()
    assert set(arrays) == set(model.params)


def test_save_writes_exactly_the_given_path(tmp_path):
    save(MODELS["LSTM"](), tmp_path / "weights.bin")
    assert os.listdir(tmp_path) == ["weights.bin"]


# ------------------------------------------------------------------------ atomic write

def test_a_failing_write_leaves_no_partial_file_and_keeps_the_old_one(saved, monkeypatch):
    path, model = saved
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save(model, path)
    with pytest.raises(OSError, match="disk full"):
        save(model, path.parent / "new.npz")
    assert os.listdir(path.parent) == ["model.npz"], "no temporary or partial file"
    assert path.read_bytes() == before


def test_a_failing_rename_removes_the_temporary_file(saved, monkeypatch):
    path, model = saved

    def broken_replace(src, dst):
        raise PermissionError("read-only target")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        save(model, path)
    assert os.listdir(path.parent) == ["model.npz"]


def test_a_saved_file_gets_the_usual_permissions(tmp_path):
    save(MODELS["LSTM"](), tmp_path / "m.npz")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o666 & ~mask


# ------------------------------------------------------------------ damaged files

def test_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        load(tmp_path / "absent.npz")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_a_truncated_file_is_refused(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load(path)


def test_a_file_with_a_corrupted_byte_is_refused(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the stored arrays; zip's CRC catches it
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load(path)


@pytest.mark.parametrize("content, words", [
    (b"", "got an empty file"),
    (b"hello, world", r"got a file starting with b'hello, w'"),
])
def test_a_file_that_is_not_an_npz_is_refused(tmp_path, content, words):
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="expected a clstm model file.*" + words):
        load(path)


def test_a_single_npy_array_is_refused(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="got a single .npy array"):
        load(path)


def test_an_npz_without_a_config_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    write_npz(path, {"weight_ih_l0": np.zeros((4, 1))})
    with pytest.raises(ValueError, match="expected a '__clstm_config__' entry"):
        load(path)


class Exploit:
    """Unpickling this would create a marker file: the test checks it never does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_file_is_refused_without_running_it(tmp_path):
    path, marker = tmp_path / "m.npz", tmp_path / "pwned"
    path.write_bytes(pickle.dumps(Exploit(str(marker))))
    with pytest.raises(ValueError, match="pickle.*refused"):
        load(path)
    assert not marker.exists()


def test_an_npz_holding_pickled_objects_is_refused_without_running_them(saved):
    path, _ = saved
    marker = path.parent / "pwned"
    arrays = read_npz(path)
    arrays["1.weight"] = np.array([Exploit(str(marker))], dtype=object)
    write_npz(path, arrays)
    with pytest.raises(ValueError, match="pickled objects, which are refused"):
        load(path)
    assert not marker.exists()


# ------------------------------------------------------------ mismatched contents

def rewrite(path, change):
    arrays = read_npz(path)
    header = json.loads(arrays[CONFIG_KEY].tobytes())
    change(arrays, header)
    arrays[CONFIG_KEY] = config_array(header)
    write_npz(path, arrays)


def test_a_newer_format_version_is_refused(saved):
    path, _ = saved
    rewrite(path, lambda a, h: h.update(format_version=2))
    with pytest.raises(ValueError, match="expected format_version 1, got 2 .*newer"):
        load(path)


def test_a_missing_format_version_is_refused(saved):
    path, _ = saved
    rewrite(path, lambda a, h: h.pop("format_version"))
    with pytest.raises(ValueError, match="expected format_version 1, got None"):
        load(path)


def test_an_unknown_model_class_is_refused(saved):
    path, _ = saved
    rewrite(path, lambda a, h: h.update({"class": "os.system"}))
    with pytest.raises(ValueError, match=r"expected a model class in \[.*got 'os.system'"):
        load(path)


def test_a_config_the_model_rejects_is_refused(saved):
    path, _ = saved
    rewrite(path, lambda a, h: h["config"].update(hidden_size=-3))
    with pytest.raises(ValueError, match="the config cannot build a Regressor"):
        load(path)


def test_a_missing_weight_is_named(saved):
    path, _ = saved
    rewrite(path, lambda a, h: a.pop("0.bias_hh_l0"))
    with pytest.raises(ValueError, match=r"missing \['0.bias_hh_l0'\], unexpected \[\]"):
        load(path)


def test_an_unexpected_weight_is_named(saved):
    path, _ = saved
    rewrite(path, lambda a, h: a.update(extra=np.zeros(2)))
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['extra'\]"):
        load(path)


def test_a_weight_of_the_wrong_shape_is_named_with_both_shapes(saved):
    path, _ = saved
    rewrite(path, lambda a, h: a.update({"2.weight": np.zeros((2, 5))}))
    with pytest.raises(ValueError, match=r"'2.weight': expected shape \(2, 4\) \(from the "
                                         r"config\), got \(2, 5\)"):
        load(path)


def test_a_weight_of_another_dtype_is_refused(saved):
    path, _ = saved
    rewrite(path, lambda a, h: a.update({"2.bias": a["2.bias"].astype(np.float32)}))
    with pytest.raises(ValueError, match="'2.bias': expected dtype float64.*got float32"):
        load(path)


def test_save_refuses_models_it_cannot_describe(tmp_path):
    class Custom(Dense):
        pass

    with pytest.raises(ValueError, match="cannot describe a layer of type Custom"):
        save(Sequential([clstm.LSTM(2, 3), LastStep(), Custom(3, 1)]), tmp_path / "m")

    class MyRegressor(Regressor):
        pass

    with pytest.raises(ValueError, match="expected a model of class"):
        save(MyRegressor(1, 2), tmp_path / "m")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ Keras

def keras_lstm(x, kernel, recurrent_kernel, bias):
    """Keras' LSTM cell in NumPy (batch-first x (B, T, I)); gates i, f, c, o."""
    B, T, _ = x.shape
    H = recurrent_kernel.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    out = []
    for t in range(T):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, g, o = np.split(z, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def test_keras_weights_give_the_keras_outputs():
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((3, 20)) * 0.5
    recurrent = rng.standard_normal((5, 20)) * 0.5
    bias = rng.standard_normal(20) * 0.5
    x = rng.standard_normal((4, 7, 3))
    net = lstm_from_keras(kernel, recurrent, bias)
    assert net.dtype == np.float64 and (net.input_size, net.hidden_size) == (3, 5)
    net.batch_first = True
    y, _ = net.forward(x)
    np.testing.assert_allclose(y, keras_lstm(x, kernel, recurrent, bias), rtol=1e-12,
                               atol=1e-14)


def test_keras_export_inverts_import_with_the_two_biases_summed():
    net = clstm.LSTM(3, 4, num_layers=2, dtype="float64", seed=0)
    kernel, recurrent, bias = lstm_to_keras(net, layer=1)
    assert kernel.shape == (4, 16) and recurrent.shape == (4, 16) and bias.shape == (16,)
    back = lstm_from_keras(kernel, recurrent, bias)
    x = np.random.default_rng(1).standard_normal((5, 2, 4))
    single = clstm.LSTM(4, 4, dtype="float64")
    single.load_state_dict({n.replace("l1", "l0"): v for n, v in net.params.items()
                            if n.endswith("l1")})
    np.testing.assert_allclose(back.forward(x)[0], single.forward(x)[0], rtol=1e-13)
    assert not back.params["bias_hh_l0"].any()


def test_keras_import_without_bias_and_bad_shapes():
    net = lstm_from_keras(np.ones((2, 8), np.float32), np.ones((2, 8), np.float32))
    assert net.dtype == np.float32 and not net.params["bias_ih_l0"].any()
    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \(2, 8\).*"
                                         r"got \(3, 8\)"):
        lstm_from_keras(np.ones((2, 8)), np.ones((3, 8)))
    with pytest.raises(ValueError, match=r"kernel: expected shape \(input_size, 4 \* "
                                         r"units\), got \(2, 7\)"):
        lstm_from_keras(np.ones((2, 7)), np.ones((2, 7)))
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\), got \(4,\)"):
        lstm_from_keras(np.ones((2, 8)), np.ones((2, 8)), np.ones(4))


def keras_bidirectional(x, forward_weights, backward_weights):
    """Keras' Bidirectional(LSTM(return_sequences=True)), merge_mode="concat", in NumPy:
    the backward layer runs over the reversed sequence (go_backwards) and its outputs
    are reversed back before the concatenation."""
    fwd = keras_lstm(x, *forward_weights)
    bwd = keras_lstm(x[:, ::-1], *backward_weights)[:, ::-1]
    return np.concatenate([fwd, bwd], axis=2)


def keras_layout(module):
    """A torch.nn.LSTM's weights as Keras layers' get_weights() lists, by the documented
    layout (kernel = W_ihᵀ, recurrent_kernel = W_hhᵀ, bias = b_ih + b_hh; a Bidirectional
    layer's list is the forward layer's then the backward layer's)."""
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    layers = []
    for k in range(module.num_layers):
        weights = []
        for sfx in ("", "_reverse")[:2 if module.bidirectional else 1]:
            weights += [sd[f"weight_ih_l{k}{sfx}"].T, sd[f"weight_hh_l{k}{sfx}"].T,
                        sd[f"bias_ih_l{k}{sfx}"] + sd[f"bias_hh_l{k}{sfx}"]]
        layers.append(weights)
    return layers


@pytest.mark.parametrize("num_layers", [1, 2])
def test_keras_bidirectional_weights_give_keras_outputs_and_torch_outputs(num_layers):
    torch = pytest.importorskip("torch")
    torch.manual_seed(num_layers)
    module = torch.nn.LSTM(3, 5, num_layers, bidirectional=True, dtype=torch.float64)
    layers = keras_layout(module)
    net = lstm_from_keras_layers(*layers, bidirectional=True)
    assert (net.num_layers, net.bidirectional, net.dtype) == (num_layers, True, np.float64)
    net.batch_first = True
    x = np.random.default_rng(3).standard_normal((4, 7, 3))
    expected = x
    for weights in layers:                  # Keras' stack: each layer reads the last's
        expected = keras_bidirectional(expected, weights[:3], weights[3:])
    y, _ = net.forward(x)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        y_torch, _ = module(torch.from_numpy(x).transpose(0, 1))
    np.testing.assert_allclose(y, y_torch.transpose(0, 1).numpy(), rtol=1e-12, atol=1e-13)


def test_keras_bidirectional_with_lengths_is_each_sequence_alone():
    # A masked Keras batch runs each sequence over its own steps, both directions.
    rng = np.random.default_rng(4)
    H, I = 4, 3
    weights = [rng.standard_normal(s) * 0.5 for s in [(I, 4 * H), (H, 4 * H), (4 * H,)] * 2]
    net = lstm_from_keras_layers(weights, bidirectional=True)
    net.batch_first = True
    x = rng.standard_normal((3, 6, I))
    lengths = np.array([2, 6, 4])
    y, _ = net.forward(x, lengths=lengths)
    for b, n in enumerate(lengths):
        alone = keras_bidirectional(x[b:b + 1, :n], weights[:3], weights[3:])[0]
        np.testing.assert_allclose(y[b, :n], alone, rtol=1e-12, atol=1e-13)
        assert not y[b, n:].any()


def test_keras_stacked_unidirectional_layers_make_one_multilayer_lstm():
    rng = np.random.default_rng(5)
    first = [rng.standard_normal(s) * 0.5 for s in [(3, 20), (5, 20), (20,)]]
    second = [rng.standard_normal(s) * 0.5 for s in [(5, 20), (5, 20), (20,)]]
    net = lstm_from_keras_layers(first, second)
    assert (net.num_layers, net.hidden_size, net.bidirectional) == (2, 5, False)
    net.batch_first = True
    x = rng.standard_normal((2, 6, 3))
    expected = keras_lstm(keras_lstm(x, *first), *second)
    np.testing.assert_allclose(net.forward(x)[0], expected, rtol=1e-12, atol=1e-13)
    # one clstm.LSTM has one hidden_size: Keras layers of other widths do not stack into it
    narrow = [rng.standard_normal(s) for s in [(5, 16), (4, 16), (16,)]]
    with pytest.raises(ValueError, match=r"layer 1 kernel: expected shape \(5, 20\), "
                                         r"got \(5, 16\)"):
        lstm_from_keras_layers(first, narrow)


def test_keras_layers_export_inverts_import_and_bias_free_layers_round_trip():
    for bias in (True, False):
        net = clstm.LSTM(3, 4, num_layers=2, bidirectional=True, bias=bias,
                         dtype="float64", seed=1)
        layers = lstm_to_keras_layers(net)
        assert [len(w) for w in layers] == [6 if bias else 4] * 2
        assert layers[1][0].shape == (8, 16) and layers[1][1].shape == (4, 16)
        back = lstm_from_keras_layers(*layers, bidirectional=True)
        x = np.random.default_rng(2).standard_normal((5, 2, 3))
        np.testing.assert_allclose(back.forward(x)[0], net.forward(x)[0], rtol=1e-13)
        if bias:
            for name in net.params:
                if name.startswith("bias_hh"):
                    assert not back.params[name].any()


@pytest.mark.parametrize("merge_mode", ["sum", "mul", "ave", None])
def test_keras_merge_modes_other_than_concat_are_refused(merge_mode):
    weights = [np.ones((2, 8)), np.ones((2, 8)), np.ones(8)] * 2
    with pytest.raises(ValueError, match=r"merge_mode: expected 'concat'.*got "
                                         + repr(merge_mode) + ".*cannot represent"):
        lstm_from_keras_layers(weights, bidirectional=True, merge_mode=merge_mode)
    with pytest.raises(ValueError, match="not a Keras merge mode"):
        lstm_from_keras_layers(weights, bidirectional=True, merge_mode="max")
    with pytest.raises(TypeError, match="merge_mode: expected 'concat', got int"):
        lstm_from_keras_layers(weights, bidirectional=True, merge_mode=1)


def test_keras_layers_bad_input_names_layer_direction_and_array():
    w = [np.ones((2, 8)), np.ones((2, 8)), np.ones(8)]
    with pytest.raises(ValueError, match="at least one layer"):
        lstm_from_keras_layers()
    with pytest.raises(ValueError, match=r"layer 0: expected 6 arrays .*Bidirectional.*"
                                         r"4 with use_bias=False\), got 3"):
        lstm_from_keras_layers(w, bidirectional=True)
    with pytest.raises(TypeError, match="layer 0: expected the list .* got ndarray"):
        lstm_from_keras_layers(np.ones((2, 8)))
    with pytest.raises(ValueError, match=r"layer 0 backward recurrent_kernel: expected "
                                         r"shape \(2, 8\), got \(3, 8\)"):
        lstm_from_keras_layers(w + [np.ones((2, 8)), np.ones((3, 8)), np.ones(8)],
                               bidirectional=True)
    with pytest.raises(ValueError, match=r"layer 1 kernel: expected shape \(2, 8\), "
                                         r"got \(3, 8\)"):
        lstm_from_keras_layers(w, [np.ones((3, 8)), np.ones((2, 8)), np.ones(8)])
    with pytest.raises(ValueError, match=r"layer 1: expected 3 arrays as layer 0"):
        lstm_from_keras_layers(w, w[:2])
    with pytest.raises(TypeError, match="bidirectional: expected True or False"):
        lstm_from_keras_layers(w, bidirectional="yes")
    with pytest.raises(ValueError, match="lstm_to_keras_layers: .*without projection"):
        lstm_to_keras_layers(clstm.LSTM(2, 4, proj_size=2))
    with pytest.raises(ValueError, match="lstm_to_keras: expected a unidirectional"):
        lstm_to_keras(clstm.LSTM(2, 4, bidirectional=True))
    with pytest.raises(TypeError, match="expected a clstm.LSTM, got dict"):
        lstm_to_keras_layers({})


# ---------------------------------------------------------------------------- PyTorch

def test_torch_naming_round_trips_with_attribute_prefixes():
    model = LanguageModel(9, 3, 4, seed=0)
    prefixes = {0: "embed", 1: "lstm", 2: "fc"}
    state = to_torch_state_dict(model, prefixes, tensors=False)
    assert sorted(state) == ["embed.weight", "fc.bias", "fc.weight", "lstm.bias_hh_l0",
                             "lstm.bias_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l0"]
    other = LanguageModel(9, 3, 4, seed=1)
    from_torch_state_dict(other, state, prefixes)
    for name, value in model.params.items():
        np.testing.assert_array_equal(other.params[name], value)
    assert sorted(to_torch_state_dict(clstm.LSTM(2, 3), "rnn", tensors=False))[0] == \
        "rnn.bias_hh_l0"
    with pytest.raises(ValueError, match="missing"):
        from_torch_state_dict(other, state)  # the torch names need the prefixes


def test_a_torch_model_with_the_same_layers_gives_the_same_logits():
    torch = pytest.importorskip("torch")

    class TorchLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(9, 3)
            self.lstm = torch.nn.LSTM(3, 4, num_layers=2)
            self.fc = torch.nn.Linear(4, 9)

        def forward(self, idx):
            return self.fc(self.lstm(self.embed(idx))[0])

    torch.manual_seed(0)
    net = TorchLM().double()
    model = LanguageModel(9, 3, 4, num_layers=2, dtype="float64")
    prefixes = {0: "embed", 1: "lstm", 2: "fc"}
    from_torch_state_dict(model, net.state_dict(), prefixes)
    with torch.no_grad():
        expected = net(torch.from_numpy(TOKENS.T)).numpy()
    np.testing.assert_allclose(model.forward(TOKENS.T)[0], expected, rtol=1e-10,
                               atol=1e-12)
    exported = to_torch_state_dict(model, prefixes)
    fresh = TorchLM().double()
    fresh.load_state_dict(exported)
    with torch.no_grad():
        np.testing.assert_allclose(fresh(torch.from_numpy(TOKENS.T)).numpy(), expected,
                                   rtol=1e-12)


@pytest.mark.parametrize("options", [dict(bidirectional=True), dict(proj_size=2),
                                     dict(bias=False),
                                     dict(bidirectional=True, proj_size=3, bias=False)])
def test_torch_state_dicts_of_bidirectional_projected_and_bias_free_lstms(options):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    net = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, **options).double()
    model = clstm.LSTM(3, 4, 2, dtype="float64", batch_first=True, **options)
    from_torch_state_dict(model, net.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 5, 3))
    lengths = np.array([5, 3])
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True,
            enforce_sorted=False)
        expected, _ = torch.nn.utils.rnn.pad_packed_sequence(net(packed)[0],
                                                             batch_first=True)
    got, _ = model.forward(x, lengths=lengths)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10, atol=1e-12)
    fresh = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, **options).double()
    fresh.load_state_dict(to_torch_state_dict(model))
    for name, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), net.state_dict()[name].numpy())


# ------------------------------------------------------------- a layer of your own

def test_a_layer_of_your_own_is_saved_and_loaded_by_defining_its_config_methods(tmp_path):
    from clstm.layers import Layer

    class Scale(Layer):
        """y = x * weight, one weight per feature: the whole registration is here."""

        def __init__(self, features, *, dtype="float32"):
            super().__init__(dtype)
            self.features = features
            self._create_parameters({"weight": np.full(features, 2.0)}, self.dtype)

        def forward(self, x):
            self._x = np.asarray(x, self.dtype)
            return self._x * self.params["weight"]

        def backward(self, dy):
            self.grads["weight"] += (dy * self._x).reshape(-1, self.features).sum(axis=0)
            return dy * self.params["weight"]

        def get_config(self):
            return {"features": self.features, "dtype": self.dtype.name}

        @classmethod
        def read_config(cls, f):
            return {"features": f.int("features"), "dtype": f.dtype()}

        @classmethod
        def parameter_shapes(cls, config):
            yield "weight", (config["features"],), config["dtype"]

    model = Sequential([clstm.LSTM(2, 3, seed=0), Scale(3)])
    model.params["1.weight"][...] = [1.0, -2.0, 3.0]
    save(model, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert isinstance(loaded.layers[1], Scale)
    x = np.random.default_rng(0).standard_normal((4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)[0], model.forward(x)[0])
    # its fields are checked like clstm's own: a shape the config does not imply is refused
    rewrite(tmp_path / "m.npz", lambda a, h: a.update({"1.weight": np.ones(4, np.float32)}))
    with pytest.raises(ValueError, match="'1.weight'"):
        load(tmp_path / "m.npz")


def test_a_class_of_your_own_never_displaces_clstms_class_of_the_same_name():
    from clstm.layers import Layer
    from clstm.module import Module

    class Dense(Layer):
        def forward(self, x):
            return x

        def backward(self, dy):
            return dy

        def get_config(self):
            return {}

    assert Module.registry["Dense"] is clstm.layers.Dense
    with pytest.raises(ValueError, match="cannot describe a layer of type Dense"):
        save(Sequential([Dense()]), "unused")
