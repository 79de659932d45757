"""The kernels compute exp, sigmoid and tanh with their own vectorisable code
(src/gates.c). These tests hold them to libm's accuracy across the whole range,
including saturation, and check that NaN propagates instead of turning into a number."""
import numpy as np
import pytest

from clstm import kernels

from knobs import kernel_knob


# Three implementations (the plain C loops everywhere, AVX2+FMA and AVX-512 intrinsics
# from one template where the CPU has them): every test runs on each one this CPU runs.
CODES = ["c"] + [code for code in ("avx2", "avx512") if code in kernels.supported_isas()]


@pytest.fixture(params=CODES)
def gate_code(request):
    with kernel_knob(kernels._set_gates_isa, request.param):
        assert kernels.gates_isa() == request.param
        yield request.param

# relative to float eps: a few ulp for sigmoid; tanh = 2σ(2x) - 1 loses relative (not
# absolute) accuracy near 0, so it is held to an absolute bound there.
ULP = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def grid(dtype):
    dense = np.linspace(-30, 30, 200_001)
    tails = np.array([-1e30, -1e4, -800, -100, -88.8, -87.4, 87.4, 88.8, 100, 800, 1e4, 1e30,
                      0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8])
    return np.concatenate([dense, tails]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_matches_libm_to_a_few_ulp(dtype, gate_code):
    x = grid(dtype)
    out = np.empty_like(x)
    kernels.sigmoid(x, out)
    with np.errstate(over="ignore"):
        exact = 1.0 / (1.0 + np.exp(-x.astype(np.longdouble)))
    rel = np.abs(out - exact) / np.maximum(np.abs(exact), np.finfo(dtype).tiny)
    assert np.all(np.isfinite(out))
    # far in the negative tail the result is (nearly) denormal: hold it to absolute error
    normal = exact > np.finfo(dtype).tiny * 1e3
    assert rel[normal].max() < 8 * ULP[dtype]
    assert np.abs(out - exact)[~normal].max() < 1e3 * np.finfo(dtype).tiny
    assert np.all((out >= 0) & (out <= 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_matches_libm(dtype, gate_code):
    x = grid(dtype)
    out = np.empty_like(x)
    kernels.tanh(x, out)
    exact = np.tanh(x.astype(np.longdouble))
    err = np.abs(out - exact)
    assert np.all(np.isfinite(out))
    assert err.max() < 4 * ULP[dtype]                       # absolute, everywhere
    away_from_zero = np.abs(x) > 0.5
    assert (err[away_from_zero] / np.abs(exact[away_from_zero])).max() < 8 * ULP[dtype]
    assert np.all(np.abs(out) <= 1)
    assert out[x == 1e30][0] == 1 and out[x == -1e30][0] == -1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("function", [kernels.sigmoid, kernels.tanh])
def test_nan_propagates(function, dtype, gate_code):
    x = np.array([0.5, np.nan, -0.5], dtype=dtype)
    out = np.empty_like(x)
    function(x, out)
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33])
def test_vector_tails(n, dtype, gate_code):
    # lengths that end inside a vector: the masked tail of the intrinsics code
    x = np.linspace(-5, 5, n).astype(dtype)
    for function, exact in ((kernels.sigmoid, 1 / (1 + np.exp(-x.astype(np.longdouble)))),
                            (kernels.tanh, np.tanh(x.astype(np.longdouble)))):
        out = np.full(n + 1, 7.0, dtype)         # one guard value past the end
        function(x, out[:n])
        np.testing.assert_allclose(out[:n], exact, rtol=8 * ULP[dtype], atol=4 * ULP[dtype])
        assert out[n] == 7.0
