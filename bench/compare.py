"""A run against the figures a README printed: is anything slower than it was?

    python -m bench.compare bench/results/results.json --readme-rev 4bc9c45

reads the grid tables (rows `| S3 | float32 | 2 | fwd | clstm ms | ... |`, with or without
a `cell` column) from README.md as it was at a git revision (or from a file, `--readme`),
and for every cell both have prints clstm's time then and now and the ratio against the
best of the peers the old table had (a run with more peers, ONNX Runtime for one, is then
compared on the old peers only). Absolute times compare two runs, possibly months apart
on another machine of the same kind: `--tolerance` (default 0.10) is the noise allowed
before a cell is called slower; the ratios come from one interleaved run each and are
the steadier measure.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY_COLUMNS = ("shape", "cell", "dtype", "thr", "mode")


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_grid_tables(text):
    """{(shape, cell, dtype, threads, mode): {"clstm": ms, peer: ms, ...}} from every
    markdown table whose header has shape, dtype, thr, mode and `clstm ms`."""
    rows, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells if {"shape", "dtype", "thr", "mode", "clstm ms"} <= set(cells) \
                else False
            continue
        if header is False or set(line) <= set("|-: "):
            continue
        row = dict(zip(header, cells))
        try:
            key = (row["shape"], row.get("cell", "lstm"), row["dtype"], int(row["thr"]),
                   row["mode"])
        except (KeyError, ValueError):
            continue
        times = {}
        for column, value in row.items():
            if column.endswith(" ms"):
                try:
                    times[column[:-3]] = float(value)
                except ValueError:
                    pass  # "skip", "—"
        rows[key] = times
    return rows


def results_rows(results):
    """The same mapping from a results.json (medians, in ms)."""
    rows = {}
    for cell in results.get("cells", []):
        key = (cell["shape"], cell.get("cell", "lstm"), cell["dtype"], int(cell["threads"]),
               cell["mode"])
        rows[key] = {name: impl["median_s"] * 1e3 for name, impl in cell["impls"].items()
                     if impl.get("median_s") and not impl.get("error")}
    return rows


def compare(old, new, tolerance=0.10):
    """One record per cell in both: old/new clstm ms, their ratio, and old/new speed-up
    over the best of the old table's peers."""
    out = []
    for key in sorted(set(old) & set(new)):
        before, now = old[key], new[key]
        if "clstm" not in before or "clstm" not in now:
            continue
        peers = [p for p in before if p != "clstm" and p in now]
        best_then = min((before[p] for p in peers), default=None)
        best_now = min((now[p] for p in peers), default=None)
        record = dict(zip(KEY_COLUMNS, key), old_ms=before["clstm"], new_ms=now["clstm"],
                      time_ratio=now["clstm"] / before["clstm"], peers=peers,
                      old_vs_peers=best_then / before["clstm"] if best_then else None,
                      new_vs_peers=best_now / now["clstm"] if best_now else None)
        record["slower"] = record["time_ratio"] > 1 + tolerance and (
            record["new_vs_peers"] is None or record["old_vs_peers"] is None
            or record["new_vs_peers"] < record["old_vs_peers"] * (1 - tolerance))
        out.append(record)
    return out


def readme_at(rev):
    return subprocess.run(["git", "show", f"{rev}:README.md"], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True).stdout


def table(records):
    lines = ["| shape | cell | dtype | thr | mode | clstm ms then | now | now / then "
             "| vs old peers then | now | verdict |", "|---" * 11 + "|"]
    for r in records:
        def ratio(v):
            return f"{v:.2f}×" if v else "—"
        lines.append(f"| {r['shape']} | {r['cell']} | {r['dtype']} | {r['thr']} | {r['mode']} "
                     f"| {r['old_ms']:.3g} | {r['new_ms']:.3g} | {r['time_ratio']:.2f} "
                     f"| {ratio(r['old_vs_peers'])} | {ratio(r['new_vs_peers'])} "
                     f"| {'SLOWER' if r['slower'] else 'ok'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results.json written by python -m bench")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--readme-rev", help="git revision whose README.md holds the old tables")
    src.add_argument("--readme", help="a file with the old tables")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="noise allowed: slower means clstm's time grew by more than this "
                         "share AND its lead over the old peers shrank by more than it")
    args = ap.parse_args(argv)
    old = parse_grid_tables(Path(args.readme).read_text() if args.readme
                            else readme_at(args.readme_rev))
    new = results_rows(json.loads(Path(args.results).read_text()))
    records = compare(old, new, args.tolerance)
    if not records:
        print("no cell in common", file=sys.stderr)
        return 1
    print(table(records))
    slower = [r for r in records if r["slower"]]
    print(f"\n{len(records)} cells compared, {len(slower)} slower (tolerance "
          f"{args.tolerance:.0%}: time up by more and lead over the old peers down by more).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
