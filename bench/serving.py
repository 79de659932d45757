"""Serving from Python threads: one shared clstm model, 1, 2 and 4 threads calling it.

    python -m bench.serving [--quick] [--hidden 64,128,256] [--batch 1,4] [--seq-len 50]
                            [--threads 1,2,4] [--seconds 0.5] [--repeats 3]
                            [--omp-threads 1] [--json]

A web server or a queue worker shares one model between its threads.  Here every thread
calls the same `net` (net.eval(), float32, I = H) as fast as it can for `--seconds`:

* forward: `net.forward(x)` on its own sequence x (T, B, I);
* step: `net.step(x_t, state)` on its own stream, its state carried, back to zeros after
  T steps.

Throughput per thread count: calls/s (all threads together) and sequences/s (forward:
calls x B; step: calls x B / T, the rate at which T-step sequences are completed).  The
thread counts run in rotating order, `--repeats` times, medians reported; clstm's kernels
run on `--omp-threads` OpenMP threads per call (default 1: the threads of the server are
the parallelism).

It measures what the model allows today: every output is compared with the one the same
input gave in a single-threaded call beforehand (bit-for-bit, else within 1e-5), and a row
whose threads got anything else is marked WRONG RESULTS (the model's shared state is not
safe to use from several threads at once), its throughput shown anyway.  The comparison
runs inside the timed loop, for every thread count alike.

Prints a Markdown table; with --json, the last line is one JSON object (what `python -m
bench` reads when it runs this in a subprocess: a crash here must not end the whole run).
"""

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import clstm_module, make_params  # noqa: E402
from bench.shapes import Shape  # noqa: E402

CALLS = ("forward", "step")
QUICK = dict(hidden="64,256", batch="1", seconds=0.2, repeats=2)
FULL = dict(hidden="64,128,256", batch="1,4", seconds=0.5, repeats=3)
ATOL = 1e-5


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.serving",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"H {QUICK['hidden']}, B {QUICK['batch']}, {QUICK['seconds']} s per "
                         f"run, {QUICK['repeats']} repeats")
    ap.add_argument("--hidden", help="comma list of hidden sizes (input size = hidden)")
    ap.add_argument("--batch", help="comma list of batch sizes")
    ap.add_argument("--seq-len", type=int, default=50, help="T (default 50)")
    ap.add_argument("--threads", default="1,2,4", help="Python thread counts (default 1,2,4)")
    ap.add_argument("--calls", default=",".join(CALLS), help="forward,step")
    ap.add_argument("--seconds", type=float, help="seconds each timed run lasts")
    ap.add_argument("--repeats", type=int, help="timed runs per thread count")
    ap.add_argument("--omp-threads", type=int, default=1,
                    help="clstm.set_num_threads for the kernels (default 1)")
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.hidden = [int(v) for v in str(args.hidden).split(",")]
    args.batch = [int(v) for v in str(args.batch).split(",")]
    args.threads = [int(v) for v in str(args.threads).split(",")]
    args.calls = [c.strip() for c in args.calls.split(",") if c.strip()]
    bad = [c for c in args.calls if c not in CALLS]
    if bad:
        ap.error(f"unknown call(s) {bad}; choose from {list(CALLS)}")
    return args


class _Check:
    """Outputs against their single-threaded values: counts, worst difference."""

    def __init__(self):
        self.inexact = 0   # not bit-for-bit, within ATOL
        self.wrong = 0     # beyond ATOL
        self.max_abs_diff = 0.0

    def __call__(self, got, want):
        if np.array_equal(got, want):
            return
        diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want))) \
            if np.shape(got) == np.shape(want) else float("inf")
        self.max_abs_diff = max(self.max_abs_diff, diff)
        if diff <= ATOL:
            self.inexact += 1
        else:
            self.wrong += 1


def _worker_forward(net, x, want):
    def work(stop, check):
        calls = 0
        while not stop.is_set():
            check(net.forward(x)[0], want)
            calls += 1
        return calls
    return work


def _worker_step(net, x, want):
    T = x.shape[0]

    def work(stop, check):
        calls, t, state = 0, 0, None
        while not stop.is_set():
            y, state = net.step(x[t], state)
            check(y, want[t])
            calls += 1
            t += 1
            if t == T:
                t, state = 0, None
        return calls
    return work


def _expected(net, call, x):
    """What one thread alone gets for x: forward's y, or each step's y from zero state."""
    if call == "forward":
        return np.array(net.forward(x)[0])
    state, ys = None, []
    for t in range(x.shape[0]):
        y, state = net.step(x[t], state)
        ys.append(np.array(y))
    return np.stack(ys)


def _timed(workers, seconds):
    """Run the workers in threads for `seconds`: (calls/s of all, [_Check], [errors])."""
    n = len(workers)
    stop = threading.Event()
    start_line = threading.Barrier(n + 1)
    checks = [_Check() for _ in range(n)]
    calls, ends, errors = [0] * n, [0.0] * n, []

    def body(j):
        start_line.wait()
        try:
            calls[j] = workers[j](stop, checks[j])
        except Exception as exc:  # the model raising under sharing is a result too
            errors.append(f"{type(exc).__name__}: {exc}")
            stop.set()
        ends[j] = time.perf_counter()

    threads = [threading.Thread(target=body, args=(j,), daemon=True) for j in range(n)]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    rate = sum(c / max(e - start, 1e-9) for c, e in zip(calls, ends))
    return rate, checks, errors


