"""clstm.GRU: a stack of GRU layers over the compiled kernels, torch.nn.GRU's semantics.

Like clstm.LSTM (what the two share is clstm._recurrent.RecurrentStack's), this module
owns the parameters (one flat buffer, PyTorch's names and shapes), checks user input and
runs the layers one after another; every layer and direction runs the kernels' packed
driver, whatever the lengths. The math is in DEVELOPERS.md ("The GRU").
"""
import numpy as np

from . import _threads, kernels
from ._recurrent import RecurrentStack, _GiveBack, _Packing
from ._validate import as_float_array, as_real_array, check_shape, parameter_count

#: Workspace elements per packed row and hidden unit: the gates (r, z, n; 3H) and the
#: recurrent products W_hh h + b_hh (3H), which backward turns into their gradients.
_WORKSPACE_PER_ROW = 6


class GRU(RecurrentStack):
    """A multi-layer GRU with explicit forward and backward passes (``torch.nn.GRU``).

    r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h.

    Parameters
    ----------
    input_size : int
        Features per time step of the input.
    hidden_size : int
        Units per layer (H).
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads the outputs of layer k-1.
    bias : bool, default True
        With False the layers have no bias parameters at all (PyTorch's ``bias=False``).
    bidirectional : bool, default False
        Each layer runs a second direction, from each sequence's last valid step down to
        step 0, with its own weights (``..._reverse``); outputs are concatenated
        (2 * hidden_size features) and ``h_n`` holds 2 * num_layers states, layer by
        layer, forward direction first.
    dtype : {"float32", "float64"}, default "float32"
    dropout : float, default 0.0
        Dropout probability on the outputs of every layer but the last, in training
        mode only (as in ``torch.nn.GRU``).
    seed : int or None
        Seeds the initialisation and the dropout masks.
    batch_first : bool, default False
        Input and output are (B, T, F) instead of (T, B, F).

    Attributes
    ----------
    params, grads : dict of str to ndarray
        PyTorch's names and shapes (``weight_ih_l0`` (3H, I), ``weight_hh_l0`` (3H, H),
        ``bias_ih_l0``, ``bias_hh_l0`` (3H,), gate blocks r, z, n); views into
        ``flat_params`` and ``flat_grads``.

    Notes
    -----
    Safe to share between threads as clstm.LSTM is: each call has its own kernel
    workspaces, what a ``forward`` keeps for ``backward`` is kept per thread, and
    backward calls add into ``grads`` one at a time.
    """

    _cell_name = "GRU"
    _gate_count = 3

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True,
                 bidirectional=False, dtype="float32", dropout=0.0, seed=None,
                 batch_first=False):
        self._check_structure(input_size, hidden_size, num_layers,
                              ((bias, "bias"), (bidirectional, "bidirectional"),
                               (batch_first, "batch_first")))
        D = self.num_directions
        H, layers = self.hidden_size, self.num_layers
        parameter_count(D * (3 * H * (self.input_size + H)
                             + 3 * H * (D * H + H) * (layers - 1)
                             + (6 * H if self.bias else 0) * layers), "GRU")
        self._set_up(dtype, dropout, seed, batch_first)
        # per layer and direction (index k * D + d): the names of its parameters, looked
        # up at every call (an optimizer or a model may rebind the entries)
        self._names = [(f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}",
                        f"bias_ih_l{k}{sfx}" if self.bias else None,
                        f"bias_hh_l{k}{sfx}" if self.bias else None)
                       for k in range(self.num_layers) for sfx in ("", "_reverse")[:D]]
        self._initialise_parameters()

    # -- configuration and parameters ---------------------------------------------------

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias,
                "bidirectional": self.bidirectional, "dtype": self.dtype.name,
                "dropout": self.dropout, "batch_first": self.batch_first}

    @classmethod
    def read_config(cls, f):
        return {"input_size": f.int("input_size"), "hidden_size": f.int("hidden_size"),
                "num_layers": f.int("num_layers"), "bias": f.bool("bias"),
                "bidirectional": f.bool("bidirectional"), "dtype": f.dtype(),
                "dropout": f.probability("dropout"), "batch_first": f.bool("batch_first")}

    @classmethod
    def parameter_shapes(cls, config):
        """PyTorch's order: per layer, per direction, w_ih, w_hh, b_ih, b_hh."""
        H, bias = config["hidden_size"], config.get("bias", True)
        D = 2 if config.get("bidirectional", False) else 1
        dtype = config.get("dtype", "float32")
        for k in range(config.get("num_layers", 1)):
            inputs = config["input_size"] if k == 0 else D * H
            for sfx in ("", "_reverse")[:D]:
                yield f"weight_ih_l{k}{sfx}", (3 * H, inputs), dtype
                yield f"weight_hh_l{k}{sfx}", (3 * H, H), dtype
                if bias:
                    yield f"bias_ih_l{k}{sfx}", (3 * H,), dtype
                    yield f"bias_hh_l{k}{sfx}", (3 * H,), dtype

    @classmethod
    def parameter_count(cls, config):
        D = 2 if config.get("bidirectional", False) else 1
        return config.get("num_layers", 1) * D * (4 if config.get("bias", True) else 2)

    def _direction_weights(self, k, d=0):
        """Layer k's (w_ih, w_hh, b_ih, b_hh) in direction d, read from ``params`` now;
        the biases are None without bias."""
        p = self.params
        w_ih, w_hh, b_ih, b_hh = self._names[k * self.num_directions + d]
        return p[w_ih], p[w_hh], p[b_ih] if b_ih else None, p[b_hh] if b_hh else None

    # -- input checks (x's and the lengths' are RecurrentStack's) -----------------------

    def _state(self, state, B, unbatched, name):
        """A (D * num_layers, B, H) array (or None) from a user's h_0 or dh_n."""
        if state is None:
            return None
        L, H = self.num_layers * self.num_directions, self.hidden_size
        expected = (L, H) if unbatched else (L, B, H)
        if (type(state) is np.ndarray and state.dtype == self.dtype
                and state.shape == expected and state.flags.c_contiguous):
            return state.reshape(L, B, H)
        if isinstance(state, (tuple, list)):
            raise TypeError(f"{name}: expected one array h of shape {expected} (a GRU has "
                            f"no cell state), got a {type(state).__name__}")
        arr = as_float_array(state, self.dtype, name)
        check_shape(arr, expected, name)
        return np.ascontiguousarray(arr.reshape(L, B, H))

    # -- forward ------------------------------------------------------------------------

    def forward(self, x, state=None, *, lengths=None):
        """Run the stack over a whole sequence.

        Parameters
        ----------
        x : array_like
            (T, B, input_size), or (B, T, input_size) with ``batch_first``, or an
            unbatched (T, input_size).
        state : array_like, optional
            Initial h_0, (D * num_layers, B, hidden_size) (unbatched: (D * num_layers,
            hidden_size)); zeros when omitted.
        lengths : array_like of int, optional
            (B,) valid steps per sequence, in [1, T] (PyTorch's packed sequences: each
            sequence runs only its own steps, outputs past its length are zero, h_n is
            its state at its last step, the reverse direction starts there).

        Returns
        -------
        y : ndarray
            The last layer's outputs, (T, B, D * hidden_size) (or as the input was laid
            out). Read-only: backward needs it unchanged.
        h_n : ndarray
            The final state, (D * num_layers, B, hidden_size).
        """
        x, unbatched = self._time_major_input(x)
        T, B, _ = x.shape
        h0 = self._state(state, B, unbatched, "state")
        lengths = self._lengths(lengths, T, B)
        self._drop_cache()  # a thread's new forward replaces its last one
        H, L, D = self.hidden_size, self.num_layers, self.num_directions
        pk = _Packing(lengths, T, B)
        N = pk.N
        W = _WORKSPACE_PER_ROW * H
        threads = _threads.get_num_threads()
        h0 = pk.sort_state(h0)
        h_n = np.empty((L * D, B, H), dtype=self.dtype)
        units, masks = [], []
        inp = pk.pack(x)
        try:
            with _threads.blas_guard():
                for k in range(L):
                    args = []           # per direction, the kernel's arguments from w_ih on
                    for d in range(D):
                        j = k * D + d
                        h0_j = None if h0 is None else h0[j]
                        y = np.empty((N, H), dtype=self.dtype)
                        buffer = self._workspaces.take(W * N)
                        units.append((inp, y, buffer, h0_j))
                        args.append((*self._direction_weights(k, d), h0_j, y, h_n[j], buffer))
                    sizes = (pk.steps, B, inp.shape[1], H, pk.batch_sizes)
                    if D == 1:
                        kernels.gru_forward_packed(*sizes, False, inp, *args[0], threads)
                    else:           # both directions in one call: at once with 2 threads
                        kernels.gru_forward_packed_bidir(*sizes, inp, *zip(*args), threads)
                    y = args[0][5] if D == 1 else np.concatenate([a[5] for a in args], axis=1)
                    mask = self._dropout_mask(y) if k < L - 1 else None
                    masks.append(mask)
                    inp = y if mask is None else y * mask
        except BaseException:
            self._give_back(units)
            raise
        self._cache.set((T, B, unbatched, units, pk, masks))

        out = pk.unpack(y)
        out.flags.writeable = False
        h_n = pk.unsort_state(h_n)
        if unbatched:
            out, h_n = out[:, 0], h_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, h_n

    __call__ = forward

    def step(self, x, state=None):
        """Advance every layer by one time step, for serving (no gradient, no dropout).

        Equivalent to ``forward(x[None], state)`` with nothing saved for backward.

        Parameters
        ----------
        x : array_like
            One time step: (B, input_size), or unbatched (input_size,).
        state : array_like, optional
            h, (num_layers, B, hidden_size) (unbatched: (num_layers, hidden_size));
            zeros when omitted.

        Returns
        -------
        y : ndarray
            The top layer's new hidden state, (B, hidden_size).
        h : ndarray
            The new state, (num_layers, B, hidden_size), to pass to the next call.
        """
        x, unbatched = self._step_input(x)
        B = x.shape[0]
        h0 = self._state(state, B, unbatched, "state")
        H, L = self.hidden_size, self.num_layers
        h_n = np.empty((L, B, H), dtype=self.dtype)
        workspace = np.empty(_WORKSPACE_PER_ROW * B * H, dtype=self.dtype)
        inp = np.ascontiguousarray(x)
        for k in range(L):
            # one step needs no sequence driver: kernels.gru_step is two GEMVs and the
            # gate loop (a third of the per-call time at B = 1, H = 64)
            kernels.gru_step(B, inp.shape[1], H, inp, *self._direction_weights(k),
                             None if h0 is None else h0[k], h_n[k], workspace)
            inp = h_n[k]
        if unbatched:
            return h_n[-1, 0], h_n[:, 0]
        return h_n[-1], h_n

    # -- backward -----------------------------------------------------------------------

    def backward(self, dy, dh_n=None, *, input_grad=True):
        """Back-propagate through the sequence of this thread's last ``forward``.

        Adds the parameter gradients into ``self.grads``.

        Parameters
        ----------
        dy : array_like
            dL/dy, the shape of ``y`` returned by forward.
        dh_n : array_like, optional
            dL/dh_n, the shape of ``h_n``, for a loss on the final state.
        input_grad : bool, default True
            Compute dL/dx; False skips one GEMM when the input needs no gradient.

        Returns
        -------
        dx : ndarray or None
            dL/dx, laid out like x (None with ``input_grad=False``).
        dh_0 : ndarray
            dL/dh_0, (D * num_layers, B, hidden_size).
        """
        cache = self._cache.get()
        if cache is None:
            raise ValueError("backward: expected a forward pass to differentiate, got none "
                             "(call forward() first, in the same thread; each forward "
                             "supports one backward)")
        T, B, unbatched, units, pk, masks = cache
        H, L, D = self.hidden_size, self.num_layers, self.num_directions
        F = H * D
        expected = (T, F) if unbatched else ((B, T, F) if self.batch_first else (T, B, F))
        dy = as_real_array(dy, "dy")
        check_shape(dy, expected, "dy")
        if unbatched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        N = pk.N
        W = _WORKSPACE_PER_ROW * H
        dyp = pk.pack(dy, self.dtype, copy=True)   # the kernel overwrites it
        dh_n = pk.sort_state(self._state(dh_n, B, unbatched, "dh_n"))
        self._cache.set(None)  # the workspaces are consumed below

        threads = _threads.get_num_threads()
        dh0 = np.empty((L * D, B, H), dtype=self.dtype)
        g = self.grads
        dx = None
        with _threads.blas_guard(), _GiveBack(self._workspaces, units):
            for k in range(L - 1, -1, -1):
                args, dxs = [], []
                for d in range(D):
                    j = k * D + d
                    inp, y, buffer, h0_j = units[j]
                    names = self._names[j]
                    w_ih, w_hh, _, _ = self._direction_weights(k, d)
                    I = inp.shape[1]
                    dy_d = dyp if D == 1 else np.ascontiguousarray(dyp[:, d * H:(d + 1) * H])
                    dx_d = (np.empty((N, I), dtype=self.dtype)
                            if (k > 0 or input_grad) else None)
                    dxs.append(dx_d)
                    args.append((w_ih, w_hh, h0_j, y, buffer[:W * N], dy_d,
                                 None if dh_n is None else dh_n[j], dx_d, dh0[j],
                                 g[names[0]], g[names[1]],
                                 g[names[2]] if self.bias else None,
                                 g[names[3]] if self.bias else None))
                sizes = (pk.steps, B, I, H, pk.batch_sizes)
                if D == 1:
                    kernels.gru_backward_packed(*sizes, False, inp, *args[0], threads)
                else:
                    kernels.gru_backward_packed_bidir(*sizes, inp, *zip(*args), threads)
                dx = dxs[0]
                if dx is not None and D == 2:
                    dx += dxs[1]
                if k > 0:
                    dyp = dx
                    if masks[k - 1] is not None:
                        dyp *= masks[k - 1]

        if dx is not None:
            dx = pk.unpack(dx)
            if unbatched:
                dx = dx[:, 0]
            elif self.batch_first:
                dx = dx.transpose(1, 0, 2)
        dh0 = pk.unsort_state(dh0)
        if unbatched:
            dh0 = dh0[:, 0]
        return dx, dh0

    # -- PyTorch interoperability -------------------------------------------------------

    @classmethod
    def from_torch(cls, module, *, seed=None):
        """A clstm.GRU with the configuration and weights of a ``torch.nn.GRU``."""
        return cls._from_torch_module(module, seed)

    def to_torch(self):
        """A ``torch.nn.GRU`` with this network's configuration and weights."""
        return self._to_torch_module()
