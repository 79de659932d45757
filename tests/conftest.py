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
