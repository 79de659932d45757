"""Sequences of their own lengths, bidirectional layers and bias-free layers: torch.nn.LSTM
on packed sequences, the NumPy reference (each sequence alone), finite differences, bad
input, save/load and the models' pass-through of lengths."""
import json
import os
import zipfile

import numpy as np
import pytest

import clstm
from clstm import kernels
from knobs import kernel_knob
from reference import numerical_gradient, reference_lstm_backward, reference_lstm_forward
from sequences import TOL, masked_at_padding, random_lengths


def configurations(n, seed):
    """n random configurations: sizes, layers 1-3, directions, bias, peepholes, lengths."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield dict(T=int(rng.integers(1, 8)), B=int(rng.integers(1, 7)),
                   I=int(rng.integers(1, 6)), H=int(rng.integers(1, 7)),
                   L=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                   bias=bool(rng.integers(2)), peephole=bool(rng.integers(2)),
                   lengths=str(rng.choice(["random", "random", "full", "ones", "none"])),
                   state=bool(rng.integers(2)), seed=int(rng.integers(1 << 30)),
                   proj=int(rng.integers(0, 3)))


def proj_size(cfg):
    """0 (none) or a projection below hidden_size, from the configuration's draw."""
    return 0 if cfg["H"] < 2 else min(cfg["proj"], cfg["H"] - 1)


def run(net, x, state, lengths, dy, dstate):
    net.zero_grad()
    y, (h_n, c_n) = net.forward(x, state, lengths=lengths)
    dx, (dh0, dc0) = net.backward(dy, dstate)
    return (np.array(y), np.array(h_n), np.array(c_n), dx, dh0, dc0,
            {k: g.copy() for k, g in net.grads.items()})


