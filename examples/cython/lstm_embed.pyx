# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""lstm_embed: a downstream extension that calls clstm's C API from Cython.

Three functions:

* :func:`run_many` runs one LSTM layer over many independent sequences of different
  lengths, in parallel *across sequences* in this module's own ``prange``; clstm's
  forward kernel runs inside it with ``num_threads=1``.
* :func:`loss_and_grad` runs forward and backward over one batch (float64), for the loss
  ``0.5·‖h_n − target‖²`` on the final hidden state.
* :func:`encode_bidirectional` encodes a padded batch of sequences of different lengths
  with a bidirectional layer (float64), through the packed-layout API: each sequence
  runs its own steps only, both directions.
* :func:`gru_encode` does the same with one GRU layer (float64, one direction), through
  the GRU's packed-layout API.

Weights are in PyTorch's layout, as in ``clstm.LSTM.params``: ``w_ih`` is
``weight_ih_l0`` (4H, I), ``w_hh`` is ``weight_hh_l0`` (4H, H), and ``bias`` is
``bias_ih_l0 + bias_hh_l0`` (4H,): the C API takes the two biases summed.
"""
from contextlib import nullcontext

from cython.parallel cimport prange
from libc.string cimport memcpy

import numpy as np
from threadpoolctl import threadpool_limits

# This cimport is the whole link to clstm. Cython reads clstm/kernels.pxd from the
# installed package at build time; at import time this module imports clstm.kernels and
# takes the function pointers from its __pyx_capi__, checking each C signature, so a
# clstm built with a different signature fails loudly at import instead of crashing.
from clstm.kernels cimport (gru_forward_packed_f64, gru_packed_workspace_size,
                            lstm_backward_f64, lstm_forward_f32, lstm_forward_f64,
                            lstm_forward_packed_f64, lstm_packed_workspace_size,
                            lstm_workspace_size)

ctypedef fused real:
    float
    double


# ---------------------------------------------------------------------------------------
# Forward over many sequences


cdef int _forward_one(int T, int I, int H, const real* x, const real* w_ih,
                      const real* w_hh, const real* bias, real* y,
                      real* workspace) noexcept nogil:
    # One sequence is a batch of one (B=1). num_threads=1: the prange around this call
    # already occupies the cores, and nested OpenMP teams would only oversubscribe them.
    # NULL peephole, h0, c0: a plain LSTM starting from zeros.
    if real is float:
        return lstm_forward_f32(T, 1, I, H, x, w_ih, w_hh, bias, NULL, NULL, NULL, y,
                                workspace, 1)
    else:
        return lstm_forward_f64(T, 1, I, H, x, w_ih, w_hh, bias, NULL, NULL, NULL, y,
                                workspace, 1)


cdef int _run_many(const real[:, ::1] x, const real[:, ::1] w_ih, const real[:, ::1] w_hh,
                   const real[::1] bias, const Py_ssize_t[::1] starts,
                   const Py_ssize_t[::1] ws_starts, real[:, ::1] y, real[::1] workspace,
                   real[:, ::1] c_n, int num_threads):
    """Sequence k is rows starts[k]:starts[k+1] of x and y; returns how many failed."""
    cdef Py_ssize_t k, n = c_n.shape[0]
    cdef int T, status, failed = 0
    cdef int I = <int>x.shape[1], H = <int>c_n.shape[1]
    cdef real* ws
    # Dynamic schedule: sequences differ in length, so equal-sized static chunks would
    # leave threads idle. Every thread writes only its own slices of y, workspace, c_n.
    for k in prange(n, nogil=True, num_threads=num_threads, schedule="dynamic"):
        T = <int>(starts[k + 1] - starts[k])
        ws = &workspace[ws_starts[k]]
        status = _forward_one(T, I, H, &x[starts[k], 0], &w_ih[0, 0], &w_hh[0, 0],
                              &bias[0], &y[starts[k], 0], ws)
        if status != 0:
            failed += 1
        else:
            # The final cell state is the last (B, H) block of the workspace (after the
            # gates (T, B, 4H) and the cell states of steps 1 .. T-1). Copy it out: the
            # workspace is scratch and is dropped on return.
            memcpy(&c_n[k, 0], ws + (5 * <Py_ssize_t>T - 1) * H, H * sizeof(real))
    return failed


def run_many(sequences, w_ih, w_hh, bias, int num_threads=1):
    """Run one LSTM layer over independent sequences of different lengths.

    Each sequence starts from a zero state. The sequences are spread over
    ``num_threads`` threads of this module's own ``prange`` (one sequence per call of
    clstm's kernel), which suits many short sequences of uneven lengths better than
    padding them into one batch.

    Parameters
    ----------
    sequences : sequence of array_like
        N arrays, sequence k of shape (T_k, I) with T_k >= 1.
    w_ih : array_like
        (4H, I) input weights, gate blocks i, f, g, o. Its dtype, float32 or float64,
        is the dtype of the computation.
    w_hh : array_like
        (4H, H) recurrent weights.
    bias : array_like
        (4H,) the sum ``bias_ih + bias_hh``.
    num_threads : int, default 1
        Threads across sequences (OpenMP; one when the module was built without it).

    Returns
    -------
    ys : list of ndarray
        N arrays, ``ys[k]`` of shape (T_k, H): the hidden states; ``ys[k][-1]`` is the
        final hidden state h_n of sequence k.
    c_n : ndarray
        (N, H) the final cell state of every sequence.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads: expected a positive int, got {num_threads}")
    w_ih = np.asarray(w_ih)
    if w_ih.dtype not in (np.float32, np.float64):
        raise TypeError(f"w_ih: expected float32 or float64, got {w_ih.dtype}")
    dtype = w_ih.dtype
    w_ih, w_hh, bias = (np.ascontiguousarray(a, dtype=dtype) for a in (w_ih, w_hh, bias))
    if w_ih.ndim != 2 or w_ih.shape[0] % 4 != 0 or w_ih.shape[0] == 0:
        raise ValueError(f"w_ih: expected shape (4H, I), got {w_ih.shape}")
    G, I = w_ih.shape
    H = G // 4
    _check_shape(w_hh, (G, H), "w_hh")
    _check_shape(bias, (G,), "bias")
    seqs = [np.asarray(s, dtype=dtype) for s in sequences]
    if not seqs:
        raise ValueError("sequences: expected at least one sequence, got none")
    for k, s in enumerate(seqs):
        if s.ndim != 2 or s.shape[1] != I or s.shape[0] == 0:
            raise ValueError(f"sequences[{k}]: expected shape (T, {I}) with T >= 1, "
                             f"got {s.shape}")

    # Pack everything into a few flat buffers, allocated here while we hold the GIL:
    # the nogil loop below only does arithmetic on them.
    n = len(seqs)
    starts = np.zeros(n + 1, dtype=np.intp)
    np.cumsum([s.shape[0] for s in seqs], out=starts[1:])
    ws_starts = np.zeros(n + 1, dtype=np.intp)
    for k in range(n):
        ws_starts[k + 1] = ws_starts[k] + lstm_workspace_size(seqs[k].shape[0], 1, H)
    x = np.concatenate(seqs)
    y = np.empty((starts[n], H), dtype=dtype)
    workspace = np.empty(ws_starts[n], dtype=dtype)
    c_n = np.empty((n, H), dtype=dtype)

    # BLAS runs inside every kernel call; with several of our threads each calling it,
    # BLAS must stay on one thread or the two pools oversubscribe the cores.
    with threadpool_limits(limits=1, user_api="blas") if num_threads > 1 else nullcontext():
        if dtype == np.float32:
            failed = _run_many[float](x, w_ih, w_hh, bias, starts, ws_starts, y,
                                      workspace, c_n, num_threads)
        else:
            failed = _run_many[double](x, w_ih, w_hh, bias, starts, ws_starts, y,
                                       workspace, c_n, num_threads)
    if failed:
        raise ValueError(f"lstm forward: {failed} sequence(s) with sizes too large for "
                         f"BLAS's int")
    return np.split(y, starts[1:n]), c_n


