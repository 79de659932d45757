"""The floor of the benchmark reports (bench/targets.py, bench.ceiling.valid_flops): the
FLOP counting against hand computations and the ceiling's own GEMM list, and the verdicts
on fake timings ("below target" against "target beyond the GEMM peak")."""
import math
import types

import numpy as np
import pytest

pytest.importorskip("bench", reason="bench/ is not next to the tests")  # tests/conftest.py imports it
from bench import report, targets, varlen  # noqa: E402
from bench.ceiling import floor_seconds, rate_bound, valid_flops  # noqa: E402
from bench.shapes import SHAPES, Shape, ideal_gemms, with_cell  # noqa: E402


# I = 3, H = 2, two layers, two sequences of lengths 1 and 3 (T = 3): 4 valid steps.
SMALL = Shape("small", B=2, T=3, I=3, H=2, L=2)
SMALL_LENGTHS = np.array([1, 3])


# ------------------------------------------------------------------ FLOP counting

def test_valid_flops_of_a_bidirectional_two_layer_lstm_by_hand():
    # N = 4 valid steps, G = 4H = 8 gate rows; layer 1 reads both directions: I_1 = 2H = 4.
    # forward, per direction: layer 0 2·4·3·8 + 2·4·2·8 = 192 + 128 = 320,
    #                         layer 1 2·4·4·8 + 128 = 384
    assert valid_flops(SMALL, "fwd", SMALL_LENGTHS, directions=2) == 2 * (320 + 384)
    # training, per direction: layer 0 320 + 128 (recurrent backward) + 2·8·3·4 = 192
    # (dW_ih) + 128 (dW_hh) = 768, no input gradient; layer 1 384 + 128 + 2·8·4·4 = 256
    # + 128 + 256 (input gradient, it feeds layer 0) = 1152
    assert valid_flops(SMALL, "train", SMALL_LENGTHS, directions=2) == 2 * (768 + 1152)
    # layer 0's input gradient when asked for: + 2·4·3·8 = 192 per direction
    assert valid_flops(SMALL, "train", SMALL_LENGTHS, directions=2,
                       input_grad=True) == 2 * (768 + 192 + 1152)


def test_valid_flops_of_a_gru_count_three_gate_blocks_by_hand():
    gru = with_cell(SMALL, "gru")  # G = 3H = 6
    # forward, per direction: layer 0 2·4·3·6 + 2·4·2·6 = 144 + 96 = 240;
    # layer 1 2·4·4·6 + 96 = 288
    assert valid_flops(gru, "fwd", SMALL_LENGTHS, directions=2) == 2 * (240 + 288)
    # one direction: layer 1 reads H = 2 features: 2·4·2·6 + 96 = 192
    assert valid_flops(gru, "fwd", SMALL_LENGTHS) == 240 + 192


def test_valid_flops_without_lengths_count_every_step():
    one = Shape("one", B=2, T=3, I=3, H=2, L=1)
    assert valid_flops(one, "fwd") == 2 * 6 * (3 + 2) * 8  # T·B = 6 steps
    assert valid_flops(one, "fwd", [3, 3]) == valid_flops(one, "fwd")
    assert valid_flops(one, "fwd", [1, 1]) == valid_flops(one, "fwd") // 3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("mode", ["fwd", "train"])
@pytest.mark.parametrize("input_grad", [False, True])
def test_valid_flops_at_full_length_are_the_ceilings_gemms(cell, mode, input_grad):
    """One direction, every step valid: the same FLOPs as the ceiling's GEMM list (counted
    there product by product)."""
    for shape in SHAPES.values():
        shape = with_cell(shape, cell)
        full = np.full(shape.B, shape.T)
        want = sum(g.flops for g in ideal_gemms(shape, mode, input_grad=input_grad))
        assert valid_flops(shape, mode, input_grad=input_grad) == want
        assert valid_flops(shape, mode, full, input_grad=input_grad) == want


def test_valid_flops_refuse_bad_input():
    with pytest.raises(ValueError, match="expected 2 lengths"):
        valid_flops(SMALL, "fwd", [1, 2, 3])
    with pytest.raises(ValueError, match=r"values in \[1, 3\], got \[0, 3\]"):
        valid_flops(SMALL, "fwd", [0, 3])
    with pytest.raises(ValueError, match=r"values in \[1, 3\]"):
        valid_flops(SMALL, "fwd", [1, 4])
    with pytest.raises(TypeError, match="expected integers"):
        valid_flops(SMALL, "fwd", [1.0, 2.5])
    with pytest.raises(ValueError, match="mode"):
        valid_flops(SMALL, "both")
    with pytest.raises(ValueError, match="directions"):
        valid_flops(SMALL, "fwd", directions=3)