def data(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    T, B, I, H, L = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["L"]
    D = 2 if cfg["bidirectional"] else 1
    P = proj_size(cfg) or H
    lengths = None if cfg["lengths"] == "none" else random_lengths(rng, T, B, cfg["lengths"])
    x = rng.normal(size=(T, B, I)).astype(dtype)
    state = (rng.normal(size=(D * L, B, P)).astype(dtype),
             rng.normal(size=(D * L, B, H)).astype(dtype)) if cfg["state"] else None
    dy = rng.normal(size=(T, B, D * P)).astype(dtype)
    dstate = (rng.normal(size=(D * L, B, P)).astype(dtype),
              rng.normal(size=(D * L, B, H)).astype(dtype))
    return x, state, lengths, dy, dstate


# (packed recurrent GEMM, rows per thread from which the input projection runs per step,
# the two directions at once on a thread each)
KNOBS = [(True, 4, True), (True, 0, True), (True, 1 << 30, False), (False, 4, True),
         (True, 4, False)]


@pytest.mark.parametrize("knobs", KNOBS, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cfg", list(configurations(24, 1)), ids=str)
def test_matches_reference_each_sequence_alone(cfg, threads, knobs):
    """Every output and gradient equals the NumPy LSTM that runs each sequence alone;
    dy at padded positions (random here) sends nothing back. Two threads split the rows
    (each thread's rows weighed by their lengths); every path of the driver."""
    x, state, lengths, dy, dstate = data(cfg, "float64")
    net = clstm.LSTM(cfg["I"], cfg["H"], cfg["L"], bidirectional=cfg["bidirectional"],
                     bias=cfg["bias"], peephole=cfg["peephole"], proj_size=proj_size(cfg),
                     dtype="float64", seed=cfg["seed"])
    with kernel_knob(kernels._set_min_flops_per_thread, 0), \
            kernel_knob(kernels._set_packed_gemm, knobs[0]), \
            kernel_knob(kernels._set_min_rows_per_step_projection, knobs[1]), \
            kernel_knob(kernels._set_parallel_directions, knobs[2]), \
            clstm.threads(threads):
        y, h_n, c_n, dx, dh0, dc0, grads = run(net, x, state, lengths, dy, dstate)
    yr, (hr, cr), cache = reference_lstm_forward(
        x, net.params, cfg["L"], bidirectional=cfg["bidirectional"],
        peephole=cfg["peephole"], lengths=lengths,
        h0=None if state is None else state[0], c0=None if state is None else state[1])
    dxr, (dh0r, dc0r), gr = reference_lstm_backward(dy, cache, *dstate)
    tol = TOL["float64"]
    for a, b in ((y, yr), (h_n, hr), (c_n, cr), (dx, dxr), (dh0, dh0r), (dc0, dc0r)):
        np.testing.assert_allclose(a, b, **tol)
    for name, g in grads.items():
        np.testing.assert_allclose(g, gr[name], **tol, err_msg=name)


@pytest.mark.parametrize("isa", kernels.supported_isas())
@pytest.mark.parametrize("cfg", list(configurations(6, 3)), ids=str)
def test_matches_reference_at_every_isa_level(cfg, isa):
    """The packed driver follows each ISA level's packed-vs-BLAS rule and gate loops."""
    x, state, lengths, dy, dstate = data(cfg, "float64")
    net = clstm.LSTM(cfg["I"], cfg["H"], cfg["L"], bidirectional=cfg["bidirectional"],
                     bias=cfg["bias"], peephole=cfg["peephole"], proj_size=proj_size(cfg),
                     dtype="float64", seed=cfg["seed"])
    with kernel_knob(kernels._set_isa, isa), clstm.threads(2), \
            kernel_knob(kernels._set_min_flops_per_thread, 0):
        y, h_n, c_n, dx, dh0, dc0, grads = run(net, x, state, lengths, dy, dstate)
    yr, (hr, cr), cache = reference_lstm_forward(
        x, net.params, cfg["L"], bidirectional=cfg["bidirectional"],
        peephole=cfg["peephole"], lengths=lengths,
        h0=None if state is None else state[0], c0=None if state is None else state[1])
    dxr, (dh0r, dc0r), gr = reference_lstm_backward(dy, cache, *dstate)
    for a, b in ((y, yr), (h_n, hr), (c_n, cr), (dx, dxr), (dh0, dh0r), (dc0, dc0r)):
        np.testing.assert_allclose(a, b, **TOL["float64"])
    for name, g in grads.items():
        np.testing.assert_allclose(g, gr[name], **TOL["float64"], err_msg=name)


@pytest.mark.skipif(not kernels.openmp_enabled(), reason="built without OpenMP")
def test_directions_run_one_per_thread():
    """With 2 threads a bidirectional layer's directions run at once, even for a batch of
    one (which no row split can share), forward and backward; the result is the
    one-after-the-other one, bit for bit."""
    rng = np.random.default_rng(9)
    net = clstm.LSTM(8, 64, bidirectional=True, dtype="float64", seed=0)
    x = rng.normal(size=(30, 1, 8))
    dy = rng.normal(size=(30, 1, 128))
    results = []
    for parallel in (True, False):
        with kernel_knob(kernels._set_parallel_directions, parallel), clstm.threads(2), \
                kernel_knob(kernels._set_min_flops_per_thread, 0):
            net.zero_grad()
            y, _ = net.forward(x)
            used = kernels._threads_used_by_last_call()
            dx, _ = net.backward(dy)
            results.append((y.copy(), dx, net.flat_grads.copy()))
        if parallel:
            assert used == 2
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_padded_outputs_are_zero_and_state_at_own_last_step():
    rng = np.random.default_rng(3)
    T, B, I, H = 6, 4, 3, 5
    net = clstm.LSTM(I, H, bidirectional=True, dtype="float64", seed=0)
    x = rng.normal(size=(T, B, I))
    lengths = np.array([2, 6, 1, 4])
    y, (h_n, c_n) = net.forward(x, lengths=lengths)
    for b, n in enumerate(lengths):
        assert not y[n:, b].any()
        yb, (hb, cb) = net.forward(x[:n, b])          # the sequence alone, unbatched
        np.testing.assert_allclose(y[:n, b], yb, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n[:, b], hb, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c_n[:, b], cb, rtol=1e-12, atol=1e-14)
        # h_n: forward direction at the last valid step, reverse direction at step 0
        np.testing.assert_array_equal(h_n[0, b], y[n - 1, b, :H])
        np.testing.assert_array_equal(h_n[1, b], y[0, b, H:])


def test_padded_steps_change_nothing():
    """Whatever the input holds past a sequence's length, nothing changes."""
    rng = np.random.default_rng(4)
    net = clstm.LSTM(3, 4, 2, bidirectional=True, dtype="float64", seed=0)
    x = rng.normal(size=(5, 3, 3))
    lengths = [3, 5, 1]
    y1, s1 = net.forward(x, lengths=lengths)
    x2 = x.copy()
    for b, n in enumerate(lengths):
        x2[n:, b] = 1e3 * rng.normal(size=x2[n:, b].shape)
    y2, s2 = net.forward(x2, lengths=lengths)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1[0], s2[0])


@pytest.mark.parametrize("bidirectional, proj, bias", [
    (True, 0, True), (False, 2, True), (True, 2, False), (False, 0, False)])
def test_finite_differences_float64(bidirectional, proj, bias):
    """The analytic gradient of a 2-layer peephole LSTM with lengths (bidirectional,
    projected, bias-free) equals central differences, for every parameter tensor, x, h0
    and c0."""
    rng = np.random.default_rng(5)
    T, B, I, H, L = 4, 3, 2, 3, 2
    D, P = (2 if bidirectional else 1), proj or H
    net = clstm.LSTM(I, H, L, bidirectional=bidirectional, proj_size=proj, bias=bias,
                     peephole=True, dtype="float64", seed=2)
    x = rng.normal(size=(T, B, I))
    h0, c0 = rng.normal(size=(D * L, B, P)), rng.normal(size=(D * L, B, H))
    lengths = np.array([2, 4, 1])
    R = rng.normal(size=(T, B, D * P))
    Rh, Rc = rng.normal(size=(D * L, B, P)), rng.normal(size=(D * L, B, H))

    def loss():
        y, (h_n, c_n) = net.forward(x, (h0, c0), lengths=lengths)
        return (y * R).sum() + (h_n * Rh).sum() + (c_n * Rc).sum()

    loss()
    net.zero_grad()
    dx, (dh0, dc0) = net.backward(R, (Rh, Rc))
    grads = {k: g.copy() for k, g in net.grads.items()}
    for name, p in net.params.items():
        idx = rng.choice(p.size, size=min(6, p.size), replace=False)
        num = numerical_gradient(loss, p, indices=idx)
        np.testing.assert_allclose(grads[name].reshape(-1)[idx], num, rtol=1e-6,
                                   atol=1e-8, err_msg=name)
    for arr, grad in ((x, dx), (h0, dh0), (c0, dc0)):
        num = numerical_gradient(loss, arr)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


# -- torch.nn.LSTM on packed sequences -------------------------------------------------

torch = None


def _torch():
    global torch
    torch = pytest.importorskip("torch")
    return torch


def torch_packed_run(module, x, state, lengths, dy, dstate, batch_first):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    xt = torch.tensor(x, requires_grad=True)
    T = x.shape[1] if batch_first else x.shape[0]
    args = ()
    if state is not None:
        h0t = torch.tensor(state[0], requires_grad=True)
        c0t = torch.tensor(state[1], requires_grad=True)
        args = ((h0t, c0t),)
    if lengths is None:
        y, (h_n, c_n) = module(xt, *args)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        yp, (h_n, c_n) = module(packed, *args)
        y, _ = pad_packed_sequence(yp, batch_first=batch_first, total_length=T)
    loss = ((y * torch.tensor(dy)).sum() + (h_n * torch.tensor(dstate[0])).sum()
            + (c_n * torch.tensor(dstate[1])).sum())
    module.zero_grad()
    loss.backward()
    out = [y, h_n, c_n, xt.grad]
    out += [h0t.grad, c0t.grad] if state is not None else [None, None]
    out = [None if v is None else v.detach().numpy().copy() for v in out]
    out.append({n: p.grad.detach().numpy().copy() for n, p in module.named_parameters()})
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cfg", list(configurations(10, 2)), ids=str)
def test_matches_torch_packed(cfg, batch_first, dtype):
    """from_torch of a random torch.nn.LSTM (directions, bias, layers), then outputs,
    final state and every gradient against PyTorch on pack_padded_sequence(...,
    enforce_sorted=False) / pad_packed_sequence."""
    _torch()
    I, H, L = cfg["I"], cfg["H"], cfg["L"]
    torch.manual_seed(cfg["seed"] % 1000)
    module = torch.nn.LSTM(I, H, L, bias=cfg["bias"], bidirectional=cfg["bidirectional"],
                           proj_size=proj_size(cfg), batch_first=batch_first,
                           dtype=torch.float32 if dtype == "float32" else torch.float64)
    net = clstm.LSTM.from_torch(module)
    assert net.bidirectional == cfg["bidirectional"] and net.bias == cfg["bias"]
    assert net.proj_size == module.proj_size
    assert list(net.params) == [n for n, _ in module.named_parameters()]
    x, state, lengths, dy, dstate = data(cfg, dtype)
    if batch_first:
        x, dy = x.transpose(1, 0, 2).copy(), dy.transpose(1, 0, 2).copy()
    dy_masked = masked_at_padding(dy, lengths, batch_first)
    theirs = torch_packed_run(module, x, state, lengths, dy_masked, dstate, batch_first)
    ours = run(net, x, state, lengths, dy, dstate)   # random dy at padded positions
    tol = TOL[dtype]
    for name, a, b in zip(["y", "h_n", "c_n", "dx", "dh0", "dc0"], ours[:6], theirs[:6]):
        if b is not None:
            np.testing.assert_allclose(a, b, **tol, err_msg=name)
    for name, g in theirs[6].items():
        np.testing.assert_allclose(ours[6][name], g, **tol, err_msg=name)
    back = net.to_torch()
    assert back.bidirectional == module.bidirectional and back.bias == module.bias
    assert back.proj_size == module.proj_size
    for name, p in module.named_parameters():
        np.testing.assert_array_equal(getattr(back, name).detach().numpy(),
                                      p.detach().numpy())


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, exc, message", [
    ([3, 2], ValueError, r"lengths: expected shape \(3,\) \(one per sequence\), got shape \(2,\)"),
    ([[3, 2, 1]], ValueError, r"lengths: expected shape \(3,\)"),
    ([3, 0, 1], ValueError, r"lengths: expected integers in \[1, 4\], got min 0, max 3"),
    ([3, 5, 1], ValueError, r"lengths: expected integers in \[1, 4\], got min 1, max 5"),
    ([-1, 2, 1], ValueError, r"lengths: expected integers in \[1, 4\], got min -1"),
    ([3.0, 2.0, 1.0], TypeError, r"lengths: expected integers, got list of dtype float64"),
    (np.array([3.0, 2, 1]), TypeError, r"lengths: expected integers, got dtype float64"),
    (np.array([True, True, True]), TypeError, r"lengths: expected integers, got dtype bool"),
    (["3", "2", "1"], TypeError, r"lengths: expected integers"),
])
def test_bad_lengths(lengths, exc, message):
    net = clstm.LSTM(2, 3, bidirectional=True)
    with pytest.raises(exc, match=message):
        net.forward(np.zeros((4, 3, 2), np.float32), lengths=lengths)


