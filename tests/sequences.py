"""What the recurrent stacks' random-configuration tests (test_lengths_bidir.py for the
LSTM, test_gru.py for the GRU) share: their tolerances and their draw of lengths."""
import numpy as np

#: Against PyTorch and the NumPy reference, per dtype.
TOL = {"float32": dict(rtol=3e-4, atol=3e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def random_lengths(rng, T, B, kind):
    """(B,) lengths in [1, T]: all T ("full"), all 1 ("ones"), or random with at least
    one T, not always first, and (B > 2) one 1."""
    if kind == "full":
        return np.full(B, T)
    if kind == "ones":
        return np.ones(B, dtype=int)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = T          # the longest is not always first
    if B > 2:
        lengths[rng.integers(B)] = 1
    return lengths


def masked_at_padding(dy, lengths, batch_first):
    """dy with zeros past each sequence's length (PyTorch's padded output is zero there,
    so its gradient sees none), or dy itself without lengths."""
    if lengths is None:
        return dy
    T = dy.shape[1] if batch_first else dy.shape[0]
    mask = np.arange(T)[:, None] < lengths[None, :]
    return dy * (mask.T[:, :, None] if batch_first else mask[:, :, None])
