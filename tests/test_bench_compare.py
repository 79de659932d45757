"""bench.compare: a run's results against the grid tables an old README printed."""
import pytest

pytest.importorskip("bench", reason="bench/ is not next to the tests")  # tests/conftest.py imports it
from bench import compare  # noqa: E402

OLD = """Some text.

| shape | dtype | thr | mode | clstm ms | GFLOP/s | torch ms | numpy ms | best peer | vs best peer |
|---|---|---|---|---|---|---|---|---|---|
| S2 | float32 | 1 | fwd | 10 | 96.8 | 12 | 30 | torch | 1.20× |
| S2 | float32 | 1 | train | 20 | 105.9 | skip | 60 | numpy | 3.00× |
| S3 | float32 | 2 | fwd | 10 | 1 | 11 | 50 | torch | 1.10× |

| shape | dtype | thr | clstm MiB | torch MiB |
|---|---|---|---|---|
| S2 | float32 | 2 | 13.3 | 72.3 |
"""


def _results(times):
    cells = []
    for (shape, dtype, thr, mode), impls in times.items():
        cells.append(dict(shape=shape, cell="lstm", dtype=dtype, threads=thr, mode=mode,
                          impls={k: dict(median_s=v / 1e3, error="") for k, v in impls.items()}))
    return dict(cells=cells)


def test_parse_reads_grid_rows_only():
    rows = compare.parse_grid_tables(OLD)
    assert set(rows) == {("S2", "lstm", "float32", 1, "fwd"), ("S2", "lstm", "float32", 1, "train"),
                         ("S3", "lstm", "float32", 2, "fwd")}
    assert rows[("S2", "lstm", "float32", 1, "train")] == {"clstm": 20.0, "numpy": 60.0}


def test_slower_needs_both_the_time_and_the_lead_to_drop():
    new = compare.results_rows(_results({
        ("S2", "float32", 1, "fwd"): {"clstm": 12.0, "torch": 14.4, "onnxruntime": 5.0},  # both +20%, lead kept
        ("S2", "float32", 1, "train"): {"clstm": 25.0, "numpy": 50.0},  # slower, lead 3x -> 2x
        ("S3", "float32", 2, "fwd"): {"clstm": 9.0, "torch": 11.0},  # faster
    }))
    records = {(r["shape"], r["mode"], r["thr"]): r
               for r in compare.compare(compare.parse_grid_tables(OLD), new, tolerance=0.10)}
    assert not records[("S2", "fwd", 1)]["slower"]
    # ONNX Runtime was not in the old table: the lead is over the old peers only
    assert records[("S2", "fwd", 1)]["new_vs_peers"] == 14.4 / 12.0
    assert records[("S2", "train", 1)]["slower"]
    assert records[("S3", "fwd", 2)]["time_ratio"] == 0.9 and not records[("S3", "fwd", 2)]["slower"]
    text = compare.table(list(records.values()))
    assert text.count("SLOWER") == 1
