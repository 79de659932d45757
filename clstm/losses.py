"""Loss functions with their gradients: softmax cross-entropy and MSE.

Design: a loss is the end of the chain, so each one is a plain function that
returns ``(loss, grad)`` in one call -- the value and the gradient of that
value with respect to its first argument. There is no separate ``backward``
and no cached state; the fused form is also what makes cross-entropy cheap
and stable (one log-sum-exp serves both the value and the softmax).

Reductions follow PyTorch (``F.cross_entropy`` / ``F.mse_loss``):

``"mean"``
    Average over the *counted* positions (elements for MSE); ``loss`` is a
    Python float and ``grad`` the gradient of that mean. With nothing
    counted the loss is NaN and the gradient zero, as in PyTorch.
``"sum"``
    Sum over the counted positions; ``loss`` is a Python float.
``"none"``
    ``loss`` is an array of per-position (per-element) losses, zero where not
    counted; ``grad`` holds, at each position, the gradient of *that*
    position's loss. Each loss depends only on its own position, so scaling
    ``grad`` by per-position weights gives the gradient of the weighted sum.

Scalar reductions are accumulated in float64 even for float32 inputs, so
long sequences do not lose precision in the sum; gradients keep the input's
dtype. Positions that are not counted (masked out or ``ignore_index``) may
hold any value -- padding garbage, even NaN -- and get exactly zero gradient.
"""

import numpy as np

