"""ONNX export of clstm models, and import of ONNX recurrent models into clstm.

``export(model, path)`` writes one ONNX graph that ONNX Runtime (or any ONNX runtime) runs
to the same outputs as clstm; ``load(path)`` reads a graph whose recurrent nodes are ONNX
``LSTM`` or ``GRU`` nodes, with the glue exporters put around them, into a clstm model.
The ``onnx`` package is imported only inside these two functions
(``pip install clstm-cpu[onnx]``).

Gate orders and layouts
-----------------------
clstm keeps PyTorch's layout: per layer and direction (``_reverse`` names the second)
``weight_ih`` (4H, I) and ``weight_hh`` (4H, H) in gate blocks i, f, g, o, two biases
``bias_ih`` and ``bias_hh`` (4H,), and peepholes (3, H) in rows w_ci, w_cf, w_co. ONNX's
``LSTM`` takes ``W`` (D, 4H, I), ``R`` (D, 4H, H) in gate blocks i, o, f, c (c is
PyTorch's g), ``B`` (D, 8H) = [W_b; R_b] and ``P`` (D, 3H) in the order i, o, f,
direction 0 forward, 1 reverse. The peephole semantics agree: i and f read c_{t-1}, o
reads the new c_t. A GRU (PyTorch's r, z, n, 3H rows) is ONNX's ``GRU`` with blocks z, r,
h, ``B`` (D, 6H) = [W_b; R_b] and ``linear_before_reset=1`` (PyTorch's n = tanh(W_n x +
b_in + r * (W_hn h + b_hn)); ONNX's default 0 puts r inside the product and is refused).
Y is (T, D, B, H): a bidirectional layer's output goes to the next one (and out) as
(T, B, 2H) through Transpose(0, 2, 1, 3) and Reshape(0, 0, -1), as torch.onnx writes it.

Lengths
-------
clstm's ``lengths`` is ONNX's ``sequence_lens`` (int32): each row runs its own steps,
the reverse direction starts at the row's last valid step, Y is zero beyond it and Y_h
is taken there (forward) or at step 0 (reverse), which is clstm's packed driver. One
graph input ``lengths`` (int64) feeds every recurrent node through one Cast and the
last valid step (GatherND); a bidirectional LastStep reads the last node's Y_h. On
import, the one graph input that every recurrent node takes as sequence_lens is the
model's ``lengths``; nodes that disagree are refused. torch's packed sequences (rows
sorted by length with TopK and gathered back after the recurrent nodes) read the same
way: the sort and its inverse cancel, the sorted lengths are the lengths.

Extending
---------
Both directions are driven by tables: ``_EXPORTERS`` maps a clstm layer class to the
function that emits its nodes (the recurrent ones share ``_export_recurrent``),
``_IMPORTERS`` maps an ONNX op type to the function that reads it into clstm layers, and
``_RECURRENT_OPS`` describes the recurrent ops that ``_import_recurrent`` reads (gates,
state inputs, default activations); the refusals of what clstm cannot run
(``direction="reverse"``, other activations, ``clip``, ``linear_before_reset=0``) are in
``_import_recurrent``.
"""
import os

import numpy as np

from .gru import GRU
from .layers import Dense, Dropout, Embedding, LastStep
from .lstm import LSTM
from .models import Sequential

__all__ = ["export", "load", "DEFAULT_OPSET"]

#: The opset ``export`` writes by default: LSTM-14, Squeeze/Unsqueeze with axes as inputs
#: (13), Softmax over one axis (13), GatherND with batch_dims (12).
DEFAULT_OPSET = 14
_MIN_OPSET = 14

# PyTorch's/clstm's gate blocks (i, f, g, o) in ONNX's order (i, o, f, c), and back.
_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)
_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)
# PyTorch's/clstm's GRU gate blocks (r, z, n) in ONNX's order (z, r, h), and back.
_TORCH_TO_ONNX_GRU_GATES = (1, 0, 2)
_ONNX_TO_TORCH_GRU_GATES = (1, 0, 2)
# clstm's peephole rows (w_ci, w_cf, w_co) in ONNX's order of P (i, o, f), and back.
_CLSTM_TO_ONNX_PEEPHOLES = (0, 2, 1)
_ONNX_TO_CLSTM_PEEPHOLES = (0, 2, 1)


def _require_onnx():
    try:
        import onnx
        import onnx.helper  # noqa: F401 (the submodules used here, imported explicitly)
        import onnx.numpy_helper  # noqa: F401
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
        self.lengths_input = None     # the int64 (batch,) input, once added
        self._sequence_lens = None    # the same as int32, as the recurrent ops take it
        self.state_prefix = ""
        self.hidden = None  # features of the current value, for the output's shape
        # (Y_h, num_directions) of the recurrent layer whose output is the current value
        # (Dropout between keeps it): a bidirectional LastStep reads its final h
        self.last_recurrent = None

    def add_lengths_input(self):
        if self.lengths_input is None:
            self.lengths_input = self.graph.add_input(
                "lengths", self.graph.onnx.TensorProto.INT64, ["batch"])
        return self.lengths_input

    def sequence_lens(self):
        """The recurrent ops' sequence_lens (int32), or "" without a lengths input."""
        if not self.lengths:
            return ""
        if self._sequence_lens is None:
            self._sequence_lens = self.graph.node(
                "Cast", [self.add_lengths_input()], "sequence_lens",
                to=self.graph.onnx.TensorProto.INT32)
        return self._sequence_lens


def _stack_directions(arrays, order, hidden, dtype):
    """ONNX's (num_directions, gates * hidden, ...) from one array per direction in
    PyTorch's gate order, each reordered to ONNX's."""
    return np.stack([_gate_blocks(a, hidden, order) for a in arrays]).astype(dtype)


def _lstm_node_weights(lstm, k):
    """ONNX's W, R, B, P (P None without peepholes) of layer k, all directions."""
    H, D = lstm.hidden_size, lstm.num_directions
    dirs = [lstm._direction_weights(k, d) for d in range(D)]
    zeros = np.zeros(4 * H, dtype=dirs[0][0].dtype)
    W = [w_ih for w_ih, *_ in dirs]
    R = [w_hh for _, w_hh, *_ in dirs]
    B = [np.concatenate([_gate_blocks(zeros if b_ih is None else b_ih, H,
                                      _TORCH_TO_ONNX_GATES),
                         _gate_blocks(zeros if b_hh is None else b_hh, H,
                                      _TORCH_TO_ONNX_GATES)])
         for _, _, b_ih, b_hh, *_ in dirs]
    P = None
    if lstm.peephole:
        P = np.stack([peephole[list(_CLSTM_TO_ONNX_PEEPHOLES)].reshape(3 * H)
                      for *_, peephole, _ in dirs])
    return W, R, np.stack(B), P


def _export_lstm(ctx, lstm, x):
    """One ONNX LSTM node per layer on time-major x (T, B, I); returns y (T, B, D*H)."""
    if lstm.proj_size:
        raise ValueError(f"export: expected an LSTM without projection, got proj_size="
                         f"{lstm.proj_size}: ONNX's LSTM operator has no projection "
                         "(W_hr), so a projected LSTM has no ONNX LSTM form")
    H = lstm.hidden_size

    def weights(k):
        W, R, B, P = _lstm_node_weights(lstm, k)
        return {"W": _stack_directions(W, _TORCH_TO_ONNX_GATES, H, ctx.dtype),
                "R": _stack_directions(R, _TORCH_TO_ONNX_GATES, H, ctx.dtype),
                "B": B.astype(ctx.dtype) if lstm.bias else None,   # absent: zeros
                "P": None if P is None else P.astype(ctx.dtype)}

    return _export_recurrent(ctx, lstm, x, "LSTM", weights, ("h", "c"), {})


def _export_gru(ctx, gru, x):
    """One ONNX GRU node per layer (gates z, r, h; linear_before_reset=1, PyTorch's
    reset gate on R_h h + Rb_h); returns y (T, B, D*H)."""
    H, D = gru.hidden_size, gru.num_directions
    order = _TORCH_TO_ONNX_GRU_GATES

    def weights(k):
        dirs = [gru._direction_weights(k, d) for d in range(D)]
        zeros = np.zeros(3 * H, dtype=ctx.dtype)
        B = [np.concatenate([_gate_blocks(zeros if b_ih is None else b_ih, H, order),
                             _gate_blocks(zeros if b_hh is None else b_hh, H, order)])
             for _, _, b_ih, b_hh in dirs]
        return {"W": _stack_directions([w[0] for w in dirs], order, H, ctx.dtype),
                "R": _stack_directions([w[1] for w in dirs], order, H, ctx.dtype),
                "B": np.stack(B).astype(ctx.dtype) if gru.bias else None}

    return _export_recurrent(ctx, gru, x, "GRU", weights, ("h",),
                             {"linear_before_reset": 1})