def test_bad_state_for_directions_and_layers():
    net = clstm.LSTM(2, 3, 2, bidirectional=True)
    h = np.zeros((2, 5, 3), np.float32)                  # needs 2 * 2 = 4
    with pytest.raises(ValueError, match=r"state h: expected shape \(4, 5, 3\)"):
        net.forward(np.zeros((4, 5, 2), np.float32), (h, h))


def test_bad_constructor_flags():
    with pytest.raises(TypeError, match=r"bidirectional: expected True or False, got 'yes'"):
        clstm.LSTM(2, 3, bidirectional="yes")
    with pytest.raises(TypeError, match=r"bias: expected True or False, got 1"):
        clstm.LSTM(2, 3, bias=1)


@pytest.mark.parametrize("proj, exc, message", [
    (4, ValueError, r"proj_size: expected an int in \[0, hidden_size = 4\), got 4"),
    (-1, ValueError, r"proj_size: expected an int in \[0, hidden_size = 4\), got -1"),
    (1.5, TypeError, r"proj_size: expected an int, got 1.5"),
    (True, TypeError, r"proj_size: expected an int, got True"),
])
def test_bad_proj_size(proj, exc, message):
    with pytest.raises(exc, match=message):
        clstm.LSTM(2, 4, proj_size=proj)