def test_floor_is_the_flops_at_the_peak():
    assert floor_seconds(2e9, 100.0) == pytest.approx(0.02)


def test_the_rate_bound_credits_n_threads_with_n_times_one():
    assert rate_bound({1: 100.0, 2: 205.0}, 2) == 205.0   # quiet: the measured one
    assert rate_bound({1: 100.0, 2: 60.0}, 2) == 200.0    # second core taken: 2 x 1
    assert rate_bound({"1": 100.0, "2": 60.0}, 2) == 200.0  # keys read back from JSON
    assert rate_bound({1: 100.0, 2: 205.0}, 1) == 100.0   # never a larger count's rate
    with pytest.raises(ValueError, match="a rate at 1 thread"):
        rate_bound({2: 205.0}, 1)


# ------------------------------------------------------------------ verdicts

def test_the_verdict_switches_where_the_floor_meets_the_target():
    assert targets.verdict(3.0, 3.0, 1.0) == "met"
    assert targets.verdict(2.9, 3.0, 3.0) == "below target"  # at the floor: just reachable
    assert targets.verdict(2.9, 3.0, 2.99) == \
        "target beyond the GEMM peak (best possible 2.99×)"
    assert targets.verdict(2.9, 3.0, math.nan) == "below target"  # no floor: no claim
    assert targets.verdict(math.nan, 3.0, 2.0) == "—"


def fake_varlen_row(floor_s=None, packed=2.0, padded=0.9):
    """A row as varlen_rows makes it, with made-up times: clstm with lengths 1 s."""
    times = {"clstm padded": 1.5, "clstm lengths": 1.0, "torch packed": packed,
             "torch padded": padded}
    row = dict(shape="S3", cell="lstm", dtype="float32", bidirectional=False, mode="fwd",
               threads=1, median_s=times, best_s=dict(times))
    if floor_s is not None:
        row.update(floor_s=floor_s, peak_gflops=100.0, peaks_measured_gflops={1: 100.0})
    return row


def _packed_cell(table):
    """The torch packed / clstm cell of a one-row varlen table."""
    header, _, row = table.splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    return dict(zip(names, cells))


def test_varlen_rows_say_beyond_the_peak_only_when_the_floor_cannot_reach_the_target():
    packed = f"torch packed / clstm (target {varlen.TARGET_VS_PACKED:g}×)"
    # torch packed 2 s, floor 0.8 s: at best 2.5x < 3x -> beyond the peak
    beyond = _packed_cell(varlen.varlen_table([fake_varlen_row(floor_s=0.8)]))
    assert beyond[packed] == "2.00× (target beyond the GEMM peak (best possible 2.50×))"
    assert beyond["floor ms"] == "800"
    assert beyond["clstm of peak"] == "80%"
    assert beyond["best possible vs torch packed"] == "2.50×"
    # floor 0.5 s: 4x was possible -> an honest miss
    below = _packed_cell(varlen.varlen_table([fake_varlen_row(floor_s=0.5)]))
    assert below[packed] == "2.00× (below target)"
    assert below["best possible vs torch packed"] == "4.00×"
    # the padded target has its own bound: torch padded 0.9 s / floor 0.8 s = 1.125x > 1x
    assert beyond["torch padded / clstm (target > 1×)"] == "0.90× (below target)"
    # met: no verdict text at all
    met = _packed_cell(varlen.varlen_table([fake_varlen_row(floor_s=0.2, packed=3.5)]))
    assert met[packed] == "3.50×"
    # without a floor (--no-floor, older results): as before, and "—" in the new columns
    plain = _packed_cell(varlen.varlen_table([fake_varlen_row()]))
    assert plain[packed] == "2.00× (below target)"
    assert plain["floor ms"] == plain["clstm of peak"] == "—"
    assert plain["best possible vs torch packed"] == "—"


def test_varlen_floor_is_never_above_clstms_own_time():
    """clstm faster than the floor (its kernels past OpenBLAS's rate): its own time bounds
    the ratio, so the row never says less is possible than what ran."""
    packed = f"torch packed / clstm (target {varlen.TARGET_VS_PACKED:g}×)"
    cells = _packed_cell(varlen.varlen_table([fake_varlen_row(floor_s=1.25)]))
    assert cells["clstm of peak"] == "125%"
    assert cells["best possible vs torch packed"] == "2.00×"
    assert cells[packed] == "2.00× (target beyond the GEMM peak (best possible 2.00×))"


