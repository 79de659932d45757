"""A plain NumPy LSTM, forward and backward, used as the oracle for the kernels.

Nothing here is fast or clever: one time step at a time, one layer at a time,
written to be read next to the equations in DEVELOPERS.md.  Gate order is
i, f, g, o (as in PyTorch); peepholes are optional and the output-gate
peephole looks at the *new* cell state c'.

Arrays are computed in the dtype of the inputs (``np.result_type`` of x and
the weights), so float64 inputs give a float64 oracle.

    layers = layers_from_params(net.params, num_layers, peephole)
    y, (h_n, c_n), cache = reference_forward(x, layers, h0, c0)
    dx, (dh0, dc0), grads = reference_backward(dy, cache, dh_n, dc_n)
"""

import numpy as np

LAYER_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
PEEPHOLE_KEY = "weight_peephole"


def sigmoid(z):
    # Same function as 1 / (1 + exp(-z)), written so that it never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# --------------------------------------------------------------------------
# parameter layout helpers


def layers_from_params(params, num_layers, peephole):
    """PyTorch-style flat names (``weight_ih_l0`` ...) -> list of per-layer dicts.

    The arrays are not copied: the dicts hold the same objects as ``params``.
    """
    keys = LAYER_KEYS + ((PEEPHOLE_KEY,) if peephole else ())
    return [{key: params[f"{key}_l{k}"] for key in keys} for k in range(num_layers)]


def params_from_layers(layers):
    """The inverse of ``layers_from_params``: list of dicts -> flat PyTorch names."""
    return {f"{key}_l{k}": value for k, layer in enumerate(layers) for key, value in layer.items()}


# --------------------------------------------------------------------------
# forward


def _layer_forward(x, p, h, c):
    """One layer over the whole sequence. x (T, B, I), h and c (B, H)."""
    W_ih, W_hh = p["weight_ih"], p["weight_hh"]
    b = p["bias_ih"] + p["bias_hh"]
    peep = p.get(PEEPHOLE_KEY)
    W_hr = p.get("weight_hr")                        # LSTMP: h = W_hr (o * tanh(c))
    T, B, _ = x.shape
    H = W_hh.shape[1]                                # the state's width (proj_size)

    y = np.empty((T, B, H), dtype=np.result_type(x, h, W_ih))
    steps = []
    for t in range(T):
        a = x[t] @ W_ih.T + h @ W_hh.T + b          # (B, 4H)
        n = a.shape[1] // 4                          # the cell's width
        a_i, a_f, a_g, a_o = (a[:, k * n:(k + 1) * n] for k in range(4))
        if peep is not None:
            a_i = a_i + peep[0] * c
            a_f = a_f + peep[1] * c
        i = sigmoid(a_i)
        f = sigmoid(a_f)
        g = np.tanh(a_g)
        c_new = f * c + i * g
        if peep is not None:
            a_o = a_o + peep[2] * c_new                 # the NEW cell state
        o = sigmoid(a_o)
        tanh_c = np.tanh(c_new)
        m = o * tanh_c
        h_new = m if W_hr is None else m @ W_hr.T

        steps.append(dict(x=x[t], h_prev=h, c_prev=c, i=i, f=f, g=g, o=o,
                          c_new=c_new, tanh_c=tanh_c, m=m))
        y[t] = h_new
        h, c = h_new, c_new
    return y, h, c, steps


