"""Variable-length and bidirectional batches: clstm with ``lengths`` against the same
padded batch without them, and against torch.nn.LSTM on packed sequences
(pack_padded_sequence(enforce_sorted=False) / pad_packed_sequence) and on the padded
batch; and a bidirectional layer at B = 1 on 2 threads against 1 thread. ``--cell gru``
(or ``both``): clstm.GRU against torch.nn.GRU, the same way.

    python -m bench.varlen [--shapes S2,S3] [--cell lstm|gru|both] [--threads 1,2]
                           [--modes fwd,train] [--bidirectional 0,1] [--dtypes float32]
                           [--repeats 7] [--no-torch] [--no-b1] [--no-floor]

The same rows run inside the main grid (``python -m bench``, table "Variable lengths
and bidirectional layers"; ``--no-varlen`` leaves them out, ``--no-grid`` runs them
alone). Lengths are drawn uniformly between T/4 and T (seed 0). The contenders run in
turns, interleaved, within one process (bench/timing.py); the tables give medians of
the repeats. Before timing, torch's packed output (fwd) is checked against clstm's.

Each row also has a floor (bench/targets.py): the FLOPs of the GEMMs over the valid steps
(bench.ceiling.valid_flops) at the rate of a large square GEMM (bench.ceiling, at the
row's dtype and thread count, measured in the same run), clstm's share of that peak
(floor / clstm time) and the best ratio any implementation could reach against torch's
packed path (torch packed time / floor). Where that is below the target, the row says so
instead of "below target".
"""
import argparse
import math
import time

import numpy as np

import clstm

from .ceiling import GemmCeiling, floor_seconds, rate_bound, valid_flops
from .shapes import parse_cells, parse_shapes, with_cell
from .targets import is_nan, miss_text
from .timing import OPENBLAS_SPIN_PAUSE_S, interleaved

#: The targets of issue 10: torch packed / clstm with lengths, torch padded / clstm with
#: lengths, and a bidirectional layer's 1-thread / 2-thread time at B = 1.
TARGET_VS_PACKED, TARGET_VS_PADDED, TARGET_B1_SCALING = 3.0, 1.0, 1.7


