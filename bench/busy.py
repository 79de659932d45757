"""`--busy`: the benchmark beside a CPU hog, and what extra threads cost under load.

`CpuHog` starts a separate Python process that spins in a busy loop pinned to one core
(os.sched_setaffinity), for as long as the benchmark runs.  It is stopped (SIGKILL) by the
context manager on any way out of the run, Ctrl-C included; atexit and a SIGTERM/SIGHUP
handler cover the rest, and the hog itself exits within about 0.1 s once its parent is
gone (it watches os.getppid()), so a SIGKILLed benchmark leaves nothing spinning.

`thread_ratio_table` times clstm at the run's largest thread count n and at 1 thread,
interleaved, for every shape, cell (the run's `--cell`: LSTM, GRU or both), dtype and mode,
under the same load: a ratio
time(n threads) / time(1 thread) above 1 means the extra threads cost more than they
bring when a core is taken (a thread waiting at a barrier for a descheduled peer); the
target is <= 1.1.
"""

import atexit
import os
import signal
import subprocess
import sys
import time

from bench.timing import interleaved

TARGET = 1.1

_HOG = """
import os, sys
core, parent = int(sys.argv[1]), int(sys.argv[2])
try:
    os.sched_setaffinity(0, {core})
except (AttributeError, OSError):
    pass
n = 0
while True:
    n += 1
    if n % 1000000 == 0 and os.getppid() != parent:
        break
"""


def _cpu_seconds(pid):
    """utime + stime of a live process, from /proc (None where unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuHog:
    """A busy-loop process pinned to `core` (default: the last core this process may use)."""

    def __init__(self, core=None):
        if core is None:
            try:
                core = max(os.sched_getaffinity(0))
            except AttributeError:
                core = (os.cpu_count() or 1) - 1
        self.core = core
        self.proc = None
        self.started = None
        self.record = {}
        self._old_handlers = {}

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _HOG, str(self.core),
                                      str(os.getpid())], stdin=subprocess.DEVNULL)
        self.started = time.perf_counter()
        atexit.register(self.stop)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGHUP
                pass
        return self

    def _on_signal(self, signum, frame):
        self.stop()
        raise SystemExit(128 + signum)

    def stop(self):
        """Kill the hog (idempotent); records how much CPU it burnt."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.record
        wall = time.perf_counter() - self.started
        cpu = _cpu_seconds(proc.pid)
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for sig, handler in self._old_handlers.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
        self._old_handlers = {}
        self.record = dict(core=self.core, pid=proc.pid, wall_s=round(wall, 1),
                           cpu_s=None if cpu is None else round(cpu, 1),
                           busy_fraction=None if cpu is None or wall <= 0
                           else round(cpu / wall, 3))
        return self.record

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def thread_ratio_table(args, clstm_peer, log):
    """clstm at max(args.threads) against 1 thread, interleaved, under the running load,
    for each of the run's cells (args.cells; the LSTM where the args have none)."""
    from bench.peers import clstm_module, make_input, make_params
    from bench.shapes import with_cell
    n = max(args.threads)
    if n < 2:
        return []
    mod = clstm_module()
    rows = []
    cells = getattr(args, "cells", None) or ["lstm"]
    for dtype in args.dtypes:
        for shape in [with_cell(s, c) for s in args.shapes for c in cells]:
            params, x = make_params(shape, dtype), make_input(shape, dtype)
            runner = clstm_peer.setup(shape, dtype, n, params, x)
            for mode in args.modes:
                call = getattr(runner, mode)

                def at(k, call=call):
                    def run():
                        mod.set_num_threads(k)
                        call()
                    return run
                t = interleaved({"1": at(1), str(n): at(n)}, args.repeats, args.warmup,
                                args.min_time)
                one, many = t["1"], t[str(n)]
                ratio = many.median / one.median if one.samples and many.samples else None
                rows.append(dict(shape=shape.name, cell=shape.cell, dtype=dtype, mode=mode,
                                 threads=n, one_thread_s=one.median, n_threads_s=many.median,
                                 ratio=ratio, spread_one=one.spread(), spread_n=many.spread(),
                                 error=one.error or many.error))
                cell = "" if shape.cell == "lstm" else " " + shape.cell.upper()
                log(f"  busy {shape.name}{cell} {dtype} {mode:5s}: "
                    f"1thr {one.median * 1e3:.3g} ms, {n}thr {many.median * 1e3:.3g} ms, ratio "
                    + (f"{ratio:.2f}" if ratio else "?"))
            mod.set_num_threads(n)
            del runner
    return rows


# --------------------------------------------------------------------------------------
# `python -m bench.busy`: a few cells, 1 thread against n, beside the hog (or not), with
# the kernels' late-thread fallbacks on and off at n threads, all interleaved in one
# process. For the measurements behind those fallbacks (a full `python -m bench --busy`
# takes far longer).