def _export_recurrent(ctx, net, x, op, weights, states, attrs):
    """One ONNX ``op`` node (LSTM or GRU) per layer of ``net`` on time-major x (T, B, I);
    returns y (T, B, D*H). ``weights(k)`` gives layer k's W, R, B (and P) in ONNX's
    layout, ``states`` the names of the state inputs/outputs ("h", "c" or "h" alone)."""
    g = ctx.graph
    H, L, D = net.hidden_size, net.num_layers, net.num_directions
    elem, p = g.elem, ctx.state_prefix
    initial = {s: g.add_input(f"{p}{s}0", elem, [D * L, "batch", H])
               for s in states} if ctx.initial_state else {}
    axis0 = g.const("axes_0", np.array([0], dtype=np.int64)) if initial else None
    finals = {s: [] for s in states}
    y_h = None
    for k in range(L):
        w = weights(k)
        inputs = [x, g.const(f"{p}W_l{k}", w["W"]), g.const(f"{p}R_l{k}", w["R"]),
                  "" if w["B"] is None else g.const(f"{p}B_l{k}", w["B"]),
                  ctx.sequence_lens()]
        for s in states:          # layer k's directions: rows D*k .. D*k+D-1
            if initial:
                start = g.const("start", np.array([D * k], dtype=np.int64))
                end = g.const("end", np.array([D * k + D], dtype=np.int64))
                inputs.append(g.node("Slice", [initial[s], start, end, axis0],
                                     f"{p}{s}0_l{k}"))
            else:
                inputs.append("")
        if w.get("P") is not None:
            inputs.append(g.const(f"{p}P_l{k}", w["P"]))
        while inputs[-1] == "":
            inputs.pop()
        outs = g.node(op, inputs, f"{p}{op.lower()}_l{k}", n_outputs=1 + len(states),
                      hidden_size=H, direction="bidirectional" if D == 2 else "forward",
                      **attrs)
        y4, y_h = outs[0], outs[1]
        for s, value in zip(states, outs[1:]):
            finals[s].append(value)
        if D == 1:            # (T, 1, B, H) -> (T, B, H)
            x = g.node("Squeeze", [y4, g.const("axes_1", np.array([1], dtype=np.int64))],
                       f"{p}y_l{k}")
        else:                 # (T, 2, B, H) -> (T, B, 2, H) -> (T, B, 2H), as torch writes it
            x = g.node("Reshape", [g.node("Transpose", [y4], f"{p}y_l{k}_by_row",
                                          perm=[0, 2, 1, 3]),
                                   g.const("merge_directions",
                                           np.array([0, 0, -1], dtype=np.int64))],
                       f"{p}y_l{k}")
    if ctx.final_state:
        for s in states:
            parts = finals[s]
            value = parts[0] if L == 1 else g.node("Concat", parts, f"{p}{s}_n_layers",
                                                   axis=0)
            g.add_output(value, f"{p}{s}_n", elem, [D * L, "batch", H])
    ctx.hidden = D * H
    ctx.last_recurrent = (y_h, D)
    return x


def _export_embedding(ctx, layer, ids):
    weight = ctx.graph.const("embedding", layer.params["weight"].astype(ctx.dtype))
    ctx.hidden, ctx.last_recurrent = layer.embedding_dim, None
    return ctx.graph.node("Gather", [weight, ids], "embedded", axis=0)


def _export_dense(ctx, layer, x):
    g = ctx.graph
    y = g.node("MatMul", [x, g.const("dense_weight_t",
                                     np.ascontiguousarray(layer.params["weight"].T)
                                     .astype(ctx.dtype))], "dense_matmul")
    if "bias" in layer.params:
        y = g.node("Add", [y, g.const("dense_bias", layer.params["bias"].astype(ctx.dtype))],
                   "dense")
    ctx.hidden, ctx.last_recurrent = layer.out_features, None
    return y


def _export_dropout(ctx, layer, x):
    return x                                   # inference: the identity


def _export_last_step(ctx, layer, y):
    """y (T, B, H) -> (B, H): y[lengths[b] - 1, b], or y[-1] without a lengths input.
    Bidirectional: the final h of the LSTM before (its Y_h, which with sequence_lens is
    the forward direction at each row's last valid step and the reverse one at step 0),
    the two directions side by side."""
    g = ctx.graph
    if layer.bidirectional:
        if ctx.last_recurrent is None or ctx.last_recurrent[1] != 2:
            raise ValueError("export: expected LastStep(bidirectional=True) right after a "
                             "bidirectional recurrent layer (Dropout between is fine), got "
                             "it after another layer")
        y_h = ctx.last_recurrent[0]
        halves = [g.node("Gather", [y_h, g.const(f"direction_{d}", np.array(d, np.int64))],
                         f"last_step_{'forward' if d == 0 else 'reverse'}", axis=0)
                  for d in (0, 1)]
        return g.node("Concat", halves, "last_step", axis=-1)
    if not ctx.lengths:
        return g.node("Gather", [y, g.const("last", np.array(-1, dtype=np.int64))],
                      "last_step", axis=0)
    last = g.node("Sub", [ctx.add_lengths_input(),
                          g.const("one", np.array(1, dtype=np.int64))], "last_index")
    index = g.node("Unsqueeze", [last, g.const("axes_1", np.array([1], dtype=np.int64))],
                   "last_index_b1")
    by_row = g.node("Transpose", [y], "by_row", perm=[1, 0, 2])
    return g.node("GatherND", [by_row, index], "last_step", batch_dims=1)


#: clstm layer class -> function(ctx, layer, value) emitting its nodes on a time-major value
_EXPORTERS = {LSTM: _export_lstm, GRU: _export_gru, Embedding: _export_embedding,
              Dense: _export_dense,
              Dropout: _export_dropout, LastStep: _export_last_step}


def _model_dtype(model):
    dtypes = {arr.dtype for arr in model.params.values()}
    if len(dtypes) != 1:
        raise ValueError(f"export: expected one dtype for all parameters, got "
                         f"{sorted(d.name for d in dtypes) or 'no parameters'}")
    return dtypes.pop()


def export(model, path, *, opset=DEFAULT_OPSET, batch_first=None, probabilities=None,
           initial_state=False, final_state=False, lengths=None):
    """Write ``model`` as one ONNX graph that computes what clstm computes in eval mode.

    Parameters
    ----------
    model : clstm.LSTM or clstm.Sequential
        An LSTM (stacked, bidirectional, with peepholes; not projected: ONNX's LSTM has
        no projection), or a Sequential (the ready models included) of ``LSTM``,
        ``Embedding``, ``Dense``, ``Dropout`` (the identity: the graph is for inference)
        and ``LastStep`` layers, all of one dtype (float32 or float64).
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
        Take the initial state of each LSTM as inputs ``h0``, ``c0`` (D * num_layers,
        batch, H), clstm's layout (``"<i>.h0"`` for the Sequential's layer i); without
        them it is zero.
    final_state : bool, default False
        Return the final state of each LSTM as outputs ``h_n``, ``c_n`` (``"<i>.h_n"``).
    lengths : bool, optional
        Take an int64 input ``lengths`` (batch,) of valid steps per sequence (padded at
        the end), as ``forward``'s and ``predict``'s ``lengths``: every recurrent node
        gets it as ``sequence_lens`` (each row runs its own steps: the reverse direction
        starts at its last valid step, outputs beyond it are zero, the final state is
        taken there) and a ``LastStep`` reads each row's last valid step. Default: True
        for a model with a ``LastStep`` (a Classifier, a Regressor), False otherwise;
        ``False`` runs every row over all steps and reads the last one.

    Returns
    -------
    onnx.ModelProto
        The graph written. Its main input is ``x`` (float, or int64 token ids for a
        model that starts with an Embedding; ``lengths`` in [1, time]) and its main
        output ``y``; batch and time axes are dynamic. It passes
        ``onnx.checker.check_model(..., full_check=True)``.
    """
    onnx = _require_onnx()
    from onnx import TensorProto, helper

    if type(model) in (LSTM, GRU):
        layers, lstm_alone = [model], True
    elif isinstance(model, Sequential):
        layers, lstm_alone = list(model.layers), False
    else:
        raise TypeError(f"export: expected a clstm.LSTM, clstm.GRU or clstm.Sequential, "
                        f"got {type(model).__name__}")
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
    if lengths is None:
        lengths = any(isinstance(layer, LastStep) for layer in layers)
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
    x_dims = lead if tokens else lead + [layers[0].input_size
                                         if isinstance(layers[0], (LSTM, GRU))
                                         else layers[0].in_features
                                         if isinstance(layers[0], Dense) else "features"]
    x = graph.add_input("x", x_elem, x_dims)
    if batch_first:
        x = graph.node("Transpose", [x], "x_time_major", perm=[1, 0] if tokens else [1, 0, 2])
    if ctx.lengths:
        ctx.add_lengths_input()         # the second input, before any initial state
    per_step = True
    recurrent = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, (LSTM, GRU)) and not lstm_alone:
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


# ============================================================================ import

class _Refused(ValueError):
    """What load cannot read, said as a ValueError naming the node and what it holds."""


class _Const:
    """A value known at load time (an initializer, a Constant, or folded from those)."""

    def __init__(self, array):
        self.array = array


class _Shapes:
    """A value computed from tensor shapes only (the dynamic batch size of a zero
    state): unknown at load time, but the same whatever the input's numbers.
    ``zeros`` when it is all zeros (ConstantOfShape of 0, and slices of that)."""

    def __init__(self, zeros=False, dims=None, fill=None, count_of=None, arange_of=None):
        self.zeros = zeros
        self.dims = dims    # a Shape of the data path: the axis label of each entry
        self.fill = fill    # every entry is the size of the axis with this label
        # the number of entries of the 1-D graph input of this name (its Shape), and
        # 0, 1, ..., that number - 1 (a Range of it): how torch sorts a packed batch
        self.count_of, self.arange_of = count_of, arange_of


