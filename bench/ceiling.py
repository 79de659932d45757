"""The GEMM ceiling: how long SciPy's BLAS takes for the GEMMs an LSTM cannot avoid.

For a cell of the grid the ceiling runs, through `scipy.linalg.blas.?gemm`, every GEMM of
`shapes.ideal_gemms` as many times as an LSTM would (the recurrent ones T times), on
operands preallocated in Fortran order so the f2py wrapper copies nothing, C overwritten in
place (beta = 0).  That run is timed interleaved with the implementations, so it sees the
same machine they do.

Calling through the Python wrapper costs about a microsecond per call that a compiled LSTM
does not pay; for the tiny recurrent GEMMs of small shapes that is most of the time.  So a
twin run with the same calls and thread switches on 1x1x1 operands is timed alongside, and

    ceiling = best time(GEMM run) - best time(1x1x1 twin), never less than the FLOPs at
              the peak rate of a large square GEMM.

Best, not median, of the interleaved samples: the ceiling is what BLAS *can* reach, and on
a shared machine interference only ever adds time.

Each GEMM runs at 1 thread or at the cell's thread count, whichever was faster when timed
alone (an ideal implementation would not spread a 1x64x256 product over two cores either).
The ceiling is optimistic (short), so clstm's fraction of it errs on the low side.
"""

import numpy as np
from scipy.linalg import blas
from threadpoolctl import ThreadpoolController

from bench.shapes import ideal_gemms
from bench.timing import interleaved

_CONTROLLER = None


def blas_controller():
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def gemm_call(m, n, k, dtype):
    """A zero-argument function computing one preallocated (m x k)·(k x n) product."""
    gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((m, k)).astype(dtype))
    b = np.asfortranarray(rng.standard_normal((k, n)).astype(dtype))
    c = np.zeros((m, n), dtype=dtype, order="F")
    out = gemm(1.0, a, b, beta=0.0, c=c, overwrite_c=1)
    if not np.shares_memory(out, c):  # the wrapper copied: the timing would include it
        raise RuntimeError(f"{gemm.__name__} copied its output for {m}x{n}x{k}")
    return lambda: gemm(1.0, a, b, beta=0.0, c=c, overwrite_c=1)


class CellCeiling:
    """The GEMM run of one cell (`run`) and its 1x1x1 twin (`overhead_run`)."""

    def __init__(self, plan, dtype, flops, peak_gflops, breakdown):
        """plan: BLAS thread count -> [(Gemm, calls)]."""
        self.flops, self.peak_gflops, self.breakdown = flops, peak_gflops, breakdown
        self.n_calls = sum(count for group in plan.values() for _, count in group)
        one = gemm_call(1, 1, 1, dtype)
        self.run = self._loop({n: [(gemm_call(g.m, g.n, g.k, dtype), count) for g, count in group]
                               for n, group in plan.items()})
        self.overhead_run = self._loop({n: [(one, count) for _, count in group]
                                        for n, group in plan.items()})

    @staticmethod
    def _loop(groups):
        limit = blas_controller().limit

        def run():
            for threads, calls in groups.items():
                with limit(limits=threads, user_api="blas"):
                    for fn, count in calls:
                        for _ in range(count):
                            fn()
        return run

    def summarise(self, run_s, overhead_s):
        floor = floor_seconds(self.flops, self.peak_gflops)
        return dict(net_s=max(run_s - overhead_s, floor), raw_s=run_s, overhead_s=overhead_s,
                    floor_s=floor, calls=self.n_calls, peak_gflops=self.peak_gflops,
                    gemms=self.breakdown)


