"""Results out: JSON (everything), Markdown (the tables), PNG (ratio to the best peer)."""

import json
import math
from pathlib import Path

from bench.targets import grid_verdict


def _ms(seconds):
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _x(ratio):
    if ratio is None or math.isnan(ratio):
        return "—"
    return f"{ratio:.2f}×"


def _pct(fraction):
    if fraction is None or math.isnan(fraction):
        return "—"
    return f"{100 * fraction:.0f}%"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _peer_ms(cell, name):
    entry = cell["impls"].get(name)
    if entry is None:
        return "skip" if name in cell["skipped"] else "—"
    return "err" if entry.get("error") else _ms(entry["median_s"])


def _with_cells(results):
    """Whether the grid has cells other than the LSTM's (then the table names each one's)."""
    return any(c.get("cell", "lstm") != "lstm" for c in results["cells"])


def grid_table(results):
    peers = results["config"]["peers"]
    name_cells = _with_cells(results)
    header = (["shape"] + (["cell"] if name_cells else [])
              + ["dtype", "thr", "mode", "clstm ms", "GFLOP/s"]
              + [f"{p} ms" for p in peers]
              + ["best peer", "vs best peer", "ceiling ms", "of ceiling", "target"])
    rows = []
    for cell in results["cells"]:
        clstm = cell["impls"].get("clstm", {})
        rows.append([cell["shape"]] + ([cell.get("cell", "lstm")] if name_cells else [])
                    + [cell["dtype"], cell["threads"], cell["mode"],
                       _ms(clstm.get("median_s")), f"{cell.get('clstm_gflops', math.nan):.1f}"]
                    + [_peer_ms(cell, p) for p in peers]
                    + [cell.get("best_peer") or "—", _x(cell.get("ratio_best_peer")),
                       _ms(cell["ceiling"]["net_s"]), _pct(cell.get("ceiling_fraction")),
                       grid_verdict(cell)])
    return _table(header, rows)


def memory_table(results):
    rows = []
    for m in results["memory"]:
        c, t = m.get("clstm", {}), m.get("torch", {})
        rows.append([m["shape"], m["dtype"], m["threads"],
                     f"{c['delta_mib']:.1f}" if "delta_mib" in c else c.get("error", "—"),
                     f"{t['delta_mib']:.1f}" if "delta_mib" in t else t.get("error", "—"),
                     _x(m.get("ratio"))])
    return _table(["shape", "dtype", "thr", "clstm MiB", "torch MiB", "torch / clstm"], rows)


def streaming_table(results):
    name_cells = any(s.get("cell", "lstm") != "lstm" for s in results["streaming"])
    with_onnx = any("onnxruntime" in s.get("impls", {}) or "onnxruntime" in s.get("skipped", {})
                    for s in results["streaming"])
    rows = []
    for s in results["streaming"]:
        cell = [s.get("cell", "lstm")] if name_cells else []
        if "error" in s:
            rows.append(cell + [s["layers"], s["dtype"], s["threads"], s["error"]]
                        + [""] * (6 if with_onnx else 4))
            continue
        imp = s["impls"]
        row = cell + [s["layers"], s["dtype"], s["threads"],
               f"{imp['clstm']['median_us']:.1f} ({s['clstm_call']})",
               f"{imp['torch']['median_us']:.1f}",
               f"{imp['torch-nodnnl']['median_us']:.1f}" if "torch-nodnnl" in imp else "—"]
        if with_onnx:
            row.append(f"{imp['onnxruntime']['median_us']:.1f}" if "onnxruntime" in imp
                       else "skip" if "onnxruntime" in s.get("skipped", {}) else "—")
        row += [_x(s["ratio_vs_torch"]), _x(s["ratio_vs_best_torch"])]
        if with_onnx:
            row.append(_x(s.get("ratio_vs_onnxruntime")))
        rows.append(row)
    header = (["cell"] if name_cells else []) + ["layers", "dtype", "thr", "clstm µs/step",
                                                 "torch µs/step", "torch-nodnnl µs/step"]
    header += ["onnxruntime µs/step"] if with_onnx else []
    header += ["torch / clstm", "best torch / clstm"]
    header += ["onnxruntime / clstm"] if with_onnx else []
    return _table(header, rows)


def busy_table(results):
    b = results["busy"]
    target = b.get("target", 1.1)
    # a cell column once a GRU is among the rows (results before it had LSTM rows only)
    name_cells = any(r.get("cell", "lstm") != "lstm" for r in b["rows"])
    rows = []
    for r in b["rows"]:
        ratio = r.get("ratio")
        rows.append(([r.get("cell", "lstm").upper()] if name_cells else [])
                    + [r["shape"], r["dtype"], r["mode"], _ms(r["one_thread_s"]),
                       f"{_ms(r['n_threads_s'])} ({r['threads']} thr)",
                       "—" if ratio is None else f"{ratio:.2f}"
                       + ("" if ratio <= target else f" (over {target})")])
    return _table((["cell"] if name_cells else [])
                  + ["shape", "dtype", "mode", "1 thread ms", "n threads ms",
                     "n threads / 1 thread"], rows)


def serving_table(results):
    from bench.serving import table
    return table(results["serving"])


def isa_line(results):
    from bench.isa import headline
    return headline(results["isa"]) if results.get("isa") else ""


