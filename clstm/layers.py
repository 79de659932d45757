"""Non-recurrent layers and sequence helpers: Embedding, Dense, Dropout.

Every layer follows the same explicit contract as :class:`clstm.LSTM` (see
``DEVELOPERS.md``): ``forward`` caches what ``backward`` needs, ``backward``
*adds* parameter gradients into ``layer.grads`` (they accumulate until
``zero_grad``) and returns the gradient with respect to the input.  There is
no autograd engine; chaining layers means calling their ``backward`` methods
in reverse order yourself.

Arrays are time-major, ``(T, B, ...)``, but nothing here depends on the time
axis: Embedding, Dense and Dropout act element- or row-wise on inputs of any
rank, so they apply per time step to ``(T, B, H)`` and equally to ``(B, H)``.

The ``params`` dict is the single source of truth for a layer's weights:
``forward`` reads ``layer.params[name]`` on every call, so optimisers may
update the arrays in place and users may assign new arrays of the same shape.
"""

import numpy as np

from . import _threads, kernels
from ._validate import C_INT_MAX, at_most, float_dtype, parameter_count, positive_int
from .module import Module

__all__ = [
    "Layer",
    "Embedding",
    "Dense",
    "Dropout",
    "LastStep",
    "last_valid_step",
    "last_valid_step_backward",
    "lengths_to_mask",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_real_array(x, name, dtype):
    """Convert ``x`` to a ``dtype`` array, rejecting non-numeric input.

    Integer and boolean input is cast (it is exactly representable for any
    sensible size); complex or object input is an error rather than a silent
    loss of the imaginary part or a slow object-array computation.
    """
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating)
            or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise TypeError(
            f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=dtype)


class Layer(Module):
    """A module with a dtype: the base of every layer (:class:`clstm.LSTM` included).

    See :class:`clstm.module.Module` for what every layer has: ``params``/``grads`` over
    one flat buffer each, ``train``/``eval``, ``zero_grad``, ``state_dict``,
    ``get_config``/``from_config``.
    """

    def __init__(self, dtype="float32"):
        super().__init__()
        self.dtype = float_dtype(dtype)


