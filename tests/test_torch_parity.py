"""clstm.LSTM against torch.nn.LSTM: from_torch / to_torch, outputs, final state
and every gradient (weights, biases, input, h0, c0)."""

import zlib

import numpy as np
import pytest

import clstm

# The kernels at every ISA level this CPU runs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isa_level")

torch = pytest.importorskip("torch")

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}

# (T, B, I, H, L): several small random-looking sizes, including T=1 and B=1
SIZES = [(1, 1, 1, 1, 1), (5, 3, 4, 6, 1), (3, 1, 7, 2, 2), (6, 4, 3, 5, 3), (2, 5, 2, 8, 2)]


def make_torch_lstm(I, H, L, dtype, batch_first=False, seed=0):
    torch.manual_seed(seed)
    return torch.nn.LSTM(I, H, L, batch_first=batch_first).to(TORCH_DTYPES[dtype])


def torch_run(module, x, state, R, Rstate):
    xt = torch.tensor(x, requires_grad=True)
    if state is None:
        y, (h_n, c_n) = module(xt)
        h0t = c0t = None
    else:
        h0t = torch.tensor(state[0], requires_grad=True)
        c0t = torch.tensor(state[1], requires_grad=True)
        y, (h_n, c_n) = module(xt, (h0t, c0t))
    loss = ((y * torch.tensor(R)).sum() + (h_n * torch.tensor(Rstate[0])).sum()
            + (c_n * torch.tensor(Rstate[1])).sum())
    module.zero_grad()
    loss.backward()
    out = dict(y=y, h_n=h_n, c_n=c_n, dx=xt.grad,
               dh0=None if h0t is None else h0t.grad, dc0=None if c0t is None else c0t.grad)
    out = {k: None if v is None else v.detach().numpy().copy() for k, v in out.items()}
    out["grads"] = {name: p.grad.detach().numpy().copy() for name, p in module.named_parameters()}
    return out


def clstm_run(net, x, state, R, Rstate):
    net.zero_grad()
    y, (h_n, c_n) = net.forward(x, state)
    dx, (dh0, dc0) = net.backward(R, Rstate)
    out = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0)
    out = {k: np.array(v) for k, v in out.items()}
    out["grads"] = {name: np.array(g) for name, g in net.grads.items()}
    return out


def random_data(rng, T, B, I, H, L, dtype, batch_first, unbatched=False):
    def normal(*shape):
        return rng.normal(size=shape).astype(dtype)
    if unbatched:
        x_shape, y_shape, s_shape = (T, I), (T, H), (L, H)
    elif batch_first:
        x_shape, y_shape, s_shape = (B, T, I), (B, T, H), (L, B, H)
    else:
        x_shape, y_shape, s_shape = (T, B, I), (T, B, H), (L, B, H)
    return (normal(*x_shape), (normal(*s_shape), normal(*s_shape)), normal(*y_shape),
            (normal(*s_shape), normal(*s_shape)))


def assert_same(got, want, tol, with_state):
    for key in ("y", "h_n", "c_n", "dx") + (("dh0", "dc0") if with_state else ()):
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key], want[key], **tol, err_msg=key)
    assert set(got["grads"]) == set(want["grads"])
    for name in want["grads"]:
        np.testing.assert_allclose(got["grads"][name], want["grads"][name], **tol,
                                   err_msg=f"grad of {name}")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T%dB%dI%dH%dL%d" % s)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_from_torch_matches_torch_outputs_state_and_every_gradient(size, dtype, with_state,
                                                                   batch_first):
    T, B, I, H, L = size
    seed = zlib.crc32(repr((size, dtype, with_state, batch_first)).encode())  # stable per case
    rng = np.random.default_rng(seed)
    module = make_torch_lstm(I, H, L, dtype, batch_first, seed=seed % 1000)
    net = clstm.LSTM.from_torch(module)
    assert net.flat_params.dtype == np.dtype(dtype)
    for name, p in module.named_parameters():
        np.testing.assert_array_equal(net.params[name], p.detach().numpy(), err_msg=name)

    x, state, R, Rstate = random_data(rng, T, B, I, H, L, dtype, batch_first)
    state = state if with_state else None
    want = torch_run(module, x, state, R, Rstate)
    got = clstm_run(net, x, state, R, Rstate)
    assert got["y"].dtype == np.dtype(dtype)
    assert_same(got, want, TOL[dtype], with_state)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unbatched_input_matches_torch(dtype):
    T, I, H, L = 4, 3, 5, 2
    rng = np.random.default_rng(1)
    module = make_torch_lstm(I, H, L, dtype)
    net = clstm.LSTM.from_torch(module)
    x, state, R, Rstate = random_data(rng, T, 1, I, H, L, dtype, False, unbatched=True)
    want = torch_run(module, x, state, R, Rstate)
    got = clstm_run(net, x, state, R, Rstate)
    assert_same(got, want, TOL[dtype], with_state=True)


def test_from_torch_copies_the_weights():
    """The clstm net owns its flat buffer: later changes to the torch module do not leak in."""
    module = make_torch_lstm(3, 4, 2, "float64")
    net = clstm.LSTM.from_torch(module)
    before = np.array(net.flat_params)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(net.flat_params, before)
    for p in net.params.values():
        assert np.shares_memory(p, net.flat_params)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_to_torch_round_trip_keeps_weights_and_outputs(dtype, batch_first, num_layers):
    T, B, I, H = 4, 3, 5, 4
    rng = np.random.default_rng(num_layers + 2 * batch_first)
    net = clstm.LSTM(I, H, num_layers, dtype=dtype, seed=5, batch_first=batch_first)
    module = net.to_torch()
    assert isinstance(module, torch.nn.LSTM)
    assert (module.input_size, module.hidden_size, module.num_layers) == (I, H, num_layers)
    assert module.batch_first == batch_first
    assert dict(module.named_parameters()).keys() == net.params.keys()
    for name, p in module.named_parameters():
        assert p.dtype == TORCH_DTYPES[dtype], name
        np.testing.assert_array_equal(p.detach().numpy(), net.params[name], err_msg=name)

    x, state, R, Rstate = random_data(rng, T, B, I, H, num_layers, dtype, batch_first)
    assert_same(clstm_run(net, x, state, R, Rstate), torch_run(module, x, state, R, Rstate),
                TOL[dtype], with_state=True)

    back = clstm.LSTM.from_torch(module)
    np.testing.assert_array_equal(back.flat_params, net.flat_params)
    assert back.params.keys() == net.params.keys()
