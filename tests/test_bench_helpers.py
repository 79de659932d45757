"""Benchmark helpers that need no timing: the --busy CPU hog, the --isa bookkeeping, and the
GRU rows (cells, FLOPs, the peers' GRU adapters, the report's cell column)."""
import importlib.util
import os
import pathlib
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if not (REPO / "bench" / "busy.py").exists():
    pytest.skip("bench/ is not next to the tests", allow_module_level=True)
_added = importlib.util.find_spec("bench") is None
if _added:  # for `bench` only: clstm is imported as the other tests import it
    sys.path.insert(0, str(REPO))

from bench import busy, isa  # noqa: E402

if _added and str(REPO) in sys.path:
    sys.path.remove(str(REPO))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity")
def test_cpu_hog_starts_pinned_and_is_killed():
    with busy.CpuHog(core=min(os.sched_getaffinity(0))) as hog:
        proc = hog.proc
        assert proc.poll() is None
        # the affinity is set by the child itself, right after start
        for _ in range(200):
            try:
                if os.sched_getaffinity(proc.pid) == {hog.core}:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        assert os.sched_getaffinity(proc.pid) == {hog.core}
    assert proc.poll() is not None  # killed and reaped on leaving the block
    assert hog.record["core"] == hog.core
    assert hog.stop() == hog.record  # idempotent


def test_isa_levels_and_coretypes():
    cpu = dict(model="x", avx512f=False, avx2=True, fma=True)
    assert isa.cpu_level(cpu) == "avx2"
    assert isa.check_level("avx2", cpu) is None
    assert "avx512f" in isa.check_level("avx512", cpu)
    assert isa.check_level("generic", dict(model="x", avx512f=False, avx2=False, fma=False)) is None
    assert set(isa.OPENBLAS_CORETYPE) == set(isa.LEVELS)


def test_clstm_isa_falls_back_without_kernels_isa():
    class Old:
        @staticmethod
        def gates_isa():
            return "c"

        @staticmethod
        def packed_gemm_isa():
            return "avx2"

    class New(Old):
        @staticmethod
        def isa():
            return "generic"

    assert isa.clstm_isa(Old)["level"] == "avx2"
    assert isa.clstm_isa(New) == dict(gates_isa="c", packed_gemm_isa="avx2", level="generic",
                                      source="kernels.isa()")


# ------------------------------------------------------------------ GRU rows of the grid

def test_cells_parse_and_a_gru_shape_counts_three_gate_blocks():
    from bench.shapes import (SHAPES, forward_flops, ideal_gemms, parse_cells, step_flops,
                              with_cell)

    assert parse_cells("lstm") == ["lstm"]
    assert parse_cells("gru") == ["gru"]
    assert parse_cells("both") == parse_cells("gru,lstm") == ["lstm", "gru"]
    with pytest.raises(ValueError, match="unknown cell"):
        parse_cells("rnn")
    with pytest.raises(ValueError, match="cell: expected one of lstm, gru"):
        with_cell(SHAPES["S1"], "rnn")
    s3, g3 = SHAPES["S3"], with_cell(SHAPES["S3"], "gru")
    assert g3.cell == "gru" and g3.gates == 3 and s3.gates == 4 and "GRU" in g3.label()
    assert forward_flops(g3) == 2 * 100 * 32 * (256 + 256) * 3 * 256
    assert step_flops(g3, "train") == 3 * forward_flops(g3)
    # every GEMM of the ceiling has 3H where the LSTM's has 4H
    for lstm, gru in zip(ideal_gemms(s3, "train"), ideal_gemms(g3, "train")):
        assert lstm.what == gru.what
        assert (gru.m, gru.n, gru.k) == tuple(3 * d // 4 if d == 4 * 256 else d
                                              for d in (lstm.m, lstm.n, lstm.k))


def tiny_gru_shape(layers=2):
    from bench.shapes import Shape, with_cell
    return with_cell(Shape("tiny", B=3, T=6, I=5, H=4, L=layers), "gru")