class _Data:
    """A tensor computed from the main input: its axes, each 'T' (time), 'B' (batch),
    'F' (features) or '1' (an axis of size one), and the pipeline step that made it."""

    def __init__(self, axes, version, tokens=False):
        self.axes, self.version, self.tokens = tuple(axes), version, tokens


class _Aux:
    """A tensor computed from a graph input other than the main one (an initial state,
    lengths): the input's name and the ops applied to it so far."""

    def __init__(self, name, ops=()):
        self.name, self.ops = name, tuple(ops)


class _State:
    """Final states of LSTM layers: ``which`` is 'h' or 'c', ``layers`` the
    (stage, layer) pairs along axis 0; ``squeezed`` when that axis is gone."""

    def __init__(self, which, layers, version, squeezed=False, batch_sorted=False):
        self.which, self.layers = which, tuple(layers)
        self.version, self.squeezed = version, squeezed
        self.batch_sorted = batch_sorted    # rows in a packed batch's sorted order


class _Reader:
    """Walks the graph in order and builds the clstm layers of its one data path."""

    def __init__(self, onnx, graph):
        self.onnx = onnx
        self.graph = graph
        self.values = {"": None}
        self.stages = []            # dicts: {"kind": "LSTM", ...} etc., in order
        self.version = 0            # bumped at each change of the pipeline
        self.softmax = False
        self.input_layout = None    # "time_major" or "batch_first", once an LSTM reads it
        self.recurrent_lengths = []  # (node, the sequence_lens input or None) per node
        # "sorted" while the data path's rows are in the order torch sorts a packed batch
        # by (TopK of the lengths), None in the input's order
        self.batch_order = None

    # -- helpers --------------------------------------------------------------------------

    def refuse(self, node, why):
        raise _Refused(f"node {node.name or '(unnamed)'!r} (op {node.op_type}): {why}")

    def attrs(self, node):
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, node, value, what, *, optional=False):
        if value is None and optional:
            return None
        if not isinstance(value, _Const):
            self.refuse(node, f"expected {what} to be a constant (an initializer), got a "
                              "value computed at run time")
        return value.array

    def data(self, node, value, layout_only=False):
        """The current head of the data path, from a _Data or the final h of the last
        recurrent layer (its Y_h read as its last (valid) step: one direction, or the
        two side by side, as ``_import_concat`` passes them)."""
        if isinstance(value, _State) and value.which == "h" and value.squeezed:
            return self.last_step_of_state(node, value)
        if not isinstance(value, _Data):
            self.refuse(node, "expected the data path (the graph's input through the model) "
                              f"as input, got {type(value).__name__.strip('_').lower()}")
        if value.version != self.version:
            self.refuse(node, "the graph branches: this node reads a value that later "
                              "layers already consumed (clstm models are one chain)")
        if self.softmax and not layout_only:
            self.refuse(node, "expected Softmax to be the last op of the data path")
        return value

    def last_step_of_state(self, node, value):
        """The final h of the last recurrent layer as clstm's LastStep: the forward
        direction (a unidirectional layer) or both in order (LastStep(bidirectional)),
        each row's last valid step when the layer took sequence_lens."""
        stage = self.stages[-1] if self.stages else None
        if value.version != self.version or stage is None or \
                stage["kind"] not in _RECURRENT_OPS:
            self.refuse(node, "expected the final h of the last recurrent layer, read "
                              "after it and before any other layer")
        D, k = stage["directions"], len(stage["layers"]) - 1
        s = len(self.stages) - 1
        if list(value.layers) != [(s, k, d) for d in range(D)]:
            self.refuse(node, "expected the final h of the last recurrent layer (both "
                              "directions in order, forward then reverse, for a "
                              f"bidirectional one), got entries {list(value.layers)} of "
                              "(stage, layer, direction)")
        self.append(node, {"kind": "LastStep", "lengths": stage["lengths"] is not None,
                           "bidirectional": D == 2})
        self.batch_order = "sorted" if value.batch_sorted else None
        return _Data(("B", "F"), self.version)

    def label(self, axis_label):
        """'T' or 'B' for an axis of the main input once an LSTM told which is time."""
        if axis_label in ("?0", "?1") and self.input_layout is not None:
            first = "T" if self.input_layout == "time_major" else "B"
            return first if axis_label == "?0" else {"T": "B", "B": "T"}[first]
        return axis_label

    def append(self, node, stage):
        if self.stages and self.stages[-1]["kind"] == "LSTM":
            self.stages[-1]["open"] = False      # a later LSTM node starts a new stage
        self.stages.append(stage)
        self.version += 1
        return self.version

    @staticmethod
    def axis(axis, rank, node, reader):
        if not -rank <= axis < rank:
            reader.refuse(node, f"axis {axis} out of range for rank {rank}")
        return axis % rank

    # -- the walk ---------------------------------------------------------------------------

    def run(self, main_input, other_inputs):
        from onnx import numpy_helper

        for init in self.graph.initializer:
            self.values[init.name] = _Const(_tensor(numpy_helper, init))
        axes, tokens = _input_axes(main_input)
        self.values[main_input.name] = _Data(axes, 0, tokens)
        for inp in other_inputs:
            self.values[inp.name] = _Aux(inp.name)
        for node in self.graph.node:
            try:
                ins = []
                for name in node.input:
                    if name not in self.values:
                        self.refuse(node, f"input {name!r} is not defined before it")
                    ins.append(self.values[name])
                outs = self.node(node, ins)
            except _Refused:
                raise
            except Exception as e:     # a malformed node: say which, never crash
                raise _Refused(f"node {node.name or '(unnamed)'!r} (op {node.op_type}): "
                               f"cannot be read ({type(e).__name__}: {e})") from None
            for name, value in zip(node.output, outs):
                if name:
                    self.values[name] = value

    def node(self, node, ins):
        if node.domain not in ("", "ai.onnx"):
            self.refuse(node, f"ops of domain {node.domain!r} are not supported")
        if node.op_type == "Constant":
            return [_Const(_constant(self.onnx, self.attrs(node), node, self))]
        kinds = {type(v) for v in ins if v is not None}
        if kinds <= {_Const}:
            if node.op_type in _FOLD:
                arrays = [None if v is None else v.array for v in ins]
                _check_fold_size(self, node, arrays)
                return [_Const(_FOLD[node.op_type](self, node, arrays))]
            if node.op_type in ("ConstantOfShape", "Expand"):
                return [_Shapes(zeros=_fills_zeros(self, node, ins))]
        if kinds <= {_Const, _Shapes} and node.op_type in _SHAPE_OPS:
            return [_Shapes(zeros=_fills_zeros(self, node, ins), **_sizes(self, node, ins))]
        if node.op_type == "Shape" and ins and isinstance(ins[0], (_Data, _Aux, _State)):
            dims = None
            if isinstance(ins[0], _Data):
                a = self.attrs(node)
                dims = ins[0].axes[a.get("start", 0):a.get("end", len(ins[0].axes))]
            count_of = ins[0].name if isinstance(ins[0], _Aux) else None
            return [_Shapes(dims=dims, count_of=count_of)]
        if node.op_type in _RECURRENT_OPS:
            return _import_recurrent(self, node, ins)
        importer = _IMPORTERS.get(node.op_type)
        if importer is None:
            self.refuse(node, "not supported by clstm.onnx.load (it reads LSTM nodes and, "
                              f"around them, {', '.join(sorted(_IMPORTERS))})")
        return importer(self, node, ins)


def _tensor(numpy_helper, tensor):
    if tensor.data_location == 1:   # EXTERNAL
        raise _Refused(f"tensor {tensor.name!r}: external data is not read (store the "
                       "weights inside the .onnx file)")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as e:
        raise _Refused(f"tensor {tensor.name!r}: cannot be read ({type(e).__name__}: "
                       f"{e})") from None
    if array.dtype.kind not in "fiub":
        raise _Refused(f"tensor {tensor.name!r}: expected numbers, got dtype {array.dtype}")
    return array


