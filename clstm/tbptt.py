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

Sequences of different lengths (padded at the end) pass ``lengths``: each chunk then
comes with each row's valid steps inside it (:func:`chunk_lengths`), 0 for a row whose
sequence ended in an earlier chunk. :func:`forward_chunk` runs the model over the rows
that still have steps (with their lengths, so that no padded step is computed) and
carries the state of the others unchanged; so the state carried out of the last chunk
is every row's state at its own last valid step, as one long ``forward(x,
lengths=lengths)`` gives::

    state = None
    for x, y, lc in tbptt_chunks(data, k, targets, lengths=lengths):
        model.zero_grad()
        out, state, rows = forward_chunk(model, x, state, lc)
        if rows is None:                            # a chunk past every sequence's end
            continue
        loss, dout = mse(out, y[:, rows], mask=lengths_to_mask(lc[rows], len(x)))
        model.backward(dout)                        # the live rows only
        optimizer.step()

A bidirectional model cannot be trained in chunks (its reverse direction needs each
sequence's end): :func:`forward_chunk` refuses it.

States are walked generically: ``None``, an array with the batch on axis 1, a tuple of
such arrays (an LSTM's ``(h, c)``; another cell's own tuple), or a list of those (a
model's, one entry per recurrent layer).
"""
import numpy as np

__all__ = ["batchify", "tbptt_chunks", "reset_state", "num_chunks", "chunk_lengths",
           "forward_chunk", "check_chunkable", "live_rows", "take_rows", "put_rows"]


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


def tbptt_chunks(data, k, targets=None, *, lengths=None):
    """Yield consecutive ``(x, y)`` chunks of ``k`` steps along axis 0 (with
    ``lengths``: ``(x, y, chunk_lengths)``).

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
    lengths : array_like of int, shape (B,), optional
        Valid steps of each sequence (axis 1 of ``data``), padded at the end, in
        [1, T]. Without ``targets`` a sequence of n steps has n - 1 inputs with a
        successor, and those are what count.

    Yields
    ------
    x, y : ndarray
        Views (no copies) of ``k`` or fewer steps; the chunks tile the usable steps
        exactly, in order.
    chunk_lengths : ndarray of int64, shape (B,)
        Only with ``lengths``: each row's valid steps in this chunk
        (:func:`chunk_lengths`), 0 for a row whose sequence has ended.

    Raises
    ------
    ValueError
        ``k`` below 1, ``targets`` of a different length, data with no usable step, or
        lengths of the wrong shape or out of [1, T].
    TypeError
        lengths that are not integers.
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
    if lengths is None:
        return _chunks(inputs, targets, k)
    lengths = _check_lengths(lengths, data)
    if inputs.shape[0] < data.shape[0]:          # the last step has no successor
        lengths = lengths - 1
    return _chunks_with_lengths(inputs, targets, k, lengths)


def _chunks(inputs, targets, k):
    # A separate generator so that tbptt_chunks validates eagerly, on the call.
    for start in range(0, inputs.shape[0], k):
        yield inputs[start:start + k], targets[start:start + k]


def _chunks_with_lengths(inputs, targets, k, lengths):
    for start in range(0, inputs.shape[0], k):
        yield (inputs[start:start + k], targets[start:start + k],
               chunk_lengths(lengths, start, k))


def _check_lengths(lengths, data):
    if data.ndim < 2:
        raise ValueError(f"tbptt_chunks: expected data (T, B, ...) with a batch axis for "
                         f"lengths, got shape {data.shape}")
    T, B = data.shape[:2]
    return _integer_lengths(lengths, B, 1, T, "sequence").astype(np.int64)


def _integer_lengths(lengths, B, low, high, per, note=""):
    """``lengths`` as an integer array of shape (B,) (one per ``per``) with values in
    [low, high] (``note`` says what they count), or a clear error."""
    arr = np.asarray(lengths)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},) (one per {per}), got shape "
                         f"{arr.shape}")
    if arr.min() < low or arr.max() > high:
        raise ValueError(f"lengths: expected integers in [{low}, {high}]{note}, got min "
                         f"{arr.min()}, max {arr.max()}")
    return arr