class Embedding(Layer):
    """Lookup table mapping integer indices to dense vectors.

    Parameters
    ----------
    num_embeddings : int
        Size of the vocabulary, N.
    embedding_dim : int
        Size of each vector, D.
    padding_idx : int, optional
        Row that is kept at zero and never receives a gradient (as in
        ``torch.nn.Embedding``). Negative values count from the end.
    seed : int or numpy.random.Generator, optional
        Seed for the N(0, 1) initialisation (PyTorch's).
    dtype : {"float32", "float64"}
        Parameter and output dtype.

    Notes
    -----
    ``forward(idx)`` takes an integer array of any shape and returns an array
    of shape ``idx.shape + (D,)``. ``backward(dy)`` scatter-adds ``dy`` into
    ``grads["weight"]`` and returns None: the input is discrete.
    """

    _saved_for_backward = ("_idx",)

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *,
                 seed=None, dtype="float32"):
        super().__init__(dtype)
        num_embeddings = positive_int(num_embeddings, "num_embeddings")
        embedding_dim = positive_int(embedding_dim, "embedding_dim")
        parameter_count(num_embeddings * embedding_dim, "Embedding")
        if padding_idx is not None:
            padding_idx = positive_int(padding_idx, "padding_idx", minimum=-num_embeddings)
            if padding_idx >= num_embeddings:
                raise ValueError(
                    f"padding_idx: expected an int in [{-num_embeddings}, "
                    f"{num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        rng = np.random.default_rng(seed)
        # Draw in float64 and cast so that float32 and float64 layers built
        # with the same seed hold the same values (up to rounding).
        weight = rng.standard_normal((num_embeddings, embedding_dim))
        if padding_idx is not None:
            weight[padding_idx] = 0.0
        self._create_parameters({"weight": weight}, self.dtype)
        self._idx = None

    def get_config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, "dtype": self.dtype.name}

    @classmethod
    def read_config(cls, f):
        n = f.int("num_embeddings")
        return {"num_embeddings": n, "embedding_dim": f.int("embedding_dim"),
                "padding_idx": f.int("padding_idx", -n, n - 1, optional=True),
                "dtype": f.dtype()}

    @classmethod
    def parameter_shapes(cls, config):
        yield "weight", (config["num_embeddings"], config["embedding_dim"]), \
            config.get("dtype", "float32")

    def _check_indices(self, idx):
        arr = np.asarray(idx)
        # bool is not a subtype of np.integer, so True/False are rejected
        # here instead of being silently read as rows 1 and 0.
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                "Embedding expects an integer index array, got dtype "
                f"{arr.dtype}")
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.num_embeddings:
                raise ValueError(
                    "Embedding index out of range: expected values in "
                    f"[0, {self.num_embeddings}), got min {lo}, max {hi}")
        return arr

    def forward(self, idx):
        """Look up rows of the weight.

        Parameters
        ----------
        idx : array_like of int
            Indices in ``[0, num_embeddings)``, any shape.

        Returns
        -------
        ndarray
            ``weight[idx]``, shape ``idx.shape + (embedding_dim,)``.
        """
        idx = self._check_indices(idx)
        self._idx = idx
        # Fancy indexing copies, so later in-place updates of the weight do
        # not change outputs already handed out.
        return self.params["weight"][idx]

    def backward(self, dy):
        """Accumulate the weight gradient for the last ``forward``.

        Parameters
        ----------
        dy : array_like
            Gradient of the loss w.r.t. the output, shape
            ``idx.shape + (embedding_dim,)``.

        Returns
        -------
        None
            Indices are discrete; there is no input gradient.
        """
        idx = self._require_cache(self._idx)
        dy = _as_real_array(dy, "dy", self.dtype)
        expected = idx.shape + (self.embedding_dim,)
        if dy.shape != expected:
            raise ValueError(
                f"Embedding.backward: expected dy of shape {expected}, got "
                f"{dy.shape}")
        flat_idx = idx.reshape(-1)
        flat_dy = dy.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat_idx != self.padding_idx
            flat_idx, flat_dy = flat_idx[keep], flat_dy[keep]
        # np.add.at, unlike grads[idx] += dy, sums repeated indices.
        np.add.at(self.grads["weight"], flat_idx, flat_dy)
        return None