def draw_lengths(shape, seed=0):
    """B lengths uniform in [T/4, T]."""
    rng = np.random.default_rng(seed)
    return rng.integers(max(1, shape.T // 4), shape.T + 1, size=shape.B)


def _input(shape, dtype, B=None, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(shape.T, B or shape.B, shape.I)).astype(dtype)


def _clstm_call(net, x, lengths, mode, dy):
    def call():
        net.forward(x, lengths=lengths)
        if mode == "train":
            net.backward(dy, input_grad=False)
    return call


def _torch_calls(torch, module, x, lengths, mode):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    xt = torch.from_numpy(x)
    lt = torch.from_numpy(lengths)
    T = x.shape[0]

    def packed():
        with torch.set_grad_enabled(mode == "train"):
            p = pack_padded_sequence(xt, lt, enforce_sorted=False)
            y, _ = module(p)
            y, _ = pad_packed_sequence(y, total_length=T)
            if mode == "train":
                y.sum().backward()
            return y

    def padded():
        with torch.set_grad_enabled(mode == "train"):
            y, _ = module(xt)
            if mode == "train":
                y.sum().backward()
    return packed, padded


def _with_threads(n, fn):
    def call():
        with clstm.threads(n):
            fn()
    return call


def _cell_class(cell):
    return {"lstm": clstm.LSTM, "gru": clstm.GRU}[cell]


def varlen_rows(shapes, dtypes, threads, modes, bidirectional, repeats, min_time=0.05,
                warmup=1, torch=None, log=print, clock=time.perf_counter, cells=("lstm",),
                peaks=None):
    """One row per (shape, dtype, cell, bidirectional, mode, threads): medians in seconds
    of clstm padded / with lengths and torch packed / padded (torch.nn.LSTM or GRU), and
    their ratios. ``clock``: see bench.timing.interleaved (CPU time only makes sense at 1
    thread). ``peaks``: (dtype, threads) -> the large square GEMM's GFLOP/s (e.g.
    GemmCeiling().peak_gflops), for each row's floor; None: no floor."""
    measured = {}   # (dtype, threads) -> best large-GEMM GFLOP/s seen

    def measure_peaks(when):
        for d in dtypes:
            for n in sorted({1, *threads}):
                measured[d, n] = max(measured.get((d, n), 0.0), peaks(d, n))
        log(f"  large square GEMM peak ({when}, best so far): " + ", ".join(
            f"{d} {n}thr {g:.1f} GFLOP/s" for (d, n), g in measured.items()))
        # OpenBLAS's spinning workers let go idle, so they take no core from the rows
        time.sleep(OPENBLAS_SPIN_PAUSE_S)

    if peaks is not None:  # before and after the rows, the best kept: load only slows
        measure_peaks("before the rows")
    rows = []
    for shape in shapes:
        lengths = draw_lengths(shape)
        for dtype in dtypes:
            x = _input(shape, dtype)
            for cell, bid in [(c, b) for c in cells for b in bidirectional]:
                D = 2 if bid else 1
                net = _cell_class(cell)(shape.I, shape.H, shape.L, bidirectional=bool(bid),
                                        dtype=dtype, seed=0)
                dy = np.ones((shape.T, shape.B, D * shape.H), dtype)
                module = net.to_torch() if torch is not None else None
                for mode in modes:
                    for n in threads:
                        rows.append(_varlen_row(shape, dtype, bid, mode, n, net, module,
                                                torch, x, lengths, dy, repeats, min_time,
                                                warmup, clock))
                        rows[-1]["valid_flops"] = valid_flops(
                            with_cell(shape, cell), mode, lengths, 2 if bid else 1)
                        log(_row_line(_ratios(rows[-1], "median")))
    if peaks is not None:
        measure_peaks("after the rows")
        for r in rows:
            _floor(r, {m: g for (d, m), g in measured.items() if d == r["dtype"]})
            _ratios(r, "median")
    return rows


def _varlen_row(shape, dtype, bid, mode, n, net, module, torch, x, lengths, dy, repeats,
                min_time, warmup, clock):
    calls = {"clstm padded": _with_threads(n, _clstm_call(net, x, None, mode, dy)),
             "clstm lengths": _with_threads(n, _clstm_call(net, x, lengths, mode, dy))}
    row = dict(shape=shape.name, B=shape.B, T=shape.T, I=shape.I, H=shape.H, L=shape.L,
               dtype=dtype, cell=type(net).__name__.lower(), bidirectional=bool(bid), mode=mode, threads=n,
               lengths_mean=float(np.mean(lengths)))
    if torch is not None:
        torch.set_num_threads(n)
        packed, padded = _torch_calls(torch, module, x, lengths, mode)
        calls["torch packed"], calls["torch padded"] = packed, padded
        if mode == "fwd":   # the same work: torch's packed output against clstm's
            got = packed().numpy()
            want = net.forward(x, lengths=lengths)[0]
            row["rel_error_vs_torch"] = float(np.max(np.abs(got - want))
                                              / max(np.max(np.abs(want)), 1e-30))
    timings = interleaved(calls, repeats, warmup, min_time, clock=clock)
    row["clock"] = "cpu" if clock is time.process_time else "wall"
    row["median_s"] = {k: t.median for k, t in timings.items()}
    row["best_s"] = {k: t.best for k, t in timings.items()}
    row["errors"] = {k: t.error for k, t in timings.items() if t.error}
    return row


def _floor(row, peaks):
    """The row's floor (bench/targets.py): its valid FLOPs at the rate its thread count
    cannot beat, from the large-GEMM peaks measured (``peaks``: threads -> GFLOP/s)."""
    row["peaks_measured_gflops"] = dict(peaks)
    row["peak_gflops"] = rate_bound(peaks, row["threads"])
    row["floor_s"] = floor_seconds(row["valid_flops"], row["peak_gflops"])
    return row


def _ratios(row, stat):
    """The row's ratios from its medians or from its best samples (``stat``)."""
    m = row[f"{stat}_s"]
    cl = m["clstm lengths"]
    row["stat"] = stat
    row["lengths_vs_padded"] = m["clstm padded"] / cl
    row["torch_packed_vs_clstm"] = m.get("torch packed", math.nan) / cl
    row["torch_padded_vs_clstm"] = m.get("torch padded", math.nan) / cl
    floor = row.get("floor_s", math.nan)
    row["clstm_of_peak"] = floor / cl
    # where clstm ran past the large GEMM's rate (its packed kernels can, by a few
    # percent), its own time is the floor: the bound never says less than what ran
    bound = min(floor, cl)
    row["best_possible_vs_packed"] = m.get("torch packed", math.nan) / bound
    row["best_possible_vs_padded"] = m.get("torch padded", math.nan) / bound
    return row


def b1_scaling_rows(shapes, dtypes, modes, threads, repeats, min_time=0.05, warmup=1,
                    log=print):
    """A bidirectional layer at B = 1 (each shape's T, I, H, one layer), clstm at
    ``threads`` threads against 1, interleaved: the two directions run at once, one per
    thread. One row per (shape, dtype, mode)."""
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            x = _input(shape, dtype, B=1)
            net = clstm.LSTM(shape.I, shape.H, 1, bidirectional=True, dtype=dtype, seed=0)
            dy = np.ones((shape.T, 1, 2 * shape.H), dtype)
            for mode in modes:
                call = _clstm_call(net, x, None, mode, dy)
                timings = interleaved({1: _with_threads(1, call),
                                       threads: _with_threads(threads, call)},
                                      repeats, warmup, min_time)
                row = dict(shape=shape.name, T=shape.T, I=shape.I, H=shape.H, dtype=dtype,
                           mode=mode, threads=threads, one_thread_s=timings[1].median,
                           n_threads_s=timings[threads].median,
                           best_s={1: timings[1].best, threads: timings[threads].best})
                row["speedup"] = row["one_thread_s"] / row["n_threads_s"]
                row["best_speedup"] = timings[1].best / timings[threads].best
                rows.append(row)
                log(f"  bidir B=1 {shape.name} {dtype} {mode}: 1 thr {row['one_thread_s'] * 1e3:.2f}"
                    f" ms, {threads} thr {row['n_threads_s'] * 1e3:.2f} ms, "
                    f"{row['speedup']:.2f}x (best samples {row['best_speedup']:.2f}x)")
    return rows


def _row_line(r):
    m = r["median_s"]
    return (f"  varlen {r['shape']} {r.get('cell', 'lstm')} {r['dtype']} bidir={int(r['bidirectional'])} {r['mode']} "
            f"{r['threads']}thr: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in m.items())
            + f" ms | torch packed / clstm {r['torch_packed_vs_clstm']:.2f}x, torch padded "
            f"/ clstm {r['torch_padded_vs_clstm']:.2f}x"
            + ("" if "floor_s" not in r else
               f" | floor {r['floor_s'] * 1e3:.2f} ms, clstm {_pct(r['clstm_of_peak'])} of "
               f"peak, best possible vs packed {r['best_possible_vs_packed']:.2f}x"))


def _ms(s):
    return "—" if s is None or math.isnan(s) else (f"{s * 1e3:.3g}" if s < 0.1 else
                                                   f"{s * 1e3:.0f}")


def _x(ratio, target=None, best_possible=math.nan):
    """A ratio, and under its target what the miss is: below it, or beyond the GEMM
    peak when even an implementation at the floor (``best_possible``) misses it."""
    if is_nan(ratio):
        return "—"
    miss = target is not None and ratio < target
    return f"{ratio:.2f}×" + (f" ({miss_text(target, best_possible)})" if miss else "")


def _pct(fraction):
    return "—" if is_nan(fraction) else f"{100 * fraction:.0f}%"


def varlen_table(rows, stat="median"):
    """Markdown of the rows, from their medians or (``stat="best"``) their best
    samples."""
    rows = [_ratios(dict(r), stat) for r in rows]
    header = ["shape", "cell", "dtype", "bidir", "mode", "thr", "clstm padded ms",
              "clstm lengths ms", "torch packed ms", "torch padded ms", "lengths vs padded",
              f"torch packed / clstm (target {TARGET_VS_PACKED:g}×)",
              "torch padded / clstm (target > 1×)", "floor ms", "clstm of peak",
              "best possible vs torch packed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        m = r[f"{stat}_s"]
        lines.append("| " + " | ".join(str(c) for c in [
            r["shape"], r.get("cell", "lstm"), r["dtype"], "yes" if r["bidirectional"] else "no", r["mode"],
            r["threads"], _ms(m["clstm padded"]), _ms(m["clstm lengths"]),
            _ms(m.get("torch packed", math.nan)), _ms(m.get("torch padded", math.nan)),
            _x(r["lengths_vs_padded"]),
            _x(r["torch_packed_vs_clstm"], TARGET_VS_PACKED, r["best_possible_vs_packed"]),
            _x(r["torch_padded_vs_clstm"], TARGET_VS_PADDED, r["best_possible_vs_padded"]),
            _ms(r.get("floor_s", math.nan)), _pct(r["clstm_of_peak"]),
            _x(r["best_possible_vs_packed"])]) + " |")
    return "\n".join(lines)


def b1_table(rows, stat="median"):
    if stat == "best":
        rows = [dict(r, one_thread_s=r["best_s"][1], n_threads_s=r["best_s"][r["threads"]],
                     speedup=r["best_speedup"]) for r in rows]
    header = ["shape (T, I, H)", "dtype", "mode", "1 thread ms", "n threads ms",
              f"1 thread / n threads (target {TARGET_B1_SCALING:g}×)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in [
            f"{r['shape']} ({r['T']}, {r['I']}, {r['H']})", r["dtype"], r["mode"],
            _ms(r["one_thread_s"]), f"{_ms(r['n_threads_s'])} ({r['threads']} thr)",
            _x(r["speedup"], TARGET_B1_SCALING)]) + " |")
    return "\n".join(lines)


def floor_note(rows):
    """The table's footnote: what the floor columns are, and the peaks this run measured."""
    measured, used = {}, {}
    for r in rows:
        if "peak_gflops" in r:
            used[r["dtype"], r["threads"]] = r["peak_gflops"]
            for m, g in r.get("peaks_measured_gflops", {}).items():
                measured[r["dtype"], int(m)] = g
    if not used:
        return "Floor columns: not measured (--no-floor or no peak given)."
    return ("*floor ms* = the FLOPs of the GEMMs over the valid steps only (per layer and "
            "direction 2·sum(lengths)·(I_k + H)·G·H, G = 4 for an LSTM and 3 for a GRU, I_k = "
            "I for the first layer and D·H above it; training counts the backward GEMMs as "
            "bench/ceiling.py does, about 3× the forward, no input gradient) at the rate of a "
            "large square GEMM through SciPy's BLAS at the same dtype and thread count, "
            "measured in this run before and after the rows (best sample: "
            + ", ".join(f"{d} {n} thr {g:.0f} GFLOP/s" for (d, n), g in sorted(measured.items()))
            + "), n threads credited with at least n × the 1-thread rate (a GEMM does not "
            "scale past linearly; on a shared machine the n-thread one times slow): rates "
            "used " + ", ".join(f"{d} {n} thr {g:.0f}" for (d, n), g in sorted(used.items()))
            + " GFLOP/s. *clstm of peak* = floor / clstm-with-lengths time (past 100%: clstm's "
            "packed kernels beat OpenBLAS's large-GEMM rate). *best possible vs torch packed* "
            "= torch packed time / floor (or / clstm's time where clstm was faster than the "
            "floor): the best ratio an implementation whose time is its GEMMs could reach "
            "(gate math and memory traffic left out, so generous). Where it is below the "
            "target, the row says *target beyond the GEMM peak* instead of *below target*.")


def describe():
    return ("Lengths uniform in [T/4, T] (seed 0); clstm padded = the same batch without "
            "lengths; torch packed = pack_padded_sequence(enforce_sorted=False) -> "
            "nn.LSTM -> pad_packed_sequence; training = forward + backward of the sum of "
            "the outputs (clstm: no input gradient). Ratios > 1: clstm with lengths faster.")


def _fresh_peaks(args):
    """(dtype, threads) -> the large square GEMM's GFLOP/s, timed anew at each call (a
    GemmCeiling caches its timings; varlen_rows asks before and after the rows)."""
    return lambda dtype, threads: GemmCeiling(
        repeats=max(3, args.repeats), min_time=args.min_time).peak_gflops(dtype, threads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="S2,S3")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--cell", default="lstm", help="lstm (default), gru or both")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--modes", default="fwd,train")
    ap.add_argument("--bidirectional", default="0,1")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-b1", action="store_true",
                    help="leave out the bidirectional B = 1 thread-scaling rows")
    ap.add_argument("--no-floor", action="store_true",
                    help="do not measure the large square GEMM peak (no floor columns)")
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="the tables from each contender's median sample (default) or its "
                         "best one (on a shared machine: the least disturbed)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU time instead of wall time, at 1 thread "
                         "only (on a machine shared with other jobs, the time slices they "
                         "take are then not counted; 2-thread and B = 1 rows are left out)")
    args = ap.parse_args(argv)
    try:
        cells = parse_cells(args.cell)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if args.cpu_time:
        args.threads, args.no_b1 = "1", True
    torch = None
    if not args.no_torch:
        import torch
    shapes = parse_shapes(args.shapes)
    dtypes = args.dtypes.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    modes = args.modes.split(",")
    rows = varlen_rows([s for s in shapes if s.B > 1], dtypes, threads, modes,
                       [int(b) for b in args.bidirectional.split(",")], args.repeats,
                       args.min_time, torch=torch,
                       clock=time.process_time if args.cpu_time else time.perf_counter,
                       cells=cells,
                       peaks=None if args.no_floor else _fresh_peaks(args))
    print(describe() + (" Timed in CPU seconds of this process (--cpu-time)."
                        if args.cpu_time else "")
          + (" Best samples (--stat best), not medians." if args.stat == "best" else ""))
    print()
    print(varlen_table(rows, args.stat))
    print()
    print(floor_note(rows))
    if not args.no_b1 and max(threads) > 1:
        b1 = b1_scaling_rows(shapes, dtypes, modes, max(threads), args.repeats,
                             args.min_time)
        print()
        print(b1_table(b1, args.stat))


if __name__ == "__main__":
    main()

