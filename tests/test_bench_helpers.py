"""Benchmark helpers that need no timing: the --busy CPU hog, the --isa bookkeeping, and the
GRU rows (cells, FLOPs, the peers' GRU adapters, the report's cell column)."""
import os
import pathlib
import sys
import time

import numpy as np
import pytest

pytest.importorskip("bench", reason="bench/ is not next to the tests")  # tests/conftest.py imports it
REPO = pathlib.Path(__file__).resolve().parents[1]

from bench import busy, isa  # noqa: E402



@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity")
def test_cpu_hog_starts_pinned_and_is_killed():
    with busy.CpuHog(core=min(os.sched_getaffinity(0))) as hog:
        proc = hog.proc
        assert proc.poll() is None
        # the affinity is set by the child itself, right after start
        for _ in range(200):
            try:
                if os.sched_getaffinity(proc.pid) == {hog.core}:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        assert os.sched_getaffinity(proc.pid) == {hog.core}
    assert proc.poll() is not None  # killed and reaped on leaving the block
    assert hog.record["core"] == hog.core
    assert hog.stop() == hog.record  # idempotent


def test_isa_levels_and_coretypes():
    cpu = dict(model="x", avx512f=False, avx2=True, fma=True)
    assert isa.cpu_level(cpu) == "avx2"
    assert isa.check_level("avx2", cpu) is None
    assert "avx512f" in isa.check_level("avx512", cpu)
    assert isa.check_level("generic", dict(model="x", avx512f=False, avx2=False, fma=False)) is None
    assert set(isa.OPENBLAS_CORETYPE) == set(isa.LEVELS)


def test_clstm_isa_falls_back_without_kernels_isa():
    class Old:
        @staticmethod
        def gates_isa():
            return "c"

        @staticmethod
        def packed_gemm_isa():
            return "avx2"

    class New(Old):
        @staticmethod
        def isa():
            return "generic"

    assert isa.clstm_isa(Old)["level"] == "avx2"
    assert isa.clstm_isa(New) == dict(gates_isa="c", packed_gemm_isa="avx2", level="generic",
                                      source="kernels.isa()")


def test_varlen_rows_check_torch_and_render_with_targets():
    """The variable-length rows on a tiny shape: torch's packed output agrees with
    clstm's (the timed work is the same), the ratios are what the medians give, and the
    tables mark a miss of the targets."""
    torch = pytest.importorskip("torch")
    from bench import report, varlen
    from bench.shapes import Shape
    shape = Shape("tiny", B=3, T=6, I=4, H=5, L=1)
    lengths = varlen.draw_lengths(shape)
    assert lengths.min() >= 6 // 4 and lengths.max() <= 6
    rows = varlen.varlen_rows([shape], ["float32"], [1], ["fwd", "train"], [0, 1], 1,
                              min_time=0.0, warmup=0, torch=torch, log=lambda _: None)
    assert len(rows) == 4
    for r in rows:
        m = r["median_s"]
        assert set(m) == {"clstm padded", "clstm lengths", "torch packed", "torch padded"}
        assert r["torch_packed_vs_clstm"] == m["torch packed"] / m["clstm lengths"]
        if r["mode"] == "fwd":
            assert r["rel_error_vs_torch"] < 1e-5
    b1 = varlen.b1_scaling_rows([shape], ["float32"], ["fwd"], 2, 1, min_time=0.0,
                                warmup=0, log=lambda _: None)
    assert b1[0]["speedup"] == b1[0]["one_thread_s"] / b1[0]["n_threads_s"]
    # the tables take their ratios from the medians (or the best samples)
    slow = dict(rows[0], median_s={"clstm padded": 1.0, "clstm lengths": 1.0,
                                   "torch packed": 2.0, "torch padded": 0.9},
                best_s={"clstm padded": 1.0, "clstm lengths": 1.0, "torch packed": 4.0,
                        "torch padded": 1.5})
    assert varlen.varlen_table([slow]).count("(below target)") == 2
    assert "4.00×" in varlen.varlen_table([slow], "best")
    assert varlen.varlen_table([slow], "best").count("(below target)") == 0
    text = report.markdown(dict(
        machine=dict(cpu="cpu", cores=2, python="3", versions={}, blas=[]),
        config={"peers": []}, cells=[], varlen=dict(rows=rows, b1=b1)))
    assert "## Variable lengths and bidirectional layers" in text
    assert "(not run: --no-grid)" in text and "bidirectional layer at B = 1" in text


