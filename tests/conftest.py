"""Fixtures shared by the tests.

`isa_level`: the kernels at every instruction-set level this CPU runs (generic, avx2,
avx512: the gate loops, the packed GEMM kernel and the packed-vs-BLAS rule of that level,
`kernels._set_isa`), so that the lower levels are tested on the machine at hand, not only
the one the CPU picks. The kernel correctness tests use it (`pytestmark`)."""
import pytest

from clstm import kernels

ISA_LEVELS = kernels.supported_isas()


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
