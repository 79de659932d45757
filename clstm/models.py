"""A thin model API over the explicit layers: Sequential, and ready-made models.

There is no autograd engine. :class:`Sequential` calls its layers' ``forward`` in order
and their ``backward`` in reverse; the ready models (:class:`LanguageModel`,
:class:`Regressor`, :class:`Classifier`) are Sequentials with a fixed layer list and a
loss, and add Keras-like ``fit`` / ``evaluate`` / ``predict``.

Data layout
-----------
Users pass **batch-first** arrays, as in Keras: features ``(N, T, F)`` or token ids
``(N, T)``. Internally everything is time-major, ``(T, B, ...)``, which is what the LSTM
and GRU kernels take; :meth:`Sequential.forward` and :meth:`Sequential.backward` work on
time-major arrays directly.

Variable-length sequences
-------------------------
Pass ``lengths`` (N,) with sequences padded **at the end**. The LSTM (or GRU) is causal,
so padded steps after a sequence's end cannot change its earlier outputs;
:class:`LastStep` reads ``y[length - 1]``, and per-step losses mask the padded steps out,
so padding changes neither predictions nor gradients. Padding at the start would be read
as input: it is not supported. ``fit``/``evaluate``/``predict`` also overwrite padded
inputs with zeros, so padding may hold anything (NaN, or token ids out of range).

Parameters
----------
A model's ``params`` / ``grads`` are dicts named ``"<layer index>.<layer name>"``
(``"1.weight_ih_l0"``), PyTorch's ``nn.Sequential`` naming. When all parameters share one
dtype, the Sequential moves them into one flat buffer (``flat_params``, ``flat_grads``)
and points each layer's dict entries at views of it; the layers read their parameters
through those dicts on every call, so the optimisers update the whole model with a few
vector operations.
"""
import functools
import inspect

import numpy as np

from ._npz_reader import short as _short

from ._concurrency import inference_mode
from .layers import (Embedding, LastStep, Layer,  # noqa: F401 (LastStep re-exported)
                     _describe, lengths_to_mask)
from .losses import mse, softmax, softmax_cross_entropy
from ._validate import positive_int
from .gru import GRU
from .lstm import LSTM
from ._config import MAX_SIZE as _MAX_SIZE
from ._config import BadConfig, read_module_config
from .module import Module, build_module, module_config
from .training import NonFiniteError, evaluate_steps, fit_loop  # noqa: F401 (re-exported)
from . import distributed as _distributed
from .tbptt import batchify, check_chunkable, num_chunks

__all__ = ["LastStep", "Sequential", "LanguageModel", "Regressor", "Classifier",
           "NonFiniteError"]

_LOSSES = (None, "mse", "cross_entropy")

#: The recurrent cells a ready model can be built with (its ``cell`` argument), and the
#: layer class each one names in the model's layer plan.
CELLS = {"lstm": "LSTM", "gru": "GRU"}


# ------------------------------------------------------------------------- adapters

def _adopt(layer, flat_params, flat_grads):
    """Move a layer's parameters into slices of a container's buffers: a Module adopts
    them itself; a layer of your own (with plain ``params``/``grads`` dicts) gets its dict
    entries rebound to the slices, so it must read ``self.params[name]`` at every call."""
    if isinstance(layer, Module):
        layer._adopt(flat_params, flat_grads)
        return
    offset = 0
    for name, arr in list(layer.params.items()):
        p = flat_params[offset:offset + arr.size].reshape(arr.shape)
        g = flat_grads[offset:offset + arr.size].reshape(arr.shape)
        p[...] = arr
        g[...] = layer.grads[name]
        layer.params[name], layer.grads[name] = p, g
        offset += arr.size


def _layer_kinds():
    """The registered layer classes a Sequential's config may name."""
    return {name: cls for name, cls in Module.registry.items() if issubclass(cls, Layer)}


def _read_layer_config(config, where):
    """One checked child config of a Sequential, from an untrusted file."""
    if type(config) is not dict:
        raise BadConfig(f"{where}: expected a JSON object, got {type(config).__name__}")
    kinds = _layer_kinds()
    kind = config.get("type")
    if type(kind) is not str or kind not in kinds:
        raise BadConfig(f"{where}.type: expected one of {', '.join(sorted(kinds))}, got "
                        f"{_short(kind)}")
    args = read_module_config(kinds[kind], {k: v for k, v in config.items() if k != "type"},
                              where)
    return {"type": kind, **args}


def _layer_class(config):
    """(class, arguments) of a checked child config."""
    return Module.registry[config["type"]], {k: v for k, v in config.items() if k != "type"}


def _is_recurrent(layer):
    return isinstance(layer, (LSTM, GRU)) or getattr(layer, "recurrent", False)


def _takes_keyword(method, name):
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------ Sequential

