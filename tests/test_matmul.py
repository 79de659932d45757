"""kernels.matmul, the GEMM the layers around the LSTM run on the kernels' thread team."""
import numpy as np
import pytest

import clstm
from clstm import kernels
from knobs import kernel_knob  # tests/ is on sys.path through pyproject's pythonpath


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_matches_numpy(dtype, trans_a, trans_b, accumulate, threads):
    rng = np.random.default_rng(0)
    m, k, n = 70, 33, 90
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    out = rng.standard_normal((m, n)).astype(dtype)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + (out if accumulate else 0)
    with kernel_knob(kernels._set_min_flops_per_thread, 0):   # split even this small product
        kernels.matmul(a, b, out, trans_a, trans_b, accumulate, threads)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_matmul_rejects_shapes_that_do_not_fit():
    a, b = np.ones((3, 4)), np.ones((5, 6))
    with pytest.raises(ValueError, match="shapes do not fit"):
        kernels.matmul(a, b, np.empty((3, 6)))


def test_matmul_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="expected dtype"):
        kernels.matmul(np.ones((2, 2)), np.ones((2, 2), np.float32), np.empty((2, 2)))


def test_dense_falls_back_to_numpy_for_a_weight_of_another_dtype():
    layer = clstm.Dense(3, 2, dtype="float32", seed=0)
    layer.params["weight"] = layer.params["weight"].astype(np.float64)   # user's choice
    x = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(layer.forward(x), x @ layer.params["weight"].T
                               + layer.params["bias"], rtol=1e-6)
