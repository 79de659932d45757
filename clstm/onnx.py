"""ONNX export of clstm models, and import of ONNX recurrent models into clstm.

``export(model, path)`` writes one ONNX graph that ONNX Runtime (or any ONNX runtime) runs
to the same outputs as clstm; ``load(path)`` reads a graph whose recurrent nodes are ONNX
``LSTM`` nodes, with the glue exporters put around them, into a clstm model. The ``onnx``
package is imported only inside these two functions (``pip install clstm-cpu[onnx]``).

Gate orders and layouts
-----------------------
clstm keeps PyTorch's layout: per layer ``weight_ih`` (4H, I) and ``weight_hh`` (4H, H)
in gate blocks i, f, g, o, two biases ``bias_ih`` and ``bias_hh`` (4H,), and peepholes
(3, H) in rows w_ci, w_cf, w_co. ONNX's ``LSTM`` takes ``W`` (1, 4H, I), ``R`` (1, 4H, H)
in gate blocks i, o, f, c (c is PyTorch's g), ``B`` (1, 8H) = [W_b; R_b] and ``P``
(1, 3H) in the order i, o, f. The peephole semantics agree: i and f read c_{t-1}, o reads
the new c_t.

Extending
---------
Both directions are driven by tables: ``_EXPORTERS`` maps a clstm layer class to the
function that emits its nodes, ``_IMPORTERS`` maps an ONNX op type to the function that
reads it into clstm layers. A new layer (a GRU, a bidirectional LSTM) adds one entry to
each; the refusals of what clstm cannot run yet (``direction`` other than forward,
``sequence_lens``) are in ``_import_lstm``.
"""
import os

import numpy as np

from .layers import Dense, Dropout, Embedding
from .lstm import LSTM
from .models import LastStep, Sequential

__all__ = ["export", "load", "DEFAULT_OPSET"]

#: The opset ``export`` writes by default: LSTM-14, Squeeze/Unsqueeze with axes as inputs
#: (13), Softmax over one axis (13), GatherND with batch_dims (12).
DEFAULT_OPSET = 14
_MIN_OPSET = 14

# PyTorch's/clstm's gate blocks (i, f, g, o) in ONNX's order (i, o, f, c), and back.
_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)
_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)
# clstm's peephole rows (w_ci, w_cf, w_co) in ONNX's order of P (i, o, f), and back.
_CLSTM_TO_ONNX_PEEPHOLES = (0, 2, 1)
_ONNX_TO_CLSTM_PEEPHOLES = (0, 2, 1)


def _require_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as e:
        raise ImportError("clstm.onnx needs the onnx package: pip install clstm-cpu[onnx] "
                          f"(or pip install onnx onnxruntime); the import failed: {e}") from None
    return onnx


def _gate_blocks(w, hidden, order):
    """Rows (or entries) of 4 gate blocks of ``hidden`` each, in a new block order."""
    return np.concatenate([w[k * hidden:(k + 1) * hidden] for k in order], axis=0)


# ============================================================================ export

class _Graph:
    """Nodes, initializers, inputs and outputs of the graph being written."""

    def __init__(self, onnx, elem):
        self.onnx = onnx
        self.elem = elem
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._count = {}

    def name(self, base):
        n = self._count.get(base, 0)
        self._count[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, base, array):
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, base, n_outputs=1, **attrs):
        name = self.name(base)
        outputs = [name] if n_outputs == 1 else [f"{name}:{i}" for i in range(n_outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outputs, name=name,
                                                     **attrs))
        return outputs[0] if n_outputs == 1 else outputs

    def add_input(self, name, elem, dims):
        self._count[name] = self._count.get(name, 0) + 1
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem, dims))
        return name

    def add_output(self, value, name, elem, dims):
        self._count[name] = self._count.get(name, 0) + 1
        self.nodes.append(self.onnx.helper.make_node("Identity", [value], [name],
                                                     name=self.name(f"output_{name}")))
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem, dims))


class _ExportContext:
    """What the layer exporters share: the graph, the options, the dims' names."""

    def __init__(self, graph, dtype, initial_state, final_state, lengths):
        self.graph, self.dtype = graph, dtype
        self.initial_state, self.final_state = initial_state, final_state
        self.lengths = lengths
        self.lengths_input = None
        self.state_prefix = ""
        self.hidden = None  # features of the current value, for the output's shape