class Sequential(Module):
    """Layers applied one after another, with explicit forward and backward.

    Parameters
    ----------
    layers : sequence of layers
        Objects with ``forward``, ``backward``, ``params`` and ``grads`` (``LSTM``,
        ``GRU``, ``Embedding``, ``Dense``, ``Dropout``, :class:`LastStep`, or your own).
        LSTMs and GRUs must be time-major (``batch_first=False``).
    loss : {None, "mse", "cross_entropy"}
        The loss ``fit`` and ``evaluate`` use; "cross_entropy" is softmax cross-entropy
        on the last axis (``predict`` then returns probabilities).

    Attributes
    ----------
    layers : list
    params, grads : dict of str to ndarray
        ``"<index>.<name>"`` -> the layers' own arrays (views of ``flat_params`` and
        ``flat_grads`` when those are not None).
    flat_params, flat_grads : ndarray or None
        One buffer for all parameters (and one for all gradients) when the layers'
        parameters share a dtype.
    optimizer : Optimizer or None
        The optimiser the last ``fit`` used; the next ``fit`` continues with it.
    history : dict or None
        The per-epoch logs of the last ``fit``, filled as epochs complete (what ``fit``
        returns; after a Ctrl-C, the epochs completed before it).
    layer_done_hook : callable or None
        Called as ``hook(i)`` after layer ``i``'s backward (see :meth:`backward`).
    """

    layer_done_hook = None


    def __init__(self, layers, *, loss=None):
        super().__init__()
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential: expected at least one layer, got none")
        for i, layer in enumerate(self.layers):
            missing = [a for a in ("forward", "backward", "params", "grads")
                       if not hasattr(layer, a)]
            if missing:
                raise TypeError(f"Sequential: layer {i} ({type(layer).__name__}) lacks "
                                f"{', '.join(missing)}")
            if _is_recurrent(layer) and getattr(layer, "batch_first", False):
                kind = type(layer).__name__
                raise ValueError(f"Sequential: layer {i} ({kind}) has batch_first=True; "
                                 f"expected a time-major {kind} (batch_first=False)")
        if loss not in _LOSSES:
            raise ValueError(f"Sequential: expected loss in {_LOSSES}, got {loss!r}")
        self.loss = loss
        self.optimizer = None
        self.history = None
        self._input_grad_kw = [_takes_keyword(layer.backward, "input_grad")
                               for layer in self.layers]
        self._adopt_layers()

    # -- parameters ---------------------------------------------------------------------

    def _adopt_layers(self):
        """Own every layer's parameters: one buffer for all of them (one for their
        gradients), each layer's values moved into its slice and its views rebound there
        (:meth:`Module._adopt`), so the layer used alone sees the same memory. When the
        layers' dtypes differ, each keeps its own buffers. Then ``params``/``grads`` name
        them ``"<index>.<name>"``, as ``torch.nn.Sequential`` does."""
        entries = [(layer, arr) for layer in self.layers for arr in layer.params.values()]
        dtypes = {arr.dtype for _, arr in entries}
        if len(dtypes) == 1:
            dtype = dtypes.pop()
            total = sum(arr.size for _, arr in entries)
            self.flat_params = np.empty(total, dtype=dtype)
            self.flat_grads = np.zeros(total, dtype=dtype)
            offset = 0
            for layer in self.layers:
                size = sum(arr.size for arr in layer.params.values())
                if size:
                    _adopt(layer, self.flat_params[offset:offset + size],
                           self.flat_grads[offset:offset + size])
                offset += size
        self.params = {f"{i}.{name}": arr for i, layer in enumerate(self.layers)
                       for name, arr in layer.params.items()}
        self.grads = {f"{i}.{name}": arr for i, layer in enumerate(self.layers)
                      for name, arr in layer.grads.items()}

    @property
    def dtype(self):
        """numpy.dtype of the first parameter (float64 for a model without any)."""
        for layer in self.layers:
            for arr in layer.params.values():
                return arr.dtype
        return np.dtype(np.float64)

    def train(self, mode=True):
        """Training mode (dropout active) for every layer; returns self."""
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        """Inference mode for every layer; returns self."""
        return self.train(False)

    def get_config(self):
        """The constructor arguments as JSON-able data (see :mod:`clstm.io`)."""
        return {"layers": [module_config(layer) for layer in self.layers],
                "loss": self.loss}

    @classmethod
    def from_config(cls, config):
        """A new model built from :meth:`get_config` output (fresh weights)."""
        return cls([build_module(c) for c in config["layers"]], loss=config.get("loss"))

    @classmethod
    def read_config(cls, f):
        layers, loss = f.value("layers"), f.choice("loss", _LOSSES)
        if type(layers) is not list or not layers:
            f.refuse("layers", "a non-empty array")
        return {"layers": [_read_layer_config(c, f"{f.where}.layers[{i}]")
                           for i, c in enumerate(layers)], "loss": loss}

    @classmethod
    def parameter_shapes(cls, config):
        for i, layer in enumerate(config["layers"]):
            kind, args = _layer_class(layer)
            for name, shape, dtype in kind.parameter_shapes(args):
                yield f"{i}.{name}", shape, dtype

    @classmethod
    def parameter_count(cls, config):
        return sum(kind.parameter_count(args)
                   for kind, args in map(_layer_class, config["layers"]))

    def __repr__(self):
        inner = ",\n".join(f"  ({i}) {_layer_repr(layer)}"
                           for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}(\n{inner}\n)"

    # -- forward / backward -------------------------------------------------------------

    def _state_list(self, state):
        """One state (or None) per recurrent layer: what forward and step carry."""
        count = sum(1 for layer in self.layers if _is_recurrent(layer))
        if state is None:
            return [None] * count
        if not isinstance(state, (list, tuple)) or len(state) != count:
            raise ValueError(f"state: expected a list of {count} states (one per recurrent "
                             f"layer: (h, c) for an LSTM, h for a GRU), got "
                             f"{_describe_state(state)}")
        return state

    def forward(self, x, state=None, *, lengths=None):
        """Run the layers in order on time-major input.

        Parameters
        ----------
        x : ndarray
            (T, B, F) features or (T, B) token ids, whatever the first layer takes.
        state : list, optional
            One initial state (or None, meaning zeros) per recurrent layer, in order:
            ``(h, c)`` for an LSTM, ``h`` for a GRU; e.g. the state a previous call
            returned, to continue a sequence.
        lengths : array_like of int, shape (B,), optional
            Valid steps per sequence, for lengths-aware layers (:class:`LastStep`, and
            recurrent layers whose ``forward`` takes ``lengths``, as :class:`clstm.LSTM`
            and :class:`clstm.GRU`: they run each sequence over its own steps only).

        Returns
        -------
        out : ndarray
            The last layer's output.
        state : list
            The final state of each recurrent layer: ``(h, c)`` for an LSTM, ``h`` for a
            GRU.
        """
        states = iter(self._state_list(state))
        new_state = []
        for layer in self.layers:
            if _is_recurrent(layer):
                if lengths is not None and _takes_keyword(layer.forward, "lengths"):
                    # each sequence runs its own steps only (LSTM's and GRU's lengths)
                    x, s = layer.forward(x, next(states), lengths=lengths)
                else:
                    x, s = layer.forward(x, next(states))
                new_state.append(s)
            elif getattr(layer, "uses_lengths", False):
                x = layer.forward(x, lengths)
            else:
                x = layer.forward(x)
        return x, new_state

    __call__ = forward

    def step(self, x, state=None):
        """Advance the model by one time step, for serving (no gradient, no dropout).

        Each recurrent layer takes one kernel step (:meth:`clstm.LSTM.step`,
        :meth:`clstm.GRU.step`) with its carried state; the other layers run on the
        step's (B, ...) slice, and :class:`LastStep` passes it through (the current step
        is the last one).

        Parameters
        ----------
        x : ndarray
            One step: (B, F) features or (B,) token ids.
        state : list, optional
            One state (or None) per recurrent layer, as returned by the last call:
            ``(h, c)`` for an LSTM, ``h`` for a GRU.

        Returns
        -------
        out : ndarray
            The last layer's output for this step, (B, out).
        state : list
            The new state of each recurrent layer.
        """
        states = iter(self._state_list(state))
        new_state = []
        with inference_mode():
            for layer in self.layers:
                if _is_recurrent(layer):
                    x, s = layer.step(x, next(states))
                    new_state.append(s)
                elif isinstance(layer, LastStep):
                    continue
                else:
                    x = layer.forward(x)
        return x, new_state

    def backward(self, dout, *, input_grad=False, layer_done=None):
        """Back-propagate ``dout`` through the layers of the last ``forward``.

        Adds into every layer's ``grads``. Gradients with respect to initial states are
        dropped: a carried-in state is a constant (truncated BPTT).

        Parameters
        ----------
        dout : ndarray
            dL/d(out), the shape of ``forward``'s output.
        input_grad : bool, default False
            Return dL/dx (skipped by default: the input is usually data).
        layer_done : callable, optional
            ``layer_done(i)`` is called as soon as layer ``i``'s gradients are complete,
            before the layers below it run (default: ``self.layer_done_hook``): how
            :mod:`clstm.distributed` starts summing a layer's gradients over the ranks
            while the backward goes on.

        Returns
        -------
        ndarray or None
            dL/dx when ``input_grad`` and the first layer has one.
        """
        if layer_done is None:
            layer_done = self.layer_done_hook
        d = dout
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            want = input_grad or i > 0
            kw = {"input_grad": want} if self._input_grad_kw[i] else {}
            d = layer.backward(d, **kw)
            if layer_done is not None:
                layer_done(i)
            if _is_recurrent(layer):
                d = d[0]
            if d is None:
                break
        return d

    # -- data checks ----------------------------------------------------------------------

    @property
    def _token_input(self):
        return isinstance(self.layers[0], Embedding)

    @property
    def _seq2one(self):
        return any(getattr(layer, "uses_lengths", False) for layer in self.layers)

    def _input_features(self):
        first = self.layers[0]
        for attr in ("input_size", "in_features"):
            if hasattr(first, attr):
                return getattr(first, attr)
        return None

    def _output_features(self):
        for layer in reversed(self.layers):
            for attr in ("out_features", "hidden_size", "embedding_dim"):
                if hasattr(layer, attr):
                    return getattr(layer, attr)
        return None

    def _check_x(self, x, name="x"):
        x = np.asarray(x)
        if self._token_input:
            if x.ndim != 2:
                raise ValueError(f"{name}: expected token ids of shape (N, T) (batch-first), "
                                 f"got shape {x.shape}")
            if not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"{name}: expected integer token ids, got dtype {x.dtype}")
        else:
            F = self._input_features()
            if x.ndim != 3 or (F is not None and x.shape[2] != F):
                raise ValueError(f"{name}: expected shape (N, T, {F if F else 'F'}) "
                                 f"(batch-first), got shape {x.shape}")
            if x.dtype.kind not in "fiub":
                raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name}: expected at least one sequence and one step, "
                             f"got shape {x.shape}")
        return x

    def _check_y(self, y, x, name="y"):
        if self.loss is None:
            raise ValueError("this model has no loss: construct it with loss='mse' or "
                             "loss='cross_entropy' to fit or evaluate it")
        N, T = x.shape[:2]
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != N:
            raise ValueError(f"{name}: expected {N} samples (as x), got shape {y.shape}")
        out = self._output_features()
        lead = (N,) if self._seq2one else (N, T)
        if self.loss == "cross_entropy":
            if y.shape != lead:
                raise ValueError(f"{name}: expected class ids of shape {lead}, got shape "
                                 f"{y.shape}")
            if not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"{name}: expected integer class ids, got dtype {y.dtype}")
            if y.size and (y.min() < 0 or y.max() >= out):
                raise ValueError(f"{name}: expected class ids in [0, {out}), got min "
                                 f"{int(y.min())}, max {int(y.max())}")
            return y
        if y.shape == lead and out == 1:
            y = y[..., None]  # Keras accepts (N,) targets for a Dense(1) output
        if y.shape != lead + (out,):
            raise ValueError(f"{name}: expected shape {lead + (out,)}, got shape {y.shape}")
        if y.dtype.kind not in "fiub":
            raise ValueError(f"{name}: expected real numbers, got dtype {y.dtype}")
        return y

    @staticmethod
    def _check_lengths(lengths, x, name="lengths"):
        if lengths is None:
            return None
        N, T = x.shape[:2]
        lengths = np.asarray(lengths)
        if lengths.shape != (N,) or not np.issubdtype(lengths.dtype, np.integer) \
                or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"{name}: expected integers in [1, {T}] of shape ({N},), got "
                             f"{_describe(lengths)}")
        return lengths

    def _time_major(self, xb, lengths):
        """Batch-first (B, T, ...) -> contiguous time-major (T, B, ...), padding zeroed."""
        x = np.swapaxes(xb, 0, 1)
        x = np.array(x, dtype=x.dtype if self._token_input else self.dtype, order="C")
        if lengths is not None:
            # Zeros in place of padding: any garbage (NaN, ids out of range) then
            # neither fails nor leaks into the gradient through 0 * NaN.
            x[~lengths_to_mask(lengths, x.shape[0])] = 0
        return x

    # -- loss -----------------------------------------------------------------------------

    def _loss(self, out, y, mask):
        """(loss, dout, count, correct) for one time-major step of data.

        ``count`` is what the mean is over: samples, or counted tokens for per-step
        outputs; ``correct`` counts right argmax predictions (cross-entropy only).
        """
        if self.loss == "mse":
            count = int(np.prod(out.shape[:-1])) if mask is None else int(mask.sum())
            loss, dout = mse(out, y, mask=mask)
            return loss, dout, count, None
        count = int(np.prod(y.shape)) if mask is None else int(mask.sum())
        loss, dout = softmax_cross_entropy(out, y, mask=mask)
        hits = out.argmax(axis=-1) == y
        correct = int(hits.sum() if mask is None else (hits & mask).sum())
        return loss, dout, count, correct

    # -- batches of time-major steps --------------------------------------------------------

    def _steps(self, x, y, lengths, order, batch_size, bptt, dist=None):
        """Yield (x_tm, y_tm, mask, lengths, reset) per optimisation step.

        A batch of sequences is one step, or one step per chunk of ``bptt`` time steps
        (state carried between the chunks of a batch, ``reset`` at its first chunk).
        With ``dist`` (a :class:`clstm.distributed.Distributed`), this rank's shard of
        each batch.
        """
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if dist is not None:
                idx = idx[dist.shard(len(idx))]
            lb = None if lengths is None else lengths[idx]
            xt = self._time_major(x[idx], lb)
            if self._seq2one:
                yield xt, y[idx], None, lb, True
                continue
            yt = np.ascontiguousarray(np.swapaxes(y[idx], 0, 1))
            mask = None if lb is None else lengths_to_mask(lb, xt.shape[0])
            k = bptt or xt.shape[0]
            if k >= xt.shape[0]:        # one chunk: the RNN runs each sequence's steps only
                yield xt, yt, mask, lb, True
                continue
            for t in range(0, xt.shape[0], k):
                m = None if mask is None else mask[t:t + k]
                yield xt[t:t + k], yt[t:t + k], m, None, t == 0

    def _num_steps(self, n, batch_size, T, bptt):
        batches = -(-n // batch_size)
        return batches if (self._seq2one or not bptt) else batches * num_chunks(T, bptt)

    # -- training ---------------------------------------------------------------------------

    def loss_and_grad(self, x, y, *, lengths=None):
        """Loss of one batch, with ``grads`` set to its gradient (no optimiser step).

        Parameters
        ----------
        x, y, lengths
            Batch-first, as for :meth:`fit`.

        Returns
        -------
        float
            The mean loss of the batch.
        """
        x = self._check_x(x)
        y = self._check_y(y, x)
        lengths = self._check_lengths(lengths, x)
        order = np.arange(x.shape[0])
        (xt, yt, mask, lb, _), = self._steps(x, y, lengths, order, len(order), None)
        self.zero_grad()
        out, _ = self.forward(xt, lengths=lb)
        loss, dout, _, _ = self._loss(out, yt, mask)
        self.backward(dout)
        return loss

    def fit(self, x, y, epochs=1, batch_size=32, *, lengths=None, validation_data=None,
            shuffle=True, seed=None, optimizer=None, clip_norm=None, bptt=None, verbose=1,
            callbacks=None, on_nonfinite="raise", distributed=None):
        """Train on batch-first data.

        Parameters
        ----------
        x : array_like
            (N, T, F) features, or (N, T) token ids when the first layer is an Embedding.
        y : array_like
            Targets: (N,) class ids or (N, out) values for a model that ends on the last
            step (:class:`LastStep`); (N, T) class ids or (N, T, out) values per step.
            (N,) is accepted for an output of size 1.
        epochs : int, default 1
        batch_size : int, default 32
        lengths : array_like of int, shape (N,), optional
            Valid steps per sequence; sequences padded at the end.
        validation_data : tuple, optional
            ``(x_val, y_val)`` or ``(x_val, y_val, lengths_val)``, evaluated after each
            epoch into ``val_loss`` (and ``val_accuracy``).
        shuffle : bool, default True
            Shuffle the samples every epoch.
        seed : int, optional
            Seeds the shuffling; with a model built with a seed, a run repeats exactly.
        optimizer : clstm.optim.Optimizer, optional
            Bound to this model. Default: the one the last ``fit`` used, or a new
            ``Adam(model, lr=1e-3)``.
        clip_norm : float, optional
            Clip the global gradient norm to this before each step.
        bptt : int, optional
            Per-step models only: train each batch in chunks of ``bptt`` steps, the
            state carried between chunks and gradients truncated at their boundaries.
        verbose : {0, 1}, default 1
            1 prints one line per epoch (and a live line on a terminal).
        callbacks : list, optional
            :mod:`clstm.callbacks` objects (``EarlyStopping``, ``ModelCheckpoint``,
            ``CSVLogger``, ``LearningRateScheduler``, a :mod:`clstm.schedules` schedule)
            or plain functions ``f(epoch, logs)`` called after each epoch; a true
            return (or ``model.stop_training = True``) stops training.
        on_nonfinite : {"raise", "skip"}, default "raise"
            What a batch whose loss or gradients hold NaN or inf does. Either way its
            update is not applied. "raise" stops with :class:`NonFiniteError` (a
            ``FloatingPointError``) naming the epoch and batch; "skip" goes on with the
            next batch (a carried state restarts from zeros) and counts the skipped
            batches of each epoch in the history's ``skipped_batches``.
        distributed : bool, communicator or clstm.distributed.Distributed, optional
            Data-parallel training over MPI (launch with ``mpiexec``): True uses
            ``MPI.COMM_WORLD``. Every rank passes the same data and reads its shard of
            each batch of ``batch_size`` (the global batch); the result equals one
            process's, to rounding. See :mod:`clstm.distributed`.

        Returns
        -------
        clstm.callbacks.History
            A dict of per-epoch ``loss`` (``accuracy`` for cross-entropy), and
            ``val_loss`` ... with validation data; also kept as ``model.history_``. (The
            ready models, :class:`Classifier` and co., return themselves instead, as
            scikit-learn's estimators do.)

        Raises
        ------
        NonFiniteError
            A non-finite loss or gradient, with ``on_nonfinite="raise"``.
        KeyboardInterrupt
            Ctrl-C stops training as in Keras: KeyboardInterrupt propagates out of
            ``fit``. An optimiser update under way completes first and none starts
            after it, so the model is the one after its last complete update and stays
            usable; ``model.history_`` holds the epochs completed.
        """
        batch_size = _positive("batch_size", batch_size)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle: expected True or False, got {type(shuffle).__name__}")
        if bptt is not None:
            bptt = _positive("bptt", bptt)
            if self._seq2one:
                raise ValueError("bptt: expected None for a model that reads only the last "
                                 "step (its loss is not per step), got " + repr(bptt))
            check_chunkable(self)   # before any update, not at the second chunk
        x = self._check_x(x)
        y = self._check_y(y, x)
        lengths = self._check_lengths(lengths, x)
        dist, optimizer = _distributed.fit_hook(self, distributed, optimizer)
        validate = self._validator(validation_data, batch_size, dist)
        if dist is not None and shuffle:
            seed = dist.agreed_seed(seed)        # one shuffle, the same on every rank
        rng = np.random.default_rng(seed)
        N, T = x.shape[:2]

        def make_steps():
            order = rng.permutation(N) if shuffle else np.arange(N)
            return self._steps(x, y, lengths, order, batch_size, bptt, dist)

        return fit_loop(self, make_steps, self._num_steps(N, batch_size, T, bptt), epochs,
                              validate=validate, optimizer=optimizer, clip_norm=clip_norm,
                              verbose=verbose, callbacks=callbacks, on_nonfinite=on_nonfinite,
                              unit="samples" if self._seq2one else "tokens",
                              distributed=dist)

    def _validator(self, validation_data, batch_size, dist=None):
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) \
                or len(validation_data) not in (2, 3):
            raise ValueError("validation_data: expected (x_val, y_val) or (x_val, y_val, "
                             f"lengths_val), got {_describe_state(validation_data)}")
        xv, yv, lv = (tuple(validation_data) + (None,))[:3]
        xv = self._check_x(xv, "x_val")
        yv = self._check_y(yv, xv, "y_val")
        lv = self._check_lengths(lv, xv, "lengths_val")
        order = np.arange(xv.shape[0])
        return lambda: evaluate_steps(
            self, self._steps(xv, yv, lv, order, max(batch_size, 256), None, dist),
            reduce=None if dist is None else dist.reduce_tally)

    def evaluate(self, x, y, *, lengths=None, batch_size=256):
        """Mean loss (and accuracy for cross-entropy) on batch-first data, in eval mode.

        Returns
        -------
        dict
            ``{"loss": float}``, plus ``"accuracy"`` for cross-entropy models.
        """
        batch_size = _positive("batch_size", batch_size)
        x = self._check_x(x)
        y = self._check_y(y, x)
        lengths = self._check_lengths(lengths, x)
        order = np.arange(x.shape[0])
        return evaluate_steps(self, self._steps(x, y, lengths, order, batch_size, None))

    def predict(self, x, *, lengths=None, batch_size=256):
        """Outputs for batch-first input, in eval mode.

        Returns
        -------
        ndarray
            (N, out) for a model ending on the last step, (N, T, out) per step;
            probabilities (softmax over the last axis) for cross-entropy models.
        """
        batch_size = _positive("batch_size", batch_size)
        x = self._check_x(x)
        lengths = self._check_lengths(lengths, x)
        with inference_mode():  # this thread only: others may be training
            outs = []
            for start in range(0, x.shape[0], batch_size):
                lb = None if lengths is None else lengths[start:start + batch_size]
                xt = self._time_major(x[start:start + batch_size], lb)
                out, _ = self.forward(xt, lengths=lb)
                outs.append(out if self._seq2one else np.swapaxes(out, 0, 1))
        out = np.concatenate(outs)
        return softmax(out) if self.loss == "cross_entropy" else out


