"""Fixtures shared by the tests.

`isa_level`: the kernels at every instruction-set level this CPU runs (generic, avx2,
avx512: the gate loops, the packed GEMM kernel and the packed-vs-BLAS rule of that level,
`kernels._set_isa`), so that the lower levels are tested on the machine at hand, not only
the one the CPU picks. The kernel correctness tests use it (`pytestmark`)."""
import importlib.util
import pathlib
import sys

import pytest

from clstm import kernels

ISA_LEVELS = kernels.supported_isas()


def _import_checkout_bench():
    """Import the checkout's bench/ package once, for the tests of its pieces (no timing),
    whatever order the test files are collected in. The checkout goes on sys.path for that
    import only: `clstm` stays the one the other tests import (the installed package when
    the checkout's clstm/ is unbuilt, as in CI)."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    if importlib.util.find_spec("bench") is not None or not (repo / "bench").is_dir():
        return
    sys.path.insert(0, str(repo))
    try:
        import bench  # noqa: F401
    finally:
        if str(repo) in sys.path:
            sys.path.remove(str(repo))


_import_checkout_bench()


@pytest.fixture(params=ISA_LEVELS)
def isa_level(request):
    """Run the test at one ISA level; the level in use before is put back."""
    old = kernels._set_isa(request.param)
    try:
        yield request.param
    finally:
        kernels._set_isa(old)


@pytest.fixture(autouse=True)
def team_on_time():
    """Every test sees a team that is never judged late: on a machine busy with other work
    a kernel call could otherwise put the next calls on one thread (see DEVELOPERS.md,
    "Threads"), and the tests that count threads would depend on the load. The tests of
    that pause set the share themselves."""
    old = kernels._set_max_lost_share(2.0)
    kernels._reset_team_pause()
    try:
        yield
    finally:
        kernels._set_max_lost_share(old)
        kernels._reset_team_pause()
