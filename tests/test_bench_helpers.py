"""Benchmark helpers that need no timing: the --busy CPU hog and the --isa bookkeeping."""
import importlib.util
import os
import pathlib
import sys
import time

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


def test_varlen_rows_check_torch_and_render_with_targets():
    """The variable-length rows on a tiny shape: torch's packed output agrees with
    clstm's (the timed work is the same), the ratios are what the medians give, and the
    tables mark a miss of the targets."""
    torch = pytest.importorskip("torch")
    from bench import report, varlen
    from bench.shapes import Shape
    shape = Shape("tiny", B=3, T=6, I=4, H=5, L=1)
    lengths = varlen.draw_lengths(shape)
    assert lengths.min() >= 6 // 4 and lengths.max() <= 6
    rows = varlen.varlen_rows([shape], ["float32"], [1], ["fwd", "train"], [0, 1], 1,
                              min_time=0.0, warmup=0, torch=torch, log=lambda _: None)
    assert len(rows) == 4
    for r in rows:
        m = r["median_s"]
        assert set(m) == {"clstm padded", "clstm lengths", "torch packed", "torch padded"}
        assert r["torch_packed_vs_clstm"] == m["torch packed"] / m["clstm lengths"]
        if r["mode"] == "fwd":
            assert r["rel_error_vs_torch"] < 1e-5
    b1 = varlen.b1_scaling_rows([shape], ["float32"], ["fwd"], 2, 1, min_time=0.0,
                                warmup=0, log=lambda _: None)
    assert b1[0]["speedup"] == b1[0]["one_thread_s"] / b1[0]["n_threads_s"]
    # the tables take their ratios from the medians (or the best samples)
    slow = dict(rows[0], median_s={"clstm padded": 1.0, "clstm lengths": 1.0,
                                   "torch packed": 2.0, "torch padded": 0.9},
                best_s={"clstm padded": 1.0, "clstm lengths": 1.0, "torch packed": 4.0,
                        "torch padded": 1.5})
    assert varlen.varlen_table([slow]).count("(below target)") == 2
    assert "4.00×" in varlen.varlen_table([slow], "best")
    assert varlen.varlen_table([slow], "best").count("(below target)") == 0
    text = report.markdown(dict(
        machine=dict(cpu="cpu", cores=2, python="3", versions={}, blas=[]),
        config={"peers": []}, cells=[], varlen=dict(rows=rows, b1=b1)))
    assert "## Variable lengths and bidirectional layers" in text
    assert "(not run: --no-grid)" in text and "bidirectional layer at B = 1" in text