def _constant(onnx, attrs, node, reader):
    from onnx import numpy_helper

    if "value" in attrs:
        return _tensor(numpy_helper, attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    reader.refuse(node, f"expected a numeric value, got attributes {sorted(attrs)}")


def _input_axes(value_info):
    """(axes, tokens) of the main input from its declared type: int ids (T, B) or float
    features (T, B, F); which of the first two axes is time is decided where they meet
    an LSTM (or a Transpose before it), so both start as unknown '?' axes."""
    t = value_info.type.tensor_type
    rank = len(t.shape.dim) if t.HasField("shape") else None
    tokens = t.elem_type in (6, 7, 12, 13)   # INT32, INT64, UINT32, UINT64
    if rank is None:
        rank = 2 if tokens else 3
    if rank != (2 if tokens else 3):
        raise _Refused(f"input {value_info.name!r}: expected (batch, time) token ids or "
                       f"(batch, time, features) values (rank {2 if tokens else 3}), got "
                       f"rank {rank}")
    return ("?0", "?1") + (() if tokens else ("F",)), tokens


def _fills_zeros(reader, node, ins):
    op = node.op_type
    if op == "ConstantOfShape":
        value = reader.attrs(node).get("value")
        return value is None or not np.any(_tensor(reader.onnx.numpy_helper, value))
    if op == "Expand":
        src = ins[0]
        return (isinstance(src, _Const) and not np.any(src.array)) or \
               (isinstance(src, _Shapes) and src.zeros)
    if op in ("Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast",
              "Transpose"):
        return isinstance(ins[0], _Shapes) and ins[0].zeros
    if op == "Concat":
        return all((isinstance(v, _Shapes) and v.zeros) or
                   (isinstance(v, _Const) and not np.any(v.array)) for v in ins)
    return False


def _sizes(reader, node, ins):
    """Which axis sizes a shape computation holds: ``dims`` for (a gather of) a Shape of
    the data path, ``fill`` when every entry is the size of one axis (the time length
    expanded over the batch: a sequence_lens that changes nothing)."""
    op, src = node.op_type, ins[0] if ins else None
    if op == "Range" and len(ins) == 3 and isinstance(ins[1], _Shapes) and \
            ins[1].count_of and all(isinstance(v, _Const) and v.array.size == 1
                                    for v in (ins[0], ins[2])) \
            and int(ins[0].array.reshape(-1)[0]) == 0 and int(ins[2].array.reshape(-1)[0]) == 1:
        return {"arange_of": ins[1].count_of}
    if not isinstance(src, _Shapes):
        return {}
    if src.count_of and (op in ("ReduceProd", "Squeeze", "Unsqueeze", "Identity") or (
            op == "Cast" and reader.attrs(node).get("to") in (6, 7)) or (
            op == "Gather" and isinstance(ins[1], _Const) and ins[1].array.size == 1
            and int(ins[1].array.reshape(-1)[0]) in (0, -1))):   # of a 1-entry shape
        return {"count_of": src.count_of}
    if op == "Gather" and src.dims is not None and isinstance(ins[1], _Const) \
            and reader.attrs(node).get("axis", 0) == 0:
        index = np.asarray(ins[1].array)
        if index.dtype.kind in "iu" and index.size and \
                np.all((-len(src.dims) <= index) & (index < len(src.dims))):
            labels = {src.dims[int(i)] for i in index.reshape(-1)}
            dims = tuple(src.dims[int(i)] for i in index.reshape(-1))
            return {"dims": dims if index.ndim else None,
                    "fill": labels.pop() if len(labels) == 1 else None}
        return {}
    if op == "Cast" and reader.attrs(node).get("to") not in (6, 7):   # INT32, INT64
        return {}                                       # a narrower type may wrap
    if op in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Expand"):
        return {"fill": src.fill}
    if op == "Concat" and all(isinstance(v, _Shapes) for v in ins):
        fills = {v.fill for v in ins}
        return {"fill": fills.pop() if len(fills) == 1 else None}
    return {}


# ops on shapes (the zero initial state torch.onnx.export builds from Shape(x))
_SHAPE_OPS = {"Shape", "Gather", "Slice", "Squeeze", "Unsqueeze", "Concat", "Cast",
              "Reshape", "Identity", "ConstantOfShape", "Expand", "Transpose", "Add", "Sub",
              "Mul", "Div", "Equal", "Where", "Range", "ReduceProd"}


def _ints(array, node, reader, what):
    array = np.asarray(array)
    if array.dtype.kind not in "iu" or array.ndim > 1 or array.size > 64:
        reader.refuse(node, f"expected {what} as at most 64 integers, got {array.dtype} "
                            f"of shape {array.shape}")
    return [int(v) for v in array.reshape(-1)]


def _axes_of(reader, node, ins, position):
    """Axes from the input at ``position`` (opset 13+) or the 'axes' attribute."""
    if len(ins) > position and ins[position] is not None:
        return _ints(reader.const(node, ins[position], "axes"), node, reader, "axes")
    axes = reader.attrs(node).get("axes")
    return None if axes is None else [int(a) for a in axes]


def _slice_args(reader, node, ins, rank):
    a = reader.attrs(node)
    if "starts" in a:                             # Slice-1
        starts, ends = list(a["starts"]), list(a["ends"])
        axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        get = lambda i, what: None if len(ins) <= i or ins[i] is None else _ints(  # noqa
            reader.const(node, ins[i], what), node, reader, what)
        starts, ends = get(1, "starts"), get(2, "ends")
        axes = get(3, "axes") or list(range(len(starts)))
        steps = get(4, "steps") or [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        reader.refuse(node, "starts, ends, axes and steps differ in length")
    return [(reader.axis(ax, rank, node, reader), s, e, st)
            for ax, s, e, st in zip(axes, starts, ends, steps)]


# -- constant folding (numpy, sizes bounded by the arrays the file holds) ------------------

def _fold_slice(reader, node, arrays):
    x = arrays[0]
    index = [slice(None)] * x.ndim
    for ax, s, e, st in _slice_args(reader, node, [_Const(a) if a is not None else None
                                                   for a in arrays], x.ndim):
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


def _fold_reshape(reader, node, arrays):
    x, shape = arrays[0], _ints(arrays[1], node, reader, "shape")
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _fold_unsqueeze(reader, node, arrays):
    axes = _axes_of(reader, node, [_Const(a) if a is not None else None for a in arrays], 1)
    x = arrays[0]
    rank = x.ndim + len(axes)
    for ax in sorted(reader.axis(a, rank, node, reader) for a in axes):
        x = np.expand_dims(x, ax)
    return x


def _fold_squeeze(reader, node, arrays):
    axes = _axes_of(reader, node, [_Const(a) if a is not None else None for a in arrays], 1)
    x = arrays[0]
    return np.squeeze(x) if axes is None else np.squeeze(
        x, tuple(reader.axis(a, x.ndim, node, reader) for a in axes))


def _check_fold_size(reader, node, arrays):
    """A folded constant is never much larger than the constants it is made of: a
    broadcast or a gather of a few small arrays must not allocate gigabytes."""
    present = [a for a in arrays if a is not None]
    limit = sum(a.size for a in present) + (1 << 16)
    if node.op_type in ("Add", "Sub", "Mul") and len(present) == 2:
        size = int(np.prod(np.broadcast_shapes(present[0].shape, present[1].shape),
                           dtype=np.float64))
    elif node.op_type == "Gather" and len(present) == 2 and present[0].ndim:
        axis = reader.axis(reader.attrs(node).get("axis", 0), present[0].ndim, node, reader)
        size = present[1].size * (present[0].size // max(present[0].shape[axis], 1))
    else:
        return
    if size > limit:
        reader.refuse(node, f"folding it would make {size} values out of {limit - (1 << 16)}")


_FOLD = {
    "Identity": lambda r, n, a: a[0],
    "Cast": lambda r, n, a: a[0].astype(r.onnx.helper.tensor_dtype_to_np_dtype(
        r.attrs(n)["to"])),
    "Transpose": lambda r, n, a: np.transpose(a[0], r.attrs(n).get("perm")),
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Reshape": _fold_reshape,
    "Concat": lambda r, n, a: np.concatenate(a, axis=r.attrs(n)["axis"]),
    "Gather": lambda r, n, a: np.take(a[0], a[1], axis=r.attrs(n).get("axis", 0)),
    "Slice": _fold_slice,
    "Neg": lambda r, n, a: -a[0],
    "Add": lambda r, n, a: a[0] + a[1],
    "Sub": lambda r, n, a: a[0] - a[1],
    "Mul": lambda r, n, a: a[0] * a[1],
}


# -- the data path ------------------------------------------------------------------------

#: What each recurrent op has: gates per direction, its state inputs (by position) and
#: outputs, its default activations, and clstm's class name (GRU: clstm.GRU).
_RECURRENT_OPS = {
    "LSTM": {"gates": 4, "states": ((5, "initial_h"), (6, "initial_c")), "peephole": 7,
             "activations": ["sigmoid", "tanh", "tanh"]},
    "GRU": {"gates": 3, "states": ((5, "initial_h"),), "peephole": None,
            "activations": ["sigmoid", "tanh"]},
}


def _import_recurrent(reader, node, ins):
    """An ONNX LSTM or GRU node: a layer of a clstm.LSTM/GRU (stacked on the last one
    when it reads that one's output, as one more layer). Read: forward and bidirectional
    directions, layout 0 and 1, peepholes, sequence_lens (a graph input: clstm runs with
    ``lengths``; the time length of every row: nothing), initial states that are zeros
    or layers of a graph input. Refused: direction="reverse" (clstm has no reverse-only
    layer), other activations, clip, input_forget, a GRU's linear_before_reset=0, a
    non-zero constant initial state."""
    op = node.op_type
    spec = _RECURRENT_OPS[op]
    a = reader.attrs(node)
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        reader.refuse(node, f"direction={direction!r} is not supported (clstm runs forward "
                            "and bidirectional layers; a reverse-only layer is not in "
                            "clstm)")
    D = 2 if direction == "bidirectional" else 1
    acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])]
    if acts and [s.lower() for s in acts] != spec["activations"] * D:
        reader.refuse(node, f"activations {acts} are not supported (clstm: "
                            f"{spec['activations'] * D}, the defaults)")
    for key in ("clip", "activation_alpha", "activation_beta"):
        if key in a:
            reader.refuse(node, f"attribute {key!r} is not supported")
    if a.get("input_forget", 0):
        reader.refuse(node, "input_forget=1 (coupled input and forget gates) is not "
                            "supported")
    if op == "GRU" and a.get("linear_before_reset", 0) != 1:
        reader.refuse(node, "linear_before_reset=0 is not supported (clstm's GRU is "
                            "PyTorch's: the reset gate multiplies R_h h + Rb_h, which is "
                            "linear_before_reset=1)")
    layout = a.get("layout", 0)
    if layout not in (0, 1):
        reader.refuse(node, f"expected layout 0 or 1, got {layout}")
    if "hidden_size" not in a:
        reader.refuse(node, "expected the hidden_size attribute")
    H = int(a["hidden_size"])
    if not 1 <= H <= 2**28:
        reader.refuse(node, f"expected hidden_size >= 1, got {H}")
    x = reader.data(node, ins[0])
    if x.tokens:
        reader.refuse(node, "expected float features as X, got token ids")
    axes = list(x.axes)
    time_axis, batch_axis = (1, 0) if layout else (0, 1)
    if len(axes) != 3 or axes[2] != "F" or {axes[time_axis], axes[batch_axis]} not in (
            {"T", "B"}, {"?0", "?1"}) or (axes[time_axis], axes[batch_axis]) == ("B", "T"):
        reader.refuse(node, f"expected X as ({'batch, time' if layout else 'time, batch'}, "
                            f"features), got axes {_axes_text(axes)}")
    if axes[time_axis].startswith("?"):
        # The main input's first two axes meet an LSTM: the time axis is known now.
        reader.input_layout = "time_major" if axes[time_axis] == "?0" else "batch_first"
    lengths = _sequence_lens(reader, node, ins[4] if len(ins) > 4 else None,
                             axes[time_axis])
    G = spec["gates"]
    W = reader.const(node, ins[1], "W")
    R = reader.const(node, ins[2], "R")
    B = reader.const(node, ins[3] if len(ins) > 3 else None, "B", optional=True)
    P = None
    if spec["peephole"] is not None:
        P = reader.const(node, ins[7] if len(ins) > 7 else None, "P", optional=True)
    I = W.shape[-1] if W.ndim == 3 else -1
    expect = {"W": (W, (D, G * H, I)), "R": (R, (D, G * H, H))}
    if B is not None:
        expect["B"] = (B, (D, 2 * G * H))
    if P is not None:
        expect["P"] = (P, (D, 3 * H))
    for name, (arr, shape) in expect.items():
        if arr.shape != shape or arr.dtype.kind != "f":
            reader.refuse(node, f"expected {name} of shape {shape} (float), got "
                                f"{arr.dtype} {arr.shape}")
    init = []
    for i, what in spec["states"]:
        v = ins[i] if len(ins) > i else None
        if v is None or (isinstance(v, _Const) and not np.any(v.array)) or \
                (isinstance(v, _Shapes) and v.zeros):
            init.append(None)
        elif isinstance(v, _Aux) and len(v.ops) == 1 and v.ops[0][0] == "layers" \
                and v.ops[0][2] - v.ops[0][1] == D and not layout:
            init.append((v.name, v.ops[0][1]))
        else:
            reader.refuse(node, f"{what}: expected zeros or a graph input (layers "
                                f"[k:k+{D}] of it along axis 0{', with layout=0' if layout else ''}"
                                "), got another value")
    layer = {"W": W, "R": R, "B": B, "P": P, "hidden": H, "input": I, "init": init,
             "name": node.name}
    prev = reader.stages[-1] if reader.stages else None
    stacked = prev is not None and prev["kind"] == op and prev["open"] \
        and prev["directions"] == D and prev["layers"][-1]["hidden"] == H and I == D * H \
        and prev["dtype"] == W.dtype and prev["lengths"] == lengths \
        and _continues_states(prev["layers"], init, D)
    if stacked:                       # one more layer of the same clstm.LSTM/GRU
        prev["layers"].append(layer)
        reader.version += 1
    else:
        reader.append(node, {"kind": op, "layers": [layer], "open": True,
                             "dtype": W.dtype, "directions": D, "lengths": lengths})
    reader.recurrent_lengths.append((node, lengths))
    stage = len(reader.stages) - 1
    k = len(reader.stages[-1]["layers"]) - 1
    d_axis = "1" if D == 1 else "D"
    y_axes = ("B", "T", d_axis, "F") if layout else ("T", d_axis, "B", "F")
    # states of a layout=1 node (batch, D, H) are read as graph outputs only
    version = -1 if layout else reader.version
    entries = [(stage, k, d) for d in range(D)]
    states = [_State(which, entries, version, batch_sorted=reader.batch_order == "sorted")
              for which in "hc"[:len(spec["states"])]]
    return [_Data(y_axes, reader.version)] + states