def reference_forward(x, layers, h0=None, c0=None):
    """Stacked LSTM forward.

    x: (T, B, I).  layers: list of dicts (``weight_ih`` (4H, I_k), ``weight_hh``
    (4H, H), ``bias_ih`` (4H,), ``bias_hh`` (4H,), optional ``weight_peephole``
    (3, H)).  h0, c0: (L, B, H) or None for zeros.

    Returns ``y (T, B, H), (h_n, c_n) each (L, B, H), cache``.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected x of shape (T, B, I), got {x.shape}")
    T, B, _ = x.shape
    L = len(layers)
    H = layers[0]["weight_hh"].shape[1]
    dtype = np.result_type(x, *[v for layer in layers for v in layer.values()])
    if h0 is None:
        h0 = np.zeros((L, B, H), dtype=dtype)
    if c0 is None:
        c0 = np.zeros((L, B, H), dtype=dtype)

    h_n = np.empty((L, B, H), dtype=dtype)
    c_n = np.empty((L, B, H), dtype=dtype)
    caches = []
    inp = x.astype(dtype, copy=False)
    for k, p in enumerate(layers):
        y, h_n[k], c_n[k], steps = _layer_forward(inp, p, np.asarray(h0[k], dtype),
                                                  np.asarray(c0[k], dtype))
        caches.append(dict(input_shape=inp.shape, steps=steps))
        inp = y
    cache = dict(layers=layers, caches=caches, dtype=dtype, hidden_size=H, batch=B)
    return inp, (h_n, c_n), cache


# --------------------------------------------------------------------------
# backward


def _layer_backward(dy, p, layer_cache, dh, dc):
    """Back-propagation through time for one layer.

    dy (T, B, H): gradient w.r.t. this layer's outputs; dh, dc (B, H):
    gradient w.r.t. its final state.  Returns dx, dh0, dc0, grads.
    """
    W_ih, W_hh = p["weight_ih"], p["weight_hh"]
    peep = p.get(PEEPHOLE_KEY)
    W_hr = p.get("weight_hr")
    steps = layer_cache["steps"]
    T = len(steps)

    grads = {key: np.zeros_like(value, dtype=dy.dtype) for key, value in p.items()}
    dx = np.zeros(layer_cache["input_shape"], dtype=dy.dtype)
    for t in reversed(range(T)):
        s = steps[t]
        i, f, g, o = s["i"], s["f"], s["g"], s["o"]
        c_prev, c_new, tanh_c = s["c_prev"], s["c_new"], s["tanh_c"]

        dh_new = dy[t] + dh                           # from the output and from t+1
        if W_hr is not None:                          # through h = W_hr m
            grads["weight_hr"] += dh_new.T @ s["m"]
            dh_new = dh_new @ W_hr
        do = dh_new * tanh_c
        da_o = do * o * (1 - o)
        dc_new = dc + dh_new * o * (1 - tanh_c ** 2)
        if peep is not None:
            dc_new = dc_new + da_o * peep[2]
        da_i = dc_new * g * i * (1 - i)
        da_f = dc_new * c_prev * f * (1 - f)
        da_g = dc_new * i * (1 - g ** 2)

        dc = dc_new * f
        if peep is not None:
            dc = dc + da_i * peep[0] + da_f * peep[1]
            grads[PEEPHOLE_KEY][0] += np.sum(da_i * c_prev, axis=0)
            grads[PEEPHOLE_KEY][1] += np.sum(da_f * c_prev, axis=0)
            grads[PEEPHOLE_KEY][2] += np.sum(da_o * c_new, axis=0)

        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)   # (B, 4H)
        dh = da @ W_hh
        dx[t] = da @ W_ih
        grads["weight_ih"] += da.T @ s["x"]
        grads["weight_hh"] += da.T @ s["h_prev"]
        grads["bias_ih"] += da.sum(axis=0)
        grads["bias_hh"] += da.sum(axis=0)
    return dx, dh, dc, grads


def reference_backward(dy, cache, dh_n=None, dc_n=None):
    """Gradients of sum(y*dy) + sum(h_n*dh_n) + sum(c_n*dc_n).

    dy: (T, B, H); dh_n, dc_n: (L, B, H) or None (zeros).
    Returns ``dx (T, B, I), (dh0, dc0) each (L, B, H), grads`` where grads is a
    list of dicts with the same keys as the layers.
    """
    layers, caches = cache["layers"], cache["caches"]
    dtype, H, B = cache["dtype"], cache["hidden_size"], cache["batch"]
    L = len(layers)
    if dh_n is None:
        dh_n = np.zeros((L, B, H), dtype=dtype)
    if dc_n is None:
        dc_n = np.zeros((L, B, H), dtype=dtype)

    dh0 = np.empty((L, B, H), dtype=dtype)
    dc0 = np.empty((L, B, H), dtype=dtype)
    grads = [None] * L
    d_out = np.asarray(dy, dtype=dtype)
    for k in reversed(range(L)):
        d_out, dh0[k], dc0[k], grads[k] = _layer_backward(
            d_out, layers[k], caches[k], np.asarray(dh_n[k], dtype), np.asarray(dc_n[k], dtype))
    return d_out, (dh0, dc0), grads


# --------------------------------------------------------------------------
# finite differences


def numerical_gradient(f, array, eps=1e-6, indices=None):
    """Central differences of the scalar ``f()`` w.r.t. entries of ``array``.

    ``array`` is modified in place (each entry is restored afterwards), so it
    must be the very buffer ``f`` reads.  With ``indices=None`` every entry is
    perturbed and an array of ``array``'s shape is returned; otherwise
    ``indices`` are flat indices and a 1-D array of the same length is returned.
    """
    flat = array.reshape(-1)          # a view for contiguous arrays
    if not np.shares_memory(flat, array):
        raise ValueError("numerical_gradient needs a contiguous array to perturb in place")
    all_entries = indices is None
    if all_entries:
        indices = range(flat.size)
    out = np.empty(len(indices), dtype=np.float64)
    for n, j in enumerate(indices):
        old = flat[j].copy()
        flat[j] = old + eps
        f_plus = float(f())
        flat[j] = old - eps
        f_minus = float(f())
        flat[j] = old
        out[n] = (f_plus - f_minus) / (2 * eps)
    return out.reshape(array.shape) if all_entries else out


# --------------------------------------------------------------------------
# bidirectional stacks and sequences of their own lengths, one sequence at a time


def _direction_params(params, k, suffix, peephole, H, dtype):
    p = {key: params[f"{key}_l{k}{suffix}"] for key in ("weight_ih", "weight_hh")}
    for key in ("bias_ih", "bias_hh"):       # bias=False: zeros that are not parameters
        p[key] = params.get(f"{key}_l{k}{suffix}", np.zeros(4 * H, dtype=dtype))
    if peephole:
        p[PEEPHOLE_KEY] = params[f"{PEEPHOLE_KEY}_l{k}{suffix}"]
    if f"weight_hr_l{k}{suffix}" in params:
        p["weight_hr"] = params[f"weight_hr_l{k}{suffix}"]
    return p


def reference_lstm_forward(x, params, num_layers, *, bidirectional=False, peephole=False,
                           lengths=None, h0=None, c0=None):
    """torch.nn.LSTM's semantics with packed sequences, written the plainest way: each
    sequence b runs alone over its first lengths[b] steps; the reverse direction runs
    the flipped sequence; outputs past a sequence's length are zero.

    params: PyTorch's names (``weight_ih_l0_reverse`` ...; no bias entries for a
    bias-free LSTM). h0, c0: (D·L, B, H) or None. Returns ``y (T, B, D·H),
    (h_n, c_n) each (D·L, B, H), cache``.
    """
    x = np.asarray(x)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1]              # the state's width (proj_size)
    Hc = params["weight_hh_l0"].shape[0] // 4        # the cell's
    dtype = np.result_type(x, *params.values())
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h0 = np.zeros((D * num_layers, B, H), dtype) if h0 is None else np.asarray(h0, dtype)
    c0 = np.zeros((D * num_layers, B, Hc), dtype) if c0 is None else np.asarray(c0, dtype)
    y = np.zeros((T, B, D * H), dtype)
    h_n = np.empty((D * num_layers, B, H), dtype)
    c_n = np.empty((D * num_layers, B, Hc), dtype)
    caches = []
    for b in range(B):
        n = int(lengths[b])
        inp = x[:n, b:b + 1].astype(dtype)
        seq = []
        for k in range(num_layers):
            outs = []
            for d in range(D):
                j = k * D + d
                p = _direction_params(params, k, ("", "_reverse")[d], peephole, Hc, dtype)
                xin = inp[::-1] if d else inp
                yd, h_n[j, b], c_n[j, b], steps = _layer_forward(xin, p, h0[j, b:b + 1],
                                                                 c0[j, b:b + 1])
                seq.append(dict(p=p, input_shape=xin.shape, steps=steps))
                outs.append(yd[::-1] if d else yd)
            inp = np.concatenate(outs, axis=2)
        y[:n, b] = inp[:, 0]
        caches.append(seq)
    cache = dict(caches=caches, lengths=lengths, D=D, L=num_layers, H=H, Hc=Hc, dtype=dtype,
                 shape=x.shape)
    return y, (h_n, c_n), cache


def reference_lstm_backward(dy, cache, dh_n=None, dc_n=None):
    """Gradients of sum(y*dy) + sum(h_n*dh_n) + sum(c_n*dc_n) after
    :func:`reference_lstm_forward`; dy at padded positions is ignored. Returns
    ``dx, (dh0, dc0), grads`` with grads keyed by PyTorch's names (biases included even
    for a bias-free LSTM: the caller ignores them)."""
    D, L, H, Hc, dtype = cache["D"], cache["L"], cache["H"], cache["Hc"], cache["dtype"]
    T, B, I = cache["shape"]
    dy = np.asarray(dy, dtype)
    dh_n = np.zeros((D * L, B, H), dtype) if dh_n is None else np.asarray(dh_n, dtype)
    dc_n = np.zeros((D * L, B, Hc), dtype) if dc_n is None else np.asarray(dc_n, dtype)
    dx = np.zeros((T, B, I), dtype)
    dh0 = np.empty((D * L, B, H), dtype)
    dc0 = np.empty((D * L, B, Hc), dtype)
    grads = {}
    for b, seq in enumerate(cache["caches"]):
        n = int(cache["lengths"][b])
        d_out = dy[:n, b:b + 1]
        for k in reversed(range(L)):
            d_in = 0
            for d in range(D):
                j = k * D + d
                c = seq[j]
                part = d_out[:, :, d * H:(d + 1) * H]
                g_dx, dh0[j, b], dc0[j, b], g = _layer_backward(
                    part[::-1] if d else part, c["p"], c, dh_n[j, b:b + 1], dc_n[j, b:b + 1])
                d_in = d_in + (g_dx[::-1] if d else g_dx)
                for key, value in g.items():
                    name = f"{key}_l{k}{('', '_reverse')[d]}"
                    grads[name] = grads.get(name, 0) + value
            d_out = d_in
        dx[:n, b] = d_out[:, 0]
    return dx, (dh0, dc0), grads


# --------------------------------------------------------------------------
# GRU: torch.nn.GRU's semantics, one sequence at a time (the oracle of clstm.GRU)
#
#   r  = σ(W_ir x + b_ir + W_hr h + b_hr)
#   z  = σ(W_iz x + b_iz + W_hz h + b_hz)
#   n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))       ("linear before reset")
#   h' = (1 - z) ⊙ n + z ⊙ h
#
# Gate blocks r, z, n in PyTorch's order in weight_ih (3H, I), weight_hh (3H, H),
# bias_ih and bias_hh (3H,).


def _gru_layer_forward(x, p, h):
    """One GRU direction over a whole sequence. x (T, B, I), h (B, H)."""
    W_ih, W_hh, b_ih, b_hh = p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
    T = x.shape[0]
    H = W_hh.shape[1]
    y = np.empty((T, x.shape[1], H), dtype=np.result_type(x, h, W_ih))
    steps = []
    for t in range(T):
        gi = x[t] @ W_ih.T + b_ih                    # (B, 3H), the input's part
        gh = h @ W_hh.T + b_hh                       # (B, 3H), the recurrent part
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]                           # W_hn h + b_hn, which r multiplies
        n = np.tanh(gi[:, 2 * H:] + r * hn)
        h_new = (1 - z) * n + z * h
        steps.append(dict(x=x[t], h_prev=h, r=r, z=z, n=n, hn=hn))
        y[t] = h_new
        h = h_new
    return y, h, steps


def _gru_layer_backward(dy, p, layer_cache, dh):
    """Back-propagation through time for one GRU direction: dy (T, B, H), dh (B, H) the
    gradient of its final state. Returns dx, dh0, grads."""
    W_ih, W_hh = p["weight_ih"], p["weight_hh"]
    steps = layer_cache["steps"]
    grads = {key: np.zeros_like(value, dtype=dy.dtype) for key, value in p.items()}
    dx = np.zeros(layer_cache["input_shape"], dtype=dy.dtype)
    for t in reversed(range(len(steps))):
        s = steps[t]
        r, z, n, hn, h_prev = s["r"], s["z"], s["n"], s["hn"], s["h_prev"]
        dh_new = dy[t] + dh
        da_n = dh_new * (1 - z) * (1 - n ** 2)       # through n = tanh(a_n)
        da_z = dh_new * (h_prev - n) * z * (1 - z)
        da_r = da_n * hn * r * (1 - r)
        dgi = np.concatenate([da_r, da_z, da_n], axis=1)          # d(W_i x + b_i)
        dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)      # d(W_h h + b_h)
        dh = dh_new * z + dgh @ W_hh
        dx[t] = dgi @ W_ih
        grads["weight_ih"] += dgi.T @ s["x"]
        grads["weight_hh"] += dgh.T @ h_prev
        grads["bias_ih"] += dgi.sum(axis=0)
        grads["bias_hh"] += dgh.sum(axis=0)
    return dx, dh, grads


def _gru_direction_params(params, k, suffix, H, dtype):
    p = {key: params[f"{key}_l{k}{suffix}"] for key in ("weight_ih", "weight_hh")}
    for key in ("bias_ih", "bias_hh"):       # bias=False: zeros that are not parameters
        p[key] = params.get(f"{key}_l{k}{suffix}", np.zeros(3 * H, dtype=dtype))
    return p


def reference_gru_forward(x, params, num_layers, *, bidirectional=False, lengths=None,
                          h0=None):
    """torch.nn.GRU with packed sequences, the plainest way: each sequence b runs alone
    over its first lengths[b] steps, the reverse direction over the flipped sequence,
    outputs past a sequence's length are zero.

    x (T, B, I); params: PyTorch's names (no bias entries for a bias-free GRU); h0
    (D·L, B, H) or None. Returns ``y (T, B, D·H), h_n (D·L, B, H), cache``.
    """
    x = np.asarray(x)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1]
    dtype = np.result_type(x, *params.values())
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h0 = np.zeros((D * num_layers, B, H), dtype) if h0 is None else np.asarray(h0, dtype)
    y = np.zeros((T, B, D * H), dtype)
    h_n = np.empty((D * num_layers, B, H), dtype)
    caches = []
    for b in range(B):
        n = int(lengths[b])
        inp = x[:n, b:b + 1].astype(dtype)
        seq = []
        for k in range(num_layers):
            outs = []
            for d in range(D):
                j = k * D + d
                p = _gru_direction_params(params, k, ("", "_reverse")[d], H, dtype)
                xin = inp[::-1] if d else inp
                yd, h_n[j, b], steps = _gru_layer_forward(xin, p, h0[j, b:b + 1])
                seq.append(dict(p=p, input_shape=xin.shape, steps=steps))
                outs.append(yd[::-1] if d else yd)
            inp = np.concatenate(outs, axis=2)
        y[:n, b] = inp[:, 0]
        caches.append(seq)
    cache = dict(caches=caches, lengths=lengths, D=D, L=num_layers, H=H, dtype=dtype,
                 shape=x.shape)
    return y, h_n, cache


def reference_gru_backward(dy, cache, dh_n=None):
    """Gradients of sum(y*dy) + sum(h_n*dh_n) after :func:`reference_gru_forward`; dy at
    padded positions is ignored. Returns ``dx, dh0, grads`` with grads keyed by
    PyTorch's names (biases included even for a bias-free GRU: the caller ignores them)."""
    D, L, H, dtype = cache["D"], cache["L"], cache["H"], cache["dtype"]
    T, B, I = cache["shape"]
    dy = np.asarray(dy, dtype)
    dh_n = np.zeros((D * L, B, H), dtype) if dh_n is None else np.asarray(dh_n, dtype)
    dx = np.zeros((T, B, I), dtype)
    dh0 = np.empty((D * L, B, H), dtype)
    grads = {}
    for b, seq in enumerate(cache["caches"]):
        n = int(cache["lengths"][b])
        d_out = dy[:n, b:b + 1]
        for k in reversed(range(L)):
            d_in = 0
            for d in range(D):
                j = k * D + d
                c = seq[j]
                part = d_out[:, :, d * H:(d + 1) * H]
                g_dx, dh0[j, b], g = _gru_layer_backward(part[::-1] if d else part, c["p"],
                                                         c, dh_n[j, b:b + 1])
                d_in = d_in + (g_dx[::-1] if d else g_dx)
                for key, value in g.items():
                    name = f"{key}_l{k}{('', '_reverse')[d]}"
                    grads[name] = grads.get(name, 0) + value
            d_out = d_in
        dx[:n, b] = d_out[:, 0]
    return dx, dh0, grads