def run_config(mod, call, hidden, batch, T, thread_counts, seconds, repeats, log=None):
    shape = Shape(f"serve-H{hidden}", B=batch, T=T, I=hidden, H=hidden, L=1)
    net = mod.LSTM(hidden, hidden, 1, dtype="float32", seed=0)
    for name, value in make_params(shape, "float32").items():
        net.params[name][...] = value
    net.eval()
    rng = np.random.default_rng(3)
    most = max(thread_counts)
    xs = [rng.standard_normal((T, batch, hidden)).astype(np.float32) for _ in range(most)]
    wants = [_expected(net, call, x) for x in xs]  # single-threaded, before any sharing
    make = _worker_forward if call == "forward" else _worker_step
    workers = [make(net, x, w) for x, w in zip(xs, wants)]
    for n in thread_counts:  # warm-up: first calls allocate and load
        _timed(workers[:n], min(0.05, seconds))

    rates = {n: [] for n in thread_counts}
    found = {n: dict(wrong=0, inexact=0, max_abs_diff=0.0, errors=[]) for n in thread_counts}
    for r in range(repeats):
        k = r % len(thread_counts)
        for n in thread_counts[k:] + thread_counts[:k]:
            rate, checks, errors = _timed(workers[:n], seconds)
            rates[n].append(rate)
            f = found[n]
            f["wrong"] += sum(c.wrong for c in checks)
            f["inexact"] += sum(c.inexact for c in checks)
            f["max_abs_diff"] = max([f["max_abs_diff"]] + [c.max_abs_diff for c in checks])
            f["errors"] += errors[:1]
    rows = []
    one = statistics.median(rates[min(thread_counts)]) if rates[min(thread_counts)] else None
    for n in thread_counts:
        cps = statistics.median(rates[n])
        per_call_seqs = batch if call == "forward" else batch / T
        f = found[n]
        status = ("ERROR" if f["errors"] else "WRONG RESULTS" if f["wrong"]
                  else "ok" if not f["inexact"] else "ok (rounding)")
        rows.append(dict(call=call, hidden=hidden, input=hidden, batch=batch, T=T,
                         python_threads=n, calls_per_s=cps, sequences_per_s=cps * per_call_seqs,
                         speedup_vs_1=cps / one if one else None, samples=rates[n],
                         status=status, wrong_outputs=f["wrong"], inexact_outputs=f["inexact"],
                         max_abs_diff=f["max_abs_diff"], errors=f["errors"][:3]))
        if log:
            log(f"  serving {call:7s} H={hidden} B={batch} {n} thread(s): {cps:.0f} calls/s, "
                f"{cps * per_call_seqs:.0f} seq/s [{status}]")
    return rows


def run(args, log=None):
    mod = clstm_module()
    mod.set_num_threads(args.omp_threads)
    rows = []
    for call in args.calls:
        for hidden in args.hidden:
            for batch in args.batch:
                rows += run_config(mod, call, hidden, batch, args.seq_len, args.threads,
                                   args.seconds, args.repeats, log)
    return dict(config=dict(hidden=args.hidden, batch=args.batch, T=args.seq_len,
                            threads=args.threads, calls=args.calls, seconds=args.seconds,
                            repeats=args.repeats, omp_threads=args.omp_threads,
                            atol=ATOL, clstm_file=mod.__file__),
                rows=rows)


def table(result):
    """The Markdown table of a `run` result."""
    head = ["call", "H", "B", "T", "Python threads", "calls/s", "sequences/s",
            "vs 1 thread", "outputs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in result["rows"]:
        status = r["status"]
        if r["wrong_outputs"]:
            status += f" ({r['wrong_outputs']} wrong, max diff {r['max_abs_diff']:.2g})"
        if r["errors"]:
            status += f": {r['errors'][0]}"
        lines.append("| " + " | ".join(str(v) for v in (
            r["call"], r["hidden"], r["batch"], r["T"], r["python_threads"],
            f"{r['calls_per_s']:.0f}", f"{r['sequences_per_s']:.1f}",
            f"{r['speedup_vs_1']:.2f}×" if r["speedup_vs_1"] else "—", status)) + " |")
    return "\n".join(lines)


def describe(result):
    c = result["config"]
    return (f"One shared float32 `clstm.LSTM` (I = H, 1 layer, net.eval()), T = {c['T']}; "
            f"each Python thread calls it in a loop for {c['seconds']} s, thread counts in "
            f"rotating order, median of {c['repeats']}; clstm kernels on {c['omp_threads']} "
            "OpenMP thread(s) per call.  forward: one call = one sequence of B rows; step: "
            "one call = one time step of B streams (sequences/s = calls/s x B / T).  outputs: "
            "every call's output against a single-threaded call on the same input (WRONG "
            "RESULTS: the shared model gave another answer).")


def main(argv=None):
    args = parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    result = run(args, log)
    print(describe(result))
    print()
    print(table(result))
    if args.json:
        print(json.dumps(result, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


if __name__ == "__main__":
    main()