def _export_lstm(ctx, lstm, x):
    """One ONNX LSTM node per layer on time-major x (T, B, I); returns y (T, B, H)."""
    g, dt = ctx.graph, ctx.dtype
    H, L = lstm.hidden_size, lstm.num_layers
    elem = g.elem
    p = ctx.state_prefix
    if ctx.initial_state:
        h0 = g.add_input(f"{p}h0", elem, [L, "batch", H])
        c0 = g.add_input(f"{p}c0", elem, [L, "batch", H])
    squeeze_axes = g.const("axes_1", np.array([1], dtype=np.int64))
    finals = ([], [])
    for k in range(L):
        w_ih, w_hh, b_ih, b_hh, peephole = lstm._layer_weights(k)
        W = g.const(f"{p}W_l{k}", _gate_blocks(w_ih, H, _TORCH_TO_ONNX_GATES)[None].astype(dt))
        R = g.const(f"{p}R_l{k}", _gate_blocks(w_hh, H, _TORCH_TO_ONNX_GATES)[None].astype(dt))
        B = g.const(f"{p}B_l{k}", np.concatenate(
            [_gate_blocks(b_ih, H, _TORCH_TO_ONNX_GATES),
             _gate_blocks(b_hh, H, _TORCH_TO_ONNX_GATES)])[None].astype(dt))
        inputs = [x, W, R, B, ""]          # sequence_lens: none, every step of every row
        if ctx.initial_state:
            start = g.const("start", np.array([k], dtype=np.int64))
            end = g.const("end", np.array([k + 1], dtype=np.int64))
            axis0 = g.const("axes_0", np.array([0], dtype=np.int64))
            inputs += [g.node("Slice", [h0, start, end, axis0], f"{p}h0_l{k}"),
                       g.node("Slice", [c0, start, end, axis0], f"{p}c0_l{k}")]
        else:
            inputs += ["", ""]
        if peephole is not None:
            inputs.append(g.const(f"{p}P_l{k}",
                                  peephole[list(_CLSTM_TO_ONNX_PEEPHOLES)].reshape(1, 3 * H)
                                  .astype(dt)))
        while inputs[-1] == "":
            inputs.pop()
        y4, h_n, c_n = g.node("LSTM", inputs, f"{p}lstm_l{k}", n_outputs=3, hidden_size=H,
                              direction="forward")
        finals[0].append(h_n)
        finals[1].append(c_n)
        x = g.node("Squeeze", [y4, squeeze_axes], f"{p}y_l{k}")
    if ctx.final_state:
        for name, parts in zip(("h_n", "c_n"), finals):
            value = parts[0] if L == 1 else g.node("Concat", parts, f"{p}{name}_layers", axis=0)
            g.add_output(value, f"{p}{name}", elem, [L, "batch", H])
    ctx.hidden = H
    return x


def _export_embedding(ctx, layer, ids):
    weight = ctx.graph.const("embedding", layer.params["weight"].astype(ctx.dtype))
    ctx.hidden = layer.embedding_dim
    return ctx.graph.node("Gather", [weight, ids], "embedded", axis=0)


def _export_dense(ctx, layer, x):
    g = ctx.graph
    y = g.node("MatMul", [x, g.const("dense_weight_t",
                                     np.ascontiguousarray(layer.params["weight"].T)
                                     .astype(ctx.dtype))], "dense_matmul")
    if "bias" in layer.params:
        y = g.node("Add", [y, g.const("dense_bias", layer.params["bias"].astype(ctx.dtype))],
                   "dense")
    ctx.hidden = layer.out_features
    return y


def _export_dropout(ctx, layer, x):
    return x                                   # inference: the identity


def _export_last_step(ctx, layer, y):
    """y (T, B, H) -> (B, H): y[lengths[b] - 1, b], or y[-1] without a lengths input."""
    g = ctx.graph
    if not ctx.lengths:
        return g.node("Gather", [y, g.const("last", np.array(-1, dtype=np.int64))],
                      "last_step", axis=0)
    if ctx.lengths_input is None:
        ctx.lengths_input = g.add_input("lengths", ctx.graph.onnx.TensorProto.INT64, ["batch"])
    last = g.node("Sub", [ctx.lengths_input, g.const("one", np.array(1, dtype=np.int64))],
                  "last_index")
    index = g.node("Unsqueeze", [last, g.const("axes_1", np.array([1], dtype=np.int64))],
                   "last_index_b1")
    by_row = g.node("Transpose", [y], "by_row", perm=[1, 0, 2])
    return g.node("GatherND", [by_row, index], "last_step", batch_dims=1)


#: clstm layer class -> function(ctx, layer, value) emitting its nodes on a time-major value
_EXPORTERS = {LSTM: _export_lstm, Embedding: _export_embedding, Dense: _export_dense,
              Dropout: _export_dropout, LastStep: _export_last_step}


def _model_dtype(model):
    dtypes = {arr.dtype for arr in model.params.values()}
    if len(dtypes) != 1:
        raise ValueError(f"export: expected one dtype for all parameters, got "
                         f"{sorted(d.name for d in dtypes) or 'no parameters'}")
    return dtypes.pop()


