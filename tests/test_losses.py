"""Tests of clstm.losses: finite-difference gradients, PyTorch parity,
numerical stability, masking and input validation."""

import numpy as np
import pytest

from clstm.losses import log_softmax, mse, softmax, softmax_cross_entropy
from reference import numerical_gradient as numgrad  # tests/ is on sys.path


def _problem(seed=0, T=3, B=4, C=5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, C)), rng.integers(0, C, size=(T, B)),
            rng)


# ------------------------------------------------------- softmax helpers

def test_softmax_and_log_softmax_stable():
    x = np.array([[1e4, 0.0, -1e4], [1.0, 2.0, 3.0]])
    p = softmax(x)
    lp = log_softmax(x)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(lp))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    np.testing.assert_allclose(np.exp(lp), p, atol=1e-15)
    np.testing.assert_allclose(lp[0], [0.0, -1e4, -2e4])
    x32 = x.astype(np.float32)
    assert softmax(x32).dtype == np.float32
    np.testing.assert_allclose(softmax(x, axis=0).sum(axis=0), 1.0)


def test_softmax_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((3, 4, 6)) * 10
    tx = torch.from_numpy(x)
    np.testing.assert_allclose(log_softmax(x),
                               torch.log_softmax(tx, -1).numpy(), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(softmax(x, axis=1),
                               torch.softmax(tx, 1).numpy(), rtol=1e-12,
                               atol=1e-15)


# ---------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradcheck(reduction):
    logits, targets, rng = _problem(2)
    mask = rng.random(targets.shape) < 0.7
    targets[0, 0] = -100
    kw = dict(mask=mask, ignore_index=-100, reduction=reduction)
    _, dlogits = softmax_cross_entropy(logits, targets, **kw)
    num = numgrad(lambda: softmax_cross_entropy(logits, targets, **kw)[0],
                  logits)
    np.testing.assert_allclose(dlogits, num, rtol=1e-6, atol=1e-8)
    counted = mask & (targets != -100)
    assert np.all(dlogits[~counted] == 0)


def test_cross_entropy_none_reduction():
    logits, targets, rng = _problem(3)
    mask = rng.random(targets.shape) < 0.6
    losses, dlogits = softmax_cross_entropy(logits, targets, mask=mask,
                                            reduction="none")
    assert losses.shape == targets.shape and np.all(losses[~mask] == 0)
    total, dsum = softmax_cross_entropy(logits, targets, mask=mask,
                                        reduction="sum")
    np.testing.assert_allclose(losses.sum(), total)
    np.testing.assert_allclose(dlogits, dsum)
    # Per-position gradients: weighting them gives the weighted-sum gradient.
    w = rng.random(targets.shape)
    num = numgrad(lambda: float(np.sum(w * softmax_cross_entropy(
        logits, targets, mask=mask, reduction="none")[0])), logits)
    np.testing.assert_allclose(dlogits * w[..., None], num, rtol=1e-6,
                               atol=1e-8)


def test_cross_entropy_matches_torch_ignore_index_large_logits():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits, targets, rng = _problem(4, T=4, B=3, C=6)
    logits *= 1e4                       # would overflow a naive exp
    targets[1, 2] = targets[3, 0] = -100
    for reduction in ("mean", "sum", "none"):
        loss, dlogits = softmax_cross_entropy(
            logits, targets, ignore_index=-100, reduction=reduction)
        tl = torch.from_numpy(logits.reshape(-1, 6)).requires_grad_(True)
        tloss = F.cross_entropy(tl, torch.from_numpy(targets.reshape(-1)),
                                ignore_index=-100, reduction=reduction)
        tloss.sum().backward()
        np.testing.assert_allclose(
            np.reshape(loss, -1), tloss.detach().numpy().reshape(-1),
            rtol=1e-12)
        np.testing.assert_allclose(dlogits.reshape(-1, 6), tl.grad.numpy(),
                                   rtol=1e-12, atol=1e-15)
        assert np.all(np.isfinite(dlogits))


def test_cross_entropy_float32_large_logits_finite():
    logits, targets, _ = _problem(5)
    l32 = (logits * 1e4).astype(np.float32)
    loss, d = softmax_cross_entropy(l32, targets)
    loss64, d64 = softmax_cross_entropy(l32.astype(np.float64), targets)
    assert d.dtype == np.float32 and isinstance(loss, float)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    np.testing.assert_allclose(loss, loss64, rtol=1e-6)
    np.testing.assert_allclose(d, d64, atol=1e-6)


def test_cross_entropy_mask_equals_ignore_index():
    logits, targets, rng = _problem(6)
    mask = rng.random(targets.shape) < 0.5
    mask[0, 0] = True
    a = softmax_cross_entropy(logits, targets, mask=mask)
    ignored = np.where(mask, targets, -1)
    b = softmax_cross_entropy(logits, ignored, ignore_index=-1)
    np.testing.assert_allclose(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_cross_entropy_padding_garbage_is_ignored():
    logits, targets, _ = _problem(7)
    mask = np.ones(targets.shape, dtype=bool)
    mask[2, :] = False
    ref = softmax_cross_entropy(logits, targets, mask=mask)
    logits[2] = np.nan                   # padding may be anything
    targets[2] = 99                      # ... including invalid classes
    loss, d = softmax_cross_entropy(logits, targets, mask=mask)
    np.testing.assert_allclose(loss, ref[0])
    assert np.all(d[2] == 0) and np.all(np.isfinite(d))


def test_cross_entropy_all_ignored_matches_torch_convention():
    logits, targets, _ = _problem(8)
    loss, d = softmax_cross_entropy(logits, targets,
                                    mask=np.zeros(targets.shape, bool))
    assert np.isnan(loss) and not d.any()
    loss, d = softmax_cross_entropy(logits, targets,
                                    mask=np.zeros(targets.shape, bool),
                                    reduction="sum")
    assert loss == 0.0 and not d.any()


def test_cross_entropy_unbatched():
    x = np.array([1.0, 2.0, 3.0])
    loss, d = softmax_cross_entropy(x, np.array(2))
    np.testing.assert_allclose(loss, -log_softmax(x)[2])
    np.testing.assert_allclose(d, softmax(x) - [0, 0, 1])


def test_cross_entropy_bad_input():
    logits, targets, _ = _problem(9, C=5)
    with pytest.raises(ValueError, match=r"\[0, 5\).*max 5"):
        softmax_cross_entropy(logits, np.full(targets.shape, 5))
    bad = targets.copy()
    bad[0, 0] = -3
    with pytest.raises(ValueError, match="min -3"):
        softmax_cross_entropy(logits, bad)
    with pytest.raises(TypeError, match="integer.*float64"):
        softmax_cross_entropy(logits, targets.astype(float))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        softmax_cross_entropy(logits, targets.T)
    with pytest.raises(TypeError, match="float32 or float64"):
        softmax_cross_entropy(logits.astype(int), targets)
    with pytest.raises(TypeError, match="bool"):
        softmax_cross_entropy(logits, targets, mask=np.ones(targets.shape))
    with pytest.raises(ValueError, match="mask"):
        softmax_cross_entropy(logits, targets, mask=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="reduction"):
        softmax_cross_entropy(logits, targets, reduction="avg")


# -------------------------------------------------------------------- MSE

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_gradcheck_masked(reduction):
    rng = np.random.default_rng(10)
    pred = rng.standard_normal((4, 3, 2))
    target = rng.standard_normal((4, 3, 2))
    mask = rng.random((4, 3)) < 0.6
    kw = dict(mask=mask, reduction=reduction)
    _, d = mse(pred, target, **kw)
    num = numgrad(lambda: mse(pred, target, **kw)[0], pred)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-8)
    assert np.all(d[~mask] == 0)


def test_mse_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    pred = rng.standard_normal((5, 3, 4))
    target = rng.standard_normal((5, 3, 4))
    mask = rng.random((5, 3)) < 0.5
    for reduction in ("mean", "sum", "none"):
        loss, d = mse(pred, target, reduction=reduction)
        tp = torch.from_numpy(pred).requires_grad_(True)
        tl = F.mse_loss(tp, torch.from_numpy(target), reduction=reduction)
        tl.sum().backward()
        np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(d, tp.grad.numpy(), rtol=1e-12)
    # Masked mean == mse_loss over the selected positions only.
    for m in (mask, rng.random((5, 3, 4)) < 0.5):
        loss, d = mse(pred, target, mask=m)
        tp = torch.from_numpy(pred).requires_grad_(True)
        tm = torch.from_numpy(m)
        tl = F.mse_loss(tp[tm], torch.from_numpy(target)[tm])
        tl.backward()
        np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
        np.testing.assert_allclose(d, tp.grad.numpy(), rtol=1e-12,
                                   atol=1e-15)


def test_mse_dtype_none_and_empty():
    pred = np.array([[1.0, 2.0], [3.0, np.nan]], dtype=np.float32)
    target = np.zeros((2, 2))
    mask = np.array([[True, True], [True, False]])
    loss, d = mse(pred, target, mask=mask)
    assert d.dtype == np.float32 and isinstance(loss, float)
    np.testing.assert_allclose(loss, 14.0 / 3)
    assert d[1, 1] == 0
    sq, d = mse(pred, target, mask=mask, reduction="none")
    np.testing.assert_allclose(sq, [[1, 4], [9, 0]])
    np.testing.assert_allclose(d, [[2, 4], [6, 0]])
    loss, d = mse(pred, target, mask=np.zeros(2, bool))
    assert np.isnan(loss) and not d.any()


def test_mse_bad_input():
    pred = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2,\)"):
        mse(pred, np.zeros(2))
    with pytest.raises(TypeError, match="float32 or float64"):
        mse(np.zeros((3, 2), dtype=int), pred)
    with pytest.raises(TypeError, match="bool"):
        mse(pred, pred, mask=np.ones(3))
    with pytest.raises(ValueError, match="prefix"):
        mse(pred, pred, mask=np.ones(2, bool))
    with pytest.raises(ValueError, match="reduction"):
        mse(pred, pred, reduction="elementwise")