def test_varlen_best_samples_use_the_same_floor():
    row = fake_varlen_row(floor_s=0.8)
    row["best_s"] = dict(row["best_s"], **{"torch packed": 2.6})  # 3.25x: now reachable
    cells = _packed_cell(varlen.varlen_table([row], "best"))
    assert cells["best possible vs torch packed"] == "3.25×"
    assert "(below target)" in cells[f"torch packed / clstm (target {varlen.TARGET_VS_PACKED:g}×)"]


def test_varlen_footnote_defines_the_floor_and_names_the_peaks():
    note = varlen.floor_note([fake_varlen_row(floor_s=0.8),
                              dict(fake_varlen_row(floor_s=0.4), threads=2, peak_gflops=200.0,
                                   peaks_measured_gflops={1: 100.0, 2: 150.0})])
    assert "float32 1 thr 100 GFLOP/s, float32 2 thr 150 GFLOP/s" in note  # measured
    assert "rates used float32 1 thr 100, float32 2 thr 200 GFLOP/s" in note
    assert "torch packed time / floor" in note and "target beyond the GEMM peak" in note
    assert "not measured" in varlen.floor_note([fake_varlen_row()])


def test_each_varlen_row_gets_its_floor_from_the_peak_at_its_dtype_and_threads():
    """varlen_rows asks for the peak of every (dtype, threads) before and after the rows
    and keeps the best, and each row's floor is its valid FLOPs at that rate (tiny shape,
    times not read)."""
    asked = []

    def peaks(dtype, threads):  # slower before the rows than after
        asked.append((dtype, threads))
        return 50.0 * threads * (0.5 if len(asked) <= 2 else 1.0)

    def loaded(dtype, threads):  # the second core taken: 2 threads slower than 1
        return {1: 80.0, 2: 60.0}[threads]

    shape = Shape("tiny", B=3, T=6, I=4, H=5, L=1)
    rows = varlen.varlen_rows([shape], ["float64"], [1, 2], ["fwd", "train"], [0, 1], 1,
                              min_time=0.0, warmup=0, log=lambda _: None, peaks=peaks,
                              cells=("lstm", "gru"))
    assert sorted(asked) == [("float64", 1)] * 2 + [("float64", 2)] * 2
    lengths = varlen.draw_lengths(shape)
    assert len(rows) == 16
    for r in rows:
        flops = valid_flops(with_cell(shape, r["cell"]), r["mode"], lengths,
                            2 if r["bidirectional"] else 1)
        assert r["valid_flops"] == flops
        assert r["peak_gflops"] == 50.0 * r["threads"]
        assert r["floor_s"] == pytest.approx(flops / (50e9 * r["threads"]))
        assert r["peaks_measured_gflops"] == {1: 50.0, 2: 100.0}
        assert r["clstm_of_peak"] == r["floor_s"] / r["median_s"]["clstm lengths"]
        assert math.isnan(r["best_possible_vs_packed"])  # no torch here
    rows = varlen.varlen_rows([shape], ["float32"], [2], ["fwd"], [0], 1, min_time=0.0,
                              warmup=0, log=lambda _: None, peaks=loaded)
    assert rows[0]["peak_gflops"] == 160.0  # 2 x the 1-thread rate, not the slow 2-thread one


def test_the_grid_passes_its_ceilings_peaks_to_the_varlen_rows():
    from bench.run import run_varlen

    class FakeCeiling:
        def peak_gflops(self, dtype, threads):
            return 123.0

    args = types.SimpleNamespace(shapes=[Shape("tiny", B=2, T=4, I=3, H=2, L=1)],
                                 dtypes=["float32"], threads=[1], modes=["fwd"],
                                 repeats=1, min_time=0.0, warmup=0, cells=["lstm"])
    out = run_varlen(args, [], FakeCeiling())
    assert {r["peak_gflops"] for r in out["rows"]} == {123.0}
    text = report.markdown(dict(machine=dict(cpu="cpu", cores=2, python="3", versions={},
                                             blas=[]),
                                config={"peers": []}, cells=[], varlen=out))
    assert "float32 1 thr 123 GFLOP/s" in text


# ------------------------------------------------------------------ the grid's targets

def fake_grid_cell(shape="S3", dtype="float64", mode="fwd", threads=2, clstm=1.0,
                   peers=None, peaks=None, flops=2e9):
    """A grid cell as run_cell makes it, with made-up times and large-GEMM peaks
    (GFLOP/s per thread count); by default a floor of 1 s at 2 threads."""
    peers = peers or {"torch": 1.2, "torch-nodnnl": 1.25}
    impls = {"clstm": dict(median_s=clstm, error=None)}
    impls.update({n: dict(median_s=t, error=None) for n, t in peers.items()})
    peaks = peaks or {1: 1.0, 2: 2.0}
    best = min(peers, key=peers.get)
    by_threads = {n: dict(floor_s=flops / (g * 1e9), peak_gflops=g) for n, g in peaks.items()}
    return dict(shape=shape, cell="lstm", dtype=dtype, threads=threads, mode=mode,
                impls=impls, skipped={}, clstm_gflops=1.0, best_peer=best,
                ratio_best_peer=peers[best] / clstm,
                ceiling=dict(net_s=1.1, floor_s=min(e["floor_s"] for e in by_threads.values()),
                             by_threads=by_threads),
                ceiling_fraction=1.1 / clstm)