def test_projected_state_shapes_and_step():
    """h is proj_size wide, c hidden_size wide; step() of a projected stack equals its
    forward, step by step."""
    rng = np.random.default_rng(8)
    net = clstm.LSTM(3, 5, 2, proj_size=2, peephole=True, dtype="float64", seed=0)
    x = rng.normal(size=(4, 2, 3))
    state = (rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 2, 5)))
    y, (h_n, c_n) = net.forward(x, state)
    assert y.shape == (4, 2, 2) and h_n.shape == (2, 2, 2) and c_n.shape == (2, 2, 5)
    s = state
    for t in range(4):
        yt, s = net.step(x[t], s)
        np.testing.assert_allclose(yt, y[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s[1], c_n, rtol=1e-12)
    with pytest.raises(ValueError, match=r"state h: expected shape \(2, 2, 2\)"):
        net.forward(x, (state[1], state[1]))


def test_bidirectional_cannot_step():
    net = clstm.LSTM(2, 3, bidirectional=True)
    with pytest.raises(ValueError, match="step: expected a unidirectional LSTM"):
        net.step(np.zeros((1, 2), np.float32))


def test_bias_free_has_no_bias_parameters_and_steps():
    net = clstm.LSTM(2, 3, 2, bias=False, dtype="float64", seed=0)
    assert not any(name.startswith("bias") for name in net.params)
    assert net.flat_params.size == 4 * 3 * 2 + 4 * 3 * 3 + 4 * 3 * 3 + 4 * 3 * 3
    x = np.random.default_rng(0).normal(size=(3, 2, 2))
    y, state = net.forward(x)
    s = None
    for t in range(3):
        yt, s = net.step(x[t], s)
    np.testing.assert_allclose(yt, y[-1], rtol=1e-12)


# -- save / load, models ----------------------------------------------------------------

def test_save_load_bidirectional_bias_free(tmp_path):
    net = clstm.LSTM(3, 4, 2, bidirectional=True, bias=False, peephole=True, proj_size=3,
                     seed=1)
    path = os.path.join(tmp_path, "net.npz")
    clstm.save(net, path)
    back = clstm.load(path)
    assert back.bidirectional and not back.bias and back.peephole and back.proj_size == 3
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x, lengths=[2, 5])[0],
                                  net.forward(x, lengths=[2, 5])[0])