# ---------------------------------------------------------------------------------------
# Forward and backward over one batch


def loss_and_grad(x, w_ih, w_hh, bias, target, int num_threads=1):
    """The loss ``0.5·‖h_n − target‖²`` of a batch and its gradients, in float64.

    Parameters
    ----------
    x : array_like
        (T, B, I) input, time-major.
    w_ih, w_hh, bias : array_like
        (4H, I), (4H, H) and (4H,) weights, as in :func:`run_many`.
    target : array_like
        (B, H) the wanted final hidden state of every sequence.
    num_threads : int, default 1
        Threads for clstm's kernels, across the batch.

    Returns
    -------
    loss : float
        ``0.5 * sum((h_n - target)**2)``.
    grads : dict of str to ndarray
        ``"x"`` (T, B, I), ``"w_ih"`` (4H, I), ``"w_hh"`` (4H, H) and ``"bias"`` (4H,),
        the gradient of the loss with respect to each. ``"bias"`` is the gradient of
        ``bias_ih`` and, equally, of ``bias_hh``.
    """
    # const memoryviews accept read-only arrays; the C-contiguous copies are made here.
    cdef const double[:, :, ::1] xv = np.ascontiguousarray(x, dtype=np.float64)
    cdef const double[:, ::1] wi = np.ascontiguousarray(w_ih, dtype=np.float64)
    cdef const double[:, ::1] wh = np.ascontiguousarray(w_hh, dtype=np.float64)
    cdef const double[::1] b = np.ascontiguousarray(bias, dtype=np.float64)
    cdef int T = <int>xv.shape[0], B = <int>xv.shape[1], I = <int>xv.shape[2]
    cdef int H = <int>(wi.shape[0] // 4)
    if T == 0 or B == 0 or I == 0 or H == 0:
        raise ValueError(f"expected positive sizes, got T={T}, B={B}, I={I}, H={H}")
    _check_shape(wi, (4 * H, I), "w_ih")
    _check_shape(wh, (4 * H, H), "w_hh")
    _check_shape(b, (4 * H,), "bias")
    target = np.asarray(target, dtype=np.float64)
    _check_shape(target, (B, H), "target")

    y_arr = np.empty((T, B, H))
    # The workspace carries the forward's gates and cell states into the backward.
    ws_arr = np.empty(lstm_workspace_size(T, B, H))
    cdef double[:, :, ::1] y = y_arr
    cdef double[::1] ws = ws_arr
    cdef int status
    with nogil:
        status = lstm_forward_f64(T, B, I, H, &xv[0, 0, 0], &wi[0, 0], &wh[0, 0], &b[0],
                                  NULL, NULL, NULL, &y[0, 0, 0], &ws[0], num_threads)
    if status != 0:
        raise ValueError("lstm forward: sizes too large for BLAS's int")

    residual = y_arr[T - 1] - target     # h_n is y[T-1]; dL/dh_n = h_n - target
    loss = 0.5 * float(np.sum(residual * residual))

    # The loss reads only h_n, so dL/dy is zero and h_n's gradient goes in as dh_n.
    cdef double[:, :, ::1] dy = np.zeros((T, B, H))      # destroyed by the backward
    cdef const double[:, ::1] dh_n = residual
    grads = {"x": np.empty((T, B, I)), "w_ih": np.zeros((4 * H, I)),
             "w_hh": np.zeros((4 * H, H)), "bias": np.zeros(4 * H)}
    # dx is overwritten, but the weight gradients are *added into*: start them at zero.
    cdef double[:, :, ::1] dx = grads["x"]
    cdef double[:, ::1] dwi = grads["w_ih"]
    cdef double[:, ::1] dwh = grads["w_hh"]
    cdef double[::1] db = grads["bias"]
    cdef double[:, ::1] dh0 = np.empty((B, H))   # gradients of the (zero) initial state,
    cdef double[:, ::1] dc0 = np.empty((B, H))   # unused here but always written
    with nogil:
        status = lstm_backward_f64(T, B, I, H, &xv[0, 0, 0], &wi[0, 0], &wh[0, 0], NULL,
                                   NULL, NULL, &y[0, 0, 0], &ws[0], &dy[0, 0, 0],
                                   &dh_n[0, 0], NULL, &dx[0, 0, 0], &dh0[0, 0], &dc0[0, 0],
                                   &dwi[0, 0], &dwh[0, 0], &db[0], NULL, num_threads)
    if status != 0:
        raise ValueError("lstm backward: sizes too large for BLAS's int")
    return loss, grads


# ---------------------------------------------------------------------------------------
# A bidirectional encoder over sequences of different lengths (the packed layout)


def encode_bidirectional(x, lengths, forward_weights, reverse_weights, int num_threads=1):
    """The final states of a bidirectional layer over a padded batch, in float64.

    Parameters
    ----------
    x : array_like
        (T, B, I) time-major input, sequence b padded after its ``lengths[b]`` steps.
    lengths : array_like of int
        (B,) valid steps per sequence, in [1, T].
    forward_weights, reverse_weights : tuple
        ``(w_ih, w_hh, bias)`` of each direction, as in :func:`run_many`
        (``weight_ih_l0`` / ``weight_ih_l0_reverse`` ...).
    num_threads : int, default 1
        Threads for clstm's kernels.

    Returns
    -------
    h_n : ndarray
        (2, B, H): the forward direction's state at each sequence's last valid step and
        the reverse direction's at step 0, as ``h_n`` of a bidirectional
        ``clstm.LSTM`` (or of ``torch.nn.LSTM`` on packed sequences).
    """
    x = np.asarray(x, dtype=np.float64)
    lengths = np.asarray(lengths)
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (T, B, I), got {x.shape}")
    T, B, I = x.shape
    _check_shape(lengths, (B,), "lengths")
    if lengths.min() < 1 or lengths.max() > T:
        raise ValueError(f"lengths: expected integers in [1, {T}]")
    # The packed layout: rows by non-increasing length, step t holding the batch_sizes[t]
    # rows still running, the steps one after another (PyTorch's PackedSequence).
    order = np.argsort(-lengths, kind="stable")
    steps = int(lengths[order[0]])
    valid = np.arange(steps)[:, None] < lengths[order][None, :]
    batch_sizes_arr = np.ascontiguousarray(valid.sum(axis=1), dtype=np.intc)
    t_idx, b_idx = np.nonzero(valid)
    cdef const double[:, ::1] xp = np.ascontiguousarray(x[t_idx, order[b_idx]])
    cdef const int[::1] batch_sizes = batch_sizes_arr
    cdef int N = <int>xp.shape[0], H = 0, d, status = 0
    cdef int Ti = steps, Bi = B, Ii = I
    h_sorted = None
    cdef const double[:, ::1] wi
    cdef const double[:, ::1] wh
    cdef const double[::1] b
    cdef double[:, ::1] y
    cdef double[:, ::1] h_n
    cdef double[:, ::1] c_n
    cdef double[::1] ws
    for d, (w_ih, w_hh, bias) in enumerate((forward_weights, reverse_weights)):
        wi = np.ascontiguousarray(w_ih, dtype=np.float64)
        wh = np.ascontiguousarray(w_hh, dtype=np.float64)
        b = np.ascontiguousarray(bias, dtype=np.float64)
        H = <int>(wi.shape[0] // 4)
        _check_shape(wi, (4 * H, I), "w_ih")
        _check_shape(wh, (4 * H, H), "w_hh")
        _check_shape(b, (4 * H,), "bias")
        if h_sorted is None:
            h_sorted = np.empty((2, B, H))
        y = np.empty((N, H))
        h_n = h_sorted[d]
        c_n = np.empty((B, H))
        ws = np.empty(lstm_packed_workspace_size(Ti, Bi, H, 0, &batch_sizes[0]))
        with nogil:
            # P = 0 and w_hr NULL: no projection; NULL peephole, h0, c0.
            status = lstm_forward_packed_f64(Ti, Bi, Ii, H, 0, &batch_sizes[0], d,
                                             &xp[0, 0], &wi[0, 0], &wh[0, 0], NULL, &b[0],
                                             NULL, NULL, NULL, &y[0, 0], &h_n[0, 0],
                                             &c_n[0, 0], &ws[0], num_threads)
        if status != 0:
            raise ValueError("lstm forward: invalid sizes")
    out = np.empty_like(h_sorted)
    out[:, order] = h_sorted             # back to the caller's order of sequences
    return out


def _packed(x, lengths):
    """(rows of x in the packed layout, batch_sizes as C ints, the rows' order)."""
    T, B = x.shape[:2]
    _check_shape(lengths, (B,), "lengths")
    if lengths.min() < 1 or lengths.max() > T:
        raise ValueError(f"lengths: expected integers in [1, {T}]")
    order = np.argsort(-lengths, kind="stable")
    valid = np.arange(int(lengths[order[0]]))[:, None] < lengths[order][None, :]
    t_idx, b_idx = np.nonzero(valid)
    return (np.ascontiguousarray(x[t_idx, order[b_idx]]),
            np.ascontiguousarray(valid.sum(axis=1), dtype=np.intc), order)


def gru_encode(x, lengths, w_ih, w_hh, b_ih=None, b_hh=None, int num_threads=1):
    """The final states of one GRU layer over a padded batch, in float64.

    Parameters
    ----------
    x : array_like
        (T, B, I) time-major input, sequence b padded after its ``lengths[b]`` steps.
    lengths : array_like of int
        (B,) valid steps per sequence, in [1, T].
    w_ih, w_hh, b_ih, b_hh : array_like
        ``weight_ih_l0`` (3H, I), ``weight_hh_l0`` (3H, H), ``bias_ih_l0`` and
        ``bias_hh_l0`` (3H,) of a ``clstm.GRU`` or ``torch.nn.GRU``: the GRU takes its
        two biases apart (the reset gate multiplies b_hn). Both None: no bias.
    num_threads : int, default 1

    Returns
    -------
    h_n : ndarray
        (B, H): each sequence's state after its last valid step.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (T, B, I), got {x.shape}")
    T, B, I = x.shape
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: expected two arrays or two None")
    xp_arr, bs_arr, order = _packed(x, np.asarray(lengths))
    cdef const double[:, ::1] xp = xp_arr
    cdef const int[::1] batch_sizes = bs_arr
    cdef const double[:, ::1] wi = np.ascontiguousarray(w_ih, dtype=np.float64)
    cdef const double[:, ::1] wh = np.ascontiguousarray(w_hh, dtype=np.float64)
    cdef int H = <int>(wi.shape[0] // 3), Ti = <int>bs_arr.shape[0], Bi = B, Ii = I, status
    _check_shape(wi, (3 * H, I), "w_ih")
    _check_shape(wh, (3 * H, H), "w_hh")
    cdef const double[::1] bi
    cdef const double[::1] bh
    cdef const double* pbi = NULL
    cdef const double* pbh = NULL
    if b_ih is not None:
        bi = np.ascontiguousarray(b_ih, dtype=np.float64)
        bh = np.ascontiguousarray(b_hh, dtype=np.float64)
        _check_shape(bi, (3 * H,), "b_ih")
        _check_shape(bh, (3 * H,), "b_hh")
        pbi, pbh = &bi[0], &bh[0]
    cdef double[:, ::1] y = np.empty((xp.shape[0], H))
    h_arr = np.empty((B, H))
    cdef double[:, ::1] h_n = h_arr
    cdef double[::1] ws = np.empty(gru_packed_workspace_size(Ti, Bi, H, &batch_sizes[0]))
    with nogil:
        # reverse 0: the forward direction; NULL h0: zeros.
        status = gru_forward_packed_f64(Ti, Bi, Ii, H, &batch_sizes[0], 0, &xp[0, 0],
                                        &wi[0, 0], &wh[0, 0], pbi, pbh, NULL, &y[0, 0],
                                        &h_n[0, 0], &ws[0], num_threads)
    if status != 0:
        raise ValueError("gru forward: invalid sizes")
    out = np.empty_like(h_arr)
    out[order] = h_arr                   # back to the caller's order of sequences
    return out


def _check_shape(a, shape, name):
    if tuple(a.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
