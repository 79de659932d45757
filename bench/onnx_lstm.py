"""clstm's LSTM as an ONNX graph for ONNX Runtime: one `LSTM` node per layer.

The weights are PyTorch's (`bench.peers.make_params`: gate blocks i, f, g, o in rows of
4H); ONNX wants the blocks in the order i, o, f, c, W (4H, I_k) and R (4H, H) with a
leading num_directions axis of 1, and one bias B = [W_b; R_b] of 8H.  Stacked layers are
chained: a node's Y is (T, num_directions, B, H), so a Squeeze of axis 1 feeds the next
node (T, B, H).

    model = build_model(params, num_layers, hidden, dtype, with_state=False)
    sess = make_session(model, threads)          # intra_op = threads, inter_op 1, sequential
    y = sess.run(["Y"], {"X": x})[0]             # (T, B, H)

With `with_state=True` the graph also takes `h0_l{k}`, `c0_l{k}` (1, B, H) per layer and
returns `hT_l{k}`, `cT_l{k}`: what a streaming caller feeds back at the next step.

`build_model(..., cell="gru")` makes one `GRU` node per layer instead, with
`linear_before_reset=1` (PyTorch's GRU: the reset gate multiplies W_hn h + b_hn), gate
blocks in ONNX's order z, r, h (PyTorch's r, z, n with the first two swapped), B =
[W_b; R_b] of 6H; no state inputs.
"""

import numpy as np

from clstm.onnx import _TORCH_TO_ONNX_GATES, _gate_blocks

OPSET = 14  # LSTM-14 (the `layout` attribute; default 0: time-major X, as clstm's)


def reorder_gates(w, hidden):
    """Rows of PyTorch gate blocks (i, f, g, o; 4H leading) -> ONNX's (i, o, f, c): the
    conversion clstm.onnx.export does."""
    return _gate_blocks(w, hidden, _TORCH_TO_ONNX_GATES)


def onnx_weights(params, layer, hidden):
    """W (1, 4H, I_k), R (1, 4H, H), B (1, 8H) of one layer, from PyTorch-named params."""
    w = reorder_gates(params[f"weight_ih_l{layer}"], hidden)[None]
    r = reorder_gates(params[f"weight_hh_l{layer}"], hidden)[None]
    b = np.concatenate([reorder_gates(params[f"bias_ih_l{layer}"], hidden),
                        reorder_gates(params[f"bias_hh_l{layer}"], hidden)])[None]
    return w, r, b


def onnx_gru_weights(params, layer, hidden):
    """W (1, 3H, I_k), R (1, 3H, H), B (1, 6H) of one GRU layer, from PyTorch-named params."""
    from bench.peers import swap_first_two_gate_blocks as swap

    w = swap(params[f"weight_ih_l{layer}"], hidden)[None]
    r = swap(params[f"weight_hh_l{layer}"], hidden)[None]
    b = np.concatenate([swap(params[f"bias_ih_l{layer}"], hidden),
                        swap(params[f"bias_hh_l{layer}"], hidden)])[None]
    return w, r, b


def build_model(params, num_layers, hidden, dtype, with_state=False, cell="lstm"):
    """The ONNX ModelProto of a stacked, unidirectional LSTM (or GRU) with these weights."""
    from onnx import TensorProto, helper, numpy_helper

    gru = cell == "gru"
    if gru and with_state:
        raise ValueError("build_model: with_state is for the LSTM only, got cell='gru'")
    elem = {np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.float64): TensorProto.DOUBLE}[np.dtype(dtype)]
    in_size = params["weight_ih_l0"].shape[1]
    inputs = [helper.make_tensor_value_info("X", elem, ["T", "B", in_size])]
    outputs = [helper.make_tensor_value_info("Y", elem, ["T", "B", hidden])]
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "squeeze_axes")]
    nodes = []
    x = "X"
    for k in range(num_layers):
        w, r, b = (onnx_gru_weights if gru else onnx_weights)(params, k, hidden)
        inits += [numpy_helper.from_array(w.astype(dtype), f"W_l{k}"),
                  numpy_helper.from_array(r.astype(dtype), f"R_l{k}"),
                  numpy_helper.from_array(b.astype(dtype), f"B_l{k}")]
        lstm_in = [x, f"W_l{k}", f"R_l{k}", f"B_l{k}"]
        lstm_out = [f"Y4_l{k}"]
        if with_state:
            # the optional sequence_lens input stays empty ("")
            lstm_in += ["", f"h0_l{k}", f"c0_l{k}"]
            lstm_out += [f"hT_l{k}", f"cT_l{k}"]
            for name in (f"h0_l{k}", f"c0_l{k}"):
                inputs.append(helper.make_tensor_value_info(name, elem, [1, "B", hidden]))
            for name in (f"hT_l{k}", f"cT_l{k}"):
                outputs.append(helper.make_tensor_value_info(name, elem, [1, "B", hidden]))
        if gru:
            nodes.append(helper.make_node("GRU", lstm_in, lstm_out, name=f"gru_l{k}",
                                          hidden_size=hidden, direction="forward",
                                          linear_before_reset=1))
        else:
            nodes.append(helper.make_node("LSTM", lstm_in, lstm_out, name=f"lstm_l{k}",
                                          hidden_size=hidden, direction="forward"))
        y = "Y" if k == num_layers - 1 else f"Y_l{k}"
        nodes.append(helper.make_node("Squeeze", [f"Y4_l{k}", "squeeze_axes"], [y],
                                      name=f"squeeze_l{k}"))
        x = y
    graph = helper.make_graph(nodes, "clstm_lstm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="clstm-bench")
    model.ir_version = min(model.ir_version, 10)  # readable by older runtimes too
    return model


def session_options(threads, quiet=False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if quiet:
        so.log_severity_level = 4  # fatal only: a failing probe should not print
    return so


def make_session(model, threads, quiet=False):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), session_options(threads, quiet),
                                providers=["CPUExecutionProvider"])


_DTYPE_SUPPORT = {}


def dtype_unsupported(dtype, cell="lstm"):
    """None when ONNX Runtime's CPU LSTM (or GRU) runs `dtype`, else its error (tried once,
    cached).

    ONNX Runtime 1.x builds a float64 LSTM session but fails at run time ("LSTM operator
    does not support double yet"), so the probe runs a tiny model.
    """
    key = (np.dtype(dtype).name, cell)
    if key not in _DTYPE_SUPPORT:
        rng = np.random.default_rng(0)
        G = (3 if cell == "gru" else 4) * 2
        params = {n: rng.standard_normal(s).astype(dtype) for n, s in (
            ("weight_ih_l0", (G, 3)), ("weight_hh_l0", (G, 2)), ("bias_ih_l0", (G,)),
            ("bias_hh_l0", (G,)))}
        try:
            sess = make_session(build_model(params, 1, 2, dtype, cell=cell), 1, quiet=True)
            sess.run(["Y"], {"X": np.zeros((2, 1, 3), dtype=dtype)})
            _DTYPE_SUPPORT[key] = None
        except Exception as exc:
            msg = str(exc).split("Status Message:")[-1].strip().splitlines()[0]
            _DTYPE_SUPPORT[key] = (f"ONNX Runtime's CPU {cell.upper()} does not run "
                                   f"{key[0]} ({msg})")
    return _DTYPE_SUPPORT[key]