def test_old_file_without_the_new_fields_loads(tmp_path):
    """A file saved before bias/bidirectional existed (its config has neither)."""
    net = clstm.LSTM(3, 4, seed=1)
    path = os.path.join(tmp_path, "net.npz")
    clstm.save(net, path)
    old = os.path.join(tmp_path, "old.npz")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".json"):
                config = json.loads(data)
                text = json.dumps(config)
                assert '"bidirectional"' in text
                _drop_keys(config, ("bias", "bidirectional", "proj_size"))
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    back = clstm.load(old)
    assert back.bias and not back.bidirectional and back.proj_size == 0
    for name, p in net.params.items():
        np.testing.assert_array_equal(back.params[name], p)


def _drop_keys(obj, keys):
    if isinstance(obj, dict):
        if "hidden_size" in obj:
            for k in keys:
                obj.pop(k, None)
        for v in obj.values():
            _drop_keys(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            _drop_keys(v, keys)


def test_sequential_passes_lengths_to_the_lstm():
    """Sequential(LSTM, LastStep) with lengths runs the LSTM on each sequence's own
    steps: the result equals each sequence alone, and padding changes nothing."""
    rng = np.random.default_rng(7)
    lstm = clstm.LSTM(3, 4, dtype="float64", seed=0)
    model = clstm.Sequential([lstm, clstm.LastStep()])
    x = rng.normal(size=(6, 3, 3))
    lengths = np.array([6, 2, 4])
    out, _ = model.forward(x, lengths=lengths)
    model.backward(np.ones_like(out))
    dw = lstm.grads["weight_ih_l0"].copy()
    lstm.zero_grad()
    for b, n in enumerate(lengths):
        alone, _ = lstm.forward(x[:n, b:b + 1])
        np.testing.assert_allclose(out[b], alone[-1, 0], rtol=1e-12)
        dy = np.zeros_like(alone)
        dy[-1] = 1
        lstm.backward(dy)
    np.testing.assert_allclose(lstm.grads["weight_ih_l0"], dw, rtol=1e-10)


def test_last_step_bidirectional_is_h_n():
    """LastStep(bidirectional=True) after a bidirectional LSTM with lengths is the two
    halves of the top layer's h_n (forward at the last valid step, reverse at step 0);
    its backward puts the gradient at exactly those positions."""
    rng = np.random.default_rng(10)
    lstm = clstm.LSTM(3, 4, 2, bidirectional=True, dtype="float64", seed=0)
    model = clstm.Sequential([lstm, clstm.LastStep(bidirectional=True)])
    x = rng.normal(size=(5, 3, 3))
    lengths = np.array([5, 2, 3])
    out, state = model.forward(x, lengths=lengths)
    h_n = state[0][0]
    np.testing.assert_array_equal(out, np.concatenate([h_n[-2], h_n[-1]], axis=1))
    step = clstm.LastStep(bidirectional=True)
    y = rng.normal(size=(5, 3, 8))
    step.forward(y, lengths)
    d = rng.normal(size=(3, 8))
    dy = step.backward(d)
    expected = np.zeros_like(y)
    for b, n in enumerate(lengths):
        expected[n - 1, b, :4] = d[b, :4]
        expected[0, b, 4:] += d[b, 4:]
    np.testing.assert_array_equal(dy, expected)


def test_bidirectional_classifier_save_load_and_old_config(tmp_path):
    rng = np.random.default_rng(11)
    clf = clstm.Classifier(vocab_size=12, hidden_size=6, num_classes=3, bidirectional=True,
                           seed=0)
    assert clf.get_params()["bidirectional"] is True
    x = rng.integers(1, 12, size=(8, 7))
    lengths = rng.integers(1, 8, size=8)
    y = rng.integers(0, 3, size=8)
    clf.fit(x, y, epochs=1, batch_size=4, lengths=lengths, verbose=0)
    path = os.path.join(tmp_path, "clf.npz")
    clstm.save(clf, path)
    back = clstm.load(path)
    np.testing.assert_array_equal(back.predict_proba(x, lengths=lengths),
                                  clf.predict_proba(x, lengths=lengths))
    # a Classifier saved before the argument existed loads as unidirectional
    uni = clstm.Classifier(vocab_size=12, hidden_size=6, num_classes=3, seed=0)
    clstm.save(uni, path)
    old = os.path.join(tmp_path, "old.npz")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".json"):
                config = json.loads(data)
                _drop_all(config, ("bidirectional", "bias", "proj_size"))
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    back = clstm.load(old)
    np.testing.assert_array_equal(back.predict_proba(x, lengths=lengths),
                                  uni.predict_proba(x, lengths=lengths))