def test_gru_peers_compute_what_clstm_computes():
    """clstm.GRU, torch.nn.GRU and the NumPy reference on the same weights: outputs and
    weight gradients agree (what the grid's cross-check reads)."""
    pytest.importorskip("torch")
    from bench.peers import PEERS, ClstmPeer, make_input, make_params
    from bench.run import cross_check, rel_error

    shape = tiny_gru_shape()
    params, x = make_params(shape, "float64"), make_input(shape, "float64")
    assert params["weight_ih_l1"].shape == (12, 4)
    ours = ClstmPeer().setup(shape, "float64", 1, params, x)
    expected_y, expected_g = ours.forward_output(), ours.train_grads()
    assert set(expected_g) == set(params)
    for name in ("torch", "numpy"):
        peer = PEERS[name]()
        if peer.available():
            continue
        runner = peer.setup(shape, "float64", 1, params, x)
        runner.fwd()
        runner.train()
        assert rel_error(runner.forward_output(), expected_y) < 1e-12, name
        assert cross_check(runner, "train", expected_g) < 1e-10, name


def test_keras_and_jax_gru_adapters_reorder_and_compute_like_torch():
    """Keras and JAX are not installed here: their GRU adapters' NumPy parts are checked
    against the NumPy reference instead (the gate swap, its inverse on gradients, and the
    step the JAX scan runs)."""
    from bench.peers import (gru_step, keras_gru_weights, make_input, make_params,
                             swap_first_two_gate_blocks, torch_gru_grads_from_keras)

    w = np.repeat(np.arange(3.0), 2)[:, None]   # blocks r, z, n of H = 2 rows
    assert swap_first_two_gate_blocks(w, 2)[:, 0].tolist() == [1, 1, 0, 0, 2, 2]
    shape = tiny_gru_shape(layers=1)
    params, x = make_params(shape, "float64"), make_input(shape, "float64")
    kernel, recurrent, bias = keras_gru_weights(params, 0, shape.H)
    assert kernel.shape == (5, 12) and recurrent.shape == (4, 12) and bias.shape == (2, 12)
    back = {}
    for name, value in (("kernel", kernel), ("recurrent_kernel", recurrent), ("bias", bias)):
        back.update(torch_gru_grads_from_keras(0, name, value, shape.H))
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)

    sys.path.insert(0, str(REPO / "tests"))
    try:
        import reference
    finally:
        sys.path.remove(str(REPO / "tests"))
    expected = reference.reference_gru_forward(x, params, 1)[0]
    h = np.zeros((shape.B, shape.H))
    gi = x @ params["weight_ih_l0"].T + params["bias_ih_l0"]
    for t in range(shape.T):
        h = gru_step(np, reference.sigmoid, h, gi[t], params["weight_hh_l0"].T,
                     params["bias_hh_l0"])
        np.testing.assert_allclose(h, expected[t], rtol=1e-13, atol=1e-15)


def test_the_report_names_the_cell_of_each_row_when_a_grid_has_gru_rows():
    from bench import report

    def row(cell):
        return dict(shape="S1", cell=cell, dtype="float32", threads=1, mode="train",
                    impls={"clstm": dict(median_s=1e-3)}, skipped={}, clstm_gflops=1.0,
                    best_peer="torch", ratio_best_peer=2.0, ceiling=dict(net_s=5e-4),
                    ceiling_fraction=0.5)

    lstm_only = report.grid_table(dict(config=dict(peers=[]), cells=[row("lstm")]))
    assert "| cell |" not in lstm_only and lstm_only.splitlines()[2].startswith("| S1 | float32")
    both = report.grid_table(dict(config=dict(peers=[]), cells=[row("lstm"), row("gru")]))
    assert both.splitlines()[0].startswith("| shape | cell | dtype")
    assert both.splitlines()[3].startswith("| S1 | gru | float32 | 1 | train | 1 ")


def test_the_grid_and_varlen_take_a_cell_argument():
    from bench import run, varlen

    assert run.parse_args(["--quick"]).cells == ["lstm"]
    assert run.parse_args(["--quick", "--cell", "both"]).cells == ["lstm", "gru"]
    with pytest.raises(SystemExit, match="unknown cell"):
        run.parse_args(["--cell", "rnn"])
    with pytest.raises(SystemExit, match="unknown cell"):
        varlen.main(["--cell", "rnn"])