def _layer_repr(layer):
    """The layer's own repr, or one built from its config where it has none."""
    if type(layer).__repr__ is not object.__repr__:
        return repr(layer)
    try:
        config = module_config(layer)
    except ValueError:
        return repr(layer)
    args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "type")
    return f"{config['type']}({args})"


def _describe_state(state):
    """'a list of length 3', or the type's name: for error messages."""
    if isinstance(state, (list, tuple)):
        return f"a {type(state).__name__} of length {len(state)}"
    return type(state).__name__


def _positive(name, value):
    return positive_int(value, name)  # TypeError for a non-int, ValueError below 1


# ----------------------------------------------------------------------- ready models

def _config_seed(seed):
    """The seed as saved in a config: an int, or None for anything not JSON-able."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed)
    return None


def _seeds(seed, n):
    """n independent seeds for the parts of a model, all from one user seed."""
    return np.random.SeedSequence(seed).spawn(n)


def _records_arguments(init):
    """Wrap a constructor so that the object keeps the arguments it was given, as given
    (scikit-learn's clone checks that get_params returns the very objects passed)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self._arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        init(self, *args, **kwargs)

    return recording


class _Ready(Sequential):
    """A Sequential whose layers follow from its constructor arguments.

    Follows scikit-learn's conventions: ``fit`` returns the model (the per-epoch logs are
    ``model.history_``), ``get_params``/``set_params`` give and take the constructor's
    arguments, so ``sklearn.base.clone`` and ``cross_val_score`` work.
    """

    def fit(self, *args, **kwargs):
        """As :meth:`Sequential.fit`; returns the model, the history in ``history_``."""
        super().fit(*args, **kwargs)
        return self

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _records_arguments(cls.__dict__["__init__"])

    _estimator_type = None

    def __sklearn_tags__(self):
        """scikit-learn's (>= 1.6) description of an estimator, for is_classifier, the
        choice of cross-validation folds and scorers. Imported only when asked."""
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        kind = self._estimator_type
        return Tags(estimator_type=kind, target_tags=TargetTags(required=kind is not None),
                    classifier_tags=ClassifierTags() if kind == "classifier" else None,
                    regressor_tags=RegressorTags() if kind == "regressor" else None)

    def get_params(self, deep=True):
        """The constructor's arguments, as given (scikit-learn's estimator API)."""
        return dict(self._arguments)

    def set_params(self, **params):
        """Rebuild the model with some constructor arguments changed (fresh weights, as
        scikit-learn's ``set_params`` before a ``fit``); returns the model."""
        unknown = sorted(set(params) - set(self._arguments))
        if unknown:
            raise ValueError(f"set_params: expected arguments of {type(self).__name__} "
                             f"{sorted(self._arguments)}, got {unknown}")
        self.__init__(**{**self._arguments, **params})
        return self

    def get_config(self):
        return dict(self._config)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # The layers follow from the arguments in one place, _layer_plan: the constructor
    # builds them from it, and load() reads the parameters a file must hold from it.

    #: How many seeds the model's parts draw from its one seed.
    _seed_slots = 4

    @classmethod
    def _layer_plan(cls, config):
        """[(seed slot or None, layer config)]: the layers the arguments make, in order."""
        raise NotImplementedError

    def _build_layers(self, config, seed):
        seeds = _seeds(seed, self._seed_slots)
        layers = []
        for slot, layer in self._layer_plan(config):
            kind, args = _layer_class(layer)
            layers.append(kind(**args) if slot is None else kind(**args, seed=seeds[slot]))
        return layers

    @classmethod
    def parameter_shapes(cls, config):
        return Sequential.parameter_shapes({"layers": [c for _, c in cls._layer_plan(config)]})

    @classmethod
    def parameter_count(cls, config):
        return Sequential.parameter_count({"layers": [c for _, c in cls._layer_plan(config)]})


def _head(c, inputs, outputs, *, last_step, dropout_slot, dense_slot):
    """The plan's RNN -> (LastStep) -> (Dropout) -> Dense part, from the arguments c."""
    bidirectional = c.get("bidirectional", False)
    plan = ([(None, {"type": "LastStep", "bidirectional": True} if bidirectional
              else {"type": "LastStep"})] if last_step else [])
    if c["dropout"]:
        plan.append((dropout_slot, {"type": "Dropout", "p": c["dropout"], "dtype": c["dtype"]}))
    plan.append((dense_slot, {"type": "Dense",
                              "in_features": c["hidden_size"] * (2 if bidirectional else 1),
                              "out_features": outputs, "dtype": c["dtype"]}))
    return plan


def _recurrent(c, inputs):
    """The plan's recurrent layer: an LSTM or a GRU (``c["cell"]``; configs saved before
    the cell could be chosen have none and are LSTMs)."""
    rnn = {"type": CELLS[c.get("cell", "lstm")], "input_size": inputs,
           "hidden_size": c["hidden_size"], "num_layers": c["num_layers"],
           "dropout": c["dropout"], "dtype": c["dtype"]}
    if c.get("bidirectional", False):
        rnn["bidirectional"] = True
    return rnn


def _check_cell(cell):
    """The ``cell`` argument of a ready model: "lstm" or "gru"."""
    if not isinstance(cell, str):
        raise TypeError(f"cell: expected one of {', '.join(map(repr, CELLS))}, got "
                        f"{type(cell).__name__} {cell!r}")
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    return cell


def _read_cell(f):
    # files saved before the cell could be chosen have no "cell": they hold LSTMs
    return f.choice("cell", tuple(CELLS), default="lstm")


class LanguageModel(_Ready):
    """Next-token model: Embedding -> LSTM (or GRU) -> (Dropout) -> Dense, softmax
    cross-entropy.

    Parameters
    ----------
    vocab_size : int
    embed_dim : int
    hidden_size : int
    num_layers : int, default 1
    dropout : float, default 0.0
        Between stacked recurrent layers and before the output layer (training only).
    cell : {"lstm", "gru"}, default "lstm"
        The recurrent layer: :class:`clstm.LSTM` or :class:`clstm.GRU`.
    dtype : {"float32", "float64"}
    seed : int, optional
        Seeds the initialisation and the dropout masks.

    Notes
    -----
    ``fit`` takes either one long 1-D token stream, trained with truncated BPTT over
    ``batch_size`` parallel streams (:func:`clstm.tbptt.batchify`), the state carried
    from chunk to chunk and reset at the start of every epoch; or (N, T) sequences,
    whose targets are the inputs shifted by one unless ``y`` is given.
    """

    def __init__(self, vocab_size, embed_dim, hidden_size, num_layers=1, dropout=0.0, *,
                 cell="lstm", dtype="float32", seed=None):
        self._config = {"vocab_size": vocab_size, "embed_dim": embed_dim,
                        "hidden_size": hidden_size, "num_layers": num_layers,
                        "dropout": dropout, "cell": _check_cell(cell),
                        "dtype": np.dtype(dtype).name, "seed": _config_seed(seed)}
        layers = self._build_layers(dict(self._config, dtype=dtype), seed)
        super().__init__(layers, loss="cross_entropy")
        self.vocab_size = vocab_size

    @classmethod
    def _layer_plan(cls, c):
        return [(0, {"type": "Embedding", "num_embeddings": c["vocab_size"],
                     "embedding_dim": c["embed_dim"], "dtype": c["dtype"]}),
                (1, _recurrent(c, c["embed_dim"]))] + \
            _head(c, c["hidden_size"], c["vocab_size"], last_step=False, dropout_slot=2,
                  dense_slot=3)

    @classmethod
    def read_config(cls, f):
        return {"vocab_size": f.int("vocab_size"), "embed_dim": f.int("embed_dim"),
                "hidden_size": f.int("hidden_size"), "num_layers": f.int("num_layers"),
                "dropout": f.probability("dropout"), "cell": _read_cell(f),
                "dtype": f.dtype(), "seed": f.seed()}

    def _check_stream(self, stream, name):
        stream = np.asarray(stream)
        if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
            raise ValueError(f"{name}: expected a 1-D integer token stream, got "
                             f"{_describe(stream)}")
        if stream.size and (stream.min() < 0 or stream.max() >= self.vocab_size):
            raise ValueError(f"{name}: expected token ids in [0, {self.vocab_size}), got "
                             f"{_describe(stream)}")
        return stream

    def _stream_steps(self, stream, batch_size, bptt, name, *, shrink=False, dist=None):
        """Chunks of a batchified stream; state reset only at the first chunk.

        ``shrink`` (for evaluation) lowers the batch size for a short stream rather
        than refusing it. With ``dist``, this rank's streams (columns) only.
        """
        if shrink:
            batch_size = min(batch_size, max(len(stream) // 2, 1))
        if len(stream) < 2 * batch_size:
            raise ValueError(f"{name}: expected at least 2 tokens per stream, got "
                             f"{len(stream)} tokens for {batch_size} streams")
        data = batchify(stream, batch_size)
        if dist is not None:
            data = data[:, dist.shard(batch_size)]
        steps = data.shape[0] - 1
        chunks = [(t, min(bptt, steps - t)) for t in range(0, steps, bptt)]

        def make_steps():
            for t, k in chunks:
                yield (np.ascontiguousarray(data[t:t + k]), data[t + 1:t + 1 + k], None,
                       None, t == 0)
        return make_steps, len(chunks)

    def _as_sequences(self, x, y, lengths):
        """(N, T) inputs without y: predict each token from the ones before it."""
        if y is not None:
            return x, y, lengths
        x = self._check_x(x)
        if x.shape[1] < 2:
            raise ValueError(f"x: expected at least 2 steps to predict the next token, "
                             f"got shape {x.shape}")
        if lengths is not None:
            lengths = self._check_lengths(lengths, x)
            if lengths.min() < 2:
                raise ValueError(f"lengths: expected every length >= 2 when the targets "
                                 f"are the inputs shifted by one, got min {lengths.min()}")
            lengths = lengths - 1
        return x[:, :-1], x[:, 1:], lengths

    def fit(self, x, y=None, epochs=1, batch_size=32, *, bptt=35, lengths=None,
            validation_data=None, shuffle=True, seed=None, optimizer=None, clip_norm=None,
            verbose=1, callbacks=None, on_nonfinite="raise", distributed=None):
        """Train on a 1-D token stream (truncated BPTT) or on (N, T) sequences.

        Parameters
        ----------
        x : array_like of int
            A 1-D stream, or (N, T) sequences (batch-first).
        y : array_like of int, optional
            (N, T) targets for sequences; default: ``x`` shifted by one step. Must be
            None for a stream.
        bptt : int, default 35
            Steps per truncated-BPTT chunk (one optimiser step each).
        validation_data : array_like or tuple, optional
            A 1-D stream for a stream, else as :meth:`Sequential.fit`.
        shuffle : bool
            Shuffles sequences; a stream is always read in order.
        distributed : optional
            As :meth:`Sequential.fit`; for a stream, each rank trains its own share of
            the ``batch_size`` parallel streams, its state carried across chunks.

        Other parameters are those of :meth:`Sequential.fit`.
        """
        batch_size = _positive("batch_size", batch_size)
        bptt = _positive("bptt", bptt)
        if np.ndim(x) != 1:
            x, y, lengths = self._as_sequences(x, y, lengths)
            if isinstance(validation_data, np.ndarray):  # sequences alone: shift them
                validation_data = self._as_sequences(validation_data, None, None)
            return super().fit(x, y, epochs, batch_size, lengths=lengths,
                               validation_data=validation_data, shuffle=shuffle, seed=seed,
                               optimizer=optimizer, clip_norm=clip_norm, bptt=bptt,
                               verbose=verbose, callbacks=callbacks,
                               on_nonfinite=on_nonfinite, distributed=distributed)
        if y is not None or lengths is not None:
            raise ValueError("y and lengths: expected None for a 1-D token stream (the "
                             "targets are the stream shifted by one)")
        dist, optimizer = _distributed.fit_hook(self, distributed, optimizer)
        make_steps, total = self._stream_steps(self._check_stream(x, "x"), batch_size,
                                               bptt, "x", dist=dist)
        validate = None
        if validation_data is not None:
            val = self._stream_steps(self._check_stream(validation_data, "validation_data"),
                                     batch_size, bptt, "validation_data", shrink=True,
                                     dist=dist)[0]
            reduce = None if dist is None else dist.reduce_tally
            validate = lambda: evaluate_steps(self, val(), reduce=reduce)  # noqa: E731
        fit_loop(self, make_steps, total, epochs, validate=validate, optimizer=optimizer,
                 clip_norm=clip_norm, verbose=verbose, callbacks=callbacks, unit="tokens",
                 on_nonfinite=on_nonfinite, distributed=dist)
        return self

    def evaluate(self, x, y=None, *, lengths=None, batch_size=32, bptt=35):
        """Mean per-token loss and accuracy of a stream or of sequences (eval mode).

        ``exp(loss)`` is the perplexity.
        """
        if np.ndim(x) == 1:
            steps = self._stream_steps(self._check_stream(x, "x"),
                                       _positive("batch_size", batch_size),
                                       _positive("bptt", bptt), "x", shrink=True)[0]
            return evaluate_steps(self, steps())
        x, y, lengths = self._as_sequences(x, y, lengths)
        return super().evaluate(x, y, lengths=lengths, batch_size=batch_size)

    def generate(self, prompt_ids, length, temperature=1.0, seed=None):
        """Sample ``length`` tokens after a prompt, one step at a time.

        The prompt is read in one forward pass; then each sampled token is fed back with
        the carried state through :meth:`Sequential.step`: one kernel step per layer.

        Parameters
        ----------
        prompt_ids : array_like of int, shape (P,)
            At least one token.
        length : int
            Tokens to generate (>= 0).
        temperature : float, default 1.0
            Divides the logits; lower is more conservative, 0 picks the most likely token.
        seed : int, optional
            Seeds the sampling: the same seed gives the same tokens.

        Returns
        -------
        ndarray of int64, shape (length,)
            The generated tokens (the prompt excluded).
        """
        prompt = self._check_stream(prompt_ids, "prompt_ids")
        if prompt.size == 0:
            raise ValueError("prompt_ids: expected at least one token, got none")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) \
                or length < 0:
            raise ValueError(f"length: expected an int >= 0, got {length!r}")
        temperature = float(temperature)
        if not temperature >= 0:
            raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
        rng = np.random.default_rng(seed)
        out = np.empty(int(length), dtype=np.int64)
        with inference_mode():  # this thread only: others may be training
            logits, state = self.forward(prompt[:, None])
            logits = logits[-1]
            for i in range(out.size):
                out[i] = _sample(logits[0], temperature, rng)
                logits, state = self.step(out[i:i + 1], state)   # one kernel step a layer
        return out


def _sample(logits, temperature, rng):
    if temperature == 0:
        return int(np.argmax(logits))
    p = softmax(logits.astype(np.float64) / temperature)
    # inverse CDF with one uniform: independent of numpy's choice() internals
    return int(min(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"),
                   p.size - 1))


class Regressor(_Ready):
    """LSTM (or GRU) -> last step -> (Dropout) -> Dense, mean squared error.

    Keras' ``Sequential([LSTM(hidden_size), Dense(output_size)])`` (``GRU`` with
    ``cell="gru"``).

    Parameters
    ----------
    input_size : int
        Features per step.
    hidden_size : int
    output_size : int, default 1
    num_layers : int, default 1
    dropout : float, default 0.0
        Between stacked recurrent layers and before the output layer (training only).
    bidirectional : bool, default False
        A bidirectional LSTM (or GRU), read at each sequence's last valid step (forward
        direction) and at step 0 (reverse direction).
    cell : {"lstm", "gru"}, default "lstm"
        The recurrent layer: :class:`clstm.LSTM` or :class:`clstm.GRU`.
    dtype : {"float32", "float64"}
    seed : int, optional
    """

    def __init__(self, input_size, hidden_size, output_size=1, num_layers=1, dropout=0.0,
                 *, bidirectional=False, cell="lstm", dtype="float32", seed=None):
        self._config = {"input_size": input_size, "hidden_size": hidden_size,
                        "output_size": output_size, "num_layers": num_layers,
                        "dropout": dropout, "bidirectional": bidirectional,
                        "cell": _check_cell(cell), "dtype": np.dtype(dtype).name,
                        "seed": _config_seed(seed)}
        layers = self._build_layers(dict(self._config, dtype=dtype), seed)
        super().__init__(layers, loss="mse")

    _seed_slots = 3

    @classmethod
    def _layer_plan(cls, c):
        return [(0, _recurrent(c, c["input_size"]))] + \
            _head(c, c["hidden_size"], c["output_size"], last_step=True, dropout_slot=1,
                  dense_slot=2)

    @classmethod
    def read_config(cls, f):
        return {"input_size": f.int("input_size"), "hidden_size": f.int("hidden_size"),
                "output_size": f.int("output_size"), "num_layers": f.int("num_layers"),
                "dropout": f.probability("dropout"),
                "bidirectional": f.bool("bidirectional", default=False),
                "cell": _read_cell(f), "dtype": f.dtype(), "seed": f.seed()}

    _estimator_type = "regressor"

    def score(self, x, y, *, lengths=None):
        """The coefficient of determination R² on (x, y), as scikit-learn's regressors
        score (1 is perfect, 0 is predicting the mean)."""
        y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
        pred = self.predict(x, lengths=lengths).reshape(len(x), -1)
        residual = ((y - pred) ** 2).sum()
        total = ((y - y.mean(axis=0)) ** 2).sum()
        return float(1 - residual / total) if total > 0 else 0.0


class Classifier(_Ready):
    """(Embedding) -> LSTM (or GRU) -> last valid step -> (Dropout) -> Dense, cross-entropy.

    Give ``input_size`` for (N, T, F) feature input, or ``vocab_size`` for (N, T) token
    ids. With ``lengths``, the class is read at each sequence's last valid step (pad at
    the end).

    Parameters
    ----------
    input_size : int, optional
        Features per step; exclusive with ``vocab_size``.
    hidden_size : int
    num_classes : int
    vocab_size : int, optional
        Token input through an Embedding of ``embed_dim`` (default ``hidden_size``).
    embed_dim : int, optional
    num_layers : int, default 1
    bidirectional : bool, default False
        A bidirectional LSTM (or GRU), read at each sequence's last valid step (forward
        direction) and at step 0 (reverse direction); with ``lengths`` both directions
        run each sequence over its own steps only.
    cell : {"lstm", "gru"}, default "lstm"
        The recurrent layer: :class:`clstm.LSTM` or :class:`clstm.GRU`.
    dropout : float, default 0.0
    padding_idx : int, optional
        Embedding row kept at zero.
    dtype : {"float32", "float64"}
    seed : int, optional
    """

    def __init__(self, input_size=None, hidden_size=64, num_classes=2, *, vocab_size=None,
                 embed_dim=None, num_layers=1, bidirectional=False, cell="lstm", dropout=0.0,
                 padding_idx=None, dtype="float32", seed=None):
        if (input_size is None) == (vocab_size is None):
            raise ValueError(f"Classifier: expected exactly one of input_size (features) "
                             f"and vocab_size (tokens), got input_size={input_size!r}, "
                             f"vocab_size={vocab_size!r}")
        self._config = {"input_size": input_size, "hidden_size": hidden_size,
                        "num_classes": num_classes, "vocab_size": vocab_size,
                        "embed_dim": embed_dim, "num_layers": num_layers,
                        "bidirectional": bidirectional, "cell": _check_cell(cell),
                        "dropout": dropout, "padding_idx": padding_idx,
                        "dtype": np.dtype(dtype).name, "seed": _config_seed(seed)}
        layers = self._build_layers(dict(self._config, dtype=dtype), seed)
        super().__init__(layers, loss="cross_entropy")

    @classmethod
    def _layer_plan(cls, c):
        plan, inputs = [], c["input_size"]
        if c["vocab_size"] is not None:
            inputs = c["hidden_size"] if c["embed_dim"] is None else c["embed_dim"]
            plan.append((0, {"type": "Embedding", "num_embeddings": c["vocab_size"],
                             "embedding_dim": inputs, "padding_idx": c["padding_idx"],
                             "dtype": c["dtype"]}))
        return plan + [(1, _recurrent(c, inputs))] + \
            _head(c, c["hidden_size"], c["num_classes"], last_step=True, dropout_slot=2,
                  dense_slot=3)

    @classmethod
    def read_config(cls, f):
        config = {"input_size": f.int("input_size", optional=True),
                  "hidden_size": f.int("hidden_size"), "num_classes": f.int("num_classes"),
                  "vocab_size": f.int("vocab_size", optional=True),
                  "embed_dim": f.int("embed_dim", optional=True),
                  "num_layers": f.int("num_layers"),
                  "bidirectional": f.bool("bidirectional", default=False),
                  "cell": _read_cell(f), "dropout": f.probability("dropout"),
                  "padding_idx": f.int("padding_idx", -_MAX_SIZE, _MAX_SIZE, optional=True),
                  "dtype": f.dtype(), "seed": f.seed()}
        inputs, vocab, padding = config["input_size"], config["vocab_size"], \
            config["padding_idx"]
        if (inputs is None) == (vocab is None):
            raise BadConfig(f"{f.where}: expected exactly one of input_size and vocab_size, "
                            f"got {_short(inputs)} and {_short(vocab)}")
        if vocab is not None and padding is not None and not -vocab <= padding < vocab:
            raise BadConfig(f"{f.where}.padding_idx: expected an int in [{-vocab}, "
                            f"{vocab - 1}] or null, got {padding}")
        return config

    _estimator_type = "classifier"       # scikit-learn's tag (StratifiedKFold, scorers)

    def predict_proba(self, x, *, lengths=None, batch_size=256):
        """Class probabilities, (N, num_classes), for batch-first input (eval mode)."""
        return Sequential.predict(self, x, lengths=lengths, batch_size=batch_size)

    def predict(self, x, *, lengths=None, batch_size=256):
        """The most probable class of each sequence, (N,) ints (scikit-learn's
        convention: :meth:`predict_proba` gives the probabilities)."""
        return self.predict_proba(x, lengths=lengths, batch_size=batch_size).argmax(axis=-1)

    def score(self, x, y, *, lengths=None):
        """Accuracy on (x, y), as scikit-learn's classifiers score."""
        y = np.asarray(y)
        return float(np.mean(self.predict(x, lengths=lengths) == y))