# ------------------------------------------------------------------ GRU rows of the grid

def test_cells_parse_and_a_gru_shape_counts_three_gate_blocks():
    from bench.shapes import (SHAPES, forward_flops, ideal_gemms, parse_cells, step_flops,
                              with_cell)

    assert parse_cells("lstm") == ["lstm"]
    assert parse_cells("gru") == ["gru"]
    assert parse_cells("both") == parse_cells("gru,lstm") == ["lstm", "gru"]
    with pytest.raises(ValueError, match="unknown cell"):
        parse_cells("rnn")
    with pytest.raises(ValueError, match="cell: expected one of lstm, gru"):
        with_cell(SHAPES["S1"], "rnn")
    s3, g3 = SHAPES["S3"], with_cell(SHAPES["S3"], "gru")
    assert g3.cell == "gru" and g3.gates == 3 and s3.gates == 4 and "GRU" in g3.label()
    assert forward_flops(g3) == 2 * 100 * 32 * (256 + 256) * 3 * 256
    assert step_flops(g3, "train") == 3 * forward_flops(g3)
    # every GEMM of the ceiling has 3H where the LSTM's has 4H
    for lstm, gru in zip(ideal_gemms(s3, "train"), ideal_gemms(g3, "train")):
        assert lstm.what == gru.what
        assert (gru.m, gru.n, gru.k) == tuple(3 * d // 4 if d == 4 * 256 else d
                                              for d in (lstm.m, lstm.n, lstm.k))


def tiny_gru_shape(layers=2):
    from bench.shapes import Shape, with_cell
    return with_cell(Shape("tiny", B=3, T=6, I=5, H=4, L=layers), "gru")


def test_gru_peers_compute_what_clstm_computes():
    """clstm.GRU, torch.nn.GRU and the NumPy reference on the same weights: outputs and
    weight gradients agree (what the grid's cross-check reads)."""
    pytest.importorskip("torch")
    from bench.peers import PEERS, ClstmPeer, make_input, make_params
    from bench.run import cross_check, rel_error

    shape = tiny_gru_shape()
    params, x = make_params(shape, "float64"), make_input(shape, "float64")
    assert params["weight_ih_l1"].shape == (12, 4)
    ours = ClstmPeer().setup(shape, "float64", 1, params, x)
    expected_y, expected_g = ours.forward_output(), ours.train_grads()
    assert set(expected_g) == set(params)
    for name in ("torch", "numpy"):
        peer = PEERS[name]()
        if peer.available():
            continue
        runner = peer.setup(shape, "float64", 1, params, x)
        runner.fwd()
        runner.train()
        assert rel_error(runner.forward_output(), expected_y) < 1e-12, name
        assert cross_check(runner, "train", expected_g) < 1e-10, name


def test_keras_and_jax_gru_adapters_reorder_and_compute_like_torch():
    """Keras and JAX are not installed here: their GRU adapters' NumPy parts are checked
    against the NumPy reference instead (the gate swap, its inverse on gradients, and the
    step the JAX scan runs)."""
    from bench.peers import (gru_step, keras_gru_weights, make_input, make_params,
                             swap_first_two_gate_blocks, torch_gru_grads_from_keras)

    w = np.repeat(np.arange(3.0), 2)[:, None]   # blocks r, z, n of H = 2 rows
    assert swap_first_two_gate_blocks(w, 2)[:, 0].tolist() == [1, 1, 0, 0, 2, 2]
    shape = tiny_gru_shape(layers=1)
    params, x = make_params(shape, "float64"), make_input(shape, "float64")
    kernel, recurrent, bias = keras_gru_weights(params, 0, shape.H)
    assert kernel.shape == (5, 12) and recurrent.shape == (4, 12) and bias.shape == (2, 12)
    back = {}
    for name, value in (("kernel", kernel), ("recurrent_kernel", recurrent), ("bias", bias)):
        back.update(torch_gru_grads_from_keras(0, name, value, shape.H))
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)

    sys.path.insert(0, str(REPO / "tests"))
    try:
        import reference
    finally:
        sys.path.remove(str(REPO / "tests"))
    expected = reference.reference_gru_forward(x, params, 1)[0]
    h = np.zeros((shape.B, shape.H))
    gi = x @ params["weight_ih_l0"].T + params["bias_ih_l0"]
    for t in range(shape.T):
        h = gru_step(np, reference.sigmoid, h, gi[t], params["weight_hh_l0"].T,
                     params["bias_hh_l0"])
        np.testing.assert_allclose(h, expected[t], rtol=1e-13, atol=1e-15)


