"""One GRU direction over a packed batch in NumPy: the stand-in for the compiled
kernels (kernels.gru_forward_packed / gru_backward_packed) with the same arguments,
used until those land. Layout and math: DEVELOPERS.md, "The GRU"."""
import numpy as np


def _sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _offsets(batch_sizes):
    return np.concatenate([[0], np.cumsum(batch_sizes)]).astype(np.int64)


def _previous_states(T, B, H, bs, off, reverse, y, h0):
    """(N, H): the state each packed row read at its step."""
    N = int(off[-1])
    prev = np.empty((N, H), dtype=y.dtype)
    zeros = np.zeros((B, H), dtype=y.dtype) if h0 is None else h0.reshape(B, H)
    for t in range(T):
        rows = slice(off[t], off[t] + bs[t])
        if not reverse:
            prev[rows] = y[off[t - 1]:off[t - 1] + bs[t]] if t > 0 else zeros[:bs[t]]
        else:
            nxt = int(bs[t + 1]) if t + 1 < T else 0
            prev[off[t]:off[t] + nxt] = y[off[t + 1]:off[t + 1] + nxt]
            prev[off[t] + nxt:off[t] + bs[t]] = zeros[nxt:bs[t]]
    return prev


def gru_forward_packed(T, B, I, H, batch_sizes, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, y,
                       h_n, workspace, num_threads=1):
    bs, off = batch_sizes, _offsets(batch_sizes)
    N = int(off[-1])
    gates = workspace[:3 * N * H].reshape(N, 3 * H)
    gh = workspace[3 * N * H:].reshape(N, 3 * H)
    y = y.reshape(N, H)
    gates[:] = x.reshape(N, I) @ w_ih.T
    if b_ih is not None:
        gates += b_ih
    zeros = np.zeros((B, H), dtype=y.dtype) if h0 is None else h0.reshape(B, H)
    for it in range(T):
        t = T - 1 - it if reverse else it
        rows = slice(off[t], off[t] + bs[t])
        if not reverse:
            prev = y[off[t - 1]:off[t - 1] + bs[t]] if t > 0 else zeros[:bs[t]]
        else:
            nxt = int(bs[t + 1]) if t + 1 < T else 0
            prev = np.concatenate([y[off[t + 1]:off[t + 1] + nxt], zeros[nxt:bs[t]]])
        gh[rows] = prev @ w_hh.T
        if b_hh is not None:
            gh[rows] += b_hh
        gi, g = gates[rows], gh[rows]
        r = _sigmoid(gi[:, :H] + g[:, :H])
        z = _sigmoid(gi[:, H:2 * H] + g[:, H:2 * H])
        n = np.tanh(gi[:, 2 * H:] + r * g[:, 2 * H:])
        y[rows] = (1 - z) * n + z * prev
        gates[rows] = np.concatenate([r, z, n], axis=1)
    if h_n is not None:
        lengths = (np.arange(B)[:, None] < bs[None, :]).sum(axis=1)
        last = off[0 if reverse else lengths - 1] + np.arange(B)
        h_n.reshape(B, H)[:] = y[last]


def gru_backward_packed(T, B, I, H, batch_sizes, reverse, x, w_ih, w_hh, h0, y, workspace,
                        dy, dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, num_threads=1):
    bs, off = batch_sizes, _offsets(batch_sizes)
    N = int(off[-1])
    gates = workspace[:3 * N * H].reshape(N, 3 * H)
    gh = workspace[3 * N * H:].reshape(N, 3 * H)
    y, dy, dh0 = y.reshape(N, H), dy.reshape(N, H), dh0.reshape(B, H)
    prev_all = _previous_states(T, B, H, bs, off, reverse, y, h0)
    if dh_n is not None:
        lengths = (np.arange(B)[:, None] < bs[None, :]).sum(axis=1)
        last = off[0 if reverse else lengths - 1] + np.arange(B)
        dy[last] += dh_n.reshape(B, H)
    for it in range(T):
        t = it if reverse else T - 1 - it
        rows = slice(off[t], off[t] + bs[t])
        dh, g, prev = dy[rows], gh[rows], prev_all[rows]
        r, z, n = gates[rows, :H], gates[rows, H:2 * H], gates[rows, 2 * H:]
        da_n = dh * (1 - z) * (1 - n ** 2)
        da_z = dh * (prev - n) * z * (1 - z)
        da_r = da_n * g[:, 2 * H:] * r * (1 - r)
        dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)
        dprev = dh * z + dgh @ w_hh
        gates[rows] = np.concatenate([da_r, da_z, da_n], axis=1)
        gh[rows] = dgh
        if not reverse:
            if t > 0:
                dy[off[t - 1]:off[t - 1] + bs[t]] += dprev
            else:
                dh0[:] = dprev
        else:
            nxt = int(bs[t + 1]) if t + 1 < T else 0
            dy[off[t + 1]:off[t + 1] + nxt] += dprev[:nxt]
            dh0[nxt:bs[t]] = dprev[nxt:]
    x = x.reshape(N, I)
    if dx is not None:
        dx.reshape(N, I)[:] = gates @ w_ih
    dw_ih += gates.T @ x
    dw_hh += gh.T @ prev_all
    if db_ih is not None:
        db_ih += gates.sum(axis=0)
        db_hh += gh.sum(axis=0)


def gru_forward_packed_bidir(T, B, I, H, batch_sizes, x, w_ih, w_hh, b_ih, b_hh, h0, y, h_n,
                             workspace, num_threads=1):
    for d in range(2):
        gru_forward_packed(T, B, I, H, batch_sizes, d == 1, x, w_ih[d], w_hh[d], b_ih[d],
                           b_hh[d], h0[d], y[d], h_n[d], workspace[d], num_threads)


def gru_backward_packed_bidir(T, B, I, H, batch_sizes, x, w_ih, w_hh, h0, y, workspace, dy,
                              dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, num_threads=1):
    for d in range(2):
        gru_backward_packed(T, B, I, H, batch_sizes, d == 1, x, w_ih[d], w_hh[d], h0[d],
                            y[d], workspace[d], dy[d], dh_n[d], dx[d], dh0[d], dw_ih[d],
                            dw_hh[d], db_ih[d], db_hh[d], num_threads)