def _drop_all(obj, keys):
    if isinstance(obj, dict):
        for k in keys:
            obj.pop(k, None)
        for v in obj.values():
            _drop_all(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            _drop_all(v, keys)


def test_bidirectional_regressor_learns_from_both_ends():
    """Regressor(bidirectional=True) with lengths: the target is the first step's value,
    which the reverse direction reads last; save/load keeps the model."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(64, 9, 2))
    lengths = rng.integers(3, 10, size=64)
    y = x[:, 0, :1]
    reg = clstm.Regressor(2, 8, bidirectional=True, dtype="float64", seed=0)
    before = reg.evaluate(x, y, lengths=lengths)["loss"]
    reg.fit(x, y, epochs=40, batch_size=16, lengths=lengths, verbose=0,
            optimizer=clstm.Adam(reg, lr=0.02))
    assert reg.evaluate(x, y, lengths=lengths)["loss"] < 0.01 * before
    assert reg.get_params()["bidirectional"] is True


def test_onnx_export_bias_free_and_refusals(tmp_path):
    """clstm.onnx exports a bias-free LSTM (no B: ONNX's zeros), a bidirectional one
    with lengths (tests/test_onnx.py has the rest), and refuses a projected LSTM, which
    ONNX's LSTM operator cannot express."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import clstm.onnx
    net = clstm.Sequential([clstm.LSTM(3, 4, bias=False, seed=0), clstm.LastStep(),
                            clstm.Dense(4, 2, seed=1)])
    path = os.path.join(tmp_path, "net.onnx")
    clstm.onnx.export(net, path)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    lengths = np.array([5, 3], np.int64)
    out = ort.InferenceSession(path).run(None, {"x": x, "lengths": lengths})[0]
    ref, _ = net.forward(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=lengths)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    bidir = clstm.Sequential([clstm.LSTM(3, 4, bias=False, bidirectional=True, seed=2),
                              clstm.LastStep(bidirectional=True), clstm.Dense(8, 2, seed=3)])
    clstm.onnx.export(bidir, path)
    out = ort.InferenceSession(path).run(None, {"x": x, "lengths": lengths})[0]
    ref, _ = bidir.forward(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=lengths)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="export: expected an LSTM without projection"):
        clstm.onnx.export(clstm.Sequential([clstm.LSTM(3, 4, proj_size=2)]), path)


# -- the hidden-unit split on the packed layout (no projection) ---------------------------

@pytest.mark.skipif(not kernels.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("isa", kernels.supported_isas())
@pytest.mark.parametrize("B, threads, H, lengths, bidirectional, peephole", [
    (1, 2, 64, [6], True, False),
    (2, 3, 56, [5, 2], False, True),        # more threads than rows, own lengths
    (3, 4, 64, [1, 6, 3], True, True),      # reverse rows starting from h0/c0
    (4, 2, 512, [6, 6, 2, 5], False, False),  # 2 rows per thread and W_hh >= 1 MiB
])
def test_hidden_unit_split_on_the_packed_layout(isa, B, threads, H, lengths, bidirectional,
                                                peephole):
    """With fewer rows than threads, the packed forward and backward of an LSTM without
    projection split the hidden units (a barrier per step): the reference's results, with
    and without an initial state."""
    T, I, L = 6, 5, 2
    D = 2 if bidirectional else 1
    net = clstm.LSTM(I, H, L, bidirectional=bidirectional, peephole=peephole,
                     dtype="float64", seed=H + B)
    rng = np.random.default_rng(H)
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, D * H))
    dstate = (rng.normal(size=(D * L, B, H)), rng.normal(size=(D * L, B, H)))
    lengths = np.array(lengths)
    for state in ((rng.normal(size=(D * L, B, H)), rng.normal(size=(D * L, B, H))), None):
        with kernel_knob(kernels._set_isa, isa), \
                kernel_knob(kernels._set_min_flops_per_thread, 0), \
                kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0), \
                kernel_knob(kernels._set_parallel_directions, False), \
                clstm.threads(threads):
            net.zero_grad()
            y, (h_n, c_n) = net.forward(x, state, lengths=lengths)
            assert kernels._last_forward_split_units()
            dx, (dh0, dc0) = net.backward(dy, dstate)
            assert kernels._threads_used_by_last_call() == min(threads, H // 16)
            grads = {k: g.copy() for k, g in net.grads.items()}
        yr, (hr, cr), cache = reference_lstm_forward(
            x, net.params, L, bidirectional=bidirectional, peephole=peephole,
            lengths=lengths, h0=None if state is None else state[0],
            c0=None if state is None else state[1])
        dxr, (dh0r, dc0r), gr = reference_lstm_backward(dy, cache, *dstate)
        for a, b in ((y, yr), (h_n, hr), (c_n, cr), (dx, dxr), (dh0, dh0r), (dc0, dc0r)):
            np.testing.assert_allclose(a, b, **TOL["float64"])
        for name, g in grads.items():
            np.testing.assert_allclose(g, gr[name], **TOL["float64"], err_msg=name)


@pytest.mark.skipif(not kernels.openmp_enabled(), reason="built without OpenMP")
def test_packed_unit_split_late_team_and_projection():
    """A late team finishes on one thread with one thread's result; a projected LSTM keeps
    the row split (its projection would need all units of h at every step)."""
    rng = np.random.default_rng(10)
    T, B, I, H = 40, 1, 8, 160
    net = clstm.LSTM(I, H, bidirectional=True, peephole=True, seed=10, dtype="float64")
    x = rng.normal(size=(T, B, I))
    with clstm.threads(1):
        want_y, _ = net.forward(x)
        want_dx, _ = net.backward(np.ones_like(want_y))
        want_g = net.flat_grads.copy()
    net.zero_grad()
    with clstm.threads(2), kernel_knob(kernels._set_max_late_share, -1.0), \
            kernel_knob(kernels._set_parallel_directions, False), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        y, _ = net.forward(x)
        assert kernels._team_left_at_last_call() == 17
        # A split that left starts the pause on one thread at once (DEVELOPERS.md, "A busy
        # machine"): the reverse direction already runs on one thread, with its rows.
        assert not kernels._last_forward_split_units()
        assert kernels._calls_on_one_thread() > 0
        kernels._reset_team_pause()              # the backward's team splits its units again
        dx, _ = net.backward(np.ones_like(y))
        assert kernels._team_left_at_last_call() == 17
        kernels._reset_team_pause()
        projected = clstm.LSTM(I, H, proj_size=32, seed=1)
        projected.forward(x.astype(np.float32))
        assert not kernels._last_forward_split_units()
    tol = dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(y, want_y, **tol)
    np.testing.assert_allclose(dx, want_dx, **tol)
    np.testing.assert_allclose(net.flat_grads, want_g, **tol)


# The LSTM's packed kernel entry points (forward_packed, backward_packed and their _bidir
# pairs share one checking function per pass): every refusal names the argument, for one
# direction and for either item of a pair.

def lstm_kernel_args(dtype=np.float32, T=3, B=2, I=2, H=4, P=0):
    bs = np.full(T, B, dtype=np.int32)
    N, Pw, G = T * B, P or H, 4 * H
    fwd = dict(w_ih=np.zeros((G, I), dtype), w_hh=np.zeros((G, Pw), dtype),
               w_hr=np.zeros((Pw, H), dtype) if P else None, bias=np.zeros(G, dtype),
               peephole=None, h0=None, c0=None, y=np.zeros((N, Pw), dtype), h_n=None,
               c_n=None, workspace=np.zeros((6 if P else 5) * N * H, dtype))
    bwd = dict(dy=np.zeros((N, Pw), dtype), dh_n=None, dc_n=None, dx=np.zeros((N, I), dtype),
               dh0=np.zeros((B, Pw), dtype), dc0=np.zeros((B, H), dtype),
               dw_ih=np.zeros((G, I), dtype), dw_hh=np.zeros((G, Pw), dtype),
               dw_hr=np.zeros((Pw, H), dtype) if P else None, dbias=np.zeros(G, dtype),
               dpeephole=None)
    return dict(T=T, B=B, I=I, H=H, P=P, batch_sizes=bs, x=np.zeros((N, I), dtype)), fwd, bwd


def call_lstm_kernel(which, sizes, per_direction):
    """kernels.<which> with per_direction's arrays, as pairs (copies) for the _bidir ones."""
    if which.endswith("_bidir"):
        per_direction = {k: (v, None if v is None else v.copy())
                         for k, v in per_direction.items()}
    else:
        sizes = {**sizes, "reverse": False}
    getattr(kernels, which)(**sizes, **per_direction)


LSTM_KERNELS = ["forward_packed", "forward_packed_bidir", "backward_packed",
                "backward_packed_bidir"]


@pytest.mark.parametrize("which", LSTM_KERNELS)
def test_lstm_kernels_run_on_good_buffers(which):
    sizes, fwd, bwd = lstm_kernel_args(P=2)
    arrays = fwd if which.startswith("forward") else {
        **{k: fwd[k] for k in ("w_ih", "w_hh", "w_hr", "peephole", "h0", "c0", "y",
                               "workspace")}, **bwd}
    sizes["x"][:] = 1.0
    arrays["w_ih"][:] = 0.5
    arrays["w_hr"][:] = 0.5
    arrays["y"][:] = np.nan
    call_lstm_kernel(which, sizes, arrays)
    if which.startswith("forward"):            # every output written, from the same input
        assert np.all(np.isfinite(arrays["y"])) and np.all(arrays["y"] != 0)


@pytest.mark.parametrize("which", LSTM_KERNELS)
@pytest.mark.parametrize("change, exc, message", [
    (dict(x=np.zeros((6, 2), np.float16)), TypeError, r"x: expected float32 or float64"),
    (dict(w_hh=np.zeros((16, 4), np.float64)), TypeError, r"w_hh: expected dtype float32"),
    (dict(w_hh=np.zeros((16, 3), np.float32)), ValueError, r"w_hh: expected 64 elements"),
    (dict(workspace=np.zeros(10, np.float32)), ValueError, r"workspace: expected 120"),
    (dict(w_hr=np.zeros((4, 4), np.float32)), ValueError,
     r"w_hr(, dw_hr)?: expected None without a projection \(P = 0\)"),
    (dict(batch_sizes=np.array([2, 3, 1], np.int32)), ValueError,
     r"batch_sizes: expected 3 non-increasing counts from 2"),
    (dict(H=0), ValueError, r"expected positive sizes that fit BLAS's int and 0 <= P < H"),
    (dict(P=4), ValueError, r"0 <= P < H, got T=3, B=2, I=2, H=4, P=4"),
    (dict(x=[[0.0] * 2] * 6), TypeError, r"x: expected a NumPy array, got list"),
])
def test_lstm_kernels_refuse_bad_buffers(which, change, exc, message):
    sizes, fwd, bwd = lstm_kernel_args()
    arrays = fwd if which.startswith("forward") else {
        **{k: fwd[k] for k in ("w_ih", "w_hh", "w_hr", "peephole", "h0", "c0", "y",
                               "workspace")}, **bwd}
    sizes.update({k: v for k, v in change.items() if k in sizes})
    arrays.update({k: v for k, v in change.items() if k not in sizes})
    with pytest.raises(exc, match=message):
        call_lstm_kernel(which, sizes, arrays)


@pytest.mark.parametrize("which", ["forward_packed_bidir", "backward_packed_bidir"])
def test_lstm_bidir_kernels_want_pairs(which):
    sizes, fwd, bwd = lstm_kernel_args()
    arrays = fwd if which.startswith("forward") else {
        **{k: fwd[k] for k in ("w_ih", "w_hh", "w_hr", "peephole", "h0", "c0", "y",
                               "workspace")}, **bwd}
    pairs = {k: (v, None if v is None else v.copy()) for k, v in arrays.items()}
    pairs["w_hh"] = arrays["w_hh"]
    with pytest.raises(TypeError, match=r"w_hh: expected a pair \(forward, reverse\), got "
                                        r"ndarray"):
        getattr(kernels, which)(**sizes, **pairs)
