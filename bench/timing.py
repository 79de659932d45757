"""Interleaved timing: every implementation runs once per repeat, in rotating order.

Running the contenders side by side, in turns, spreads the drift of a shared machine
(other jobs, frequency changes) over all of them instead of charging it to whoever happened
to run during the slow minute.  A sample is the mean of `number` back-to-back calls, with
`number` chosen per implementation so that one sample lasts at least `min_time` seconds.
"""

import contextlib
import gc
import math
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Seconds per call: one entry per repeat, plus the calls per sample."""

    samples: list = field(default_factory=list)
    number: int = 1
    error: str = ""

    @property
    def median(self):
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def best(self):
        return min(self.samples) if self.samples else math.nan

    def spread(self):
        """(max - min) / median of the samples: a rough noise figure for the table notes."""
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median


# How long to wait for OpenBLAS's workers to go idle: they spin 2^28 cycles (~0.1 s)
# after each multi-threaded call, on cores the next timed implementation needs.
OPENBLAS_SPIN_PAUSE_S = 0.3
# ONNX Runtime's intra-op threads spin after a run (allow_spinning, its default): 10-50 ms
# measured, see bench/peers.py's OnnxRuntimePeer.
ORT_SPIN_PAUSE_S = 0.1

def _calls_per_sample(fn, min_time, tries=3, clock=time.perf_counter):
    once = math.inf
    for _ in range(tries):  # the fastest of a few: one slow call must not set the count
        start = clock()
        fn()
        once = min(once, clock() - start)
        if once > min_time:
            break
    return max(1, math.ceil(min_time / max(once, 1e-9)))


def _sample(fn, number, clock=time.perf_counter):
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        for _ in range(number):
            fn()
        return (clock() - start) / number
    finally:
        if enabled:
            gc.enable()


def interleaved(callables, repeats, warmup=1, min_time=0.02, settle=0.0, pause_after=None,
                clock=time.perf_counter, before_sample=None):
    """Time each callable of `callables` (name -> zero-argument function).

    `clock` is wall time by default; `time.process_time` (the CPU seconds of every
    thread of this process) suits 1-thread runs on a machine shared with other jobs: the
    time slices other processes take are not counted.

    Each runs `warmup` times first (compilation, caches, lazy allocation), then the
    calls per sample are calibrated, then `repeats` rounds run every implementation once
    in an order rotated by one each round.  An implementation that raises is dropped and
    its error kept.  Returns name -> Timing.

    `settle` seconds of sleep precede each sample: the worker threads the previous
    implementation left spinning (OpenBLAS spins ~0.1 s after a call, OpenMP and
    TensorFlow pools a little) go to sleep instead of stealing the next one's cores.
    `pause_after` (name -> seconds) does the same after the samples of the named
    implementations only: those known to leave threads spinning for long.
    `before_sample` (name -> zero-argument function) runs untimed before each sample of
    the named implementations.
    """
    pause_after = pause_after or {}
    before_sample = before_sample or {}
    names = list(callables)
    results = {name: Timing() for name in names}
    live = []
    for name in names:
        try:
            for _ in range(warmup):
                callables[name]()
            results[name].number = _calls_per_sample(callables[name], min_time,
                                                     clock=clock)
            live.append(name)
        except Exception as exc:  # a peer failing must not sink the whole grid
            results[name].error = f"{type(exc).__name__}: {exc}"
    gc.collect()
    time.sleep(max([pause_after.get(name, 0.0) for name in live], default=0.0))
    for r in range(repeats):
        k = r % len(live) if live else 0
        for name in live[k:] + live[:k]:
            if results[name].error:
                continue
            if settle:
                time.sleep(settle)
            if name in before_sample:
                before_sample[name]()
            try:
                results[name].samples.append(_sample(callables[name], results[name].number,
                                                     clock))
            except Exception as exc:
                results[name].error = f"{type(exc).__name__}: {exc}"
            if pause_after.get(name):
                time.sleep(pause_after[name])
    return results


def per_call_latencies(steppers, steps, block=100, warmup=100, contexts=None, settle=0.0):
    """Latency of every single call, for streaming: name -> list of seconds.

    `steppers` maps a name to a zero-argument function that advances its own state by one
    step.  Blocks of `block` calls alternate between implementations in rotating order;
    `contexts` (name -> context-manager factory) wraps each of that name's blocks, e.g. a
    library switch that must not be paid per call.  `settle`: as in `interleaved`, before
    each block.
    """
    contexts = contexts or {}
    names = list(steppers)
    no_context = contextlib.nullcontext
    for name in names:
        with contexts.get(name, no_context)():
            for _ in range(warmup):
                steppers[name]()
    out = {name: [] for name in names}
    clock = time.perf_counter_ns
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(math.ceil(steps / block)):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn, lat = steppers[name], out[name]
                if settle:
                    time.sleep(settle)
                with contexts.get(name, no_context)():
                    for _ in range(block):
                        t0 = clock()
                        fn()
                        lat.append((clock() - t0) * 1e-9)
    finally:
        if enabled:
            gc.enable()
    return out
