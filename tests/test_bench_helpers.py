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


def test_busy_cli_reads_grid_names_and_custom_shapes():
    assert busy._parse_shape("S3").H == 256
    custom = busy._parse_shape("1:300:24:48:1")
    assert (custom.B, custom.T, custom.I, custom.H, custom.L) == (1, 300, 24, 48, 1)
    with pytest.raises(SystemExit, match="B:T:I:H:L"):
        busy._parse_shape("1,300")


def test_busy_variants_set_their_knobs_only_while_they_run_and_keep_their_own_pause():
    from clstm import kernels

    class Threads:          # stands in for the clstm module's set_num_threads
        def set_num_threads(self, n):
            self.n = n
    mod, seen = Threads(), []

    def call():
        seen.append((mod.n, kernels._set_row_handover(True), kernels._team_pause_state()))
        kernels._set_row_handover(False)          # what the variant set, put back as found
        kernels._team_pause_state((5, 8))         # a pause this variant's call started
    static = busy._variant_runner(kernels, mod, call, 2, busy.VARIANTS["static"])
    outer = kernels._team_pause_state((1, 2))
    try:
        static()
        static()
        assert kernels._team_pause_state() == (1, 2)     # the caller's pause, untouched
    finally:
        kernels._team_pause_state(outer)
    # off while it ran, its own pause carried from one of its calls to the next
    assert seen == [(2, False, (0, 0)), (2, False, (5, 8))]
    assert kernels._set_row_handover(True) is True       # restored afterwards