def _sequence_lens(reader, node, value, time_label):
    """The graph input a recurrent node takes as sequence_lens (clstm's ``lengths``), or
    None when it has none or one that is the time length of every row."""
    if value is None or (isinstance(value, _Shapes) and value.fill is not None
                         and reader.label(value.fill) == reader.label(time_label)):
        return None
    if isinstance(value, _Aux) and value.ops == ((("sorted",),) if reader.batch_order
                                                 else ()):
        return value.name
    reader.refuse(node, "expected sequence_lens to be a graph input (the lengths of the "
                        "rows, clstm's lengths; sorted by TopK where the batch is, as "
                        "torch packs it), or the time length of every row; got another "
                        "value")


def _continues_states(layers, init, D):
    """Whether a layer with initial states ``init`` stacks on ``layers`` as one clstm
    layer stack: all zeros, or the next layer (D rows along axis 0) of the same graph
    inputs."""
    for which in range(len(init)):
        before = [layer["init"][which] for layer in layers]
        if init[which] is None and all(b is None for b in before):
            continue
        if init[which] is None or any(b is None for b in before) or \
                init[which] != (before[0][0], before[0][1] + D * len(before)):
            return False
    return True


def _axes_text(axes):
    names = {"T": "time", "B": "batch", "F": "features", "1": "1", "D": "directions"}
    return "(" + ", ".join(names.get(a, "batch or time") for a in axes) + ")"


def _import_passthrough(reader, node, ins):
    v = ins[0]
    if isinstance(v, (_State, _Aux)):
        return [v]
    x = reader.data(node, v, layout_only=True)
    if node.op_type == "Dropout" and len(ins) > 2 and ins[2] is not None:
        mode = reader.const(node, ins[2], "training_mode")
        if np.any(mode):
            reader.refuse(node, "training_mode=True dropout is not an inference op")
    if node.op_type == "Cast":
        to = np.dtype(reader.onnx.helper.tensor_dtype_to_np_dtype(reader.attrs(node)["to"]))
        if to.kind not in ("iu" if x.tokens else "f"):
            reader.refuse(node, f"a cast of the data path to {to} is not supported")
    out = [x]
    if node.op_type == "Dropout" and len(node.output) > 1:
        out.append(None)
    return out


def _import_transpose(reader, node, ins):
    v = ins[0]
    if isinstance(v, _Aux):
        return [_Aux(v.name, v.ops + (("transpose", tuple(reader.attrs(node).get("perm",
                                                                                 ()))),))]
    x = reader.data(node, v, layout_only=True)
    perm = reader.attrs(node).get("perm") or list(range(len(x.axes)))[::-1]
    if sorted(perm) != list(range(len(x.axes))):
        reader.refuse(node, f"perm {list(perm)} does not fit rank {len(x.axes)}")
    return [_Data([x.axes[p] for p in perm], x.version, x.tokens)]


def _import_squeeze(reader, node, ins, unsqueeze=False):
    v = ins[0]
    axes = _axes_of(reader, node, ins, 1)
    if isinstance(v, _State):
        if unsqueeze or v.squeezed or len(v.layers) != 1 or axes not in (None, [0], [-2]):
            reader.refuse(node, "expected a squeeze of the layer axis of one layer's state")
        return [_State(v.which, v.layers, v.version, squeezed=True,
                       batch_sorted=v.batch_sorted)]
    if isinstance(v, _Aux):
        return [_Aux(v.name, v.ops + (("unsqueeze" if unsqueeze else "squeeze",
                                       tuple(axes or ())),))]
    x = reader.data(node, v, layout_only=True)
    new = list(x.axes)
    if unsqueeze:
        for ax in sorted(reader.axis(a, len(new) + len(axes), node, reader) for a in axes):
            new.insert(ax, "1")
    else:
        drop = [i for i, a in enumerate(new) if a == "1"] if axes is None else \
            [reader.axis(a, len(new), node, reader) for a in axes]
        if any(new[i] != "1" for i in drop):
            reader.refuse(node, f"squeezes axes {axes} of {_axes_text(new)}: only axes of "
                                "size one can go")
        new = [a for i, a in enumerate(new) if i not in drop]
    return [_Data(new, x.version, x.tokens)]


