"""Thread control: how many threads the kernels use, and BLAS's threads beside them.

The kernels run OpenMP threads across the batch and call BLAS inside that parallel
region; BLAS must then run on one thread, or the two thread pools oversubscribe the
cores. The kernels switch BLAS to one thread for the region and back afterwards through
the ``openblas_set_num_threads`` of the very BLAS SciPy ships (the one that
``scipy.linalg.cython_blas`` calls), which this module finds and registers once. When
SciPy uses a BLAS that cannot be steered that way (MKL, BLIS, ...), ``blas_guard``
limits BLAS through threadpoolctl around each multi-threaded kernel call instead.
"""
import contextlib
import ctypes
import itertools
import operator
import os

from threadpoolctl import ThreadpoolController, threadpool_limits

from . import kernels

_num_threads = max(1, kernels.openmp_max_threads())  # honours OMP_NUM_THREADS


def _find_scipy_openblas():
    """The ctypes functions (set, get) of the OpenBLAS that SciPy's cython_blas calls."""
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS before we look)

    libs = [lc for lc in ThreadpoolController().lib_controllers if lc.internal_api == "openblas"]
    # SciPy's wheels carry their own copy in scipy.libs; a system SciPy shares one.
    scipy_libs = [lc for lc in libs if "scipy" in os.path.basename(os.path.dirname(lc.filepath))]
    candidates = scipy_libs or (libs if len(libs) == 1 else [])
    for lc in candidates:
        dll = ctypes.CDLL(lc.filepath)
        for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
            setter = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}", None)
            getter = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                return setter, getter
    return None


def _register():
    found = _find_scipy_openblas()
    if found is None:
        return False
    setter, getter = found
    address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    kernels._register_blas_thread_control(address(setter), address(getter))
    return True


_kernel_steers_blas = _register()


def set_num_threads(n):
    """Use ``n`` threads: OpenMP threads in the kernels, and BLAS threads around them.

    Parameters
    ----------
    n : int
        A positive thread count. ``OMP_NUM_THREADS`` sets the default.
    """
    global _num_threads
    if isinstance(n, bool):
        raise TypeError("set_num_threads: expected a positive int, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: expected a positive int, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n}")
    _num_threads = n
    threadpool_limits(limits=n, user_api="blas")


def get_num_threads():
    """The number of threads the kernels use."""
    return _num_threads


def blas_guard(threads):
    """A context that keeps BLAS on one thread while ``threads`` OpenMP threads run, for
    the BLAS libraries the kernels cannot switch themselves."""
    if threads > 1 and not _kernel_steers_blas and kernels.openmp_enabled():
        return threadpool_limits(limits=1, user_api="blas")
    return contextlib.nullcontext()