class GemmCeiling:
    """Builds the ceiling of each cell; GEMMs timed alone are cached across cells."""

    def __init__(self, repeats=5, min_time=0.02, peak_size=1024):
        self.repeats = repeats
        self.min_time = min_time
        self.peak_size = peak_size
        self._seconds = {}

    #: The peak is every floor's denominator, and a disturbed sample only ever makes it
    #: look lower (a floor too long, a target wrongly called beyond the peak): it takes
    #: at least this many repeats of at least PEAK_MIN_TIME seconds, best kept.
    PEAK_REPEATS, PEAK_MIN_TIME = 9, 0.1

    def seconds(self, m, n, k, dtype, threads, repeats=None, min_time=None):
        """Best-of-repeats seconds of one (m x k)·(k x n) GEMM alone on `threads` threads."""
        key = (m, n, k, np.dtype(dtype).name, threads)
        if key not in self._seconds:
            fn = gemm_call(m, n, k, dtype)
            with blas_controller().limit(limits=threads, user_api="blas"):
                t = interleaved({"gemm": fn}, repeats or self.repeats, warmup=2,
                                min_time=self.min_time if min_time is None else min_time)
            self._seconds[key] = t["gemm"].best
        return self._seconds[key]

    def peak_gflops(self, dtype, threads):
        """GFLOP/s of a large square GEMM (peak_size³) on `threads` threads, best sample."""
        n = self.peak_size
        seconds = self.seconds(n, n, n, dtype, threads,
                               repeats=max(self.repeats, self.PEAK_REPEATS),
                               min_time=max(self.min_time, self.PEAK_MIN_TIME))
        return 2 * n**3 / seconds / 1e9

    def cell(self, shape, mode, dtype, threads, input_grad=False):
        """The CellCeiling of one grid cell: which GEMM runs on how many threads, and the runs."""
        plan, breakdown, flops = {}, [], 0
        for g in ideal_gemms(shape, mode, input_grad=input_grad):
            options = {n: self.seconds(g.m, g.n, g.k, dtype, n) for n in {1, threads}}
            best = min(options, key=options.get)
            plan.setdefault(best, []).append((g, g.count))
            flops += g.flops
            breakdown.append(dict(what=g.what, m=g.m, n=g.n, k=g.k, count=g.count,
                                  threads=best, alone_call_s=options[best],
                                  alone_gflops=2 * g.m * g.n * g.k / options[best] / 1e9))
        return CellCeiling(plan, dtype, flops, self.peak_gflops(dtype, threads), breakdown)


# --------------------------------------------------------------------------- the floor


def valid_flops(shape, mode, lengths=None, directions=1, input_grad=False):
    """FLOPs of the GEMMs an ideal implementation runs over the valid steps only.

    The count of `ideal_gemms`, with the T·B rows of every product replaced by the
    sum(lengths) rows that are still active (a packed layout runs no padded step), per
    layer and per direction. With G = gates·H and N = sum(lengths) (T·B without lengths),
    per layer k and direction, I_k = I for the first layer and D·H above it (the layer
    reads both directions):

    - forward: 2·N·I_k·G (input projection) + 2·N·H·G (recurrent products);
    - training adds 2·N·H·G (recurrent backward), 2·G·I_k·N (dW_ih), 2·G·H·N (dW_hh), and
      2·N·I_k·G (input gradient) for the layers above the first, and for the first only
      with ``input_grad``: about 3x the forward, as in `ideal_gemms`.
    """
    if mode not in ("fwd", "train"):
        raise ValueError(f"mode: expected 'fwd' or 'train', got {mode!r}")
    if directions not in (1, 2):
        raise ValueError(f"directions: expected 1 or 2, got {directions!r}")
    if lengths is None:
        rows = shape.T * shape.B
    else:
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.shape[0] != shape.B:
            raise ValueError(f"lengths: expected {shape.B} lengths (one per sequence), got "
                             f"shape {lengths.shape}")
        if not np.issubdtype(lengths.dtype, np.integer):
            raise TypeError(f"lengths: expected integers, got {lengths.dtype}")
        if lengths.min() < 1 or lengths.max() > shape.T:
            raise ValueError(f"lengths: expected values in [1, {shape.T}], got "
                             f"[{lengths.min()}, {lengths.max()}]")
        rows = int(lengths.sum())
    H, G = shape.H, shape.gates * shape.H
    total = 0
    for layer in range(shape.L):
        i_k = shape.I if layer == 0 else directions * H
        flops = 2 * rows * i_k * G + 2 * rows * H * G
        if mode == "train":
            flops += 2 * rows * H * G + 2 * G * i_k * rows + 2 * G * H * rows
            if layer > 0 or input_grad:
                flops += 2 * rows * i_k * G
        total += directions * flops
    return total


def rate_bound(peaks, threads):
    """The GEMM rate (GFLOP/s) `threads` threads cannot beat, from the large-GEMM peaks
    measured at some thread counts (``peaks``: count -> GFLOP/s): the best of the
    measured rates at `threads` and of m-thread rates scaled by threads / m (m below
    it). A GEMM does not scale past linearly (fewer cores busy, if anything, clock
    higher), and on a machine shared with other jobs an n-thread GEMM can time slower
    than a 1-thread one while the bound must not tighten for that. On a quiet machine
    the measured n-thread peak is within a few percent of n x the 1-thread one."""
    rates = [g * threads / int(m) for m, g in peaks.items() if int(m) <= threads]
    if not rates:
        raise ValueError(f"peaks: expected a rate at {threads} thread(s) or fewer, got "
                         f"thread counts {sorted(peaks)}")
    return max(rates)


def floor_seconds(flops, peak_gflops):
    """The least time `flops` of GEMM can take at the large square GEMM's rate: the
    floor no implementation whose time is its GEMMs goes under."""
    return flops / (peak_gflops * 1e9)