class Dense(Layer):
    """Affine map over the last axis, ``y = x @ weight.T + bias``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the last axis of input and output.
    bias : bool
        Whether to add a learned bias.
    seed : int or numpy.random.Generator, optional
        Seed for the U(-1/sqrt(in), 1/sqrt(in)) initialisation (PyTorch's).
    dtype : {"float32", "float64"}
        Parameter and output dtype; inputs are cast to it.

    Notes
    -----
    Parameters are ``weight`` (out, in) and ``bias`` (out,), as in
    ``torch.nn.Linear``. Any leading axes are flattened into one GEMM, so a
    ``(T, B, H)`` input is one ``(T*B, H)`` product forward and backward
    rather than one per time step.
    """

    _saved_for_backward = ("_lead", "_x2d")

    def __init__(self, in_features, out_features, bias=True, *, seed=None,
                 dtype="float32"):
        super().__init__(dtype)
        in_features = positive_int(in_features, "in_features")
        out_features = positive_int(out_features, "out_features")
        for value, name in ((in_features, "in_features"), (out_features, "out_features")):
            at_most(value, C_INT_MAX, name, "the kernels and BLAS index it with a C int")
        parameter_count(out_features * (in_features + 1), "Dense")
        self.in_features = in_features
        self.out_features = out_features
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        initial = {"weight": rng.uniform(-bound, bound, (out_features, in_features))}
        if bias:
            initial["bias"] = rng.uniform(-bound, bound, out_features)
        self._create_parameters(initial, self.dtype)
        self._x2d = None

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": "bias" in self.params, "dtype": self.dtype.name}

    @classmethod
    def read_config(cls, f):
        return {"in_features": f.int("in_features"), "out_features": f.int("out_features"),
                "bias": f.bool("bias"), "dtype": f.dtype()}

    @classmethod
    def parameter_shapes(cls, config):
        dtype = config.get("dtype", "float32")
        yield "weight", (config["out_features"], config["in_features"]), dtype
        if config.get("bias", True):
            yield "bias", (config["out_features"],), dtype

    def forward(self, x):
        """Apply the affine map to the last axis of ``x``.

        Parameters
        ----------
        x : array_like
            Input of shape ``(..., in_features)``, at least 1-D.

        Returns
        -------
        ndarray
            Output of shape ``(..., out_features)``.
        """
        x = _as_real_array(x, "x", self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Dense: expected input with last axis {self.in_features}, "
                f"got shape {x.shape}")
        self._lead = x.shape[:-1]
        # Keep the 2-D view; backward needs it for dW = dy^T x.
        self._x2d = np.ascontiguousarray(x.reshape(-1, self.in_features))
        y = _matmul(self._x2d, self.params["weight"], trans_b=True)
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(self._lead + (self.out_features,))

    def backward(self, dy, *, input_grad=True):
        """Accumulate ``grads`` and return the input gradient.

        Parameters
        ----------
        dy : array_like
            Gradient w.r.t. the output, shape ``(..., out_features)``.
        input_grad : bool
            If False, skip the ``dx`` GEMM and return None (useful when the
            input is data, not an upstream activation).

        Returns
        -------
        ndarray or None
            Gradient w.r.t. the input, shape ``(..., in_features)``.
        """
        x2d = self._require_cache(self._x2d)
        dy = _as_real_array(dy, "dy", self.dtype)
        expected = self._lead + (self.out_features,)
        if dy.shape != expected:
            raise ValueError(
                f"Dense.backward: expected dy of shape {expected}, got "
                f"{dy.shape}")
        dy2d = dy.reshape(-1, self.out_features)
        _matmul(dy2d, x2d, trans_a=True, out=self.grads["weight"])
        if "bias" in self.grads:
            self.grads["bias"] += dy2d.sum(axis=0)
        if not input_grad:
            return None
        return _matmul(dy2d, self.params["weight"]).reshape(
            self._lead + (self.in_features,))


def _matmul(a, b, *, trans_a=False, trans_b=False, out=None):
    """op(a) @ op(b), added into ``out`` when given, on the LSTM kernels' thread team
    (NumPy's own BLAS threads would compete with it for the cores); NumPy's ``@`` when
    the arrays do not fit the kernels (mixed dtypes, strided views)."""
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    arrays = (a, b) if out is None else (a, b, out)
    if a.ndim == 2 and b.ndim == 2 and a.dtype in (np.float32, np.float64) and all(
            arr.dtype == a.dtype and arr.flags.c_contiguous for arr in arrays) and (
            out is None or out.flags.writeable):
        accumulate = out is not None
        if out is None:
            out = np.empty((opa.shape[0], opb.shape[1]), dtype=a.dtype)
        kernels.matmul(a, b, out, trans_a, trans_b, accumulate, _threads.get_num_threads())
        return out
    if out is None:
        return opa @ opb
    out += opa @ opb
    return out