def test_the_report_names_the_cell_of_each_row_when_a_grid_has_gru_rows():
    from bench import report

    def row(cell):
        return dict(shape="S1", cell=cell, dtype="float32", threads=1, mode="train",
                    impls={"clstm": dict(median_s=1e-3)}, skipped={}, clstm_gflops=1.0,
                    best_peer="torch", ratio_best_peer=2.0, ceiling=dict(net_s=5e-4),
                    ceiling_fraction=0.5)

    lstm_only = report.grid_table(dict(config=dict(peers=[]), cells=[row("lstm")]))
    assert "| cell |" not in lstm_only and lstm_only.splitlines()[2].startswith("| S1 | float32")
    both = report.grid_table(dict(config=dict(peers=[]), cells=[row("lstm"), row("gru")]))
    assert both.splitlines()[0].startswith("| shape | cell | dtype")
    assert both.splitlines()[3].startswith("| S1 | gru | float32 | 1 | train | 1 ")


def test_the_grid_and_varlen_take_a_cell_argument():
    from bench import run, varlen

    assert run.parse_args(["--quick"]).cells == ["lstm"]
    assert run.parse_args(["--quick", "--cell", "both"]).cells == ["lstm", "gru"]
    with pytest.raises(SystemExit, match="unknown cell"):
        run.parse_args(["--cell", "rnn"])
    with pytest.raises(SystemExit, match="unknown cell"):
        varlen.main(["--cell", "rnn"])


def test_streaming_times_a_gru_step_against_torch_and_the_table_names_the_cell():
    pytest.importorskip("torch")
    from bench import report, streaming

    row = streaming.run(1, "float64", 1, steps=20, with_nodnnl=False, cell="gru")
    assert row["cell"] == "gru" and row["clstm_call"] == "step"
    assert row["max_abs_diff_vs_torch"] < 1e-12      # the same GRU, step after step
    assert set(row["impls"]) == {"clstm", "torch"}
    lstm = dict(row, cell="lstm")
    table = report.streaming_table(dict(streaming=[lstm, row]))
    assert table.splitlines()[0].startswith("| cell | layers | dtype")
    assert table.splitlines()[3].startswith("| gru | 1 | float64 | 1 | ")
    assert "| cell |" not in report.streaming_table(dict(streaming=[lstm]))


def test_cells_examples_times_both_cells_interleaved_on_the_forecast_workload(capsys):
    from bench import cells_examples

    calls = []
    times = cells_examples.compare(lambda cell: (cell, None),
                                   lambda model, opt: calls.append(model), 2, rounds=3)
    # a warm-up call each, then rounds alternating which cell goes first
    assert calls == ["lstm", "gru", "lstm", "gru", "gru", "lstm", "lstm", "gru"]
    assert all(len(v) == 3 and min(v) >= 0 for v in times.values())
    threads = cells_examples.clstm.get_num_threads()
    try:
        rows = cells_examples.main(["--rounds", "1", "--workloads", "forecast",
                                    "--threads", "1"])
    finally:
        cells_examples.clstm.set_num_threads(threads)   # as the tests after this expect
    assert set(rows) == {"forecast"} and rows["forecast"]["ratio"] > 0
    assert "| forecast | " in capsys.readouterr().out


def test_busy_cli_reads_grid_names_and_custom_shapes():
    assert busy._parse_shape("S3").H == 256
    custom = busy._parse_shape("1:300:24:48:1")
    assert (custom.B, custom.T, custom.I, custom.H, custom.L) == (1, 300, 24, 48, 1)
    with pytest.raises(SystemExit, match="B:T:I:H:L"):
        busy._parse_shape("1,300")


def test_busy_table_covers_the_runs_cells():
    """`--busy` with `--cell both`: an n-thread / 1-thread row per shape and cell, and the
    report names the cell (a results file from before the GRU rows has none)."""
    from types import SimpleNamespace

    import clstm
    from bench import report
    from bench.peers import ClstmPeer
    from bench.shapes import Shape
    tiny = Shape("tiny", B=4, T=3, I=4, H=16, L=1)
    args = SimpleNamespace(threads=[1, 2], dtypes=["float64"], shapes=[tiny], modes=["fwd"],
                           repeats=1, warmup=0, min_time=0.0, cells=["lstm", "gru"])
    threads = clstm.get_num_threads()
    try:
        rows = busy.thread_ratio_table(args, ClstmPeer(), lambda line: None)
    finally:
        clstm.set_num_threads(threads)
    assert [(r["shape"], r["cell"], r["threads"]) for r in rows] == [
        ("tiny", "lstm", 2), ("tiny", "gru", 2)]
    assert all(r["ratio"] > 0 and not r["error"] for r in rows)
    table = report.busy_table({"busy": {"rows": rows, "target": 1.1}}).splitlines()
    assert table[0].startswith("| cell | shape | dtype | mode |")
    assert table[2].startswith("| LSTM | tiny |") and table[3].startswith("| GRU | tiny |")
    lstm_only = [{k: v for k, v in rows[0].items() if k != "cell"}]
    assert report.busy_table({"busy": {"rows": lstm_only}}).startswith("| shape | dtype |")


