"""What every recurrent stack (clstm.LSTM, clstm.GRU) has, whatever its cell.

``RecurrentStack`` owns the parts that do not depend on the cell's gates or state: the
structural checks of the constructor, the flat parameter buffer with PyTorch's names
(from the subclass's ``parameter_shapes``) and its initialisation, the kernel workspace
pool and the per-thread forward cache, ``__repr__``, the checks of x and ``lengths``,
and the plumbing of ``from_torch``/``to_torch``. ``_Packing`` (a batch in the kernels'
packed layout) and ``_GiveBack`` serve both cells' forward and backward.

The subclass keeps what differs: its gates (how many, hence the C int bound), its state
((h, c) or h) and its checks, its kernels (forward, backward, step), its config
(``get_config``/``read_config``, which also register it: this base defines neither, so
it never registers itself nor displaces anything; see DEVELOPERS.md "Modules, layers and
how to add one").
"""
import numpy as np

from ._concurrency import PerThread, WorkspacePool
from .layers import Layer
from ._validate import as_float_array, positive_int, C_INT_MAX, at_most


class RecurrentStack(Layer):
    """Base of a stack of recurrent layers over the compiled kernels (not a layer itself).

    A subclass sets ``_cell_name`` (its name in messages and ``repr``, and its
    ``torch.nn`` counterpart's) and ``_gate_count`` (gate blocks per hidden unit: the
    weights are ``_gate_count * hidden_size`` rows, a C int for the kernels).
    """

    _cell_name = None
    _gate_count = None

    #: Idle kernel workspaces kept for reuse, per model, at most this many bytes (a
    #: larger workspace is freed after its call); see :meth:`release_workspace`.
    workspace_cache_bytes = 512 * 1024 * 1024

    #: Constructor defaults ``__repr__`` leaves out (dtype is always shown).
    _repr_defaults = {"num_layers": 1, "bias": True, "bidirectional": False, "proj_size": 0,
                      "peephole": False, "dropout": 0.0, "batch_first": False}

    # -- construction -------------------------------------------------------------------

    def _check_structure(self, input_size, hidden_size, num_layers, flags):
        """Checks and sets the sizes and the bool options ``flags`` ((value, name)
        pairs; bias and bidirectional set here, the others by the subclass), and
        num_directions. Refused before anything is allocated (or a list of num_layers
        names built)."""
        self.input_size = positive_int(input_size, "input_size")
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.num_layers = positive_int(num_layers, "num_layers")
        gates = self._gate_count
        at_most(self.input_size, C_INT_MAX, "input_size", "the kernels index it with a C int")
        at_most(self.hidden_size, C_INT_MAX // gates, "hidden_size",
                f"{gates} * hidden_size must fit the C int the kernels and BLAS index with")
        for value, name in flags:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: expected True or False, got {value!r}")
        values = dict((name, value) for value, name in flags)
        self.bias = bool(values["bias"])
        self.bidirectional = bool(values["bidirectional"])
        self.num_directions = 2 if self.bidirectional else 1

    def _set_up(self, dtype, dropout, seed, batch_first):
        """The Layer itself (dtype, flat buffers to come), dropout, the random stream,
        and the per-call machinery shared by forward and backward."""
        super().__init__(dtype)
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

    def _initialise_parameters(self):
        """PyTorch's initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)), drawn
        as one vector in the parameters' order, into one flat buffer."""
        shapes = self._parameter_shapes()
        total = sum(int(np.prod(s)) for s in shapes.values())
        bound = 1.0 / np.sqrt(self.hidden_size)
        drawn = self._rng.uniform(-bound, bound, size=total)
        initial, offset = {}, 0
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            initial[name] = drawn[offset:offset + size].reshape(shape)
            offset += size
        self._create_parameters(initial, self.dtype)

    def _parameter_shapes(self):
        return {name: shape for name, shape, _ in self.parameter_shapes(self.get_config())}

    # -- the workspaces and the forward cache -------------------------------------------

    def release_workspace(self):
        """Free the kernel workspaces kept for reuse, and what this thread's last
        forward kept for a backward (which then needs a new forward)."""
        self._drop_cache()
        self._workspaces.clear()

    def _drop_cache(self):
        """Give this thread's forward cache's workspaces back to the pool."""
        for buffer in self._pop_cache_buffers():
            self._workspaces.give(buffer)

    def _pop_cache_buffers(self):
        """Forget this thread's forward cache; its workspaces (the cache's fourth entry
        holds one tuple per layer or unit, its workspace third), for the caller to reuse
        (WorkspacePool.take's ``spare``) or give back."""
        cache = self._cache.pop()
        return [] if cache is None else [unit[2] for unit in cache[3]]

    def __repr__(self):
        config = self.get_config()
        defaults = self._repr_defaults
        extras = "".join(f", {name}={value!r}" for name, value in config.items()
                         if name not in ("input_size", "hidden_size")
                         and not (name in defaults and value == defaults[name]))
        return f"{self._cell_name}({self.input_size}, {self.hidden_size}{extras})"

    # -- pieces of forward and step that do not depend on the cell ---------------------

    def _dropout_mask(self, y):
        """The inverted-dropout mask for the output ``y`` of a layer below the top one
        (None in eval mode or without dropout)."""
        if not (self.training and self.dropout > 0):
            return None
        keep = self._rng.random(y.shape) >= self.dropout
        return keep.astype(self.dtype) / self.dtype.type(1.0 - self.dropout)

    def _give_back(self, units):
        """Return the workspaces of a forward that failed or was interrupted (Ctrl-C):
        the model stays usable."""
        for unit in units:
            self._workspaces.give(unit[2])

    def _step_input(self, x):
        """step()'s input checked: (x as a C-contiguous (B, input_size) array of the
        model's dtype, whether it came unbatched)."""
        if self.bidirectional:
            raise ValueError(f"step: expected a unidirectional {self._cell_name} (a "
                             f"bidirectional one needs the whole sequence), got "
                             f"bidirectional=True")
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.flags.c_contiguous):
            x = as_float_array(x, self.dtype, "x")
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.input_size or x.shape[0] == 0:
            raise ValueError(f"x: expected one time step of shape (B, {self.input_size}) "
                             f"or ({self.input_size},), got shape {x.shape}")
        return x, unbatched

    # -- input checks (the state's are the subclass's) ----------------------------------

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

    def _lengths(self, lengths, T, B):
        """Checked lengths as an int64 array, or None when there are none or every
        sequence runs all T steps (then the padded kernels run)."""
        if lengths is None:
            return None
        arr = np.asarray(lengths) if not isinstance(lengths, np.ndarray) else lengths
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise TypeError(f"lengths: expected integers, got {_what(lengths, arr)}")
        if arr.shape != (B,):
            raise ValueError(f"lengths: expected shape ({B},) (one per sequence), got "
                             f"shape {arr.shape}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 1 or hi > T:
            raise ValueError(f"lengths: expected integers in [1, {T}], got min {lo}, "
                             f"max {hi}")
        if lo == T:
            return None
        return arr.astype(np.int64, copy=False)

    # -- PyTorch interoperability -------------------------------------------------------

    @classmethod
    def _from_torch_module(cls, module, seed, **options):
        """``cls`` with the configuration (plus the cell's own ``options``) and weights
        of a ``torch.nn.<_cell_name>``."""
        import torch  # only here: clstm never needs torch otherwise

        name = cls._cell_name
        if not isinstance(module, getattr(torch.nn, name)):
            raise TypeError(f"from_torch: expected a torch.nn.{name}, got "
                            f"{type(module).__name__}")
        dtype = module.weight_ih_l0.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"from_torch: expected float32 or float64 weights, got {dtype}")
        net = cls(module.input_size, module.hidden_size, module.num_layers,
                  bias=bool(module.bias), bidirectional=bool(module.bidirectional),
                  dtype="float32" if dtype == torch.float32 else "float64",
                  dropout=float(module.dropout), seed=seed,
                  batch_first=bool(module.batch_first), **options)
        net.load_state_dict({name: t.detach().cpu().numpy()
                             for name, t in module.state_dict().items()})
        net.train(module.training)
        return net

    def _to_torch_module(self, **options):
        """The ``torch.nn.<_cell_name>`` with this network's configuration (plus the
        cell's own ``options``) and weights."""
        import torch

        module = getattr(torch.nn, self._cell_name)(
            self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
            bidirectional=self.bidirectional, dropout=self.dropout,
            batch_first=self.batch_first,
            dtype=torch.float32 if self.dtype == np.float32 else torch.float64, **options)
        module.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in self.params.items()})
        module.train(self.training)
        return module


