"""Truncated back-propagation through time (TBPTT) on long sequences.

A sequence too long to back-propagate through in one piece is cut into chunks of ``k``
steps. Each chunk is one forward, one backward and (usually) one optimiser step; the
final state of a chunk (``(h, c)`` of an LSTM, ``h`` of a GRU) is the initial state of
the next, so the forward pass sees the whole history, while gradients stop at chunk
boundaries (``k1 = k2 = k``). Nothing has to be "detached" here: ``backward`` of one
chunk never reaches the forward pass of an earlier chunk, and the returned gradient of
the initial state (``(dh_0, dc_0)``, or ``dh_0``) is simply not used.

A typical language-model loop, with ``model`` an ``Embedding -> LSTM -> Dense``
:class:`clstm.Sequential` (whose state is a list of one ``(h, c)`` per LSTM, one ``h``
per GRU), which is what ``LanguageModel.fit`` does on a token stream::

    data = batchify(token_ids, batch_size)          # (N // B, B)
    for epoch in range(epochs):
        state = None                                # new epoch: start from zeros
        for x, y in tbptt_chunks(data, k):          # y is x shifted by one step
            model.zero_grad()
            logits, state = model.forward(x, state)
            loss, dlogits = softmax_cross_entropy(logits, y)
            model.backward(dlogits)                 # stops at the chunk's start
            optimizer.step()

Where some rows of the batch start a new, unrelated sequence at a chunk boundary, zero
their state with :func:`reset_state` before the next chunk.
"""
import numpy as np

__all__ = ["batchify", "tbptt_chunks", "reset_state", "num_chunks"]


def batchify(stream, batch_size):
    """Lay a long stream out as ``batch_size`` parallel streams, time-major.

    The stream is cut into ``batch_size`` contiguous pieces of ``N // batch_size``
    steps (the ``N % batch_size`` trailing steps are dropped), which become the columns
    of the result, as in PyTorch's ``word_language_model`` example. Column ``b`` is
    ``stream[b * n:(b + 1) * n]``, so consecutive chunks along axis 0 continue each
    other row by row, which is what lets the state carry over between chunks.

    Parameters
    ----------
    stream : array_like, shape (N,) or (N, F, ...)
        Tokens or feature vectors in order.
    batch_size : int
        Number of parallel streams, B >= 1.

    Returns
    -------
    ndarray, shape (N // B, B) or (N // B, B, F, ...)
        A new C-contiguous array.

    Raises
    ------
    ValueError
        A 0-d stream, a batch size below 1, or fewer than ``batch_size`` steps.

    Examples
    --------
    >>> batchify(np.arange(10), 3)
    array([[0, 3, 6],
           [1, 4, 7],
           [2, 5, 8]])
    """
    data = np.asarray(stream)
    if data.ndim < 1:
        raise ValueError("batchify: expected a stream of shape (N,) or (N, F), "
                         "got a 0-d array")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batchify: expected batch_size an int >= 1, got {batch_size!r}")
    steps = data.shape[0] // batch_size
    if steps == 0:
        raise ValueError(f"batchify: expected at least batch_size={batch_size} steps, "
                         f"got a stream of {data.shape[0]}")
    data = data[:steps * batch_size].reshape((batch_size, steps) + data.shape[1:])
    return np.ascontiguousarray(np.swapaxes(data, 0, 1))


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"expected k (steps per chunk) an int >= 1, got {k!r}")
    return int(k)