def _import_gather(reader, node, ins):
    axis = reader.attrs(node).get("axis", 0)
    src, idx = ins[0], ins[1]
    if isinstance(src, _Const) and isinstance(idx, _Data):       # an embedding
        ids = reader.data(node, idx)
        weight = src.array
        if not ids.tokens or weight.ndim != 2 or weight.dtype.kind != "f" or axis != 0:
            reader.refuse(node, "expected an embedding: a float (N, D) table gathered on "
                                "axis 0 by integer token ids")
        reader.append(node, {"kind": "Embedding", "weight": weight})
        return [_Data(ids.axes + ("F",), reader.version)]
    if isinstance(idx, _Aux):
        return [_batch_permutation(reader, node, src, idx, axis)]
    index = reader.const(node, idx, "the index")
    if index.ndim != 0:
        reader.refuse(node, f"expected one index, got shape {index.shape}")
    index = int(index)
    if isinstance(src, _State):
        if src.squeezed or reader.axis(axis, 3, node, reader) != 0 or \
                not -len(src.layers) <= index < len(src.layers):
            reader.refuse(node, "expected one layer of a state (axis 0)")
        return [_State(src.which, [src.layers[index]], src.version, squeezed=True,
                       batch_sorted=src.batch_sorted)]
    if isinstance(src, _Aux):
        if axis != 0:
            reader.refuse(node, "expected one layer of an initial state (axis 0)")
        return [_Aux(src.name, src.ops + (("layer", index, "squeeze"),))]
    x = reader.data(node, src)
    ax = reader.axis(axis, len(x.axes), node, reader)
    return [_last_step(reader, node, x, ax, index, keep=False)]


def _last_step(reader, node, x, ax, index, keep):
    label = x.axes[ax]
    if label == "1" and index in (0, -1):
        axes = x.axes if keep else x.axes[:ax] + x.axes[ax + 1:]
        return _Data(axes, x.version, x.tokens)
    if any(s.get("lengths") for s in reader.stages if s["kind"] in _RECURRENT_OPS):
        reader.refuse(node, "expected the last valid step after a recurrent node with "
                            "sequence_lens (clstm's LastStep reads each row's own last "
                            "step), got a gather of the last step of the padded time axis")
    if label != "T" or index != -1 or x.tokens or x.axes[-1] != "F" or len(x.axes) != 3:
        reader.refuse(node, f"expected the last time step (index -1 of the time axis) of "
                            f"(time, batch, features), got index {index} of axis {ax} of "
                            f"{_axes_text(x.axes)}")
    reader.append(node, {"kind": "LastStep", "lengths": False})
    axes = [a for i, a in enumerate(x.axes) if i != ax]
    if keep:
        axes.insert(ax, "1")
    return _Data(axes, reader.version)


def _import_slice(reader, node, ins):
    v = ins[0]
    if isinstance(v, (_Aux, _State)):
        args = _slice_args(reader, node, ins, 3)
        if len(args) != 1 or args[0][0] != 0 or args[0][3] != 1:
            reader.refuse(node, "expected a slice of layers (axis 0, step 1) of a state")
        _, s, e, _ = args[0]
        if isinstance(v, _Aux):
            if not 0 <= s < e <= s + 2:
                reader.refuse(node, "expected one layer [k:k+1] (or its two directions, "
                                    "[k:k+2]) of an initial state")
            return [_Aux(v.name, v.ops + (("layers", s, e),))]
        if v.squeezed:
            reader.refuse(node, "expected a slice of the layer axis of a state")
        return [_State(v.which, v.layers[s:e], v.version, batch_sorted=v.batch_sorted)]
    x = reader.data(node, v)
    args = _slice_args(reader, node, ins, len(x.axes))
    out = x
    for ax, s, e, st in args:
        if st == 1 and s == 0 and e >= 2**31 - 1:
            continue                                           # the whole axis
        if st != 1 or s != -1 or e < 2**31 - 1:
            reader.refuse(node, f"expected the last time step [-1:] of the time axis, got "
                                f"[{s}:{e}:{st}] of axis {ax}")
        out = _last_step(reader, node, out, ax, -1, keep=True)
    return [out]


def _import_matmul(reader, node, ins):
    x = reader.data(node, ins[0])
    w = reader.const(node, ins[1], "the weight (B)")
    if x.tokens or x.axes[-1] != "F" or w.ndim != 2 or w.dtype.kind != "f":
        reader.refuse(node, "expected features (..., in) times a constant (in, out) matrix")
    reader.append(node, {"kind": "Dense", "weight": np.ascontiguousarray(w.T), "bias": None})
    return [_Data(x.axes, reader.version)]


def _import_gemm(reader, node, ins):
    a = reader.attrs(node)
    x = reader.data(node, ins[0])
    if a.get("transA", 0) or len(x.axes) != 2 or x.axes[-1] != "F":
        reader.refuse(node, "expected Gemm of (batch, features) by a constant matrix")
    b = reader.const(node, ins[1], "B")
    if b.ndim != 2 or b.dtype.kind != "f":
        reader.refuse(node, "expected a constant 2-D float B")
    weight = (b if a.get("transB", 0) else b.T) * a.get("alpha", 1.0)
    c = reader.const(node, ins[2] if len(ins) > 2 else None, "C", optional=True)
    bias = None
    if c is not None:
        bias = _bias(reader, node, c, weight.shape[0]) * a.get("beta", 1.0)
    reader.append(node, {"kind": "Dense", "weight": np.ascontiguousarray(weight),
                         "bias": bias})
    return [_Data(x.axes, reader.version)]


def _bias(reader, node, c, out):
    c = np.asarray(c)
    if c.dtype.kind != "f" or c.size not in (1, out) or (c.ndim and c.shape[-1] not in
                                                          (1, out)):
        reader.refuse(node, f"expected a bias broadcast over {out} outputs, got shape "
                            f"{c.shape}")
    return np.broadcast_to(c.reshape(-1), (out,)).copy()


def _import_add(reader, node, ins):
    if isinstance(ins[0], _Aux) or isinstance(ins[1], _Aux):      # lengths - 1
        aux, other = (ins[0], ins[1]) if isinstance(ins[0], _Aux) else (ins[1], ins[0])
        k = reader.const(node, other, "the addend")
        sign = -1 if node.op_type == "Sub" else 1
        if node.op_type == "Sub" and aux is ins[1]:
            reader.refuse(node, "expected lengths - 1")
        if k.size != 1 or int(k.reshape(-1)[0]) * sign != -1:
            reader.refuse(node, "expected lengths - 1")
        return [_Aux(aux.name, aux.ops + (("minus_one",),))]
    if node.op_type != "Add":
        reader.refuse(node, "Sub on the data path is not supported")
    x, c = (ins[0], ins[1]) if not isinstance(ins[0], _Const) else (ins[1], ins[0])
    x = reader.data(node, x)
    bias = reader.const(node, c, "the bias")
    last = reader.stages[-1] if reader.stages else None
    if last is None or last["kind"] != "Dense":
        reader.refuse(node, "expected Add to be the bias of a MatMul (a dense layer)")
    out = last["weight"].shape[0]
    b = _bias(reader, node, bias, out)
    last["bias"] = b if last["bias"] is None else last["bias"] + b
    reader.version += 1
    return [_Data(x.axes, reader.version)]


def _import_gathernd(reader, node, ins):
    """The last valid step: GatherND((batch, time, F), (lengths - 1)[:, None])."""
    x = reader.data(node, ins[0])
    idx = ins[1]
    if reader.batch_order or reader.attrs(node).get("batch_dims", 0) != 1 or \
            x.axes != ("B", "T", "F") or \
            not isinstance(idx, _Aux) or idx.ops not in (
                (("minus_one",), ("unsqueeze", (1,))), (("minus_one",), ("unsqueeze", (-1,)))):
        reader.refuse(node, "expected the last valid step: GatherND(batch_dims=1) of (batch, "
                            "time, features) at (lengths - 1) unsqueezed on axis 1")
    reader.append(node, {"kind": "LastStep", "lengths": True, "input": idx.name})
    return [_Data(("B", "F"), reader.version)]


def _import_concat(reader, node, ins):
    axis = reader.attrs(node).get("axis")
    states = all(isinstance(v, _State) for v in ins) and len({v.which for v in ins}) == 1
    if states and not any(v.squeezed for v in ins) and axis == 0:
        return [_State(ins[0].which, [l for v in ins for l in v.layers], ins[-1].version,
                       batch_sorted=ins[0].batch_sorted)]
    if states and all(v.squeezed for v in ins) and axis in (1, -1):
        # final h of single directions (B, H) side by side: torch.cat((h[-2], h[-1]), 1),
        # a bidirectional layer's last step (read by Reader.last_step_of_state)
        return [_State(ins[0].which, [l for v in ins for l in v.layers], ins[-1].version,
                       squeezed=True, batch_sorted=ins[0].batch_sorted)]
    reader.refuse(node, "expected a Concat of recurrent states along the layer axis, or of "
                        "one layer's final h of each direction along the feature axis")


