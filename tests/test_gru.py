"""clstm.GRU: torch.nn.GRU (packed sequences, bidirectional, bias-free, batch_first), the
NumPy reference (each sequence alone), finite differences, the thread splits and the
driver's paths at every ISA level, step, bad input, save/load, Keras and PyTorch
weights."""
import threading

import numpy as np
import pytest

import clstm
from clstm import kernels
from knobs import kernel_knob
from reference import (numerical_gradient, reference_gru_backward, reference_gru_forward,
                       sigmoid)
from sequences import TOL, masked_at_padding, random_lengths

# The kernel correctness tests run at every ISA level the CPU runs (conftest's isa_level:
# the gate loops, the packed GEMM kernel and the packed-vs-BLAS rule of each level).
at_every_isa_level = pytest.mark.usefixtures("isa_level")


def configurations(n, seed):
    """n random configurations: sizes, layers 1-3, directions, bias, lengths, state."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield dict(T=int(rng.integers(1, 8)), B=int(rng.integers(1, 7)),
                   I=int(rng.integers(1, 6)), H=int(rng.integers(1, 19)),
                   L=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                   bias=bool(rng.integers(2)),
                   lengths=str(rng.choice(["random", "random", "full", "ones", "none"])),
                   state=bool(rng.integers(2)), seed=int(rng.integers(1 << 30)))


def data(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    T, B, I, H, L = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["L"]
    D = 2 if cfg["bidirectional"] else 1
    lengths = None if cfg["lengths"] == "none" else random_lengths(rng, T, B, cfg["lengths"])
    x = rng.normal(size=(T, B, I)).astype(dtype)
    h0 = rng.normal(size=(D * L, B, H)).astype(dtype) if cfg["state"] else None
    dy = rng.normal(size=(T, B, D * H)).astype(dtype)
    dh_n = rng.normal(size=(D * L, B, H)).astype(dtype)
    return x, h0, lengths, dy, dh_n


def make(cfg, dtype="float64"):
    return clstm.GRU(cfg["I"], cfg["H"], cfg["L"], bidirectional=cfg["bidirectional"],
                     bias=cfg["bias"], dtype=dtype, seed=cfg["seed"])


def run(net, x, h0, lengths, dy, dh_n):
    net.zero_grad()
    y, h_n = net.forward(x, h0, lengths=lengths)
    dx, dh0 = net.backward(dy, dh_n)
    return (np.array(y), np.array(h_n), dx, dh0, {k: g.copy() for k, g in net.grads.items()})


def assert_matches_reference(net, cfg, x, h0, lengths, dy, dh_n, ours, tol):
    y, h_n, dx, dh0, grads = ours
    yr, hr, cache = reference_gru_forward(x, net.params, cfg["L"],
                                          bidirectional=cfg["bidirectional"],
                                          lengths=lengths, h0=h0)
    dxr, dh0r, gr = reference_gru_backward(dy, cache, dh_n)
    for name, a, b in (("y", y, yr), ("h_n", h_n, hr), ("dx", dx, dxr), ("dh0", dh0, dh0r)):
        np.testing.assert_allclose(a, b, **tol, err_msg=name)
    for name, g in grads.items():
        np.testing.assert_allclose(g, gr[name], **tol, err_msg=name)


# (packed recurrent GEMM, rows per thread from which the input projection runs per step,
# the two directions at once on a thread each)
KNOBS = [(True, 4, True), (True, 0, True), (True, 1 << 30, False), (False, 4, True)]


@at_every_isa_level
@pytest.mark.parametrize("knobs", KNOBS, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cfg", list(configurations(12, 1)), ids=str)
def test_matches_reference_each_sequence_alone(cfg, threads, knobs):
    """Every output and gradient equals the NumPy GRU that runs each sequence alone; dy
    at padded positions (random here) sends nothing back. Every path of the driver: 1 or
    2 threads splitting the rows, packed or BLAS products, per-step or upfront input
    projection, directions at once or one after the other."""
    x, h0, lengths, dy, dh_n = data(cfg, "float64")
    net = make(cfg)
    with kernel_knob(kernels._set_min_flops_per_thread, 0), \
            kernel_knob(kernels._set_packed_gemm, knobs[0]), \
            kernel_knob(kernels._set_min_rows_per_step_projection, knobs[1]), \
            kernel_knob(kernels._set_parallel_directions, knobs[2]), \
            clstm.threads(threads):
        ours = run(net, x, h0, lengths, dy, dh_n)
    assert_matches_reference(net, cfg, x, h0, lengths, dy, dh_n, ours, TOL["float64"])


@at_every_isa_level
@pytest.mark.parametrize("cfg", list(configurations(6, 7)), ids=str)
def test_float32_matches_the_float64_reference(cfg):
    x, h0, lengths, dy, dh_n = data(cfg, "float32")
    net = make(cfg, "float32")
    ours = run(net, x, h0, lengths, dy, dh_n)
    params64 = {k: v.astype(np.float64) for k, v in net.params.items()}
    ref = clstm.GRU(cfg["I"], cfg["H"], cfg["L"], bidirectional=cfg["bidirectional"],
                    bias=cfg["bias"], dtype="float64")
    ref.load_state_dict(params64)
    assert_matches_reference(ref, cfg, *(None if a is None else a.astype(np.float64)
                                         for a in (x, h0)), lengths,
                             dy.astype(np.float64), dh_n.astype(np.float64), ours,
                             dict(rtol=2e-4, atol=2e-5))


@at_every_isa_level
@pytest.mark.parametrize("cfg", list(configurations(6, 11)), ids=str)
def test_two_threads_give_what_one_gives(cfg):
    x, h0, lengths, dy, dh_n = data(cfg, "float32")
    net = make(cfg, "float32")
    results = []
    for threads in (1, 2):
        with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(threads):
            results.append(run(net, x, h0, lengths, dy, dh_n))
    for a, b in zip(results[0][:4], results[1][:4]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in results[0][4]:
        np.testing.assert_allclose(results[0][4][name], results[1][4][name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)


@at_every_isa_level
def test_each_sequence_alone_equals_its_row_in_the_batch():
    rng = np.random.default_rng(3)
    T, B, I, H = 6, 5, 3, 7
    net = clstm.GRU(I, H, 2, bidirectional=True, dtype="float64", seed=4)
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(4, B, H))
    lengths = np.array([3, 6, 1, 6, 4])
    y, h_n = net.forward(x, h0, lengths=lengths)
    for b in range(B):
        n = lengths[b]
        yb, hb = net.forward(x[:n, b:b + 1], h0[:, b:b + 1])
        np.testing.assert_allclose(y[:n, b], yb[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n[:, b], hb[:, 0], rtol=1e-12, atol=1e-14)
        assert not y[n:, b].any()                 # padded outputs are zero


def test_padded_steps_change_nothing():
    rng = np.random.default_rng(4)
    net = clstm.GRU(2, 4, bidirectional=True, dtype="float64", seed=1)
    x = rng.normal(size=(5, 3, 2))
    lengths = np.array([2, 5, 3])
    x2 = x.copy()
    x2[3:, 0] = 1e6                                 # garbage past each length
    x2[3:, 2] = np.nan
    a, ha = net.forward(x, lengths=lengths)
    b, hb = net.forward(x2, lengths=lengths)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ha, hb)


@at_every_isa_level
@pytest.mark.parametrize("bidirectional, bias", [(True, True), (False, False), (True, False)])
def test_finite_differences_float64(bidirectional, bias):
    """The analytic gradient of a 2-layer GRU with lengths equals central differences,
    for every parameter tensor, x and h0."""
    rng = np.random.default_rng(5)
    T, B, I, H, L = 4, 3, 2, 3, 2
    D = 2 if bidirectional else 1
    net = clstm.GRU(I, H, L, bidirectional=bidirectional, bias=bias, dtype="float64",
                    seed=2)
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(D * L, B, H))
    lengths = np.array([2, 4, 1])
    R, Rh = rng.normal(size=(T, B, D * H)), rng.normal(size=(D * L, B, H))

    def loss():
        y, h_n = net.forward(x, h0, lengths=lengths)
        return (y * R).sum() + (h_n * Rh).sum()

    loss()
    net.zero_grad()
    dx, dh0 = net.backward(R, Rh)
    grads = {k: g.copy() for k, g in net.grads.items()}
    for name, p in net.params.items():
        idx = rng.choice(p.size, size=min(8, p.size), replace=False)
        num = numerical_gradient(loss, p, indices=idx)
        np.testing.assert_allclose(grads[name].reshape(-1)[idx], num, rtol=1e-6,
                                   atol=1e-8, err_msg=name)
    for arr, grad in ((x, dx), (h0, dh0)):
        np.testing.assert_allclose(grad, numerical_gradient(loss, arr), rtol=1e-6, atol=1e-8)


@at_every_isa_level
@at_every_isa_level
@pytest.mark.parametrize("B, bias, dtype", [(2, True, "float64"), (1, True, "float64"),
                                            (1, False, "float64"), (3, False, "float32"),
                                            (1, True, "float32")])
def test_step_equals_forward(B, bias, dtype):
    """step (kernels.gru_step: GEMV at B = 1, GEMM above) equals forward step by step,
    from a given state and from the zero state."""
    rng = np.random.default_rng(6)
    net = clstm.GRU(3, 5, 3, bias=bias, dtype=dtype, seed=3)
    x = rng.normal(size=(4, B, 3)).astype(dtype)
    h0 = rng.normal(size=(3, B, 5)).astype(dtype)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    for start in (h0, None):
        y, h_n = net.forward(x, start)
        h = start
        for t in range(4):
            out, h = net.step(x[t], h)
            np.testing.assert_allclose(out, y[t], **tol)
        np.testing.assert_allclose(h, h_n, **tol)
    if B != 2 or dtype != "float64":
        return
    out, h1 = net.step(x[0, 0])                       # unbatched, zero state
    np.testing.assert_allclose(out, net.forward(x[:1, :1])[0][0, 0], rtol=1e-12)
    assert h1.shape == (3, 5)


def test_unbatched_and_batch_first_match_time_major():
    rng = np.random.default_rng(7)
    net = clstm.GRU(3, 4, 2, bidirectional=True, dtype="float64", seed=5)
    x = rng.normal(size=(5, 2, 3))
    y, h_n = net.forward(x)
    dy = rng.normal(size=y.shape)
    dx, dh0 = net.backward(dy)
    y1, h1 = net.forward(x[:, 1])
    np.testing.assert_allclose(y1, y[:, 1], rtol=1e-12)
    assert h1.shape == (4, 4)
    dx1, dh01 = net.backward(dy[:, 1])
    np.testing.assert_allclose(dx1, dx[:, 1], rtol=1e-12)
    assert dh01.shape == (4, 4)
    net.batch_first = True
    yb, hb = net.forward(x.transpose(1, 0, 2))
    np.testing.assert_allclose(yb, y.transpose(1, 0, 2), rtol=1e-12)
    dxb, _ = net.backward(dy.transpose(1, 0, 2))
    np.testing.assert_allclose(dxb, dx.transpose(1, 0, 2), rtol=1e-12)


def test_input_grad_false_and_gradients_accumulate():
    rng = np.random.default_rng(8)
    net = clstm.GRU(2, 3, dtype="float64", seed=0)
    x, dy = rng.normal(size=(4, 2, 2)), rng.normal(size=(4, 2, 3))
    net.forward(x)
    dx, dh0 = net.backward(dy, input_grad=False)
    assert dx is None and dh0.shape == (1, 2, 3)
    once = {k: g.copy() for k, g in net.grads.items()}
    net.forward(x)
    net.backward(dy)
    for k, g in net.grads.items():
        np.testing.assert_allclose(g, 2 * once[k], rtol=1e-12)


def test_parameters_are_pytorchs_and_initialised_as_pytorch():
    net = clstm.GRU(3, 16, 2, bidirectional=True, seed=0)
    names = [f"{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
             for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert list(net.params) == names
    assert net.params["weight_ih_l0"].shape == (48, 3)
    assert net.params["weight_ih_l1"].shape == (48, 32)
    assert net.params["weight_hh_l1_reverse"].shape == (48, 16)
    assert net.params["bias_hh_l0"].shape == (48,)
    for v in net.params.values():
        assert np.shares_memory(v, net.flat_params)
    assert np.abs(net.flat_params).max() <= 0.25 and np.abs(net.flat_params).max() > 0.2
    assert list(clstm.GRU(3, 4, bias=False).params) == ["weight_ih_l0", "weight_hh_l0"]


def test_threads_sharing_one_gru_each_differentiate_their_own_forward():
    net = clstm.GRU(3, 8, dtype="float64", seed=1)
    rng = np.random.default_rng(9)
    xs = [rng.normal(size=(5, 2, 3)) for _ in range(4)]
    expected = []
    for x in xs:
        net.forward(x)
        expected.append(net.backward(np.ones((5, 2, 8)))[0])
    results, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(5):
                net.forward(xs[i])
                results[i] = net.backward(np.ones((5, 2, 8)))[0]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(results, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12)


# -- torch.nn.GRU on packed sequences ----------------------------------------------------

def torch_packed_run(torch, module, x, h0, lengths, dy, dh_n, batch_first):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    xt = torch.tensor(x, requires_grad=True)
    T = x.shape[1] if batch_first else x.shape[0]
    h0t = None if h0 is None else torch.tensor(h0, requires_grad=True)
    if lengths is None:
        y, h_n = module(xt, h0t)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        yp, h_n = module(packed, h0t)
        y, _ = pad_packed_sequence(yp, batch_first=batch_first, total_length=T)
    loss = (y * torch.tensor(dy)).sum() + (h_n * torch.tensor(dh_n)).sum()
    module.zero_grad()
    loss.backward()
    out = [y, h_n, xt.grad, None if h0t is None else h0t.grad]
    out = [None if v is None else v.detach().numpy().copy() for v in out]
    out.append({n: p.grad.detach().numpy().copy() for n, p in module.named_parameters()})
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cfg", list(configurations(10, 2)), ids=str)
def test_matches_torch_packed(cfg, batch_first, dtype):
    """from_torch of a random torch.nn.GRU (directions, bias, layers), then outputs, h_n,
    dx, dh0 and every parameter gradient against PyTorch on pack_padded_sequence(...,
    enforce_sorted=False) / pad_packed_sequence."""
    torch = pytest.importorskip("torch")
    I, H, L = cfg["I"], cfg["H"], cfg["L"]
    torch.manual_seed(cfg["seed"] % 1000)
    module = torch.nn.GRU(I, H, L, bias=cfg["bias"], bidirectional=cfg["bidirectional"],
                          batch_first=batch_first,
                          dtype=torch.float32 if dtype == "float32" else torch.float64)
    net = clstm.GRU.from_torch(module)
    assert (net.bidirectional, net.bias, net.batch_first) == (
        cfg["bidirectional"], cfg["bias"], batch_first)
    assert list(net.params) == [n for n, _ in module.named_parameters()]
    x, h0, lengths, dy, dh_n = data(cfg, dtype)
    if batch_first:
        x, dy = x.transpose(1, 0, 2).copy(), dy.transpose(1, 0, 2).copy()
    dy_masked = masked_at_padding(dy, lengths, batch_first)
    theirs = torch_packed_run(torch, module, x, h0, lengths, dy_masked, dh_n, batch_first)
    ours = run(net, x, h0, lengths, dy, dh_n)   # random dy at padded positions
    tol = TOL[dtype]
    for name, a, b in zip(["y", "h_n", "dx", "dh0"], ours[:4], theirs[:4]):
        if b is not None:
            np.testing.assert_allclose(a, b, **tol, err_msg=name)
    for name, g in theirs[4].items():
        np.testing.assert_allclose(ours[4][name], g, **tol, err_msg=name)
    back = net.to_torch()
    assert (back.bidirectional, back.bias, back.batch_first) == (
        module.bidirectional, module.bias, module.batch_first)
    for name, p in module.named_parameters():
        np.testing.assert_array_equal(getattr(back, name).detach().numpy(),
                                      p.detach().numpy())


def test_torch_state_dict_loads_and_goes_back():
    torch = pytest.importorskip("torch")
    module = torch.nn.GRU(3, 5, 2, bidirectional=True, bias=False)
    net = clstm.GRU(3, 5, 2, bidirectional=True, bias=False)
    clstm.from_torch_state_dict(net, module.state_dict())
    for name, t in module.state_dict().items():
        np.testing.assert_array_equal(net.params[name], t.numpy())
    back = clstm.to_torch_state_dict(net, "rnn")
    assert sorted(back) == sorted(f"rnn.{n}" for n in module.state_dict())
    with pytest.raises(ValueError, match="weight_ih_l0"):
        clstm.from_torch_state_dict(clstm.GRU(3, 5), torch.nn.LSTM(3, 5).state_dict())


def test_from_torch_refuses_other_modules():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"from_torch: expected a torch.nn.GRU, got LSTM"):
        clstm.GRU.from_torch(torch.nn.LSTM(2, 3))


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, exc, message", [
    ([3, 2], ValueError, r"lengths: expected shape \(3,\) \(one per sequence\), got shape \(2,\)"),
    ([3, 0, 1], ValueError, r"lengths: expected integers in \[1, 4\], got min 0, max 3"),
    ([3, 5, 1], ValueError, r"lengths: expected integers in \[1, 4\], got min 1, max 5"),
    ([3.0, 2.0, 1.0], TypeError, r"lengths: expected integers, got list of dtype float64"),
    (np.array([True, True, True]), TypeError, r"lengths: expected integers, got dtype bool"),
])
def test_bad_lengths(lengths, exc, message):
    net = clstm.GRU(2, 3, bidirectional=True)
    with pytest.raises(exc, match=message):
        net.forward(np.zeros((4, 3, 2), np.float32), lengths=lengths)


def test_bad_input_and_state():
    net = clstm.GRU(2, 3, 2, bidirectional=True)
    x = np.zeros((4, 5, 2), np.float32)
    with pytest.raises(ValueError, match=r"state: expected shape \(4, 5, 3\), got "
                                         r"\(2, 5, 3\)"):
        net.forward(x, np.zeros((2, 5, 3), np.float32))
    with pytest.raises(TypeError, match=r"state: expected one array h of shape \(4, 5, 3\) "
                                        r"\(a GRU has no cell state\), got a tuple"):
        net.forward(x, (np.zeros((4, 5, 3)), np.zeros((4, 5, 3))))
    with pytest.raises(TypeError, match=r"state: expected"):
        net.forward(x, "zeros")
    with pytest.raises(ValueError, match=r"x: expected 2 features in the last axis, got "
                                         r"shape \(4, 5, 3\)"):
        net.forward(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"x: expected a 3-D array"):
        net.forward(np.zeros((4,), np.float32))
    with pytest.raises(TypeError, match=r"x: expected"):
        net.forward(np.zeros((4, 5, 2), np.complex64))
    with pytest.raises(TypeError, match=r"x: expected"):
        net.forward("abc")
    with pytest.raises(ValueError, match=r"backward: expected a forward pass"):
        clstm.GRU(2, 3).backward(np.zeros((4, 5, 3)))
    net.forward(x)
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 5, 6\)"):
        net.backward(np.zeros((4, 5, 3)))
    net.forward(x)
    with pytest.raises(ValueError, match=r"dh_n: expected shape \(4, 5, 3\)"):
        net.backward(np.zeros((4, 5, 6)), np.zeros((1, 5, 3)))
    with pytest.raises(ValueError, match=r"step: expected a unidirectional GRU"):
        net.step(np.zeros((5, 2)))
    uni = clstm.GRU(2, 3, 2)
    with pytest.raises(ValueError, match=r"x: expected one time step of shape \(B, 2\)"):
        uni.step(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"state: expected shape \(2, 5, 3\)"):
        uni.step(np.zeros((5, 2)), np.zeros((1, 5, 3)))


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(hidden_size=0), ValueError, r"hidden_size: expected an int >= 1, got 0"),
    (dict(hidden_size=2.0), TypeError, r"hidden_size: expected an int"),
    (dict(num_layers=0), ValueError, r"num_layers: expected an int >= 1"),
    (dict(bias=1), TypeError, r"bias: expected True or False, got 1"),
    (dict(bidirectional="yes"), TypeError, r"bidirectional: expected True or False"),
    (dict(dropout=1.0), ValueError, r"dropout: expected a probability in \[0, 1\)"),
    (dict(dtype="float16"), ValueError, r"dtype"),
])
def test_bad_constructor_arguments(kwargs, exc, message):
    args = {"input_size": 2, "hidden_size": 3, **kwargs}
    with pytest.raises(exc, match=message):
        clstm.GRU(**args)


# -- save/load, Keras ------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    net = clstm.GRU(3, 4, 2, bidirectional=True, bias=False, dtype="float64", dropout=0.25,
                    batch_first=True, seed=3)
    path = tmp_path / "gru.npz"
    clstm.save(net, path)
    back = clstm.load(path)
    assert type(back) is clstm.GRU and back.get_config() == net.get_config()
    for name, v in net.params.items():
        np.testing.assert_array_equal(back.params[name], v)
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    net.eval(), back.eval()
    np.testing.assert_array_equal(back.forward(x)[0], net.forward(x)[0])
    assert clstm.GRU.parameter_count(net.get_config()) == len(net.params)


def keras_gru(x, kernel, recurrent, bias):
    """Keras' GRU(reset_after=True), batch-first, written from its documented math:
    gates z, r, h, the input part x·kernel + b_in and the recurrent part h·U + b_rec."""
    H = recurrent.shape[0]
    h = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        xp = x[:, t] @ kernel + bias[0]
        hp = h @ recurrent + bias[1]
        z = sigmoid(xp[:, :H] + hp[:, :H])
        r = sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])
        hh = np.tanh(xp[:, 2 * H:] + r * hp[:, 2 * H:])
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.stack(out, axis=1)


def test_keras_weights_give_the_keras_outputs_and_go_back():
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((3, 15)) * 0.5
    recurrent = rng.standard_normal((5, 15)) * 0.5
    bias = rng.standard_normal((2, 15)) * 0.5
    x = rng.standard_normal((4, 7, 3))
    net = clstm.gru_from_keras(kernel, recurrent, bias)
    assert net.dtype == np.float64 and (net.input_size, net.hidden_size) == (3, 5)
    net.batch_first = True
    y, _ = net.forward(x)
    np.testing.assert_allclose(y, keras_gru(x, kernel, recurrent, bias), rtol=1e-12,
                               atol=1e-14)
    for a, b in zip(clstm.gru_to_keras(net), (kernel, recurrent, bias)):
        np.testing.assert_array_equal(a, b)
    free = clstm.gru_from_keras(kernel, recurrent)
    assert not free.bias and len(clstm.gru_to_keras(free)) == 2


def test_keras_refuses_reset_after_false_and_bad_shapes():
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 6\) \(a Keras GRU with "
                                         r"reset_after=True\), got \(6,\).*reset_after=False"):
        clstm.gru_from_keras(np.ones((3, 6)), np.ones((2, 6)), np.ones(6))
    with pytest.raises(ValueError, match=r"kernel: expected shape \(input_size, 3 \* "
                                         r"units\), got \(2, 7\)"):
        clstm.gru_from_keras(np.ones((2, 7)), np.ones((2, 7)))
    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \(2, 6\)"):
        clstm.gru_from_keras(np.ones((3, 6)), np.ones((3, 6)))
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 6\), got \(2, 5\)"):
        clstm.gru_from_keras(np.ones((3, 6)), np.ones((2, 6)), np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"gru_to_keras: expected layer in \[0, 1\)"):
        clstm.gru_to_keras(clstm.GRU(2, 2), layer=1)


# -- the kernels' own entry points -------------------------------------------------------

def kernel_args(dtype=np.float32, T=3, B=2, I=2, H=4):
    bs = np.full(T, B, dtype=np.int32)
    N = T * B
    return dict(T=T, B=B, I=I, H=H, batch_sizes=bs, reverse=False,
                x=np.zeros((N, I), dtype), w_ih=np.zeros((3 * H, I), dtype),
                w_hh=np.zeros((3 * H, H), dtype), b_ih=np.zeros(3 * H, dtype),
                b_hh=np.zeros(3 * H, dtype), h0=None, y=np.empty((N, H), dtype),
                h_n=np.empty((B, H), dtype), workspace=np.empty(6 * N * H, dtype))


@pytest.mark.parametrize("change, exc, message", [
    (dict(x=np.zeros((6, 2), np.float16)), TypeError, r"x: expected float32 or float64"),
    (dict(w_hh=np.zeros((12, 4), np.float64)), TypeError, r"w_hh: expected dtype float32"),
    (dict(w_hh=np.zeros((12, 3), np.float32)), ValueError, r"w_hh: expected 48 elements"),
    (dict(workspace=np.empty(5 * 6 * 4, np.float32)), ValueError,
     r"workspace: expected 144 elements"),
    (dict(b_hh=None), ValueError, r"b_ih, b_hh: expected two arrays or two None"),
    (dict(batch_sizes=np.array([2, 3, 1], np.int32)), ValueError,
     r"batch_sizes: expected 3 non-increasing counts from 2"),
    (dict(H=0), ValueError, r"expected positive sizes"),
    (dict(x=[[0.0] * 2] * 6), TypeError, r"x: expected a NumPy array, got list"),
])
def test_kernel_refuses_bad_buffers(change, exc, message):
    args = {**kernel_args(), **change}
    with pytest.raises(exc, match=message):
        kernels.gru_forward_packed(**args)


def test_kernel_bidir_wants_pairs():
    a = kernel_args()
    with pytest.raises(TypeError, match=r"w_ih: expected a pair \(forward, reverse\)"):
        kernels.gru_forward_packed_bidir(a["T"], a["B"], a["I"], a["H"], a["batch_sizes"],
                                         a["x"], a["w_ih"], *[(a[k], a[k]) for k in (
                                             "w_hh", "b_ih", "b_hh")], (None, None),
                                         (a["y"], a["y"].copy()), (None, None),
                                         (a["workspace"], a["workspace"].copy()))


@at_every_isa_level
def test_non_finite_recurrent_weights_give_nan_from_a_zero_state_as_torch():
    net = clstm.GRU(2, 3, dtype="float64")
    net.params["weight_hh_l0"][0, 0] = np.nan
    y, h_n = net.forward(np.ones((2, 1, 2)))
    assert np.isnan(y[:, 0, 0]).all()          # 0 · NaN = NaN from step 0 on


# -- the hidden-unit split (batches smaller than the thread team) -----------------------

@pytest.mark.skipif(not kernels.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("B, threads, H, lengths, bidirectional", [
    (1, 2, 64, None, False),
    (1, 2, 40, None, True),          # units 0:16, 16:40; a bidirectional stack
    (2, 3, 56, [5, 2], False),       # more threads than rows, rows of their own lengths
    (3, 4, 64, [1, 6, 3], True),     # reverse rows starting from h0 at their last step
    (4, 2, 512, [6, 6, 2, 5], False),  # 2 rows per thread and W_hh >= 1 MiB: units
])
@at_every_isa_level
def test_hidden_unit_split_equals_the_reference(B, threads, H, lengths, bidirectional):
    """With fewer rows than threads, forward and backward split the hidden units over the
    team (a barrier per step): the results are the reference's, with and without h0."""
    T, I, L = 6, 5, 2
    D = 2 if bidirectional else 1
    net = clstm.GRU(I, H, L, bidirectional=bidirectional, dtype="float64", seed=B + H)
    rng = np.random.default_rng(H)
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, D * H))
    dh_n = rng.normal(size=(D * L, B, H))
    lengths = None if lengths is None else np.array(lengths)
    cfg = dict(L=L, bidirectional=bidirectional)
    for h0 in (rng.normal(size=(D * L, B, H)), None):
        with kernel_knob(kernels._set_min_flops_per_thread, 0), \
                kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0), \
                kernel_knob(kernels._set_parallel_directions, False), \
                clstm.threads(threads):
            net.zero_grad()
            y, h_n = net.forward(x, h0, lengths=lengths)
            assert kernels._last_forward_split_units()
            dx, dh0 = net.backward(dy, dh_n)
            # (more threads than the rows could use: the backward split the units too)
            assert kernels._threads_used_by_last_call() == min(threads, H // 16)
            ours = (np.array(y), np.array(h_n), dx, dh0,
                    {k: g.copy() for k, g in net.grads.items()})
        assert_matches_reference(net, cfg, x, h0, lengths, dy, dh_n, ours,
                                 dict(rtol=1e-10, atol=1e-12))


@at_every_isa_level
@pytest.mark.skipif(not kernels.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("reverse_lengths", [False, True])
def test_a_late_team_finishes_on_one_thread_with_the_same_result(reverse_lengths):
    rng = np.random.default_rng(10)
    T, B, I, H = 40, 1, 8, 160
    net = clstm.GRU(I, H, bidirectional=reverse_lengths, seed=10, dtype="float64")
    x = rng.normal(size=(T, B, I))
    with clstm.threads(1):
        want_y, _ = net.forward(x)
        want_dx, want_dh0 = net.backward(np.ones_like(want_y))
        want_g = net.flat_grads.copy()
    net.zero_grad()
    # A share of -1 counts every step as late: the team leaves after its 16 timed steps.
    with clstm.threads(2), kernel_knob(kernels._set_max_late_share, -1.0), \
            kernel_knob(kernels._set_parallel_directions, False), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        y, _ = net.forward(x)
        assert kernels._team_left_at_last_call() == 17
        # A split that left starts the pause on one thread at once (DEVELOPERS.md, "A busy
        # machine"): a second direction already runs on one thread, with its rows.
        assert kernels._last_forward_split_units() != reverse_lengths
        assert kernels._calls_on_one_thread() > 0
        kernels._reset_team_pause()              # the backward's team splits its units again
        dx, dh0 = net.backward(np.ones_like(y))
        assert kernels._team_left_at_last_call() == 17
    tol = dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(y, want_y, **tol)
    np.testing.assert_allclose(dx, want_dx, **tol)
    np.testing.assert_allclose(dh0, want_dh0, **tol)
    np.testing.assert_allclose(net.flat_grads, want_g, **tol)


# -- Ctrl-C, sizes, untrusted configs ------------------------------------------------------

@pytest.mark.parametrize("B, H, threads", [(8, 64, 1), (8, 64, 2), (1, 256, 2)],
                         ids=["rows-1thread", "rows-2threads", "units-2threads"])
def test_ctrl_c_stops_a_long_forward_and_leaves_the_gru_usable(B, H, threads):
    import os
    import signal
    T, I = 200_000 // B, 16
    rng = np.random.default_rng(8)
    net = clstm.GRU(I, H, seed=8)
    x = rng.normal(size=(T * B, I)).astype(np.float32)
    y = np.full((T * B, H), np.nan, np.float32)
    workspace = np.empty(6 * T * B * H, np.float32)
    w = net.params
    small = x[:5 * B].reshape(5, B, I)
    want_small = net.forward(small)[0].copy()
    # A call is short once its workspace is paged in, and a SIGINT after the last one
    # would escape pytest.raises: the signal comes soon and the kernel runs until it meets
    # one (as the LSTM's test in test_serving_safety.py).
    timer = threading.Timer(0.02, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
                for _ in range(500):
                    y.fill(np.nan)
                    kernels.gru_forward_packed(T, B, I, H, np.full(T, B, np.int32), False, x,
                                               w["weight_ih_l0"], w["weight_hh_l0"],
                                               w["bias_ih_l0"], w["bias_hh_l0"], None, y,
                                               None, workspace, threads)
    finally:
        timer.join()
    assert np.isnan(y[-1]).all()            # it stopped before the end
    np.testing.assert_allclose(net.forward(small)[0], want_small, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, match", [
    ((1, 2**30), r"hidden_size: expected at most 715827882 .*got 1073741824"),
    ((2**31, 1), r"input_size: expected at most 2147483647 .*got 2147483648"),
    ((1, 2**20), r"GRU: number of parameters: expected at most 68719476736"),
    ((1, 1, 10**12), r"GRU: number of parameters"),   # refused before a list of names
])
def test_sizes_beyond_the_kernels_are_refused_before_allocating(args, match):
    with pytest.raises(ValueError, match=match):
        clstm.GRU(*args)


@pytest.mark.parametrize("field, value", [("bias", "yes"), ("hidden_size", 0),
                                          ("dropout", 1.5), ("bidirectional", None)])
def test_a_saved_gru_with_a_bad_config_is_refused(tmp_path, field, value):
    import json
    from clstm.io import CONFIG_KEY
    path = tmp_path / "gru.npz"
    clstm.save(clstm.GRU(2, 3), path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays[CONFIG_KEY].tobytes())
    assert header["class"] == "GRU"
    header["config"][field] = value
    arrays[CONFIG_KEY] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=field):
        clstm.load(path)


@at_every_isa_level
def test_dropout_between_layers_in_training_only_and_its_gradient():
    rng = np.random.default_rng(12)
    T, B, I, H = 4, 3, 2, 3
    net = clstm.GRU(I, H, 2, bidirectional=True, dropout=0.5, dtype="float64", seed=1)
    plain = clstm.GRU(I, H, 2, bidirectional=True, dtype="float64")
    plain.load_state_dict(net.state_dict())
    x, R = rng.normal(size=(T, B, I)), rng.normal(size=(T, B, 2 * H))
    lengths = np.array([4, 2, 3])
    net.eval()
    np.testing.assert_array_equal(net.forward(x, lengths=lengths)[0],
                                  plain.forward(x, lengths=lengths)[0])
    net.train()
    assert not np.allclose(net.forward(x, lengths=lengths)[0],
                           plain.forward(x, lengths=lengths)[0])

    def loss():
        net._rng = np.random.default_rng(3)          # the same masks at every forward
        return (net.forward(x, lengths=lengths)[0] * R).sum()

    loss()
    net.zero_grad()
    dx, _ = net.backward(R)
    for name in ("weight_ih_l0", "weight_hh_l1_reverse", "bias_hh_l0"):
        p = net.params[name]
        idx = rng.choice(p.size, size=5, replace=False)
        np.testing.assert_allclose(net.grads[name].reshape(-1)[idx],
                                   numerical_gradient(loss, p, indices=idx), rtol=1e-6,
                                   atol=1e-8, err_msg=name)
    np.testing.assert_allclose(dx, numerical_gradient(loss, x), rtol=1e-6, atol=1e-8)
