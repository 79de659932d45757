"""clstm.LSTM: a stack of LSTM layers over the compiled kernels.

This module owns the parameters (one flat buffer, with per-name views in PyTorch's names
and shapes), checks user input, and runs the layers one after another; all arithmetic
happens in clstm.kernels. The math is in DEVELOPERS.md.
"""
import operator

import numpy as np

from . import _threads, kernels
from ._recurrent import RecurrentStack, _GiveBack, _Packing
from ._validate import as_float_array, as_real_array, check_shape, parameter_count


class LSTM(RecurrentStack):
    """A multi-layer LSTM with explicit forward and backward passes.

    Parameters
    ----------
    input_size : int
        Features per time step of the input.
    hidden_size : int
        Units per layer (H).
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads the hidden states of layer k-1.
    bias : bool, default True
        With False the layers have no bias parameters at all (PyTorch's ``bias=False``).
    bidirectional : bool, default False
        Each layer runs a second direction, from each sequence's last valid step down to
        step 0, with its own weights (``..._reverse``); the outputs of the two directions
        are concatenated (2 * hidden_size features) and ``h_n``/``c_n`` hold
        2 * num_layers states, layer by layer, forward direction first (PyTorch's order).
    proj_size : int, default 0
        With 0 < proj_size < hidden_size, an LSTM with projections (LSTMP, PyTorch's
        ``proj_size``): h_t = W_hr (o_t ⊙ tanh(c_t)) with ``weight_hr_l{k}`` (proj_size,
        hidden_size); outputs, ``h_n`` and the recurrent input are proj_size wide, ``c_n``
        stays hidden_size wide.
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

    _cell_name = "LSTM"
    _gate_count = 4

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True,
                 bidirectional=False, proj_size=0, dtype="float32", peephole=False,
                 dropout=0.0, seed=None, batch_first=False):
        self._check_structure(input_size, hidden_size, num_layers,
                              ((bias, "bias"), (bidirectional, "bidirectional")))
        D = self.num_directions
        if isinstance(proj_size, (bool, np.bool_)) or not isinstance(proj_size,
                                                                      (int, np.integer)):
            raise TypeError(f"proj_size: expected an int, got {proj_size!r}")
        if not 0 <= proj_size < self.hidden_size:
            raise ValueError(f"proj_size: expected an int in [0, hidden_size = "
                             f"{self.hidden_size}), got {proj_size}")
        self.proj_size = int(proj_size)
        H, layers = self.hidden_size, self.num_layers
        P = self.proj_size or H           # the width of the state, outputs and h_n
        per_layer = ((8 * H if self.bias else 0) + (3 * H if peephole else 0)
                     + (P * H if self.proj_size else 0))
        parameter_count(D * (4 * H * (self.input_size + P) + 4 * H * (D * P + P) * (layers - 1)
                             + per_layer * layers), "LSTM")
        self._set_up(dtype, dropout, seed, batch_first)
        self.peephole = bool(peephole)

        # per layer and direction (index k * D + d): the names of its weights, looked up
        # at every call (an optimizer or a model may rebind the entries), built once
        self._names = [(f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}",
                        f"bias_ih_l{k}{sfx}" if self.bias else None,
                        f"bias_hh_l{k}{sfx}" if self.bias else None,
                        f"weight_peephole_l{k}{sfx}" if self.peephole else None,
                        f"weight_hr_l{k}{sfx}" if self.proj_size else None)
                       for k in range(self.num_layers) for sfx in ("", "_reverse")[:D]]
        # ... and a function per layer and direction reading them from a params dict:
        # one C call in the usual layouts (2-3x faster than a lookup per name).
        self._getters = [_weights_getter(names) for names in self._names]
        self._layer_getters = [_weights_getter(names[:5]) for names in self._names]
        self._initialise_parameters()

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias,
                "bidirectional": self.bidirectional, "proj_size": self.proj_size,
                "dtype": self.dtype.name,
                "peephole": self.peephole, "dropout": self.dropout,
                "batch_first": self.batch_first}

    # -- parameters -------------------------------------------------------------------

    @classmethod
    def read_config(cls, f):
        # bias, bidirectional, proj_size came later: files saved before have none of them.
        return {"input_size": f.int("input_size"), "hidden_size": f.int("hidden_size"),
                "num_layers": f.int("num_layers"), "bias": f.bool("bias", default=True),
                "bidirectional": f.bool("bidirectional", default=False),
                "proj_size": f.int("proj_size", minimum=0, default=0), "dtype": f.dtype(),
                "peephole": f.bool("peephole"), "dropout": f.probability("dropout"),
                "batch_first": f.bool("batch_first")}

    @classmethod
    def parameter_shapes(cls, config):
        """PyTorch's order: per layer, per direction, w_ih, w_hh, b_ih, b_hh, w_hr (then
        our peepholes)."""
        H, peephole = config["hidden_size"], config.get("peephole", False)
        bias, proj = config.get("bias", True), config.get("proj_size", 0)
        P = proj or H
        D = 2 if config.get("bidirectional", False) else 1
        dtype = config.get("dtype", "float32")
        for k in range(config.get("num_layers", 1)):
            inputs = config["input_size"] if k == 0 else D * P
            for sfx in ("", "_reverse")[:D]:
                yield f"weight_ih_l{k}{sfx}", (4 * H, inputs), dtype
                yield f"weight_hh_l{k}{sfx}", (4 * H, P), dtype
                if bias:
                    yield f"bias_ih_l{k}{sfx}", (4 * H,), dtype
                    yield f"bias_hh_l{k}{sfx}", (4 * H,), dtype
                if proj:
                    yield f"weight_hr_l{k}{sfx}", (proj, H), dtype
                if peephole:
                    yield f"weight_peephole_l{k}{sfx}", (3, H), dtype

    @classmethod
    def parameter_count(cls, config):
        per = (2 + (2 if config.get("bias", True) else 0) + (1 if config.get("peephole") else 0)
               + (1 if config.get("proj_size", 0) else 0))
        D = 2 if config.get("bidirectional", False) else 1
        return config.get("num_layers", 1) * D * per

    # -- forward ----------------------------------------------------------------------

    def _layer_weights(self, k):
        """Layer k's (w_ih, w_hh, b_ih, b_hh, peephole or None) in the forward direction,
        read from ``params`` now (an optimizer or a model may have rebound the entries);
        the biases are None without bias. See _direction_weights for the rest."""
        return self._layer_getters[k * self.num_directions](self.params)

    def _direction_weights(self, k, d=0):
        """Layer k's (w_ih, w_hh, b_ih, b_hh, peephole, w_hr) in direction d, read from
        ``params`` now: an optimizer or a model may have rebound the entries. The biases
        are None without bias, the peephole without peepholes, w_hr without projection."""
        return self._getters[k * self.num_directions + d](self.params)

    def _summed_bias(self, b_ih, b_hh, out):
        """b_ih + b_hh into ``out`` (zeros without bias): the kernels take the sum."""
        if b_ih is None:
            out.fill(0)
            return out
        return np.add(b_ih, b_hh, out=out)

    def _state_pair(self, state, B, unbatched, name):
        """(L, B, H) arrays (or None) from a user's (h, c) pair."""
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays, got "
                            f"{type(state).__name__}"
                            f"{' of length %d' % len(state) if isinstance(state, (tuple, list)) else ''}")
        L, H = self.num_layers * self.num_directions, self.hidden_size
        widths = (self.proj_size or H, H)            # h is proj_size wide with projections
        h, c = state
        dt = self.dtype
        # already what the kernels take (a state the last call returned): no copies, no
        # checks (spelled out: a generator over the pair cost 1 µs of a 6 µs step)
        if (not unbatched and type(h) is np.ndarray and type(c) is np.ndarray
                and h.dtype == dt and c.dtype == dt and h.shape == (L, B, widths[0])
                and c.shape == (L, B, H) and h.flags.c_contiguous and c.flags.c_contiguous):
            return h, c
        shapes = [(L, w) if unbatched else (L, B, w) for w in widths]
        pair = []
        for part, label, expected, w in zip(state, ("h", "c"), shapes, widths):
            if part is None:
                pair.append(None)
                continue
            arr = as_float_array(part, self.dtype, f"{name} {label}")
            check_shape(arr, expected, f"{name} {label}")
            pair.append(np.ascontiguousarray(arr.reshape(L, B, w)))
        return tuple(pair)

    def forward(self, x, state=None, *, lengths=None):
        """Run the stack over a whole sequence.

        Parameters
        ----------
        x : array_like
            (T, B, input_size), or (B, T, input_size) with ``batch_first``, or an
            unbatched (T, input_size).
        state : pair of array_like, optional
            Initial (h_0, c_0), each (D * num_layers, B, hidden_size), or (D *
            num_layers, hidden_size) for unbatched input (D = 2 if bidirectional else
            1). Zeros when omitted.
        lengths : array_like of int, optional
            (B,) valid steps per sequence, in [1, T], sequences padded at the end. Each
            sequence then runs only its own steps, as if alone (PyTorch's packed
            sequences): outputs past its length are zero, the final state is its state
            at its last step, the reverse direction starts there, and backward sends
            nothing back from padded positions. Padded steps are not computed.

        Returns
        -------
        y : ndarray
            The last layer's hidden states, (T, B, D * hidden_size) (or as the input
            was laid out). Read-only: backward needs it unchanged.
        (h_n, c_n) : pair of ndarray
            The final state, (D * num_layers, B, hidden_size); pass it as ``state`` to
            continue the sequence.
        """
        x, unbatched = self._time_major_input(x)
        T, B, _ = x.shape
        h0, c0 = self._state_pair(state, B, unbatched, "state")
        if lengths is not None:
            lengths = self._lengths(lengths, T, B)
        if lengths is not None or self.num_directions > 1 or self.proj_size:
            self._drop_cache()  # a thread's new forward replaces its last one
            return self._forward_packed(x, h0, c0, lengths, unbatched)
        # A thread's new forward replaces its last one, whose workspaces it reuses.
        spare = self._pop_cache_buffers()
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
                    # The kernel's workspace, and after it room for a zero bias (without
                    # bias): no allocation per call for either. The kernel sums b_ih +
                    # b_hh and writes the final state into h_n, c_n itself (each a NumPy
                    # call per layer here otherwise: 1-1.5 µs of a small call).
                    buffer = self._workspaces.take(5 * T * B * H + 4 * H, spare)
                    workspace = buffer[:5 * T * B * H]
                    if b_ih is None:
                        b_ih = self._summed_bias(None, None, buffer[5 * T * B * H:])
                    layers.append((inp, y, buffer, h0_k, c0_k, None))
                    kernels.forward(T, B, inp.shape[2], H, inp, w_ih, w_hh, b_ih,
                                    peephole, h0_k, c0_k, y, workspace, threads,
                                    bias_hh=b_hh, h_n=h_n[k], c_n=c_n[k])
                    mask = self._dropout_mask(y) if k < L - 1 else None
                    if mask is not None:
                        layers[-1] = (inp, y, buffer, h0_k, c0_k, mask)
                    inp = y if mask is None else y * mask
        except BaseException:
            self._give_back(layers)
            raise
        finally:
            for buffer in spare:        # the last forward's that this one did not need
                self._workspaces.give(buffer)
        self._cache.set((T, B, unbatched, layers, None))

        out = y.view()
        out.flags.writeable = False
        if unbatched:
            out, h_n, c_n = out[:, 0], h_n[:, 0], c_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, (h_n, c_n)

    __call__ = forward

    def _forward_packed(self, x, h0, c0, lengths, unbatched):
        """The stack over a packed batch (clstm.kernels' packed layout): sequences of
        their own lengths and/or both directions. The batch is packed once on the way in
        and unpacked once on the way out; every layer runs packed."""
        T, B, _ = x.shape
        H, L, D = self.hidden_size, self.num_layers, self.num_directions
        P = self.proj_size or H
        W = (6 if self.proj_size else 5) * H      # workspace per packed row
        pk = _Packing(lengths, T, B)
        N = pk.N
        threads = _threads.get_num_threads()
        h0, c0 = pk.sort_state(h0), pk.sort_state(c0)
        h_n = np.empty((L * D, B, P), dtype=self.dtype)
        c_n = np.empty((L * D, B, H), dtype=self.dtype)
        units, masks = [], []
        inp = pk.pack(x)
        try:
            with _threads.blas_guard():
                for k in range(L):
                    args = []           # per direction, the kernel's arguments from w_ih on
                    for d in range(D):
                        w_ih, w_hh, b_ih, b_hh, peephole, w_hr = self._direction_weights(k, d)
                        j = k * D + d
                        h0_j = None if h0 is None else h0[j]
                        c0_j = None if c0 is None else c0[j]
                        y = np.empty((N, P), dtype=self.dtype)
                        buffer = self._workspaces.take(W * N + 4 * H)
                        bias = self._summed_bias(b_ih, b_hh, buffer[W * N:])
                        units.append((inp, y, buffer, h0_j, c0_j))
                        args.append((w_ih, w_hh, w_hr, bias, peephole, h0_j, c0_j, y, h_n[j],
                                     c_n[j], buffer[:W * N]))
                    sizes = (pk.steps, B, inp.shape[1], H, self.proj_size, pk.batch_sizes)
                    if D == 1:
                        kernels.forward_packed(*sizes, False, inp, *args[0], threads)
                    else:           # both directions in one call: at once with 2 threads
                        kernels.forward_packed_bidir(*sizes, inp, *zip(*args), threads)
                    ys = [a[7] for a in args]
                    if k == L - 1:
                        break       # unpacked below straight from each direction's block
                    # the next layer reads both directions side by side, (N, 2P)
                    y = ys[0] if D == 1 else np.concatenate(ys, axis=1)
                    mask = self._dropout_mask(y)
                    masks.append(mask)
                    inp = y if mask is None else y * mask
        except BaseException:
            self._give_back(units)
            raise
        self._cache.set((T, B, unbatched, units, (pk, masks)))

        out = pk.unpack(*ys)
        out.flags.writeable = False
        h_n, c_n = pk.unsort_state(h_n), pk.unsort_state(c_n)
        if unbatched:
            out, h_n, c_n = out[:, 0], h_n[:, 0], c_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, (h_n, c_n)

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
        x, unbatched = self._step_input(x)
        B = x.shape[0]
        h0, c0 = self._state_pair(state, B, unbatched, "state") if state is not None \
            else (None, None)
        H, L = self.hidden_size, self.num_layers
        if self.proj_size:
            return self._step_projected(x, h0, c0, unbatched)
        h_n = np.empty((L, B, H), dtype=self.dtype)
        c_n = np.empty((L, B, H), dtype=self.dtype)
        gates = np.empty((B, 4 * H), dtype=self.dtype)
        inp = x
        zeros = None if self.bias else np.zeros(4 * H, dtype=self.dtype)
        for k in range(L):
            h_k = h_n[k]
            w_ih, w_hh, b_ih, b_hh, peephole = self._layer_weights(k)
            if zeros is not None:
                b_ih = b_hh = zeros
            kernels.step(B, inp.shape[1], H, inp, w_ih, w_hh, b_ih, b_hh, peephole,
                         None if h0 is None else h0[k], None if c0 is None else c0[k],
                         h_k, c_n[k], gates)
            inp = h_k
        if unbatched:
            return h_n[-1, 0], (h_n[:, 0], c_n[:, 0])
        return h_n[-1], (h_n, c_n)

    def _step_projected(self, x, h0, c0, unbatched):
        """step() of an LSTM with projections: one packed step per layer (T = 1), with
        its own scratch, nothing saved."""
        B = x.shape[0]
        H, L, P = self.hidden_size, self.num_layers, self.proj_size
        h_n = np.empty((L, B, P), dtype=self.dtype)
        c_n = np.empty((L, B, H), dtype=self.dtype)
        batch_sizes = np.full(1, B, dtype=np.int32)
        buffer = np.empty(6 * B * H + 4 * H, dtype=self.dtype)
        y = np.empty((B, P), dtype=self.dtype)
        inp = np.ascontiguousarray(x)
        for k in range(L):
            w_ih, w_hh, b_ih, b_hh, peephole, w_hr = self._direction_weights(k)
            bias = self._summed_bias(b_ih, b_hh, buffer[6 * B * H:])
            kernels.forward_packed(1, B, inp.shape[1], H, P, batch_sizes, False, inp, w_ih,
                                   w_hh, w_hr, bias, peephole,
                                   None if h0 is None else h0[k],
                                   None if c0 is None else c0[k], y, h_n[k], c_n[k],
                                   buffer[:6 * B * H], 1)
            inp = h_n[k]
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
        T, B, unbatched, layers, packed = cache
        H, L = self.hidden_size, self.num_layers
        F = (self.proj_size or H) * self.num_directions
        expected = (T, F) if unbatched else ((B, T, F) if self.batch_first else (T, B, F))
        dy = as_real_array(dy, "dy")
        check_shape(dy, expected, "dy")
        if unbatched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        if packed is not None:
            return self._backward_packed(dy, dstate, input_grad, cache)
        # one copy, time-major, in the model's dtype: the kernel overwrites it
        dy = np.array(dy, dtype=self.dtype, order="C", copy=True)
        dh_n, dc_n = self._state_pair(dstate, B, unbatched, "dstate")
        self._cache.set(None)  # the workspaces are consumed below

        threads = _threads.get_num_threads()
        dh0 = np.empty((L, B, H), dtype=self.dtype)
        dc0 = np.empty((L, B, H), dtype=self.dtype)
        g = self.grads
        dx = None
        # One backward at a time adds into the shared gradients.
        # (Layer.backward holds the gradient lock: one backward at a time adds into grads.)
        try:
            with _threads.blas_guard():
                for k in range(L - 1, -1, -1):
                    inp, y, buffer, h0_k, c0_k, mask = layers[k]
                    workspace = buffer[:5 * T * B * H]
                    w_ih, w_hh, _, _, peephole = self._layer_weights(k)
                    d_ih, d_hh, d_bih, d_bhh, d_peephole = self._layer_getters[k](g)
                    I = inp.shape[2]
                    dx = (np.empty((T, B, I), dtype=self.dtype) if (k > 0 or input_grad)
                          else None)
                    # the bias gradient goes into both biases' (the kernel adds it to each)
                    kernels.backward(
                        T, B, I, H, inp, w_ih, w_hh, peephole, h0_k, c0_k, y, workspace, dy,
                        None if dh_n is None else dh_n[k],
                        None if dc_n is None else dc_n[k],
                        dx, dh0[k], dc0[k], d_ih, d_hh, d_bih, d_peephole, threads,
                        dbias_hh=d_bhh)
                    if k > 0:
                        dy = dx
                        below_mask = layers[k - 1][5]
                        if below_mask is not None:
                            dy *= below_mask
        finally:   # the forward's workspaces return to the pool, also on failure
            for layer in layers:
                self._workspaces.give(layer[2])

        if dx is not None:
            if unbatched:
                dx = dx[:, 0]
            elif self.batch_first:
                dx = dx.transpose(1, 0, 2)
        if unbatched:
            dh0, dc0 = dh0[:, 0], dc0[:, 0]
        return dx, (dh0, dc0)

    def _backward_packed(self, dy, dstate, input_grad, cache):
        T, B, unbatched, units, (pk, masks) = cache
        H, L, D = self.hidden_size, self.num_layers, self.num_directions
        P = self.proj_size or H
        W = (6 if self.proj_size else 5) * H
        N = pk.N
        # packed (and so copied) in the model's dtype, padded positions left out; the top
        # layer's directions each get their own block of dy's features, packed apart
        dyps = [pk.pack(dy, self.dtype, copy=True,
                        columns=None if D == 1 else slice(d * P, (d + 1) * P))
                for d in range(D)]
        dh_n, dc_n = self._state_pair(dstate, B, unbatched, "dstate")
        dh_n, dc_n = pk.sort_state(dh_n), pk.sort_state(dc_n)
        self._cache.set(None)  # the workspaces are consumed below

        threads = _threads.get_num_threads()
        dh0 = np.empty((L * D, B, P), dtype=self.dtype)
        dc0 = np.empty((L * D, B, H), dtype=self.dtype)
        g = self.grads
        dx = None
        with _threads.blas_guard(), _GiveBack(self._workspaces, units):
            for k in range(L - 1, -1, -1):
                args, dbiases, dxs = [], [], []
                for d in range(D):
                    j = k * D + d
                    inp, y, buffer, h0_j, c0_j = units[j]
                    names = self._names[j]
                    w_ih, w_hh, _, _, peephole, w_hr = self._direction_weights(k, d)
                    I = inp.shape[1]
                    dy_d = dyps[d]
                    dx_d = (np.empty((N, I), dtype=self.dtype)
                            if (k > 0 or input_grad) else None)
                    dbias = np.zeros(4 * H, dtype=self.dtype)
                    dbiases.append(dbias)
                    dxs.append(dx_d)
                    args.append((w_ih, w_hh, w_hr, peephole, h0_j, c0_j, y, buffer[:W * N],
                                 dy_d, None if dh_n is None else dh_n[j],
                                 None if dc_n is None else dc_n[j], dx_d, dh0[j], dc0[j],
                                 g[names[0]], g[names[1]],
                                 g[names[5]] if self.proj_size else None, dbias,
                                 g[names[4]] if self.peephole else None))
                sizes = (pk.steps, B, I, H, self.proj_size, pk.batch_sizes)
                if D == 1:
                    kernels.backward_packed(*sizes, False, inp, *args[0], threads)
                else:               # both directions in one call: at once with 2 threads
                    kernels.backward_packed_bidir(*sizes, inp, *zip(*args), threads)
                if self.bias:
                    for d in range(D):
                        names = self._names[k * D + d]
                        g[names[2]] += dbiases[d]
                        g[names[3]] += dbiases[d]
                dx = dxs[0]
                if dx is not None and D == 2:
                    dx += dxs[1]
                if k > 0:
                    dyp = dx
                    if masks[k - 1] is not None:
                        dyp *= masks[k - 1]
                    dyps = [dyp] if D == 1 else [np.ascontiguousarray(dyp[:, d * P:(d + 1) * P])
                                                 for d in range(D)]

        if dx is not None:
            dx = pk.unpack(dx)
            if unbatched:
                dx = dx[:, 0]
            elif self.batch_first:
                dx = dx.transpose(1, 0, 2)
        dh0, dc0 = pk.unsort_state(dh0), pk.unsort_state(dc0)
        if unbatched:
            dh0, dc0 = dh0[:, 0], dc0[:, 0]
        return dx, (dh0, dc0)

    # -- PyTorch interoperability -------------------------------------------------------

    @classmethod
    def from_torch(cls, module, *, seed=None):
        """A clstm.LSTM with the configuration and weights of a ``torch.nn.LSTM``."""
        return cls._from_torch_module(module, seed,
                                      proj_size=int(getattr(module, "proj_size", 0)))

    def to_torch(self):
        """A ``torch.nn.LSTM`` with this network's configuration and weights."""
        if self.peephole:
            raise ValueError("to_torch: expected an LSTM without peepholes (torch.nn.LSTM "
                             "has none), got peephole=True")
        return self._to_torch_module(proj_size=self.proj_size)


def _weights_getter(names):
    """A function of a params dict giving the arrays named in ``names`` (a layer's six
    weight names, None for those it lacks) in that order, None for the missing ones."""
    present = [n for n in names if n]
    get = operator.itemgetter(*present)
    k = len(present)
    if names[:k] == tuple(present):          # the missing ones last (the usual case)
        tail = (None,) * (len(names) - k)
        return lambda p: get(p) + tail
    slots = [i for i, n in enumerate(names) if n]

    def weights(p):
        out = [None] * len(names)
        for i, value in zip(slots, get(p)):
            out[i] = value
        return tuple(out)
    return weights
