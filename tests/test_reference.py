"""Checks of the NumPy oracle itself (tests/reference.py).

The oracle is trusted by the kernel tests, so it is checked two independent
ways: its gradients against finite differences of its own forward, and its
forward/backward (no peepholes) against torch.nn.LSTM.  The peephole forward
is checked against a scalar, line-by-line transcription of the equations.
"""

import math

import numpy as np
import pytest

from reference import (  # tests/ is on sys.path through pyproject's pythonpath
    layers_from_params,
    numerical_gradient,
    params_from_layers,
    reference_backward,
    reference_forward,
)


def random_layers(rng, input_size, hidden_size, num_layers, peephole, dtype=np.float64, scale=0.6):
    layers = []
    for k in range(num_layers):
        in_k = input_size if k == 0 else hidden_size
        p = {
            "weight_ih": rng.uniform(-scale, scale, (4 * hidden_size, in_k)),
            "weight_hh": rng.uniform(-scale, scale, (4 * hidden_size, hidden_size)),
            "bias_ih": rng.uniform(-scale, scale, (4 * hidden_size,)),
            "bias_hh": rng.uniform(-scale, scale, (4 * hidden_size,)),
        }
        if peephole:
            p["weight_peephole"] = rng.uniform(-scale, scale, (3, hidden_size))
        layers.append({key: value.astype(dtype) for key, value in p.items()})
    return layers


def weighted_loss(y, h_n, c_n, R, Rh, Rc):
    return float(np.sum(y * R) + np.sum(h_n * Rh) + np.sum(c_n * Rc))


# --------------------------------------------------------------------------
# gradients against finite differences


@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_reference_gradients_match_finite_differences(peephole, num_layers):
    rng = np.random.default_rng(100 + 10 * num_layers + peephole)
    T, B, I, H = 3, 2, 3, 2
    layers = random_layers(rng, I, H, num_layers, peephole)
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(num_layers, B, H))
    c0 = rng.normal(size=(num_layers, B, H))
    R = rng.normal(size=(T, B, H))
    Rh = rng.normal(size=(num_layers, B, H))
    Rc = rng.normal(size=(num_layers, B, H))

    def loss():
        y, (h_n, c_n), _ = reference_forward(x, layers, h0, c0)
        return weighted_loss(y, h_n, c_n, R, Rh, Rc)

    _, _, cache = reference_forward(x, layers, h0, c0)
    dx, (dh0, dc0), grads = reference_backward(R, cache, Rh, Rc)

    tol = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, numerical_gradient(loss, x), **tol)
    np.testing.assert_allclose(dh0, numerical_gradient(loss, h0), **tol)
    np.testing.assert_allclose(dc0, numerical_gradient(loss, c0), **tol)
    for k, layer in enumerate(layers):
        assert set(grads[k]) == set(layer)
        for key, value in layer.items():
            np.testing.assert_allclose(grads[k][key], numerical_gradient(loss, value), **tol,
                                       err_msg=f"layer {k} {key}")


def test_reference_backward_without_state_grads_equals_zero_state_grads():
    rng = np.random.default_rng(7)
    layers = random_layers(rng, 2, 3, 2, peephole=True)
    x = rng.normal(size=(4, 2, 2))
    dy = rng.normal(size=(4, 2, 3))
    y, _, cache = reference_forward(x, layers)
    dx_a, (dh_a, dc_a), g_a = reference_backward(dy, cache)
    zeros = np.zeros((2, 2, 3))
    dx_b, (dh_b, dc_b), g_b = reference_backward(dy, cache, zeros, zeros)
    np.testing.assert_array_equal(dx_a, dx_b)
    np.testing.assert_array_equal(dh_a, dh_b)
    np.testing.assert_array_equal(dc_a, dc_b)
    for a, b in zip(g_a, g_b):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_numerical_gradient_restores_array_and_supports_index_subset():
    a = np.arange(6.0).reshape(2, 3)
    before = a.copy()
    g = numerical_gradient(lambda: np.sum(a ** 2), a)
    np.testing.assert_array_equal(a, before)
    np.testing.assert_allclose(g, 2 * before, atol=1e-6)
    sub = numerical_gradient(lambda: np.sum(a ** 3), a, indices=[1, 5])
    np.testing.assert_allclose(sub, [3.0, 75.0], rtol=1e-6)


# --------------------------------------------------------------------------
# forward semantics


def _scalar_lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh, peep):
    """Hidden size 1, input size 1, written with Python floats from the equations."""
    def sig(z):
        return 1.0 / (1.0 + math.exp(-z))
    a = [w_ih[k] * x + b_ih[k] + w_hh[k] * h + b_hh[k] for k in range(4)]
    i = sig(a[0] + peep[0] * c)
    f = sig(a[1] + peep[1] * c)
    g = math.tanh(a[2])
    c_new = f * c + i * g
    o = sig(a[3] + peep[2] * c_new)
    return o * math.tanh(c_new), c_new