def _import_reshape(reader, node, ins):
    """The merge of the directions exporters write after a bidirectional node:
    (T, B, 2, H) -> (T, B, 2H) by the shape [0, 0, -1]."""
    x = reader.data(node, ins[0], layout_only=True)
    shape = _ints(reader.const(node, ins[1], "the shape"), node, reader, "the shape")
    n = len(x.axes)
    stage = reader.stages[-1] if reader.stages else None
    merged = (stage["directions"] * stage["layers"][-1]["hidden"]
              if stage is not None and stage["kind"] in _RECURRENT_OPS else None)
    # The leading axes kept (0), or given as the sizes the graph was exported with
    # (torch's dynamo exporter without dynamic shapes writes [T, B, D*H]): clstm keeps
    # time and batch free either way. The features: inferred (-1) or exactly D*H.
    kept = len(shape) == n - 1 and all(s >= 0 for s in shape[:-1]) and (
        shape[-1] == -1 or (merged is not None and shape[-1] == merged))
    if n < 2 or x.axes[-2:] not in (("D", "F"), ("1", "F")) or not kept or \
            reader.attrs(node).get("allowzero", 0):
        reader.refuse(node, f"expected the merge of the directions into the features, "
                            f"shape {[0] * max(n - 2, 0) + [-1]} of (..., directions, "
                            f"features), got shape {shape} of {_axes_text(x.axes)}")
    return [_Data(x.axes[:-2] + ("F",), x.version, x.tokens)]


def _import_softmax(reader, node, ins):
    x = reader.data(node, ins[0])
    axis = reader.attrs(node).get("axis", -1)
    if reader.axis(axis, len(x.axes), node, reader) != len(x.axes) - 1:
        reader.refuse(node, f"expected a softmax over the last axis, got axis {axis}")
    reader.softmax = True
    return [_Data(x.axes, x.version)]


def _import_topk(reader, node, ins):
    """torch's packing sorts the batch by length: TopK of the lengths over all rows
    gives the sorted lengths (an LSTM's sequence_lens) and the order (a Gather)."""
    v, k = ins[0], ins[1] if len(ins) > 1 else None
    a = reader.attrs(node)
    if not isinstance(v, _Aux) or v.ops or not isinstance(k, _Shapes) or \
            k.count_of != v.name or a.get("largest", 1) != 1 or a.get("axis", -1) not in (0, -1):
        reader.refuse(node, "expected the sort of a lengths input over all its entries "
                            "(TopK largest, k = its size), as torch packs a batch")
    return [_Aux(v.name, (("sorted",),)), _Aux(v.name, (("sort_index",),))]


def _import_scatter_elements(reader, node, ins):
    """The inverse of a sort order: ScatterElements(zeros, order, 0 .. B-1), axis 0."""
    data, idx, upd = (ins + [None] * 3)[:3]
    if not (isinstance(data, _Shapes) and data.zeros and isinstance(idx, _Aux)
            and idx.ops == (("sort_index",),) and isinstance(upd, _Shapes)
            and upd.arange_of == idx.name and reader.attrs(node).get("axis", 0) == 0):
        reader.refuse(node, "expected the inverse of a packed batch's sort order: "
                            "ScatterElements(zeros, order, range(batch)) on axis 0")
    return [_Aux(idx.name, (("unsort_index",),))]


def _batch_permutation(reader, node, src, idx, axis):
    """Rows gathered into the sorted order of a packed batch, or back. clstm runs rows
    independently, so the pair is the identity; what is checked is that the data path
    leaves sorted only after coming back, and that sorted rows get sorted lengths."""
    order = idx.ops[0][0] if len(idx.ops) == 1 else None
    if order not in ("sort_index", "unsort_index"):
        reader.refuse(node, "expected a gather of rows by a packed batch's sort order (or "
                            "its inverse), got another index computed from an input")
    if isinstance(src, _State):
        if src.squeezed or reader.axis(axis, 3, node, reader) != 1 or \
                src.batch_sorted != (order == "unsort_index"):
            reader.refuse(node, "expected the rows (axis 1) of a state put back in the "
                                "input's order")
        return _State(src.which, src.layers, src.version, batch_sorted=False)
    x = reader.data(node, src, layout_only=True)
    ax = reader.axis(axis, len(x.axes), node, reader)
    axes = list(x.axes)
    if axes[ax] in ("?0", "?1") and reader.input_layout is None:
        # the rows being sorted are the batch: the other axis is time
        other = "?1" if axes[ax] == "?0" else "?0"
        reader.input_layout = "time_major" if axes[ax] == "?1" else "batch_first"
        axes = ["B" if a == axes[ax] else "T" if a == other else a for a in axes]
    if axes[ax] != "B" or (reader.batch_order == "sorted") != (order == "unsort_index"):
        reader.refuse(node, f"expected the batch rows {'back in the input order' if order == 'unsort_index' else 'in a packed batch sorted order'} "
                            f"once, got axis {ax} of {_axes_text(x.axes)}")
    reader.batch_order = "sorted" if order == "sort_index" else None
    return _Data(axes, x.version, x.tokens)


#: ONNX op type -> function(reader, node, input values) -> output values; the recurrent
#: ops (_RECURRENT_OPS: LSTM, GRU) are read by _import_recurrent.
_IMPORTERS = {
    "Identity": _import_passthrough, "Dropout": _import_passthrough,
    "Cast": _import_passthrough, "Transpose": _import_transpose,
    "Squeeze": _import_squeeze,
    "Unsqueeze": lambda r, n, i: _import_squeeze(r, n, i, unsqueeze=True),
    "Gather": _import_gather, "Slice": _import_slice, "MatMul": _import_matmul,
    "Gemm": _import_gemm, "Add": _import_add, "Sub": _import_add,
    "GatherND": _import_gathernd, "Concat": _import_concat, "Softmax": _import_softmax,
    "Reshape": _import_reshape, "TopK": _import_topk,
    "ScatterElements": _import_scatter_elements,
}


# -- from the stages to a clstm model -------------------------------------------------------

def _build_recurrent(stage, dtype):
    """The clstm.LSTM or clstm.GRU of a stage of stacked recurrent nodes, its weights
    converted from ONNX's gate orders to PyTorch's."""
    layers, D = stage["layers"], stage["directions"]
    H, I, L = layers[0]["hidden"], layers[0]["input"], len(layers)
    bias = any(layer["B"] is not None for layer in layers)   # none at all: bias=False
    if stage["kind"] == "LSTM":
        peephole = any(layer["P"] is not None for layer in layers)
        net = LSTM(I, H, L, dtype=dtype, peephole=peephole, bidirectional=D == 2,
                   bias=bias)
        order, G = _ONNX_TO_TORCH_GATES, 4
    else:
        net, peephole = GRU(I, H, L, dtype=dtype, bidirectional=D == 2, bias=bias), False
        order, G = _ONNX_TO_TORCH_GRU_GATES, 3
    state = {}
    for k, layer in enumerate(layers):
        for d, sfx in enumerate(("", "_reverse")[:D]):
            B = np.zeros(2 * G * H) if layer["B"] is None else layer["B"][d]
            state[f"weight_ih_l{k}{sfx}"] = _gate_blocks(layer["W"][d], H, order)
            state[f"weight_hh_l{k}{sfx}"] = _gate_blocks(layer["R"][d], H, order)
            if bias:
                state[f"bias_ih_l{k}{sfx}"] = _gate_blocks(B[:G * H], H, order)
                state[f"bias_hh_l{k}{sfx}"] = _gate_blocks(B[G * H:], H, order)
            if peephole:
                P = np.zeros(3 * H) if layer["P"] is None else layer["P"][d]
                state[f"weight_peephole_l{k}{sfx}"] = \
                    P.reshape(3, H)[list(_ONNX_TO_CLSTM_PEEPHOLES)]
    net.load_state_dict(state)
    # initial states: zeros, or rows D*k .. D*k+D-1 of one graph input per h and c
    for which in range(len(layers[0]["init"])):
        inits = [layer["init"][which] for layer in layers]
        if all(i is None for i in inits):
            continue
        if any(i is None for i in inits) or len({i[0] for i in inits}) != 1 or \
                [i[1] for i in inits] != list(range(0, D * L, D)):
            raise _Refused(f"{stage['kind']} nodes {[layer['name'] for layer in layers]}: "
                           f"expected the initial {'hc'[which]} of all {L} layers as zeros "
                           f"or as rows 0..{D * L - 1} of one graph input, {D} per layer")
    return net


def _out_features(layer):
    """The features a layer gives the next one (None for a LastStep: what it reads)."""
    if hasattr(layer, "num_directions"):
        return layer.hidden_size * layer.num_directions
    return getattr(layer, "out_features", getattr(layer, "embedding_dim", None))


def _float_dtype(stages):
    for stage in stages:
        kind = stage["kind"]
        arr = stage["layers"][0]["W"] if kind in _RECURRENT_OPS else stage.get("weight")
        if arr is not None:
            return np.float64 if arr.dtype == np.float64 else np.float32
    return np.float32


def _build_layers(reader):
    dtype = _float_dtype(reader.stages)
    layers = []
    for i, stage in enumerate(reader.stages):
        kind = stage["kind"]
        if kind in _RECURRENT_OPS:
            layers.append(_build_recurrent(stage, dtype))
        elif kind == "Embedding":
            w = stage["weight"]
            layer = Embedding(w.shape[0], w.shape[1], dtype=dtype)
            layer.load_state_dict({"weight": w})
            layers.append(layer)
        elif kind == "Dense":
            w, b = stage["weight"], stage["bias"]
            layer = Dense(w.shape[1], w.shape[0], bias=b is not None, dtype=dtype)
            layer.load_state_dict({"weight": w} if b is None else {"weight": w, "bias": b})
            layers.append(layer)
        else:
            layers.append(LastStep(bidirectional=stage.get("bidirectional", False)))
    for i in range(1, len(layers)):          # each layer reads what the one before gives
        before, layer = layers[i - 1], layers[i]
        got = _out_features(before)
        want = getattr(layer, "input_size", getattr(layer, "in_features", None))
        if isinstance(before, LastStep):
            continue
        if want is not None and got is not None and got != want:
            raise _Refused(f"layer {i} ({type(layer).__name__}) reads {want} features, the "
                           f"layer before gives {got}")
    return layers