def test_busy_cli_takes_a_cell():
    with pytest.raises(SystemExit, match="--cell"):
        busy.main(["S1", "--cell", "rnn", "--quiet"])


def test_busy_variants_set_their_knobs_only_while_they_run_and_keep_their_own_pause():
    from clstm import kernels

    class Threads:          # stands in for the clstm module's set_num_threads
        def set_num_threads(self, n):
            self.n = n
    mod, seen = Threads(), []

    def call():
        seen.append((mod.n, kernels._set_row_handover(True), kernels._team_pause_state()))
        kernels._set_row_handover(False)          # what the variant set, put back as found
        kernels._team_pause_state((5, 8))         # a pause this variant's call started
    static = busy._variant_runner(kernels, mod, call, 2, busy.VARIANTS["static"])
    outer = kernels._team_pause_state((1, 2))
    try:
        static()
        static()
        assert kernels._team_pause_state() == (1, 2)     # the caller's pause, untouched
    finally:
        kernels._team_pause_state(outer)
    # off while it ran, its own pause carried from one of its calls to the next
    assert seen == [(2, False, (0, 0)), (2, False, (5, 8))]
    assert kernels._set_row_handover(True) is True       # restored afterwards


def test_interleaved_runs_before_sample_hooks_untimed_before_each_sample():
    from bench.timing import interleaved
    calls = []
    timings = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                          repeats=3, warmup=0, min_time=0.0,
                          before_sample={"a": lambda: calls.append("hook")})
    assert len(timings["a"].samples) == 3 and len(timings["b"].samples) == 3
    # every sample of "a" follows its hook; "b" has none
    for i, c in enumerate(calls):
        if c == "hook":
            assert calls[i + 1] == "a"
    assert calls.count("hook") == 3


def test_shapes_parse_grid_names_and_custom_shapes():
    """`python -m bench --shapes` takes grid names and B:T:I:H:L (or B,T,I,H,L in a ';'
    list); a custom shape reads back from its spec (the memory subprocess's argument)."""
    from bench import shapes
    got = shapes.parse_shapes("S2,8:150:40:96:1,s3")
    assert [s.name for s in got] == ["S2", "B8T150I40H96L1", "S3"]
    assert (got[1].B, got[1].T, got[1].I, got[1].H, got[1].L) == (8, 150, 40, 96, 1)
    assert [s.name for s in shapes.parse_shapes("S1;96,30,384,640,1")] == ["S1", "B96T30I384H640L1"]
    for shape in got:
        assert shapes.parse_shape(shapes.shape_spec(shape)) == shape
    for bad in ("S9", "1:2:3", "1:2:3:4:0", "a:b:c:d:e", ""):
        with pytest.raises(ValueError, match="shape"):
            shapes.parse_shapes(bad)


def test_custom_shapes_get_the_issue_targets():
    from bench.targets import grid_target
    assert grid_target(dict(shape="B8T150I40H96L1", dtype="float32", mode="train")).ratio == 1.0
    assert grid_target(dict(shape="S1", dtype="float32", mode="train")).ratio == 3.0
    assert grid_target(dict(shape="B8T150I40H96L1", dtype="float64", mode="fwd")).ratio == 1.3
    assert grid_target(dict(shape="S1", dtype="float64", mode="fwd")) is None


def test_knob_ab_times_the_gru_too(capsys):
    from bench import knob_ab
    knob_ab.main(["overlap_products", "1", "0", "--shapes", "1,8,3,16,1", "--cell", "both",
                  "--modes", "fwd", "--repeats", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "B/A" in line]
    assert len(lines) == 2 and "GRU" in lines[1] and "GRU" not in lines[0]
    with pytest.raises(SystemExit):
        knob_ab.main(["overlap_products", "1", "0", "--cell", "rnn"])