# n-thread variants: kernel knob settings (kernels._set_NAME(value)).
VARIANTS = {
    "static": dict(row_handover=False, max_lost_share=2.0),   # neither fallback
    "handover": dict(row_handover=True, max_lost_share=2.0),  # rows taken over, no pause
    "default": dict(row_handover=True, max_lost_share=0.25),  # both, as shipped
    # as shipped but a batch too small to split leaves the second thread idle (no
    # whole-sequence products beside the time loop: DEVELOPERS.md, "Threads")
    "no_overlap": dict(row_handover=True, max_lost_share=0.25, overlap_products=False),
    # as shipped but the first late overlapped call starts the pause (not the second)
    "overlap_strike1": dict(row_handover=True, max_lost_share=0.25, overlap_strikes=1),
}


def _parse_shape(text):
    from bench.shapes import parse_shape
    try:
        return parse_shape(text)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _variant_runner(kernels, mod, call, threads, knobs):
    """A zero-argument function running `call` at `threads` with `knobs` in effect; the
    team's pause on one thread (kernels._team_pause_state) is kept per variant, so that
    one variant's late teams do not put another's calls on one thread."""
    state = [(0, 0)]

    def run():
        mod.set_num_threads(threads)
        old = {name: getattr(kernels, f"_set_{name}")(value) for name, value in knobs.items()}
        outer = kernels._team_pause_state(state[0])
        try:
            call()
        finally:
            state[0] = kernels._team_pause_state(outer)
            for name, value in old.items():
                getattr(kernels, f"_set_{name}")(value)
    return run


class _PackedRunner:
    """fwd/train of a clstm net on the packed driver: with lengths (uniform in [T/4, T],
    seeded) and/or both directions; the grid's runner has neither."""

    def __init__(self, mod, shape, dtype, lengths, bidirectional):
        import numpy as np
        from bench.peers import clstm_class, make_input
        self.net = clstm_class(mod, shape.cell)(shape.I, shape.H, shape.L, dtype=dtype,
                                                seed=0, bidirectional=bidirectional)
        self.x = make_input(shape, dtype)
        self.lengths = (np.random.default_rng(0).integers(max(1, shape.T // 4), shape.T + 1,
                                                          size=shape.B)
                        if lengths else None)
        D = 2 if bidirectional else 1
        self.dy = np.ones((shape.T, shape.B, D * shape.H), dtype=dtype)

    def fwd(self):
        self.net.forward(self.x, lengths=self.lengths)

    def train(self):
        self.net.zero_grad()
        self.net.forward(self.x, lengths=self.lengths)
        self.net.backward(self.dy, input_grad=False)


def main(argv=None):
    """Time a few cells at 1 thread and at n threads (fallback variants), interleaved."""
    import argparse
    from bench.peers import ClstmPeer, clstm_module, make_input, make_params
    ap = argparse.ArgumentParser(prog="python -m bench.busy", description=main.__doc__)
    ap.add_argument("shapes", help="comma list of grid names or B:T:I:H:L")
    ap.add_argument("--cell", default="lstm",
                    help="the recurrent cell: lstm (default), gru, or both")
    ap.add_argument("--lengths", action="store_true",
                    help="variable lengths, uniform in [T/4, T] (the packed driver)")
    ap.add_argument("--bidirectional", action="store_true",
                    help="both directions (the packed driver)")
    ap.add_argument("--modes", default="fwd,train")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--quiet", action="store_true", help="no hog")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma list of {','.join(VARIANTS)}")
    args = ap.parse_args(argv)
    from bench.shapes import parse_cells, with_cell
    try:
        cells = parse_cells(args.cell)
    except ValueError as exc:
        raise SystemExit(f"--cell: {exc}")
    shapes = [with_cell(_parse_shape(s), c) for s in args.shapes.split(",") for c in cells]
    variants = args.variants.split(",")
    mod = clstm_module()
    from clstm import kernels
    n = args.threads
    packed = args.lengths or args.bidirectional
    what = "".join([", lengths in [T/4, T]" if args.lengths else "",
                    ", bidirectional" if args.bidirectional else ""])
    print(f"isa {kernels.isa()}, {'quiet' if args.quiet else 'hog on one core'}, "
          f"{args.dtype}{what}, medians of {args.repeats}; time and ratio to 1 thread",
          flush=True)

    def measure():
        for shape in shapes:
            if packed:
                runner = _PackedRunner(mod, shape, args.dtype, args.lengths,
                                       args.bidirectional)
            else:
                params, x = make_params(shape, args.dtype), make_input(shape, args.dtype)
                runner = ClstmPeer().setup(shape, args.dtype, n, params, x)
            for mode in args.modes.split(","):
                call = getattr(runner, mode)
                fns = {"1": _variant_runner(kernels, mod, call, 1, {})}
                for v in variants:
                    fns[f"{n}:{v}"] = _variant_runner(kernels, mod, call, n, VARIANTS[v])
                t = interleaved(fns, args.repeats, 2, args.min_time)
                one = t["1"].median
                cells = "  ".join(f"{k} {v.median * 1e3:.3g} ms ({v.median / one:.2f})"
                                  for k, v in t.items())
                print(f"{shape.label()} {mode:5s} {cells}", flush=True)
    if args.quiet:
        measure()
    else:
        with CpuHog():
            measure()


if __name__ == "__main__":
    main()