def test_reference_peephole_forward_matches_scalar_equations():
    """Output gate peephole reads the new cell state c', the others the old c."""
    rng = np.random.default_rng(3)
    layer = random_layers(rng, 1, 1, 1, peephole=True, scale=1.5)[0]
    xs = rng.normal(size=5)
    h, c = 0.3, -0.7
    y, (h_n, c_n), _ = reference_forward(xs.reshape(5, 1, 1), [layer],
                                         np.full((1, 1, 1), h), np.full((1, 1, 1), c))
    w_ih, w_hh = layer["weight_ih"][:, 0], layer["weight_hh"][:, 0]
    peep = layer["weight_peephole"][:, 0]
    for t in range(5):
        h, c = _scalar_lstm_step(xs[t], h, c, w_ih, w_hh, layer["bias_ih"], layer["bias_hh"], peep)
        assert y[t, 0, 0] == pytest.approx(h, rel=1e-13, abs=1e-15)
    assert h_n[0, 0, 0] == pytest.approx(h, rel=1e-13)
    assert c_n[0, 0, 0] == pytest.approx(c, rel=1e-13)


def test_reference_zero_peepholes_equal_no_peepholes():
    rng = np.random.default_rng(11)
    with_p = random_layers(rng, 3, 4, 2, peephole=True)
    for layer in with_p:
        layer["weight_peephole"][...] = 0
    without = [{k: v for k, v in layer.items() if k != "weight_peephole"} for layer in with_p]
    x = rng.normal(size=(3, 2, 3))
    dy = rng.normal(size=(3, 2, 4))
    y1, (h1, c1), cache1 = reference_forward(x, with_p)
    y2, (h2, c2), cache2 = reference_forward(x, without)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(c1, c2)
    dx1, _, g1 = reference_backward(dy, cache1)
    dx2, _, g2 = reference_backward(dy, cache2)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-14, atol=1e-15)
    for a, b in zip(g1, g2):
        for key in b:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-14, atol=1e-15)


def test_reference_computes_in_float32_for_float32_inputs():
    rng = np.random.default_rng(5)
    layers64 = random_layers(rng, 3, 4, 2, peephole=True)
    layers32 = [{k: v.astype(np.float32) for k, v in layer.items()} for layer in layers64]
    x = rng.normal(size=(4, 3, 3))
    y32, (h32, c32), cache = reference_forward(x.astype(np.float32), layers32)
    y64, _, _ = reference_forward(x, layers64)
    assert y32.dtype == h32.dtype == c32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=1e-5)
    dx, (dh0, _), grads = reference_backward(np.ones_like(y32), cache)
    assert dx.dtype == dh0.dtype == grads[0]["weight_ih"].dtype == np.float32


def test_layers_from_params_round_trips_pytorch_names():
    rng = np.random.default_rng(0)
    layers = random_layers(rng, 2, 3, 3, peephole=True)
    params = params_from_layers(layers)
    assert "weight_peephole_l2" in params and "weight_ih_l0" in params
    back = layers_from_params(params, 3, peephole=True)
    for a, b in zip(layers, back):
        assert set(a) == set(b)
        for key in a:
            assert a[key] is b[key]
    no_peep = layers_from_params(params, 3, peephole=False)
    assert all("weight_peephole" not in layer for layer in no_peep)


# --------------------------------------------------------------------------
# against torch.nn.LSTM


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("with_state", [False, True])
def test_reference_matches_torch_lstm_outputs_and_gradients(num_layers, with_state):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(200 + num_layers + 10 * with_state)
    T, B, I, H = 5, 3, 4, 6
    torch.manual_seed(0)
    module = torch.nn.LSTM(I, H, num_layers).double()
    params = {name: p.detach().numpy().copy() for name, p in module.named_parameters()}
    layers = layers_from_params(params, num_layers, peephole=False)

    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(num_layers, B, H)) if with_state else None
    c0 = rng.normal(size=(num_layers, B, H)) if with_state else None
    R = rng.normal(size=(T, B, H))
    Rh = rng.normal(size=(num_layers, B, H))
    Rc = rng.normal(size=(num_layers, B, H))

    y, (h_n, c_n), cache = reference_forward(x, layers, h0, c0)
    dx, (dh0, dc0), grads = reference_backward(R, cache, Rh, Rc)

    xt = torch.tensor(x, requires_grad=True)
    if with_state:
        h0t = torch.tensor(h0, requires_grad=True)
        c0t = torch.tensor(c0, requires_grad=True)
        yt, (hnt, cnt) = module(xt, (h0t, c0t))
    else:
        yt, (hnt, cnt) = module(xt)
    loss = (yt * torch.tensor(R)).sum() + (hnt * torch.tensor(Rh)).sum() + (cnt * torch.tensor(Rc)).sum()
    loss.backward()

    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, hnt.detach().numpy(), **tol)
    np.testing.assert_allclose(c_n, cnt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    if with_state:
        np.testing.assert_allclose(dh0, h0t.grad.numpy(), **tol)
        np.testing.assert_allclose(dc0, c0t.grad.numpy(), **tol)
    flat_grads = params_from_layers(grads)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(flat_grads[name], p.grad.numpy(), **tol, err_msg=name)