def _what(value, arr):
    if isinstance(value, np.ndarray):
        return f"dtype {value.dtype}"
    return f"{type(value).__name__} of dtype {arr.dtype}" if arr.ndim else repr(value)


class _Packing:
    """A batch in the kernels' packed layout (PyTorch's PackedSequence): sequences
    ordered by non-increasing length (stably), step t holding the batch_sizes[t] still
    running, one step after another. Packing and unpacking are one gather and one
    scatter over the valid positions; without lengths the padded batch already is the
    packed one (reshaped, not copied).

    The valid positions are kept as one flat row index into the (T * B, F) view of a
    time-major batch (``self.rows``): a gather by ``np.take`` along axis 0 moves whole
    feature rows, 1.5-2.3x faster than NumPy's (time, batch) pair indexing (S2, S3);
    the two directions of a bidirectional top layer are scattered side by side, 1.4-1.6x
    faster than concatenating them first. Pack, unpack and plan are 3-5% of a
    variable-length forward at 1 thread."""

    def __init__(self, lengths, T, B):
        self.T, self.B = T, B
        if lengths is None:
            self.order = self.rows = None
            self.steps, self.N = T, T * B
            self.batch_sizes = np.full(T, B, dtype=np.int32)
            return
        order = np.argsort(-lengths, kind="stable")
        self.order = None if np.array_equal(order, np.arange(B)) else order
        ordered = lengths[order]
        self.steps = int(ordered[0])
        # batch_sizes[t] = how many sequences are longer than t (lengths sorted down)
        self.batch_sizes = np.searchsorted(-ordered, -np.arange(self.steps),
                                           side="left").astype(np.int32)
        # row t * B + order[i] for i < batch_sizes[t], step after step: the packed order
        counts = self.batch_sizes.astype(np.intp)
        starts = np.arange(self.steps, dtype=np.intp) * B
        within = np.arange(counts.sum(), dtype=np.intp) - np.repeat(np.cumsum(counts) - counts,
                                                                    counts)
        self.rows = np.repeat(starts, counts) + order[within]
        self.N = self.rows.size

    def pack(self, a, dtype=None, copy=False, columns=None):
        """(T, B, F) -> (N, F), or its feature columns ``columns`` (a slice) only,
        C-contiguous."""
        flat = a.reshape(self.T * self.B, a.shape[2])
        if columns is not None:
            flat = flat[:, columns]
        if self.rows is None:
            return (np.array(flat, dtype=dtype, order="C") if copy
                    else np.ascontiguousarray(flat, dtype=dtype))
        out = np.take(flat, self.rows, axis=0)
        return out if dtype is None or out.dtype == dtype else out.astype(dtype)

    def unpack(self, *parts):
        """(N, F_i) blocks -> (T, B, sum F_i), the blocks side by side in the feature
        axis (a bidirectional layer's two directions: no concatenation first), zeros at
        the padded positions."""
        F = sum(p.shape[1] for p in parts)
        if self.rows is None and len(parts) == 1:
            return parts[0].reshape(self.T, self.B, F)
        out = (np.empty if self.rows is None else np.zeros)((self.T * self.B, F),
                                                           dtype=parts[0].dtype)
        target = slice(None) if self.rows is None else self.rows
        col = 0
        for p in parts:
            if len(parts) == 1:
                out[target] = p
            else:
                out[target, col:col + p.shape[1]] = p
            col += p.shape[1]
        return out.reshape(self.T, self.B, F)

    def sort_state(self, s):
        """(L, B, H) in the caller's order -> the packed order (or None)."""
        if s is None or self.order is None:
            return s
        return np.ascontiguousarray(s[:, self.order])

    def unsort_state(self, s):
        if self.order is None:
            return s
        out = np.empty_like(s)
        out[:, self.order] = s
        return out


class _GiveBack:
    """Returns a forward's workspaces to the pool when its backward ends (or fails)."""

    def __init__(self, pool, layers):
        self.pool, self.layers = pool, layers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            self.pool.give(layer[2])
