"""Instruction-set levels: every kernel path follows one level (generic, avx2, avx512),
chosen from the CPU, from CLSTM_ISA at import, or by kernels._set_isa; a level the CPU
lacks is refused."""
import os
import subprocess
import sys

import numpy as np
import pytest

import clstm
from clstm import kernels
from knobs import kernel_knob


def test_the_level_in_use_is_reported_and_supported():
    levels = kernels.supported_isas()
    assert levels[0] == "generic" and set(levels) <= set(kernels.ISA_LEVELS)
    assert clstm.isa() == kernels.isa() in levels
    assert clstm.supported_isas() == levels


def test_each_level_selects_its_gate_loops_and_gemm_kernel(isa_level):
    assert kernels.isa() == isa_level
    assert kernels.gates_isa() == {"generic": "c"}.get(isa_level, isa_level)
    assert kernels.packed_gemm_isa() == isa_level


def test_unknown_level_is_refused_and_changes_nothing():
    before = kernels.isa()
    with pytest.raises(ValueError, match="unknown ISA level"):
        kernels._set_isa("sse9")
    assert kernels.isa() == before


@pytest.mark.skipif("avx512" in kernels.supported_isas(), reason="this CPU runs every level")
def test_a_level_the_cpu_lacks_is_refused():
    with pytest.raises(ValueError, match="not supported by this CPU"):
        kernels._set_isa("avx512")


def _import_with(value):
    env = dict(os.environ, CLSTM_ISA=value)
    return subprocess.run([sys.executable, "-c", "import clstm; print(clstm.isa())"],
                          env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(clstm.__file__))))


@pytest.mark.parametrize("level", kernels.supported_isas())
def test_clstm_isa_environment_variable_picks_the_level_at_import(level):
    result = _import_with(level)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == level


def test_clstm_isa_environment_variable_with_a_bad_level_is_a_clear_error():
    result = _import_with("avx1024")
    assert result.returncode != 0
    assert "ValueError: CLSTM_ISA='avx1024': expected one of generic, avx2, avx512" in result.stderr


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B, T, I, H", [(1, 5, 3, 20), (6, 4, 9, 40), (40, 3, 5, 33)])
def test_packed_and_blas_products_agree(isa_level, dtype, B, T, I, H):
    # Which products run on the packed kernels and which on BLAS is a per-level rule
    # (DEVELOPERS.md, "ISA levels"); every choice gives the same results.
    net = clstm.LSTM(I, H, 2, dtype=dtype, peephole=True, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)

    def run():
        net.zero_grad()
        y, state = net.forward(x)
        dx, _ = net.backward(dy)
        return [np.array(y), np.array(dx), *(np.array(s) for s in state),
                np.array(net.flat_grads)]

    results = []
    for bulk in (False, True):
        for rows in (0, 1 << 30):
            with kernel_knob(kernels._set_packed_bulk, bulk), \
                    kernel_knob(kernels._set_packed_step_max_rows, rows):
                results.append(run())
    with kernel_knob(kernels._set_packed_gemm, False):
        results.append(run())
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(b, a, **tol)