__all__ = ["softmax", "log_softmax", "softmax_cross_entropy", "mse"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_REDUCTIONS = ("mean", "sum", "none")


def _as_float_array(x, name):
    arr = np.asarray(x)
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype "
            f"{arr.dtype}")
    return arr


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_mask(mask, shape, what):
    """Validate a boolean mask of exactly ``shape``."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(
            f"mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(
            f"mask must have the shape of {what}, {shape}, got {mask.shape}")
    return mask


def log_softmax(x, axis=-1):
    """Numerically stable log-softmax.

    Parameters
    ----------
    x : array_like
        Floating input.
    axis : int
        Axis along which to normalise.

    Returns
    -------
    ndarray
        ``x - logsumexp(x, axis)``, same shape and dtype as ``x``.
    """
    x = _as_float_array(x, "x")
    # Subtracting the max makes every exponent <= 0, so exp cannot overflow
    # and at least one term is exactly 1, so the log cannot see 0.
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x, axis=-1):
    """Numerically stable softmax.

    Parameters
    ----------
    x : array_like
        Floating input.
    axis : int
        Axis along which to normalise.

    Returns
    -------
    ndarray
        Probabilities summing to one along ``axis``; same shape and dtype.
    """
    x = _as_float_array(x, "x")
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_cross_entropy(logits, targets, *, mask=None, ignore_index=None,
                          reduction="mean"):
    """Fused softmax + negative log-likelihood, and its gradient.

    Parameters
    ----------
    logits : ndarray, shape (..., C)
        Unnormalised scores, float32 or float64; the class axis is last
        (e.g. ``(T, B, C)`` for time-major outputs).
    targets : array_like of int, shape (...)
        Class indices, ``logits.shape[:-1]``. Must lie in ``[0, C)`` at every
        counted position; other positions are not inspected.
    mask : array_like of bool, shape (...), optional
        True where the position counts (e.g. from
        :func:`clstm.layers.lengths_to_mask`).
    ignore_index : int, optional
        Target value whose positions are not counted, like PyTorch's
        ``ignore_index``.
    reduction : {"mean", "sum", "none"}
        See the module docstring. ``"mean"`` divides by the number of
        counted positions, matching ``F.cross_entropy``.

    Returns
    -------
    loss : float or ndarray
        The reduced loss (float), or per-position losses for ``"none"``.
    dlogits : ndarray, shape of ``logits``
        ``(softmax - onehot) / count`` on counted positions for ``"mean"``
        (no division for the other reductions), zero elsewhere.

    Raises
    ------
    TypeError
        Non-float logits, non-integer targets, non-boolean mask.
    ValueError
        Shape mismatches, targets out of range, unknown reduction.
    """
    _check_reduction(reduction)
    logits = _as_float_array(logits, "logits")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"logits must have shape (..., C) with C >= 1, got {logits.shape}")
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(
            "targets must be integer class indices, got dtype "
            f"{targets.dtype}")
    lead, C = logits.shape[:-1], logits.shape[-1]
    if targets.shape != lead:
        raise ValueError(
            f"targets must have shape logits.shape[:-1] = {lead}, got "
            f"{targets.shape}")

    counted = np.ones(lead, dtype=bool) if mask is None else \
        _check_mask(mask, lead, "targets").copy()
    if ignore_index is not None:
        counted &= targets != ignore_index

    x2 = logits.reshape(-1, C)
    t = targets.reshape(-1)
    w = counted.reshape(-1)
    all_counted = bool(w.all())
    # Work only on counted rows: padding rows cost nothing and cannot leak
    # NaN/inf into the gradient through 0 * NaN.
    rows = None if all_counted else np.flatnonzero(w)
    xs = x2 if all_counted else x2[rows]
    ts = t if all_counted else t[rows]
    if ts.size and (ts.min() < 0 or ts.max() >= C):
        raise ValueError(
            f"targets out of range: expected class indices in [0, {C}), got "
            f"min {int(ts.min())}, max {int(ts.max())}")
    count = ts.shape[0]

    shifted = xs - xs.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    r = np.arange(count)
    # -log p_t = logsumexp(x) - x_t, evaluated on the shifted logits.
    nll = np.log(s[:, 0]) - shifted[r, ts]

    e /= s                      # e is now softmax; reuse its memory for grad
    e[r, ts] -= 1
    if reduction == "mean":
        # Zero scale for count == 0 keeps the gradient finite (PyTorch too).
        scale = 1.0 / count if count else 0.0
        if scale != 1.0:
            e *= e.dtype.type(scale)
        loss = float(nll.sum(dtype=np.float64) / count) if count else \
            float("nan")
    elif reduction == "sum":
        loss = float(nll.sum(dtype=np.float64))
    else:
        if all_counted:
            loss = nll.reshape(lead)
        else:
            loss = np.zeros(t.shape[0], dtype=logits.dtype)
            loss[rows] = nll
            loss = loss.reshape(lead)

    if all_counted:
        dlogits = e.reshape(logits.shape)
    else:
        dlogits = np.zeros_like(x2)
        dlogits[rows] = e
        dlogits = dlogits.reshape(logits.shape)
    return loss, dlogits


def mse(pred, target, *, mask=None, reduction="mean"):
    """Mean squared error and its gradient, ``F.mse_loss`` semantics.

    Parameters
    ----------
    pred : ndarray
        Predictions, float32 or float64.
    target : array_like
        Targets, same shape as ``pred`` (cast to its dtype; no broadcasting,
        which in PyTorch is a warning and nearly always a bug).
    mask : array_like of bool, optional
        True where the element counts. Its shape is ``pred.shape`` or a
        leading prefix of it, e.g. ``(T, B)`` for ``(T, B, F)`` predictions,
        in which case it covers all trailing elements of a position. The
        masked mean equals ``F.mse_loss(pred[mask], target[mask])``.
    reduction : {"mean", "sum", "none"}
        See the module docstring; ``"mean"`` divides by the number of
        counted elements.

    Returns
    -------
    loss : float or ndarray
        Reduced loss (float), or per-element squared errors for ``"none"``
        (zero where masked out).
    dpred : ndarray, shape of ``pred``
        ``2 (pred - target) / count`` for ``"mean"`` (no division otherwise),
        zero where masked out.
    """
    _check_reduction(reduction)
    pred = _as_float_array(pred, "pred")
    target = np.asarray(target)
    if not (np.issubdtype(target.dtype, np.floating)
            or np.issubdtype(target.dtype, np.integer)):
        raise TypeError(
            f"target must be a real numeric array, got dtype {target.dtype}")
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have the shape of pred, {pred.shape}, got "
            f"{target.shape}")
    diff = pred - target.astype(pred.dtype, copy=False)
    if mask is None:
        count = diff.size
    else:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(
                f"mask must be a boolean array, got dtype {mask.dtype}")
        if mask.shape != pred.shape[:mask.ndim]:
            raise ValueError(
                "mask must have the shape of pred or a leading prefix of it "
                f"(pred {pred.shape}), got {mask.shape}")
        trailing = int(np.prod(pred.shape[mask.ndim:], dtype=np.int64))
        count = int(mask.sum()) * trailing
        m = mask.reshape(mask.shape + (1,) * (pred.ndim - mask.ndim))
        # where, not multiply: masked-out padding may hold NaN or inf.
        diff = np.where(m, diff, diff.dtype.type(0))

    if reduction == "none":
        return diff * diff, 2 * diff
    # Sum of squares as a float64 dot: one pass, no float32 accumulation.
    flat = diff.reshape(-1)
    sq = float(np.dot(flat.astype(np.float64, copy=False),
                      flat.astype(np.float64, copy=False)))
    if reduction == "sum":
        return sq, 2 * diff
    if count == 0:
        return float("nan"), np.zeros_like(diff)
    diff *= diff.dtype.type(2.0 / count)
    return sq / count, diff