def export(model, path, *, opset=DEFAULT_OPSET, batch_first=None, probabilities=None,
           initial_state=False, final_state=False, lengths=True):
    """Write ``model`` as one ONNX graph that computes what clstm computes in eval mode.

    Parameters
    ----------
    model : clstm.LSTM or clstm.Sequential
        An LSTM, or a Sequential (the ready models included) of ``LSTM``, ``Embedding``,
        ``Dense``, ``Dropout`` (the identity: the graph is for inference) and
        ``LastStep`` layers, all of one dtype (float32 or float64).
    path : str or os.PathLike
        Where to write the ``.onnx`` file.
    opset : int, default 14
        The ONNX opset (14 or later).
    batch_first : bool, optional
        The layout of the input ``x`` and of a per-step output. Default: an LSTM's own
        ``batch_first``; for a Sequential, batch-first as its ``predict`` (``False``
        gives ``forward``'s time-major layout).
    probabilities : bool, optional
        Softmax over the output's last axis. Default: as ``predict``, for a model
        whose loss is ``"cross_entropy"`` (a Classifier's ``predict_proba``, a
        LanguageModel's next-token distribution); ``False`` gives the logits.
    initial_state : bool, default False
        Take the initial state of each LSTM as inputs ``h0``, ``c0`` (num_layers,
        batch, H) (``"<i>.h0"`` for the Sequential's layer i); without them it is zero.
    final_state : bool, default False
        Return the final state of each LSTM as outputs ``h_n``, ``c_n`` (``"<i>.h_n"``).
    lengths : bool, default True
        For a model with a ``LastStep``: take an int64 input ``lengths`` (batch,) of
        valid steps per sequence (padded at the end); ``False`` reads the last step.

    The graph's main input is ``x`` (float, or int64 token ids for a model that starts
    with an Embedding) and its main output ``y``; batch and time axes are dynamic. The
    file passes ``onnx.checker.check_model(..., full_check=True)``.
    """
    onnx = _require_onnx()
    from onnx import TensorProto, helper

    if isinstance(model, LSTM) and type(model) is LSTM:
        layers, lstm_alone = [model], True
    elif isinstance(model, Sequential):
        layers, lstm_alone = list(model.layers), False
    else:
        raise TypeError(f"export: expected a clstm.LSTM or clstm.Sequential, got "
                        f"{type(model).__name__}")
    for i, layer in enumerate(layers):
        if type(layer) not in _EXPORTERS:
            raise ValueError(f"export: layer {i} is a {type(layer).__name__}; ONNX export "
                             f"supports {', '.join(c.__name__ for c in _EXPORTERS)}")
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not _MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"export: expected an opset in [{_MIN_OPSET}, "
                         f"{onnx.defs.onnx_opset_version()}] (this onnx), got {opset!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"export: expected a path (str or os.PathLike), got "
                        f"{type(path).__name__}")
    for flag, name in ((initial_state, "initial_state"), (final_state, "final_state"),
                       (lengths, "lengths")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"export: {name}: expected True or False, got {flag!r}")
    dtype = _model_dtype(model)
    elem = {np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.float64): TensorProto.DOUBLE}[dtype]
    if batch_first is None:
        batch_first = model.batch_first if lstm_alone else True
    if probabilities is None:
        probabilities = getattr(model, "loss", None) == "cross_entropy"

    graph = _Graph(onnx, elem)
    ctx = _ExportContext(graph, dtype, bool(initial_state), bool(final_state), bool(lengths))
    tokens = isinstance(layers[0], Embedding)
    x_elem = TensorProto.INT64 if tokens else elem
    lead = ["batch", "time"] if batch_first else ["time", "batch"]
    x_dims = lead if tokens else lead + [layers[0].input_size if isinstance(layers[0], LSTM)
                                         else layers[0].in_features
                                         if isinstance(layers[0], Dense) else "features"]
    x = graph.add_input("x", x_elem, x_dims)
    if batch_first:
        x = graph.node("Transpose", [x], "x_time_major", perm=[1, 0] if tokens else [1, 0, 2])
    per_step = True
    recurrent = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, LSTM) and not lstm_alone:
            ctx.state_prefix = f"{i}."
            recurrent += 1
        x = _EXPORTERS[type(layer)](ctx, layer, x)
        if isinstance(layer, LastStep):
            per_step = False
    if probabilities:
        x = graph.node("Softmax", [x], "probabilities", axis=-1)
    if per_step and batch_first:
        x = graph.node("Transpose", [x], "y_batch_first", perm=[1, 0, 2])
    dims = (lead if per_step else ["batch"]) + [ctx.hidden if ctx.hidden else "features"]
    graph.add_output(x, "y", elem, dims)
    # the final states after y: outputs in the order y, then each LSTM's h_n, c_n
    graph.outputs.insert(0, graph.outputs.pop())

    g = helper.make_graph(graph.nodes, f"clstm_{type(model).__name__}", graph.inputs,
                          graph.outputs, graph.initializers)
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(g, opset_imports=opsets, producer_name="clstm",
                              producer_version=_version())
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    proto.doc_string = (f"clstm {type(model).__name__}, eval mode; input x "
                        f"({'batch, time' if batch_first else 'time, batch'}"
                        f"{'' if tokens else ', features'})")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    return proto


def _version():
    from . import __version__
    return __version__