def _check_lengths(reader):
    """One lengths for the whole model: every recurrent node takes the same graph input
    as sequence_lens, or none does; a last valid step reads that same input."""
    names = {name for _, name in reader.recurrent_lengths}
    if len(names) > 1:
        node = next(n for n, name in reader.recurrent_lengths
                    if name != reader.recurrent_lengths[0][1])
        raise _Refused(f"node {node.name or '(unnamed)'!r} (op {node.op_type}): expected "
                       "every recurrent node to take the same sequence_lens (clstm runs "
                       f"one model with one lengths), got {sorted(map(str, names))}")
    recurrent = names.pop() if names else None
    for stage in reader.stages:
        if stage["kind"] == "LastStep" and stage.get("input") and recurrent and \
                stage["input"] != recurrent:
            raise _Refused(f"the last valid step reads lengths {stage['input']!r}, the "
                           f"recurrent nodes take {recurrent!r}: expected one input")
    return recurrent


def _main_output(reader, graph):
    """The one graph output the data path ends in (final states are allowed beside it)."""
    values = [(out.name, reader.values.get(out.name)) for out in graph.output]
    for name, value in values:
        if not isinstance(value, (_Data, _State)):
            raise _Refused(f"output {name!r}: expected it to be computed from the input "
                           "(the data path or an LSTM's final state)")
    data = [(n, v) for n, v in values if isinstance(v, _Data)]
    if not data:      # an LSTM read through its final h (the last step), or states only
        data = [(n, reader.data(_NamedNode(n), v)) for n, v in values
                if isinstance(v, _State) and v.which == "h" and v.squeezed][:1]
    if len(data) > 1 or any(v.version != reader.version for _, v in data):
        raise _Refused(f"outputs {[n for n, _ in data]}: expected one output at the end of "
                       "the data path (a clstm model is one chain of layers)")
    return data[0] if data else (None, None)


class _NamedNode:
    def __init__(self, name):
        self.name, self.op_type = name, "output"


def load(path):
    """A clstm model computing what an ONNX graph of LSTM or GRU nodes computes.

    Reads graphs whose recurrent nodes are ONNX ``LSTM`` or ``GRU`` nodes (forward or
    bidirectional, default activations, ``layout`` 0 or 1, LSTM peepholes, a GRU's
    ``linear_before_reset=1``, ``sequence_lens`` absent, the time length of every row, or
    a graph input: clstm's ``lengths``; stacked nodes become one ``clstm.LSTM`` or
    ``clstm.GRU``) with the glue exporters put around them: ``Gather`` of a constant
    table (an Embedding), ``MatMul``/``Gemm`` with ``Add`` (a Dense), ``Squeeze``,
    ``Unsqueeze``, ``Transpose``, the ``Reshape`` merging two directions, ``Concat``,
    ``Slice``, ``Gather`` of the last step, ``Shape`` and the ops that build a zero
    initial state from it, ``Identity``/``Dropout``/``Cast``, a ``GatherND`` of the last
    valid step (what :func:`export` writes for ``lengths``), torch's packed-sequence
    sort of the rows and its inverse (``TopK``, ``Gather``, ``ScatterElements``), the
    final h of the last
    layer (both directions side by side for a bidirectional one: ``LastStep``) and a
    ``Softmax`` at the end.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.onnx`` file. Weights kept in external data files (torch.onnx.export's
        dynamo exporter writes ``<name>.onnx.data``) are read from its folder: each
        file inside that folder, each tensor exactly the bytes its shape implies. The
        graph's first input (not an initializer) is the data: float features, or
        integer token ids read by a Gather; other inputs may be initial states (rows
        D*k .. D*k+D-1 of a (D*L, batch, H) input for layer k, as PyTorch and
        :func:`export` write them) or the ``lengths`` (sequence_lens, or the index of a
        last valid step).

    Returns
    -------
    clstm.LSTM, clstm.GRU or clstm.Sequential
        In eval mode. An LSTM or GRU alone comes back as ``clstm.LSTM``/``clstm.GRU``
        (``batch_first`` as the graph's input); anything else as a ``Sequential`` whose
        ``forward`` computes a time-major graph and ``predict`` a batch-first one (axes
        of size one that the graph's output keeps, a unidirectional node's
        num_directions, are dropped; a bidirectional node's Y read as the output is
        clstm's y, the two directions side by side: (T, B, 2H)). A graph ending in Softmax
        gives a Sequential with ``loss="cross_entropy"``: ``predict`` returns the
        probabilities, ``forward`` the logits. Initial states that the graph takes as
        inputs are ``forward``'s ``state``; a graph input read as ``lengths`` is
        ``predict``'s ``lengths``.

    Raises
    ------
    ValueError
        A file that is not a valid ONNX model, or a node clstm cannot run, naming the
        node, its op and what is not supported (``direction="reverse"``, a GRU's
        ``linear_before_reset=0``, recurrent nodes with different ``sequence_lens``, an
        unknown op, ...).
    """
    onnx = _require_onnx()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load: expected a path (str or os.PathLike), got "
                        f"{type(path).__name__}")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except OSError:
        raise
    except Exception as e:
        raise ValueError(f"load: {os.fspath(path)!r} is not an ONNX model "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    try:
        _load_external_data(onnx, model, os.path.dirname(os.path.abspath(path)))
        return _read_model(onnx, model)
    except _Refused as e:
        raise ValueError(f"load: {os.fspath(path)!r}: {e}") from None


def _load_external_data(onnx, model, base_dir):
    """Read the weights that the model keeps in files beside it (torch.onnx.export's
    dynamo exporter does so by default) into its tensors. ONNX's reader refuses
    locations outside ``base_dir`` and ranges past a file's end; on top of that each
    tensor must name exactly the bytes its shape and type imply, so that what is read
    is bounded by the declared tensors and a file cannot make us read more."""
    from onnx import external_data_helper, helper

    for t in external_data_helper._get_all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:
            raise _Refused(f"tensor {t.name!r}: external data of an unknown type "
                           f"({t.data_type})") from None
        count = 1
        for d in t.dims:
            if d < 0:
                raise _Refused(f"tensor {t.name!r}: expected dimensions >= 0, got "
                               f"{list(t.dims)}")
            count *= d
        info = external_data_helper.ExternalDataInfo(t)
        if info.length is not None and info.length != count * itemsize:
            raise _Refused(f"tensor {t.name!r}: external data of {info.length} bytes, "
                           f"expected {count * itemsize} for shape {list(t.dims)}")
        if info.length is None:
            external_data_helper.set_external_data(
                t, info.location, offset=info.offset, length=count * itemsize)
        try:
            external_data_helper.load_external_data_for_tensor(t, base_dir)
        except Exception as e:
            raise _Refused(f"tensor {t.name!r}: its external data cannot be read "
                           f"({type(e).__name__}: {str(e)[:200]})") from None


def _read_model(onnx, model):
    # Before the checker, which would look for the files external data names.
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise _Refused(f"tensor {t.name!r}: external data is not read (store the "
                           "weights inside the .onnx file)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise _Refused(f"not a valid ONNX model ({type(e).__name__}: "
                       f"{str(e).strip()[:300]})") from None
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx", 0)) < 7:
        raise _Refused(f"expected opset 7 or later of the default domain, got {opsets}")
    graph = model.graph
    initialized = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialized]
    if not inputs:
        raise _Refused("the graph has no input")
    reader = _Reader(onnx, graph)
    reader.run(inputs[0], inputs[1:])
    if not any(s["kind"] in _RECURRENT_OPS for s in reader.stages):
        raise _Refused("no LSTM or GRU node reads the input: clstm.onnx.load reads "
                       "recurrent models")
    name, out = _main_output(reader, graph)
    if reader.batch_order is not None:
        raise _Refused(f"output {name!r}: its rows are in a packed batch's sorted order; "
                       "expected them gathered back into the input's order")
    _check_lengths(reader)
    try:
        layers = _build_layers(reader)
    except _Refused:
        raise
    except (TypeError, ValueError) as e:    # sizes or values the layers refuse
        raise _Refused(f"the layers cannot be built: {e}") from None
    batch_first = reader.input_layout == "batch_first"
    if out is not None and "T" in out.axes:
        out_first = out.axes.index("B") < out.axes.index("T")
        if out_first != batch_first:
            raise _Refused(f"output {name!r} is {'batch' if out_first else 'time'}-first, the "
                           f"input {'batch' if batch_first else 'time'}-first: clstm models "
                           "keep one layout")
    if len(layers) == 1 and reader.stages[0]["kind"] in _RECURRENT_OPS \
            and not reader.softmax:
        net = layers[0]
        net.batch_first = batch_first
        return net.eval()
    return Sequential(layers, loss="cross_entropy" if reader.softmax else None).eval()
