"""clstm.LSTM: a stack of LSTM layers over the compiled kernels.

This module owns the parameters (one flat buffer, with per-name views in PyTorch's names
and shapes), checks user input, and runs the layers one after another; all arithmetic
happens in clstm.kernels. The math is in DEVELOPERS.md.
"""
import numpy as np

from . import _threads, kernels
from ._concurrency import PerThread, WorkspacePool
from .layers import Layer
from ._validate import as_float_array, as_real_array, check_shape, positive_int
from ._validate import C_INT_MAX, at_most, parameter_count


class LSTM(Layer):
    """A multi-layer LSTM with explicit forward and backward passes.

    Parameters
    ----------
    input_size : int
        Features per time step of the input.
    hidden_size : int
        Units per layer (H).
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads the hidden states of layer k-1.
    dtype : {"float32", "float64"}, default "float32"
        Type of the parameters and of all computation.
    peephole : bool, default False
        Add the diagonal peephole weights w_ci, w_cf, w_co (``weight_peephole_l{k}``).
    dropout : float, default 0.0
        Dropout probability on the outputs of every layer but the last, in training
        mode only (as in ``torch.nn.LSTM``).
    seed : int or None
        Seeds the initialisation and the dropout masks.
    batch_first : bool, default False
        Input and output are (B, T, F) instead of (T, B, F).

    Attributes
    ----------
    params, grads : dict of str to ndarray
        PyTorch's names and shapes (``weight_ih_l0``, ...); views into ``flat_params``
        and ``flat_grads``, so an optimiser can update everything at once.

    Notes
    -----
    One object may be called from many threads at once: ``forward`` and ``step`` share
    nothing between calls but the parameters they read (each call has its own kernel
    workspaces), and what a ``forward`` keeps for ``backward`` is kept per thread, so a
    thread's ``backward`` differentiates that thread's last ``forward``. Backward calls
    add into ``grads`` one at a time.
    """

    #: Idle kernel workspaces kept for reuse, per model, at most this many bytes (a
    #: larger workspace is freed after its call); see :meth:`release_workspace`.
    workspace_cache_bytes = 512 * 1024 * 1024

    def __init__(self, input_size, hidden_size, num_layers=1, *, dtype="float32",
                 peephole=False, dropout=0.0, seed=None, batch_first=False):
        self.input_size = positive_int(input_size, "input_size")
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.num_layers = positive_int(num_layers, "num_layers")
        # Refused before anything is allocated (or a list of num_layers names built).
        at_most(self.input_size, C_INT_MAX, "input_size", "the kernels index it with a C int")
        at_most(self.hidden_size, C_INT_MAX // 4, "hidden_size",
                "4 * hidden_size must fit the C int the kernels and BLAS index with")
        H, layers = self.hidden_size, self.num_layers
        per_layer = 8 * H + (3 * H if peephole else 0)  # biases, peepholes
        parameter_count(4 * H * (self.input_size + H) + 4 * H * 2 * H * (layers - 1)
                        + per_layer * layers, "LSTM")
        super().__init__(dtype)
        self.peephole = bool(peephole)
        self.batch_first = bool(batch_first)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self._rng = np.random.default_rng(seed)
        # What each thread's last forward keeps for its backward; the kernels' scratch
        # buffers, reused across calls but never shared by two (clstm/_concurrency.py).
        self._cache = PerThread()
        self._workspaces = WorkspacePool(self.dtype, self.workspace_cache_bytes)

        # per layer: the names of its weights, looked up at every call (an optimizer or a
        # model may rebind the entries), built once
        self._names = [(f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}",
                        f"weight_peephole_l{k}" if self.peephole else None)
                       for k in range(self.num_layers)]
        shapes = self._parameter_shapes()
        total = sum(int(np.prod(s)) for s in shapes.values())
        # PyTorch's initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)), drawn
        # as one vector in the parameters' order.
        bound = 1.0 / np.sqrt(self.hidden_size)
        drawn = self._rng.uniform(-bound, bound, size=total)
        initial, offset = {}, 0
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            initial[name] = drawn[offset:offset + size].reshape(shape)
            offset += size
        self._create_parameters(initial, self.dtype)

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "dtype": self.dtype.name,
                "peephole": self.peephole, "dropout": self.dropout,
                "batch_first": self.batch_first}

    # -- parameters -------------------------------------------------------------------

    @classmethod
    def read_config(cls, f):
        return {"input_size": f.int("input_size"), "hidden_size": f.int("hidden_size"),
                "num_layers": f.int("num_layers"), "dtype": f.dtype(),
                "peephole": f.bool("peephole"), "dropout": f.probability("dropout"),
                "batch_first": f.bool("batch_first")}

    @classmethod
    def parameter_shapes(cls, config):
        H, peephole = config["hidden_size"], config.get("peephole", False)
        dtype = config.get("dtype", "float32")
        for k in range(config.get("num_layers", 1)):
            inputs = config["input_size"] if k == 0 else H
            yield f"weight_ih_l{k}", (4 * H, inputs), dtype
            yield f"weight_hh_l{k}", (4 * H, H), dtype
            yield f"bias_ih_l{k}", (4 * H,), dtype
            yield f"bias_hh_l{k}", (4 * H,), dtype
            if peephole:
                yield f"weight_peephole_l{k}", (3, H), dtype

    @classmethod
    def parameter_count(cls, config):
        return config.get("num_layers", 1) * (5 if config.get("peephole", False) else 4)

    def _parameter_shapes(self):
        return {name: shape for name, shape, _ in self.parameter_shapes(self.get_config())}

    def release_workspace(self):
        """Free the kernel workspaces kept for reuse, and what this thread's last
        forward kept for a backward (which then needs a new forward)."""
        self._drop_cache()
        self._workspaces.clear()

    def _drop_cache(self):
        """Give this thread's forward cache's workspaces back to the pool."""
        cache = self._cache.pop()
        if cache is not None:
            for layer in cache[3]:
                self._workspaces.give(layer[2])

    def __repr__(self):
        extras = "".join([
            f", num_layers={self.num_layers}" if self.num_layers != 1 else "",
            f", dtype='{self.dtype.name}'",
            ", peephole=True" if self.peephole else "",
            f", dropout={self.dropout}" if self.dropout else "",
            ", batch_first=True" if self.batch_first else "",
        ])
        return f"LSTM({self.input_size}, {self.hidden_size}{extras})"

    # -- forward ----------------------------------------------------------------------

    def _layer_weights(self, k):
        """Layer k's (w_ih, w_hh, b_ih, b_hh, peephole or None), read from ``params`` now:
        an optimizer or a model may have rebound the entries."""
        p = self.params
        w_ih, w_hh, b_ih, b_hh, peephole = self._names[k]
        return p[w_ih], p[w_hh], p[b_ih], p[b_hh], (p[peephole] if peephole else None)

    def _time_major_input(self, x):
        x = as_float_array(x, self.dtype, "x") if not (
            isinstance(x, np.ndarray) and x.dtype == self.dtype) else x
        if x.ndim not in (2, 3):
            raise ValueError(
                f"x: expected a 3-D array ({'B, T' if self.batch_first else 'T, B'}, "
                f"{self.input_size}) or an unbatched 2-D array (T, {self.input_size}), "
                f"got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"x: expected {self.input_size} features in the last axis, "
                             f"got shape {x.shape}")
        if T == 0 or B == 0:
            raise ValueError(f"x: expected at least one time step and one sequence, "
                             f"got T={T}, B={B}")
        return np.ascontiguousarray(x), unbatched

    def _state_pair(self, state, B, unbatched, name):
        """(L, B, H) arrays (or None) from a user's (h, c) pair."""
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays, got "
                            f"{type(state).__name__}"
                            f"{' of length %d' % len(state) if isinstance(state, (tuple, list)) else ''}")
        L, H = self.num_layers, self.hidden_size
        expected = (L, H) if unbatched else (L, B, H)
        dt = self.dtype
        if not unbatched and all(type(a) is np.ndarray and a.dtype == dt and a.shape == expected
                                 and a.flags.c_contiguous for a in state):
            return tuple(state)          # already what the kernels take: no copies, no checks
        pair = []
        for part, label in zip(state, ("h", "c")):
            if part is None:
                pair.append(None)
                continue
            arr = as_float_array(part, self.dtype, f"{name} {label}")
            check_shape(arr, expected, f"{name} {label}")
            pair.append(np.ascontiguousarray(arr.reshape(L, B, H)))
        return tuple(pair)

    def forward(self, x, state=None):
        """Run the stack over a whole sequence.

        Parameters
        ----------
        x : array_like
            (T, B, input_size), or (B, T, input_size) with ``batch_first``, or an
            unbatched (T, input_size).
        state : pair of array_like, optional
            Initial (h_0, c_0), each (num_layers, B, hidden_size), or (num_layers,
            hidden_size) for unbatched input. Zeros when omitted.

        Returns
        -------
        y : ndarray
            The last layer's hidden states, (T, B, hidden_size) (or as the input was
            laid out). Read-only: backward needs it unchanged.
        (h_n, c_n) : pair of ndarray
            The final state, (num_layers, B, hidden_size); pass it as ``state`` to
            continue the sequence.
        """
        x, unbatched = self._time_major_input(x)
        T, B, _ = x.shape
        h0, c0 = self._state_pair(state, B, unbatched, "state")
        self._drop_cache()  # a thread's new forward replaces its last one
        H, L = self.hidden_size, self.num_layers
        threads = _threads.get_num_threads()
        h_n = np.empty((L, B, H), dtype=self.dtype)
        c_n = np.empty((L, B, H), dtype=self.dtype)
        layers = []
        inp = x
        try:
            with _threads.blas_guard():
                for k in range(L):
                    w_ih, w_hh, b_ih, b_hh, peephole = self._layer_weights(k)
                    h0_k = None if h0 is None else h0[k]
                    c0_k = None if c0 is None else c0[k]
                    y = np.empty((T, B, H), dtype=self.dtype)
                    # The kernel's workspace, and after it room for the summed biases
                    # (the kernel takes b_ih + b_hh): no allocation per call for either.
                    buffer = self._workspaces.take(5 * T * B * H + 4 * H)
                    workspace = buffer[:5 * T * B * H]
                    bias = np.add(b_ih, b_hh, out=buffer[5 * T * B * H:])
                    layers.append((inp, y, buffer, h0_k, c0_k, None))
                    kernels.forward(T, B, inp.shape[2], H, inp, w_ih, w_hh, bias,
                                    peephole, h0_k, c0_k, y, workspace, threads)
                    h_n[k] = y[-1]
                    c_n[k] = workspace[-B * H:].reshape(B, H)
                    mask = None
                    if self.training and self.dropout > 0 and k < L - 1:
                        keep = self._rng.random((T, B, H)) >= self.dropout
                        mask = keep.astype(self.dtype) / self.dtype.type(1.0 - self.dropout)
                        layers[-1] = (inp, y, buffer, h0_k, c0_k, mask)
                    inp = y if mask is None else y * mask
        except BaseException:
            # Interrupted (Ctrl-C) or failed: the model stays usable, the buffers return.
            for layer in layers:
                self._workspaces.give(layer[2])
            raise
        self._cache.set((T, B, unbatched, layers))

        out = y.view()
        out.flags.writeable = False
        if unbatched:
            out, h_n, c_n = out[:, 0], h_n[:, 0], c_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, (h_n, c_n)

    __call__ = forward

    def step(self, x, state=None):
        """Advance every layer by one time step, for serving (no gradient, no dropout).

        Equivalent to ``forward(x[None], state)`` but with nothing saved for backward
        and the least work per call, for streams that arrive one step at a time.

        Parameters
        ----------
        x : array_like
            One time step: (B, input_size), or unbatched (input_size,).
        state : pair of array_like, optional
            (h, c), each (num_layers, B, hidden_size) (unbatched: (num_layers,
            hidden_size)); zeros when omitted.

        Returns
        -------
        y : ndarray
            The top layer's new hidden state, (B, hidden_size).
        (h, c) : pair of ndarray
            The new state, to pass to the next call.
        """
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.flags.c_contiguous):
            x = as_float_array(x, self.dtype, "x")
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.input_size or x.shape[0] == 0:
            raise ValueError(f"x: expected one time step of shape (B, {self.input_size}) "
                             f"or ({self.input_size},), got shape {x.shape}")
        B = x.shape[0]
        h0, c0 = self._state_pair(state, B, unbatched, "state") if state is not None \
            else (None, None)
        H, L = self.hidden_size, self.num_layers
        h_n = np.empty((L, B, H), dtype=self.dtype)
        c_n = np.empty((L, B, H), dtype=self.dtype)
        gates = np.empty((B, 4 * H), dtype=self.dtype)
        inp = x
        for k in range(L):
            h_k = h_n[k]
            kernels.step(B, inp.shape[1], H, inp, *self._layer_weights(k),
                         None if h0 is None else h0[k], None if c0 is None else c0[k],
                         h_k, c_n[k], gates)
            inp = h_k
        if unbatched:
            return h_n[-1, 0], (h_n[:, 0], c_n[:, 0])
        return h_n[-1], (h_n, c_n)

    # -- backward ---------------------------------------------------------------------

    def backward(self, dy, dstate=None, *, input_grad=True):
        """Back-propagate through the sequence of the last ``forward``.

        Adds the parameter gradients into ``self.grads``.

        Parameters
        ----------
        dy : array_like
            dL/dy, the shape of ``y`` returned by forward.
        dstate : pair of array_like, optional
            dL/dh_n and dL/dc_n (either may be None), for a loss on the final state.
        input_grad : bool, default True
            Compute dL/dx; False skips one GEMM when the input needs no gradient.

        Returns
        -------
        dx : ndarray or None
            dL/dx, laid out like x.
        (dh_0, dc_0) : pair of ndarray
            dL/dh_0 and dL/dc_0, (num_layers, B, hidden_size).
        """
        cache = self._cache.get()
        if cache is None:
            raise ValueError("backward: expected a forward pass to differentiate, got none "
                             "(call forward() first, in the same thread; each forward "
                             "supports one backward)")
        T, B, unbatched, layers = cache
        H, L = self.hidden_size, self.num_layers
        expected = (T, H) if unbatched else ((B, T, H) if self.batch_first else (T, B, H))
        dy = as_real_array(dy, "dy")
        check_shape(dy, expected, "dy")
        if unbatched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        # one copy, time-major, in the model's dtype: the kernel overwrites it
        dy = np.array(dy, dtype=self.dtype, order="C", copy=True)
        dh_n, dc_n = self._state_pair(dstate, B, unbatched, "dstate")
        self._cache.set(None)  # the workspaces are consumed below

        threads = _threads.get_num_threads()
        dh0 = np.empty((L, B, H), dtype=self.dtype)
        dc0 = np.empty((L, B, H), dtype=self.dtype)
        dbias = np.empty(4 * H, dtype=self.dtype)
        g = self.grads
        dx = None
        # One backward at a time adds into the shared gradients.
        # (Layer.backward holds the gradient lock: one backward at a time adds into grads.)
        with _threads.blas_guard(), _GiveBack(self._workspaces, layers):
            for k in range(L - 1, -1, -1):
                inp, y, buffer, h0_k, c0_k, mask = layers[k]
                workspace = buffer[:5 * T * B * H]
                w_ih, w_hh, _, _, peephole = self._layer_weights(k)
                I = inp.shape[2]
                dx = np.empty((T, B, I), dtype=self.dtype) if (k > 0 or input_grad) else None
                dbias.fill(0)
                kernels.backward(
                    T, B, I, H, inp, w_ih, w_hh, peephole, h0_k, c0_k, y, workspace, dy,
                    None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k],
                    dx, dh0[k], dc0[k], g[f"weight_ih_l{k}"], g[f"weight_hh_l{k}"], dbias,
                    g[f"weight_peephole_l{k}"] if self.peephole else None, threads)
                g[f"bias_ih_l{k}"] += dbias
                g[f"bias_hh_l{k}"] += dbias
                if k > 0:
                    dy = dx
                    below_mask = layers[k - 1][5]
                    if below_mask is not None:
                        dy *= below_mask

        if dx is not None:
            if unbatched:
                dx = dx[:, 0]
            elif self.batch_first:
                dx = dx.transpose(1, 0, 2)
        if unbatched:
            dh0, dc0 = dh0[:, 0], dc0[:, 0]
        return dx, (dh0, dc0)

    # -- PyTorch interoperability -------------------------------------------------------

    @classmethod
    def from_torch(cls, module, *, seed=None):
        """A clstm.LSTM with the configuration and weights of a ``torch.nn.LSTM``."""
        import torch  # only here: clstm never needs torch otherwise

        if not isinstance(module, torch.nn.LSTM):
            raise TypeError(f"from_torch: expected a torch.nn.LSTM, got {type(module).__name__}")
        if module.bidirectional:
            raise ValueError("from_torch: expected a unidirectional LSTM, got bidirectional=True")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"from_torch: expected proj_size=0, got {module.proj_size}")
        dtype = module.weight_ih_l0.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"from_torch: expected float32 or float64 weights, got {dtype}")
        net = cls(module.input_size, module.hidden_size, module.num_layers,
                  dtype="float32" if dtype == torch.float32 else "float64",
                  dropout=float(module.dropout), seed=seed, batch_first=module.batch_first)
        state = {name: t.detach().cpu().numpy() for name, t in module.state_dict().items()}
        if not module.bias:  # a bias-free LSTM is ours with zero biases
            for k in range(module.num_layers):
                state[f"bias_ih_l{k}"] = np.zeros(4 * module.hidden_size)
                state[f"bias_hh_l{k}"] = np.zeros(4 * module.hidden_size)
        net.load_state_dict(state)
        net.train(module.training)
        return net

    def to_torch(self):
        """A ``torch.nn.LSTM`` with this network's configuration and weights."""
        import torch

        if self.peephole:
            raise ValueError("to_torch: expected an LSTM without peepholes (torch.nn.LSTM "
                             "has none), got peephole=True")
        module = torch.nn.LSTM(self.input_size, self.hidden_size, self.num_layers,
                               dropout=self.dropout, batch_first=self.batch_first,
                               dtype=torch.float32 if self.dtype == np.float32 else torch.float64)
        module.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in self.params.items()})
        module.train(self.training)
        return module


class _GiveBack:
    """Returns a forward's workspaces to the pool when its backward ends (or fails)."""

    def __init__(self, pool, layers):
        self.pool, self.layers = pool, layers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            self.pool.give(layer[2])