class Dropout(Layer):
    """Inverted dropout: zero each element with probability ``p``.

    Kept elements are scaled by ``1 / (1 - p)`` during training so that the
    expected activation is unchanged and evaluation is the identity.

    Parameters
    ----------
    p : float
        Drop probability, in ``[0, 1)``.
    seed : int or numpy.random.Generator, optional
        Seed of the layer's own generator; the same seed gives the same
        sequence of masks.
    dtype : {"float32", "float64"}, optional
        Output dtype. None (the default) keeps the input's floating dtype.
    """

    _saved_for_backward = ("_mask", "_shape")

    def __init__(self, p=0.5, *, seed=None, dtype=None):
        # No parameters, so the dtype may legitimately be left open.
        super().__init__("float64" if dtype is None else dtype)
        if dtype is None:
            self.dtype = None
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer,
                                                                  np.floating)):
            raise TypeError(f"p: expected a probability in [0, 1), got {type(p).__name__}")
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a probability in [0, 1), got {p}")
        self.p = p
        self._rng = np.random.default_rng(seed)
        self._mask = None
        self._shape = None

    def get_config(self):
        return {"p": self.p, "dtype": None if self.dtype is None else self.dtype.name}

    @classmethod
    def read_config(cls, f):
        return {"p": f.probability("p"), "dtype": f.dtype(optional=True)}

    def forward(self, x):
        """Apply dropout (training mode) or return ``x`` unchanged (eval).

        Parameters
        ----------
        x : array_like
            Floating input of any shape.

        Returns
        -------
        ndarray
            Same shape as ``x``.
        """
        x = np.asarray(x)
        if self.dtype is not None:
            x = _as_real_array(x, "x", self.dtype)
        elif x.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                "Dropout expects a float32 or float64 array, got dtype "
                f"{x.dtype}")
        self._shape = x.shape
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        # Draw in the input's precision: float32 draws are half the memory
        # traffic and a resolution of 2**-24 is ample for a threshold.
        u = self._rng.random(x.shape, dtype=x.dtype)
        # The scale is folded into the saved mask so backward is one multiply.
        self._mask = (u >= self.p).astype(x.dtype) * x.dtype.type(
            1.0 / (1.0 - self.p))
        return x * self._mask

    def backward(self, dy):
        """Return ``dy`` times the saved mask (``dy`` itself in eval mode).

        Parameters
        ----------
        dy : array_like
            Gradient w.r.t. the output, same shape as the last input.

        Returns
        -------
        ndarray
            Gradient w.r.t. the input.
        """
        shape = self._require_cache(self._shape)
        dy = np.asarray(dy)
        if dy.shape != shape:
            raise ValueError(
                f"Dropout.backward: expected dy of shape {shape}, got "
                f"{dy.shape}")
        if self._mask is None:
            return dy
        return dy * self._mask