def markdown(results):
    m = results["machine"]
    isa = isa_line(results)
    parts = [
        "# clstm benchmark",
        "",
        f"{m['cpu']}, {m['cores']} cores; Python {m['python']}; " + ", ".join(
            f"{k} {v}" for k, v in m["versions"].items() if v),
    ] + [
        f"BLAS and OpenMP: {'; '.join(m['blas'])}",
        f"clstm measured: `{m.get('clstm_file', '?')}` ({m.get('clstm_source', '?')})",
        "",
        "Times are medians of interleaved repeats (every implementation once per repeat, in "
        "rotating order), after warm-up.  GFLOP/s: forward 2·T·B·(I+H)·4H per layer "
        "(3H for a GRU), training 3× that.  *vs best peer* = best peer time / clstm time "
        "(>1: clstm faster).  "
        "*of ceiling* = time SciPy's BLAS needs for the GEMMs an ideal LSTM must run / clstm "
        "time (see bench/ceiling.py).  *target*: issue 9's ratio target for the cell "
        "(float32: ≥1× the best peer, ≥3× in S1's training step; float64: ≥1.3× PyTorch on "
        "S2-S5), the ratio against those peers and whether it is met; a miss says how far an "
        "implementation could go: *best possible* = that peer's time / the floor, the FLOPs "
        "of the cell's GEMMs (the ceiling's) at the rate of a large square GEMM at the same "
        "dtype and thread count, this run (bench/targets.py).  Below the target, it reads "
        "*target beyond the GEMM peak*: no implementation whose time is its GEMMs at that "
        "rate could meet it.",
        "",
        "## Whole sequences: inference (fwd) and training step (train)",
        "",
    ] + ([f"{isa}" + ("; under load (--busy)" if results.get("busy") else ""), ""]
         if isa else []) + [
        grid_table(results) if results["cells"] else "(not run: --no-grid)",
    ]
    if results.get("varlen"):
        from bench.varlen import b1_table, describe, floor_note, varlen_table
        v = results["varlen"]
        parts += ["", "## Variable lengths and bidirectional layers", "", describe(), "",
                  varlen_table(v["rows"]), "", floor_note(v["rows"])]
        if v.get("b1"):
            parts += ["", "A bidirectional layer at B = 1 (one layer, the shape's T, I, H): "
                      "the two directions run at once, one per thread.", "",
                      b1_table(v["b1"])]
    if results.get("memory"):
        parts += ["", "## Peak memory of one training step (RSS delta, fresh process)", "",
                  memory_table(results)]
    if results.get("streaming"):
        parts += ["", "## Streaming inference: one step per call, B = 1, I = H = 64", "",
                  streaming_table(results)]
    if results.get("busy"):
        b = results["busy"]
        hog = b.get("hog") or {}
        parts += ["", "## Under load (--busy): clstm's n-thread time / its 1-thread time", "",
                  f"A busy loop pinned to core {hog.get('core', '?')} ran beside the whole "
                  "run; for each cell clstm at the run's largest thread count and at 1 thread, "
                  f"interleaved, medians.  Target: <= {b.get('target', 1.1)} (an extra thread "
                  "must not cost much when its core is taken).", "", busy_table(results)]
    if results.get("serving"):
        sv = results["serving"]
        parts += ["", "## Serving from Python threads: one shared model", ""]
        if sv.get("error"):
            parts += [f"python -m bench.serving failed: {sv['error']}"]
        else:
            from bench.serving import describe
            parts += [describe(sv), "", serving_table(results)]
    if results.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    if results.get("phases"):
        parts += ["", f"Run time {results.get('elapsed_s', math.nan):.0f} s; wall / CPU seconds "
                  "by phase (CPU: every thread, and the memory subprocesses): " + ", ".join(
                      f"{k} {v['wall_s']:.0f} / {v['cpu_s']:.0f}"
                      for k, v in results["phases"].items()) + "."]
    return "\n".join(parts) + "\n"


def write_json(results, path):
    Path(path).write_text(json.dumps(results, indent=1, default=_jsonable))


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def chart(results, path):
    """Bar chart: ratio to the best peer per shape, training, float32, one bar per thread count.

    Returns None when written, else why not (matplotlib missing, nothing to plot).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"no chart: matplotlib not importable ({type(exc).__name__})"
    cells = [c for c in results["cells"]
             if c["mode"] == "train" and c["dtype"] == "float32"
             and c.get("ratio_best_peer") is not None and not math.isnan(c["ratio_best_peer"])]
    if not cells:
        return "no chart: no float32 training cell with a peer to compare"
    if _with_cells(results):  # one bar group per shape and cell: "S3", "S3 GRU"
        cells = [dict(c, shape=c["shape"] + ("" if c.get("cell", "lstm") == "lstm"
                                             else " " + c["cell"].upper())) for c in cells]
    shapes = sorted({c["shape"] for c in cells})
    threads = sorted({c["threads"] for c in cells})
    width = 0.8 / len(threads)
    fig, ax = plt.subplots(figsize=(1.6 * len(shapes) + 2, 4))
    for j, n in enumerate(threads):
        by_shape = {c["shape"]: c for c in cells if c["threads"] == n}
        xs = [i + (j - (len(threads) - 1) / 2) * width for i in range(len(shapes))]
        ys = [by_shape[s]["ratio_best_peer"] if s in by_shape else 0 for s in shapes]
        bars = ax.bar(xs, ys, width, label=f"{n} thread{'s' if n > 1 else ''}")
        for bar, s in zip(bars, shapes):
            if s in by_shape:
                ax.annotate(by_shape[s]["best_peer"], (bar.get_x() + bar.get_width() / 2, 0),
                            xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7, rotation=90, color="white")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_ylabel("best peer time / clstm time")
    ax.set_title("Training step, float32: clstm against its best peer (>1: clstm faster)",
                 fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
