"""The speed targets the reports are held to, and whether the hardware allows them.

A target is a ratio: a peer's time / clstm's time of at least `ratio`. The hardware bounds
that ratio: no implementation whose time is its GEMMs runs faster than the floor, the
FLOPs of the GEMMs it cannot avoid at the rate of a large square GEMM at the same dtype
and thread count (bench/ceiling.py). So the best ratio any implementation can reach is

    best possible = peer time / floor

and where that is below the target, the target is beyond the GEMM peak: missing it says
nothing about clstm. Where clstm itself ran faster than the floor (its packed kernels can
pass OpenBLAS's large-GEMM rate by a few percent), its own time is the floor instead: the
bound never says less than what ran. On n threads the rate is at least n x the 1-thread
one (bench.ceiling.rate_bound): on a shared machine the n-thread GEMM can time slow.
The bound is generous on purpose: the floor counts the GEMMs only (no gate math, no
memory traffic) at the best sample of the large GEMM, while peer times are medians; a
register-only FMA loop measured a few percent above the large GEMM's rate (README,
"Speed"), which is the one way past it. And it is only as good as the peak: a peak timed
low on a busy machine makes the floor long and a target look beyond it, so the peak is
the best of many samples (GemmCeiling.PEAK_REPEATS).

Issue 9's ratio targets for the main grid (`grid_target`); issue 10's for the variable
length rows live in bench/varlen.py (TARGET_VS_PACKED, TARGET_VS_PADDED).
"""

import math
from dataclasses import dataclass

from bench.ceiling import floor_seconds, rate_bound

#: PyTorch's two paths in the grid: oneDNN on and off.
PYTORCH_PEERS = ("torch", "torch-nodnnl")


@dataclass(frozen=True)
class Target:
    """At least `ratio` x the fastest of `peers` (None: of every peer) in this cell."""

    ratio: float
    peers: tuple = None
    against: str = "best peer"

    def label(self):
        return f"≥{self.ratio:g}× {self.against}"


def grid_target(cell):
    """Issue 9's ratio target for one grid cell (a results dict), or None.

    float32: at least 1x the best peer in training and inference (ONNX Runtime included),
    3x in S1's training step; float64: at least 1.3x PyTorch on S2-S5 (custom shapes,
    bench.shapes.parse_shape, are held to the same as S2-S5). The issue's 90%-of-
    ceiling target is not a ratio to a peer: the report's "of ceiling" column shows it.
    """
    shape, dtype, mode = cell["shape"], cell["dtype"], cell["mode"]
    if dtype == "float32":
        return Target(3.0 if (shape, mode) == ("S1", "train") else 1.0)
    if dtype == "float64" and shape != "S1":     # S2-S5, and custom shapes alike
        return Target(1.3, PYTORCH_PEERS, "PyTorch")
    return None


def is_nan(x):
    return x is None or (isinstance(x, float) and math.isnan(x))


def miss_text(target, best_possible):
    """What a missed target says: beyond the GEMM peak when even an implementation at the
    floor could not reach it, else just below."""
    if not is_nan(best_possible) and best_possible < target:
        return f"target beyond the GEMM peak (best possible {best_possible:.2f}×)"
    return "below target"


def verdict(ratio, target, best_possible):
    """"met", or `miss_text`; "—" without a ratio."""
    if is_nan(ratio):
        return "—"
    return "met" if ratio >= target else miss_text(target, best_possible)


def cell_floor_s(cell):
    """The cell's floor: its ceiling's FLOPs at the rate the cell's thread count cannot
    beat (bench.ceiling.rate_bound: the large GEMM's peak measured at that count, or n x
    the 1-thread one if more). The ceiling keeps its FLOPs at each thread count it tried
    as floor_s and peak_gflops, keyed by ints in memory and by strings once read back
    from results.json."""
    ceiling = cell.get("ceiling") or {}
    entries = {int(n): e for n, e in (ceiling.get("by_threads") or {}).items()
               if "floor_s" in e and "peak_gflops" in e}
    if not entries:
        return ceiling.get("floor_s", math.nan)
    some = next(iter(entries.values()))
    flops = some["floor_s"] * some["peak_gflops"] * 1e9
    try:
        rate = rate_bound({n: e["peak_gflops"] for n, e in entries.items()}, cell["threads"])
    except ValueError:
        return math.nan
    return floor_seconds(flops, rate)


def target_peer_s(cell, target):
    """Median time of the fastest peer the target is against (errors left out)."""
    times = [v["median_s"] for name, v in cell["impls"].items()
             if name != "clstm" and not v.get("error") and not is_nan(v.get("median_s"))
             and (target.peers is None or name in target.peers)]
    return min(times) if times else math.nan


def grid_verdict(cell):
    """The compact verdict of a grid cell against its target: "—" without one, else the
    ratio against the target's peers and "met", "below target (best possible 2.10×)" or
    "target beyond the GEMM peak (best possible 1.25×)"."""
    target = grid_target(cell)
    if target is None:
        return "—"
    clstm = cell["impls"].get("clstm", {})
    clstm_s = math.nan if clstm.get("error") else clstm.get("median_s", math.nan)
    peer_s = target_peer_s(cell, target)
    if is_nan(clstm_s) or is_nan(peer_s):
        return f"{target.label()}: —"
    ratio = peer_s / clstm_s
    gemm_floor = cell_floor_s(cell)
    # where clstm ran past the large GEMM's rate, its own time is the floor
    floor = min(gemm_floor, clstm_s)
    best_possible = peer_s / floor if floor and not is_nan(floor) else math.nan
    text = verdict(ratio, target.ratio, best_possible)
    if text == "below target" and not is_nan(best_possible):
        text += f" (best possible {best_possible:.2f}×)"
    if text != "met" and clstm_s < gemm_floor:
        text += f"; clstm at {100 * gemm_floor / clstm_s:.0f}% of the peak"
    return f"{target.label()}: {ratio:.2f}×, {text}"
