"""The benchmark's ONNX Runtime peer computes what clstm computes (bench/onnx_lstm.py).

Skipped when onnx or onnxruntime is not installed, or when the benchmark package is not
next to the tests (clstm installed elsewhere).  No timing here.
"""

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytest.importorskip("bench", reason="bench/ is not next to the tests")  # tests/conftest.py imports it
from bench import onnx_lstm  # noqa: E402
from bench.peers import make_input, make_params  # noqa: E402
from bench.shapes import Shape  # noqa: E402


import clstm  # noqa: E402


def _clstm(shape, params):
    net = clstm.LSTM(shape.I, shape.H, shape.L, dtype="float32", seed=0)
    for name, value in params.items():
        net.params[name][...] = value
    net.eval()
    return net


@pytest.mark.parametrize("layers", [1, 2])
def test_onnx_forward_equals_clstm(layers):
    shape = Shape("tiny", B=3, T=7, I=5, H=6, L=layers)
    params, x = make_params(shape, "float32"), make_input(shape, "float32")
    session = onnx_lstm.make_session(onnx_lstm.build_model(params, layers, shape.H, "float32"), 1)
    got = session.run(["Y"], {"X": x})[0]
    want = np.asarray(_clstm(shape, params).forward(x)[0])
    assert got.shape == want.shape == (shape.T, shape.B, shape.H)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_onnx_stateful_steps_equal_clstm_sequence():
    """The streaming graph (initial and final states per layer) carried over single steps."""
    shape = Shape("tiny", B=2, T=5, I=4, H=3, L=2)
    params, x = make_params(shape, "float32"), make_input(shape, "float32")
    model = onnx_lstm.build_model(params, shape.L, shape.H, "float32", with_state=True)
    session = onnx_lstm.make_session(model, 1)
    zeros = np.zeros((1, shape.B, shape.H), dtype=np.float32)
    feed = {f"{v}0_l{k}": zeros for k in range(shape.L) for v in "hc"}
    names = ["Y"] + [f"{v}T_l{k}" for k in range(shape.L) for v in "hc"]
    ys = []
    for t in range(shape.T):
        feed["X"] = x[t:t + 1]
        out = session.run(names, feed)
        ys.append(out[0][0])
        feed.update({f"{v}0_l{k}": out[1 + 2 * k + j]
                     for k in range(shape.L) for j, v in enumerate("hc")})
    want = np.asarray(_clstm(shape, params).forward(x)[0])
    np.testing.assert_allclose(np.stack(ys), want, rtol=0, atol=1e-5)


def test_gate_reorder_is_i_o_f_c():
    w = np.repeat(np.arange(4.0), 2)[:, None]  # blocks i, f, g, o of H = 2 rows
    assert onnx_lstm.reorder_gates(w, 2)[:, 0].tolist() == [0, 0, 3, 3, 1, 1, 2, 2]


def test_float64_probe_answers():
    why = onnx_lstm.dtype_unsupported("float64")
    assert why is None or "float64" in why
    assert onnx_lstm.dtype_unsupported("float32") is None


@pytest.mark.parametrize("layers", [1, 2])
def test_onnx_gru_forward_equals_clstm_gru(layers):
    """The GRU peer: one GRU node per layer, linear_before_reset=1, gates z, r, h."""
    from bench.peers import clstm_class
    from bench.shapes import with_cell

    shape = with_cell(Shape("tiny", B=3, T=7, I=5, H=6, L=layers), "gru")
    params, x = make_params(shape, "float32"), make_input(shape, "float32")
    model = onnx_lstm.build_model(params, layers, shape.H, "float32", cell="gru")
    got = onnx_lstm.make_session(model, 1).run(["Y"], {"X": x})[0]
    net = clstm_class(clstm, "gru")(shape.I, shape.H, layers, dtype="float32", seed=0)
    for name, value in params.items():
        net.params[name][...] = value
    net.eval()
    np.testing.assert_allclose(got, np.asarray(net.forward(x)[0]), rtol=0, atol=1e-5)
    assert onnx_lstm.dtype_unsupported("float32", "gru") is None


def test_onnx_gru_stateful_steps_equal_clstm_gru_sequence():
    """The GRU's streaming graph feeds back h alone, per layer."""
    from bench.peers import clstm_class
    from bench.shapes import with_cell

    shape = with_cell(Shape("tiny", B=2, T=5, I=4, H=3, L=2), "gru")
    params, x = make_params(shape, "float32"), make_input(shape, "float32")
    model = onnx_lstm.build_model(params, shape.L, shape.H, "float32", with_state=True,
                                  cell="gru")
    session = onnx_lstm.make_session(model, 1)
    assert sorted(i.name for i in session.get_inputs()) == ["X", "h0_l0", "h0_l1"]
    feed = {f"h0_l{k}": np.zeros((1, shape.B, shape.H), np.float32) for k in range(2)}
    ys = []
    for t in range(shape.T):
        feed["X"] = x[t:t + 1]
        y, h0, h1 = session.run(["Y", "hT_l0", "hT_l1"], feed)
        ys.append(y[0])
        feed.update(h0_l0=h0, h0_l1=h1)
    net = clstm_class(clstm, "gru")(shape.I, shape.H, shape.L, dtype="float32", seed=0)
    for name, value in params.items():
        net.params[name][...] = value
    np.testing.assert_allclose(np.stack(ys), np.asarray(net.forward(x)[0]), rtol=0,
                               atol=1e-5)