def num_chunks(steps, k):
    """Number of chunks :func:`tbptt_chunks` yields for ``steps`` usable steps."""
    k = _check_k(k)
    return -(-max(int(steps), 0) // k)


def tbptt_chunks(data, k, targets=None):
    """Yield consecutive ``(x, y)`` chunks of ``k`` steps along axis 0.

    Parameters
    ----------
    data : array_like, shape (T, ...)
        Time-major inputs, e.g. the output of :func:`batchify`.
    k : int
        Steps per chunk; the last chunk holds what is left and may be shorter.
    targets : array_like, shape (T, ...), optional
        Targets aligned step by step with ``data``. When omitted, the targets are the
        inputs shifted by one step (language modelling): ``x = data[t:t+k]``,
        ``y = data[t+1:t+1+k]``, over the ``T - 1`` steps that have a successor.

    Yields
    ------
    x, y : ndarray
        Views (no copies) of ``k`` or fewer steps; the chunks tile the usable steps
        exactly, in order.

    Raises
    ------
    ValueError
        ``k`` below 1, ``targets`` of a different length, or data with no usable step.
    """
    k = _check_k(k)
    data = np.asarray(data)
    if data.ndim < 1:
        raise ValueError("tbptt_chunks: expected data with a time axis, got a 0-d array")
    if targets is None:
        if data.shape[0] < 2:
            raise ValueError(f"tbptt_chunks: expected at least 2 steps to predict the next "
                             f"one, got {data.shape[0]}")
        inputs, targets = data[:-1], data[1:]
    else:
        targets = np.asarray(targets)
        if targets.ndim < 1 or targets.shape[0] != data.shape[0]:
            raise ValueError(f"tbptt_chunks: expected targets with {data.shape[0]} steps "
                             f"(as data), got shape {targets.shape}")
        if data.shape[0] == 0:
            raise ValueError("tbptt_chunks: expected at least one step, got 0")
        inputs = data
    return _chunks(inputs, targets, k)


def _chunks(inputs, targets, k):
    # A separate generator so that tbptt_chunks validates eagerly, on the call.
    for start in range(0, inputs.shape[0], k):
        yield inputs[start:start + k], targets[start:start + k]


def reset_state(state, rows):
    """Zero the recurrent state of selected batch rows, e.g. where a sequence ended.

    Parameters
    ----------
    state : pair (h, c), ndarray h, list of those, or None
        A state as returned by ``LSTM.forward`` (a tuple ``(h, c)``, each
        (num_layers, B, H)) or ``GRU.forward`` (``h`` alone, an ndarray), or a model's
        state as returned by ``Sequential.forward`` (a list with one state or None per
        recurrent layer, each reset). None (meaning zeros) is returned as is.
    rows : int, sequence of int, or boolean array of shape (B,)
        The batch rows to reset.

    Returns
    -------
    pair of ndarray, ndarray, list, or None
        Of the input's form, in new arrays (the input is not modified), with
        ``h[:, rows]`` (and ``c[:, rows]``) zero and every other row unchanged.

    Raises
    ------
    ValueError
        A malformed state, or rows outside ``[0, B)`` or a mask of the wrong length.
    """
    if state is None:
        return None
    if isinstance(state, list) and all(s is None or isinstance(s, (tuple, np.ndarray))
                                       for s in state):
        # A model's state: one (h, c) pair, h, or None per recurrent layer.
        return [reset_state(s, rows) for s in state]
    if isinstance(state, np.ndarray):
        # A GRU's state: h alone.
        if state.ndim != 3:
            raise ValueError(f"reset_state: expected h of shape (num_layers, B, H), got "
                             f"{state.shape}")
        h = np.array(state, copy=True)
        h[:, _rows(rows, h.shape[1])] = 0
        return h
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"reset_state: expected a pair (h, c) or an array h, got "
                         f"{type(state).__name__}")
    h, c = (np.array(part, copy=True) for part in state)
    if h.shape != c.shape or h.ndim != 3:
        raise ValueError(f"reset_state: expected h and c of one shape (num_layers, B, H), "
                         f"got {h.shape} and {c.shape}")
    rows = _rows(rows, h.shape[1])
    h[:, rows] = 0
    c[:, rows] = 0
    return h, c


def _rows(rows, B):
    """``rows`` of reset_state, checked against B rows: an index array or a mask."""
    rows = np.asarray(rows)
    if rows.dtype == np.bool_:
        if rows.shape != (B,):
            raise ValueError(f"reset_state: expected a boolean mask of shape ({B},), "
                             f"got {rows.shape}")
    elif np.issubdtype(rows.dtype, np.integer):
        if rows.size and (rows.min() < 0 or rows.max() >= B):
            raise ValueError(f"reset_state: expected rows in [0, {B}), got "
                             f"min {int(rows.min())}, max {int(rows.max())}")
    elif rows.size:  # an empty list arrives as float64: nothing to reset
        raise ValueError(f"reset_state: expected integer rows or a boolean mask, "
                         f"got dtype {rows.dtype}")
    else:
        rows = rows.astype(np.intp)
    return rows