def test_grid_targets_follow_issue_9():
    assert targets.grid_target(fake_grid_cell(dtype="float64")).ratio == 1.3
    assert targets.grid_target(fake_grid_cell(dtype="float64")).peers == targets.PYTORCH_PEERS
    assert targets.grid_target(fake_grid_cell(shape="S1", dtype="float64")) is None
    assert targets.grid_target(fake_grid_cell(shape="S1", dtype="float32",
                                              mode="train")).ratio == 3.0
    assert targets.grid_target(fake_grid_cell(shape="S1", dtype="float32")).ratio == 1.0
    assert targets.grid_target(fake_grid_cell(shape="S5", dtype="float32",
                                              mode="train")).peers is None


def test_grid_verdict_uses_the_floor_at_the_cells_own_thread_count():
    # PyTorch 1.2 s, clstm 1.0 s: 1.2x < 1.3x; the floor at 2 threads is 1.0 s, so at
    # best 1.2x: beyond the peak
    cell = fake_grid_cell()
    assert targets.cell_floor_s(cell) == pytest.approx(1.0)
    # a loaded machine's 2-thread GEMM slower than its 1-thread one: 2 x the 1-thread rate
    assert targets.cell_floor_s(fake_grid_cell(peaks={1: 1.0, 2: 0.5})) == pytest.approx(1.0)
    # a 1-thread cell never takes a 2-thread rate
    assert targets.cell_floor_s(fake_grid_cell(threads=1)) == pytest.approx(2.0)
    assert targets.grid_verdict(cell) == (
        "≥1.3× PyTorch: 1.20×, target beyond the GEMM peak (best possible 1.20×)")
    # a floor of 0.8 s: 1.5x was possible
    assert targets.grid_verdict(fake_grid_cell(peaks={1: 1.25, 2: 2.5})) == (
        "≥1.3× PyTorch: 1.20×, below target (best possible 1.50×)")
    # clstm (0.5 s) faster than the floor (1 s): its own time is the bound, never less
    fast = fake_grid_cell(clstm=0.5, peers={"torch": 0.6})
    assert targets.grid_verdict(fast) == ("≥1.3× PyTorch: 1.20×, target beyond the GEMM "
                                          "peak (best possible 1.20×); clstm at 200% of the peak")
    assert targets.grid_verdict(fake_grid_cell(clstm=0.9)) == "≥1.3× PyTorch: 1.33×, met"
    assert targets.grid_verdict(fake_grid_cell(shape="S1")) == "—"


def test_grid_verdict_reads_results_json_and_picks_the_targets_peers():
    # after a JSON round trip the thread counts are strings
    cell = fake_grid_cell()
    cell["ceiling"]["by_threads"] = {str(n): v for n, v in cell["ceiling"]["by_threads"].items()}
    assert targets.cell_floor_s(cell) == pytest.approx(1.0)
    # float64: the target is PyTorch, not a faster NumPy peer
    fast_numpy = fake_grid_cell(peers={"torch": 1.4, "numpy": 0.5})
    assert targets.grid_verdict(fast_numpy).startswith("≥1.3× PyTorch: 1.40×, met")
    # float32: every peer counts, a failed one does not
    f32 = fake_grid_cell(dtype="float32", peers={"torch": 1.4, "onnxruntime": 0.9})
    assert targets.grid_verdict(f32).startswith("≥1× best peer: 0.90×, target beyond")
    f32["impls"]["onnxruntime"]["error"] = "boom"
    assert targets.grid_verdict(f32) == "≥1× best peer: 1.40×, met"
    f32["impls"]["clstm"]["error"] = "boom"
    assert targets.grid_verdict(f32) == "≥1× best peer: —"


def test_the_grid_table_has_the_target_column():
    cell = fake_grid_cell()
    text = report.grid_table(dict(config={"peers": ["torch", "torch-nodnnl"]}, cells=[cell]))
    header, _, row = text.splitlines()
    assert header.rstrip(" |").endswith("target")
    assert row.rstrip(" |").endswith("target beyond the GEMM peak (best possible 1.20×)")