def chunk_lengths(lengths, start, k):
    """Each sequence's valid steps within the chunk of steps ``[start, start + k)``.

    ``clip(lengths - start, 0, k)``: ``k`` for a sequence that runs through the chunk,
    fewer for one that ends inside it, 0 for one that ended before it. (A last chunk
    shorter than ``k`` holds at most its own steps, since lengths never exceed T.)
    """
    return np.clip(np.asarray(lengths, dtype=np.int64) - int(start), 0, int(k))


# ------------------------------------------------------------- the rows of a chunk

def check_chunkable(model):
    """ValueError when ``model`` (an LSTM, or a model with ``layers``) holds a
    bidirectional layer: its reverse direction starts at each sequence's last step, which
    a chunk does not see, so it cannot be run or trained in chunks."""
    for layer in (model, *getattr(model, "layers", ())):
        if getattr(layer, "bidirectional", False):
            raise ValueError(f"truncated BPTT: expected a model without bidirectional "
                             f"layers (the reverse direction needs the whole sequence; "
                             f"train it on whole sequences, bptt=None), got "
                             f"{type(layer).__name__} with bidirectional=True")


def live_rows(lengths):
    """Indices of the rows with at least one step (length > 0), or None when every row
    has some: the rows a chunk runs."""
    lengths = np.asarray(lengths)
    if lengths.min() > 0:
        return None
    return np.flatnonzero(lengths > 0)


def take_rows(state, rows):
    """The batch rows ``rows`` of a state (None, an array with the batch on axis 1, or
    tuples and lists of those), as new arrays."""
    if state is None:
        return None
    if isinstance(state, np.ndarray):
        return state[:, rows]
    if isinstance(state, (tuple, list)):
        return type(state)(take_rows(part, rows) for part in state)
    raise TypeError(f"state: expected None, an array, or a tuple or list of them, got "
                    f"{type(state).__name__}")


def put_rows(state, rows, part, batch_size):
    """``state`` (all ``batch_size`` rows; None means zeros) with its rows ``rows``
    replaced by ``part`` (a state of those rows only, of the same structure), in new
    arrays; the other rows keep their values."""
    if part is None:
        return state
    if isinstance(part, np.ndarray):
        if state is None:
            full = np.zeros((part.shape[0], batch_size) + part.shape[2:], part.dtype)
        else:
            full = np.array(state, dtype=part.dtype, copy=True)
        full[:, rows] = part
        return full
    if isinstance(part, (tuple, list)):
        olds = [None] * len(part) if state is None else state
        if len(olds) != len(part):
            raise ValueError(f"state: expected {len(part)} parts, as the model returns, "
                             f"got {len(olds)}")
        return type(part)(put_rows(o, rows, p, batch_size) for o, p in zip(olds, part))
    raise TypeError(f"state: expected None, an array, or a tuple or list of them, got "
                    f"{type(part).__name__}")


def forward_chunk(model, x, state, lengths):
    """``model.forward`` over one chunk of a batch of sequences of their own lengths.

    Only the rows with steps in the chunk run (rows whose sequence ended earlier are
    left out: no compute, and their state is carried unchanged), each over its own
    steps (``lengths=`` those rows' chunk lengths).

    Parameters
    ----------
    model : clstm.LSTM, Sequential or another model with ``forward(x, state,
        lengths=...)``, unidirectional (:func:`check_chunkable`)
    x : ndarray, shape (k, B, ...)
        The chunk, time-major.
    state : state of all B rows, or None (zeros)
    lengths : array_like of int, shape (B,)
        Each row's valid steps in the chunk, in [0, k] (:func:`chunk_lengths`).

    Returns
    -------
    out : ndarray or None
        The model's output for the live rows only, ``(k, len(rows), ...)``; None when no
        row has a step in the chunk.
    state : the state of all B rows after the chunk
    rows : ndarray of int or None
        The live rows (index ``y[:, rows]`` for the loss); ``slice(None)`` when every
        row is live, None when none is.
    """
    check_chunkable(model)
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x: expected a time-major chunk (k, B, ...), got shape {x.shape}")
    k, B = x.shape[:2]
    lengths = _integer_lengths(lengths, B, 0, k, "row", " (steps in the chunk)")
    rows = live_rows(lengths)
    if rows is None:
        out, state = model.forward(x, state, lengths=lengths)
        return out, state, slice(None)
    if rows.size == 0:
        return None, state, None
    out, part = model.forward(x[:, rows], take_rows(state, rows), lengths=lengths[rows])
    return out, put_rows(state, rows, part, B), rows


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
