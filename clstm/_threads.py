"""Thread control: how many threads the kernels use, and SciPy's BLAS beside them.

The kernels run one OpenMP team: the batch split across threads for the time loop, and
the large GEMMs cut into blocks over the same threads, each calling single-threaded BLAS.
BLAS's own worker threads must stay out of the way, or the two pools oversubscribe the
cores. So every kernel call holds SciPy's OpenBLAS (the one ``scipy.linalg.cython_blas``
calls) to one thread and restores it afterwards, through that library's
``openblas_set_num_threads``, which this module finds and registers once. When SciPy
uses a BLAS that cannot be steered that way (MKL, BLIS, ...), ``blas_guard`` limits it
through threadpoolctl around each kernel call instead.

``set_num_threads`` sets the kernels' team size only: it changes nothing else in the
process (NumPy's own BLAS keeps its settings). It refuses more than ``MAX_THREADS``.
"""
import contextlib
import ctypes
import itertools
import operator
import os

from threadpoolctl import ThreadpoolController

from . import kernels

# The most threads a kernel may use: 4 per logical CPU (os.cpu_count(), the whole
# machine's, so that set_num_threads(os.cpu_count()) works in any container). Beyond that,
# threads only wait for cores, and a typo such as 10**5 would start that many OS threads.
MAX_THREADS = 4 * (os.cpu_count() or 1)

# honours OMP_NUM_THREADS, held to MAX_THREADS (an environment is no place to raise)
_num_threads = min(max(1, kernels.openmp_max_threads()), MAX_THREADS)


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
    """Use ``n`` OpenMP threads in clstm's kernels.

    Parameters
    ----------
    n : int
        A thread count from 1 to ``clstm._threads.MAX_THREADS``, 4 per logical CPU
        (``4 * os.cpu_count()``). ``OMP_NUM_THREADS`` sets the default (else all cores),
        held to the same maximum.

    Raises
    ------
    TypeError
        ``n`` is not an int.
    ValueError
        ``n`` is below 1 or above ``MAX_THREADS``.
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
    if n > MAX_THREADS:
        raise ValueError(f"set_num_threads: expected at most {MAX_THREADS} threads (4 per "
                         f"logical CPU), got {n}")
    _num_threads = n


def get_num_threads():
    """The number of threads the kernels use (1 in a process forked after its parent
    ran a multi-threaded kernel: see ``clstm.kernels.fork_limited``)."""
    return 1 if kernels.fork_limited() else _num_threads


@contextlib.contextmanager
def threads(n):
    """Run the enclosed code with ``n`` kernel threads, then restore the previous count.

    >>> with clstm.threads(1):
    ...     y, state = net.forward(x)
    """
    previous = _num_threads
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


_blas_controller = None


_NOTHING_TO_DO = contextlib.nullcontext()     # reusable, and one less object per call


def blas_guard():
    """A context that keeps SciPy's BLAS on one thread during a kernel call, for the
    BLAS libraries the kernels cannot switch themselves (a no-op otherwise). The
    libraries are scanned once (threadpool_limits alone rescans them at every call)."""
    global _blas_controller
    if _kernel_steers_blas:
        return _NOTHING_TO_DO
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")