def _check_lengths(lengths, T, B=None):
    """Validate lengths: 1-D integers in ``[1, T]`` (B of them if given)."""
    arr = np.asarray(lengths)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"lengths must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1 or (B is not None and arr.shape[0] != B):
        want = "(B,)" if B is None else f"({B},)"
        raise ValueError(
            f"lengths must have shape {want}, got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > T):
        raise ValueError(
            f"lengths must be in [1, {T}], got min {int(arr.min())}, "
            f"max {int(arr.max())}")
    return arr


def lengths_to_mask(lengths, T):
    """Boolean validity mask of padded, time-major sequences.

    Parameters
    ----------
    lengths : array_like of int, shape (B,)
        Length of each sequence, in ``[1, T]``.
    T : int
        Padded length (number of time steps).

    Returns
    -------
    ndarray of bool, shape (T, B)
        ``mask[t, b]`` is True for ``t < lengths[b]``.
    """
    T = int(T)
    lengths = _check_lengths(lengths, T)
    return np.arange(T)[:, None] < lengths[None, :]


def last_valid_step(y, lengths):
    """Gather the output at the last valid step of each sequence.

    Parameters
    ----------
    y : ndarray, shape (T, B, H)
        Time-major outputs (any trailing shape is allowed).
    lengths : array_like of int, shape (B,)
        Length of each sequence, in ``[1, T]``.

    Returns
    -------
    ndarray, shape (B, H)
        ``out[b] = y[lengths[b] - 1, b]``.
    """
    y = np.asarray(y)
    if y.ndim < 2:
        raise ValueError(
            f"last_valid_step expects y of shape (T, B, H), got {y.shape}")
    T, B = y.shape[:2]
    lengths = _check_lengths(lengths, T, B)
    return y[lengths - 1, np.arange(B)]


def last_valid_step_backward(dlast, lengths, T):
    """Gradient of :func:`last_valid_step` with respect to ``y``.

    Parameters
    ----------
    dlast : ndarray, shape (B, H)
        Gradient w.r.t. the gathered outputs.
    lengths : array_like of int, shape (B,)
        The lengths passed to ``last_valid_step``.
    T : int
        Number of time steps of ``y``.

    Returns
    -------
    ndarray, shape (T, B, H)
        Zero except ``dy[lengths[b] - 1, b] = dlast[b]``.
    """
    dlast = np.asarray(dlast)
    if dlast.ndim < 1:
        raise ValueError(
            f"dlast must have shape (B, H), got {dlast.shape}")
    T = int(T)
    B = dlast.shape[0]
    lengths = _check_lengths(lengths, T, B)
    dy = np.zeros((T,) + dlast.shape, dtype=dlast.dtype)
    # (lengths[b]-1, b) pairs are distinct, so plain assignment is exact.
    dy[lengths - 1, np.arange(B)] = dlast
    return dy


class LastStep(Layer):
    """The output at the last valid step of each sequence: ``(T, B, H) -> (B, H)``.

    ``forward(y, lengths)`` returns ``y[lengths[b] - 1, b]`` for every row ``b`` (the
    last step, ``y[-1]``, without ``lengths``). Sequences must be padded at the end, so
    that the selected step has seen only real input. ``backward`` puts the gradient back
    at the selected steps and zero everywhere else, so padded steps get no gradient.

    With ``bidirectional=True`` (after a bidirectional LSTM or GRU, whose H = 2·hidden
    features are the forward direction then the reverse one) the result is the forward
    half at the last valid step and the reverse half at step 0, where the reverse
    direction has seen the whole sequence: the two halves of the last layer's ``h_n``.
    """

    uses_lengths = True
    _saved_for_backward = ("_cache",)

    def __init__(self, bidirectional=False):
        super().__init__("float64")
        self.dtype = None  # no parameters: the output keeps the input's dtype
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional: expected True or False, got {bidirectional!r}")
        self.bidirectional = bool(bidirectional)
        self._cache = None

    def forward(self, y, lengths=None):
        """Select the last valid step.

        Parameters
        ----------
        y : ndarray, shape (T, B, H)
            Time-major outputs of a recurrent layer.
        lengths : array_like of int, shape (B,), optional
            Valid steps per sequence, in ``[1, T]``; all ``T`` when omitted.

        Returns
        -------
        ndarray, shape (B, H)
        """
        y = np.asarray(y)
        if y.ndim != 3:
            raise ValueError(f"LastStep: expected y of shape (T, B, H), got {y.shape}")
        T, B = y.shape[:2]
        lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
        if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer) \
                or (B and (lengths.min() < 1 or lengths.max() > T)):
            raise ValueError(f"LastStep: expected lengths, integers in [1, {T}] of shape "
                             f"({B},), got {_describe(lengths)}")
        if self.bidirectional and y.shape[2] % 2:
            raise ValueError(f"LastStep: expected an even number of features (two "
                             f"directions), got shape {y.shape}")
        self._cache = (T, lengths)
        last = y[lengths - 1, np.arange(B)]
        if self.bidirectional:
            half = y.shape[2] // 2
            last[:, half:] = y[0, :, half:]
        return last

    def get_config(self):
        return {"bidirectional": self.bidirectional} if self.bidirectional else {}

    @classmethod
    def read_config(cls, f):
        bidirectional = f.bool("bidirectional", default=False)
        return {"bidirectional": True} if bidirectional else {}

    def backward(self, dlast):
        """Scatter ``dlast`` (B, H) back to a (T, B, H) gradient, zero off the selection."""
        T, lengths = self._require_cache(self._cache)
        if not self.bidirectional:
            return last_valid_step_backward(dlast, lengths, T)
        dlast = np.asarray(dlast)
        half = dlast.shape[1] // 2
        forward = np.zeros_like(dlast)
        forward[:, :half] = dlast[:, :half]
        dy = last_valid_step_backward(forward, lengths, T)
        dy[0, :, half:] += dlast[:, half:]
        return dy


def _describe(arr):
    arr = np.asarray(arr)
    text = f"shape {arr.shape}, dtype {arr.dtype}"
    if arr.size and arr.dtype.kind in "iu":
        text += f", min {int(arr.min())}, max {int(arr.max())}"
    return text
