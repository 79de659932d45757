"""Tests of clstm.optim: trajectories against torch.optim, the flat-buffer fast
path against the per-array path, checkpoints, clipping and input checks.

The model is a small stand-in with the LSTM's layout (params and grads as
views into flat buffers), so these tests do not depend on clstm.LSTM.
"""

import math

import numpy as np
import pytest

import clstm.optim
from clstm.optim import SGD, Adam, AdamW, clip_grad_norm

SHAPES = {
    "weight_ih_l0": (12, 5),
    "weight_hh_l0": (12, 3),
    "bias_ih_l0": (12,),
    "bias_hh_l0": (12,),
    "weight_peephole_l0": (3, 3),
}
STEPS = 20


@pytest.fixture(params=[False, True], ids=["whole", "chunked"])
def chunked(request, monkeypatch):
    """Also run with tiny chunks, so that chunk edges cross parameter edges."""
    if request.param:
        monkeypatch.setattr(clstm.optim, "_CHUNK_BYTES", 56)
    return request.param


TOL = {np.float64: dict(rtol=1e-10, atol=1e-13), np.float32: dict(rtol=2e-5, atol=2e-6)}


class FakeModel:
    """params/grads as views into flat_params/flat_grads, like clstm.LSTM."""

    def __init__(self, dtype=np.float64, seed=0, shapes=SHAPES):
        rng = np.random.default_rng(seed)
        n = sum(math.prod(s) for s in shapes.values())
        self.flat_params = rng.uniform(-0.5, 0.5, n).astype(dtype)
        self.flat_grads = np.zeros(n, dtype)
        self.params, self.grads = {}, {}
        off = 0
        for name, shape in shapes.items():
            size = math.prod(shape)
            self.params[name] = self.flat_params[off:off + size].reshape(shape)
            self.grads[name] = self.flat_grads[off:off + size].reshape(shape)
            off += size

    def copy_dicts(self):
        """Separate (non-flat) copies of params and grads."""
        return ({k: v.copy() for k, v in self.params.items()},
                {k: v.copy() for k, v in self.grads.items()})


def grad_sequence(dtype, steps=STEPS, seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
            for _ in range(steps)]


def set_grads(grads, values):
    for k, v in values.items():
        grads[k][...] = v


def run_numpy(make_opt, dtype, flat=True, steps=STEPS):
    model = FakeModel(dtype)
    if flat:
        params, grads = model.params, model.grads
        opt = make_opt(model)
    else:
        params, grads = model.copy_dicts()
        opt = make_opt(params, grads)
    assert opt.is_flat == flat
    history = []
    for g in grad_sequence(dtype, steps):
        set_grads(grads, g)
        opt.step()
        history.append({k: v.copy() for k, v in params.items()})
    return history


def run_torch(make_opt, dtype, steps=STEPS):
    torch = pytest.importorskip("torch")
    model = FakeModel(dtype)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    opt = make_opt(list(tparams.values()))
    history = []
    for g in grad_sequence(dtype, steps):
        for k, t in tparams.items():
            t.grad = torch.from_numpy(g[k].copy())
        opt.step()
        history.append({k: t.detach().numpy().copy() for k, t in tparams.items()})
    return history


def assert_trajectories_close(ours, theirs, dtype):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], **TOL[dtype], err_msg=f"step {step + 1}, {k}")


def case_id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, amsgrad=True),
    dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True),
    dict(lr=1e-2, betas=(0.3, 0.9)),  # lerp weight >= 0.5 takes torch's other branch
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", ADAM_CASES, ids=case_id)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_matches_torch(cls, kw, dtype, chunked):
    torch = pytest.importorskip("torch")
    ours_cls = {"Adam": Adam, "AdamW": AdamW}[cls]
    theirs_cls = getattr(torch.optim, cls)
    ours = run_numpy(lambda *a: ours_cls(*a, **kw), dtype)
    theirs = run_torch(lambda p: theirs_cls(p, foreach=False, **kw), dtype)
    assert_trajectories_close(ours, theirs, dtype)


def test_adamw_default_weight_decay_matches_torch():
    torch = pytest.importorskip("torch")
    assert AdamW(FakeModel()).weight_decay == 0.01
    ours = run_numpy(lambda *a: AdamW(*a, lr=0.1), np.float64)
    theirs = run_torch(lambda p: torch.optim.AdamW(p, lr=0.1, foreach=False), np.float64)
    assert_trajectories_close(ours, theirs, np.float64)


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", SGD_CASES, ids=case_id)
def test_sgd_matches_torch(kw, dtype, chunked):
    torch = pytest.importorskip("torch")
    ours = run_numpy(lambda *a: SGD(*a, **kw), dtype)
    theirs = run_torch(lambda p: torch.optim.SGD(p, foreach=False, **kw), dtype)
    assert_trajectories_close(ours, theirs, dtype)


OPTIMISERS = [
    (Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    (AdamW, dict(lr=1e-2, amsgrad=True)),
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
]
OPT_IDS = ["Adam", "AdamW", "SGD-momentum", "SGD-nesterov"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls,kw", OPTIMISERS, ids=OPT_IDS)
def test_flat_and_dict_paths_agree_exactly(cls, kw, dtype, chunked):
    flat = run_numpy(lambda *a: cls(*a, **kw), dtype, flat=True)
    loop = run_numpy(lambda *a: cls(*a, **kw), dtype, flat=False)
    for a, b in zip(flat, loop):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_flat_path_is_the_models_own_buffers_and_dicts_run_per_array():
    model = FakeModel()
    assert Adam(model).is_flat
    # plain dicts are updated array by array: the optimiser does not search memory for
    # a buffer behind them (the model that owns one passes itself)
    opt = Adam(dict(model.params), dict(model.grads))
    assert not opt.is_flat
    model.grads["weight_ih_l0"][...] = 1.0
    before = model.flat_params.copy()
    opt.step()
    changed = model.flat_params != before
    assert changed[:model.params["weight_ih_l0"].size].all()


def test_flat_path_declined_when_layouts_differ():
    model = FakeModel()
    names = list(SHAPES)
    # grads tile a buffer, but in a different order than params
    n = model.flat_grads.size
    buf = np.zeros(n)
    grads, off = {}, 0
    for name in reversed(names):
        size = math.prod(SHAPES[name])
        grads[name] = buf[off:off + size].reshape(SHAPES[name])
        off += size
    assert not Adam(model.params, grads).is_flat
    # a gap in the buffer (a non-parameter in the middle) must never be updated
    big = np.zeros(n + 1)
    params2, off = {}, 0
    for name in names:
        size = math.prod(SHAPES[name])
        params2[name] = big[off:off + size].reshape(SHAPES[name])
        off += size + (name == names[1])
    grads2 = {k: np.ones_like(v) for k, v in params2.items()}
    assert not SGD(params2, grads2, lr=1.0).is_flat
    # non-contiguous views fall back to the loop and are still updated in place
    base = np.zeros((4, 6))
    p = {"w": base[:, ::2]}
    opt = SGD(p, {"w": np.ones((4, 3))}, lr=0.5)
    assert not opt.is_flat
    opt.step()
    assert p["w"].base is base
    np.testing.assert_array_equal(base[:, ::2], -0.5)
    np.testing.assert_array_equal(base[:, 1::2], 0.0)


def test_gap_is_not_touched_by_flat_updates():
    n = 10
    buf = np.zeros(n + 1)
    params = {"a": buf[:5], "b": buf[6:]}
    grads = {"a": np.ones(5), "b": np.ones(5)}
    opt = SGD(params, grads, lr=1.0)
    opt.step()
    assert buf[5] == 0.0
    np.testing.assert_array_equal(params["a"], -1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_in_place_and_state_dtype(dtype):
    model = FakeModel(dtype)
    ids = {k: id(v) for k, v in model.params.items()}
    before = model.flat_params.copy()
    opt = Adam(model, lr=0.1, amsgrad=True)
    set_grads(model.grads, grad_sequence(dtype, 1)[0])
    opt.step()
    assert {k: id(v) for k, v in model.params.items()} == ids
    for v in model.params.values():
        assert np.shares_memory(v, model.flat_params)
    assert not np.array_equal(model.flat_params, before)
    sd = opt.state_dict()
    for key, value in sd.items():
        if "/" in key:
            assert value.dtype == dtype, key


def test_follows_arrays_the_model_reassigns():
    model = FakeModel()
    opt = SGD(model, lr=1.0)
    assert opt.is_flat
    new = np.zeros(SHAPES["bias_ih_l0"])
    model.params["bias_ih_l0"] = new  # layers allow assigning new arrays
    model.grads["bias_ih_l0"] = np.ones_like(new)
    opt.step()
    np.testing.assert_array_equal(new, -1.0)
    assert not opt.is_flat
    model.params["bias_ih_l0"] = np.zeros(5)
    model.grads["bias_ih_l0"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"is now \(5,\) float64, expected \(12,\) float64"):
        opt.step()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls,kw", OPTIMISERS, ids=OPT_IDS)
@pytest.mark.parametrize("via_npz", [False, True])
def test_state_dict_resumes_exactly(cls, kw, dtype, via_npz, tmp_path):
    grads_seq = grad_sequence(dtype, 20)
    straight = FakeModel(dtype)
    opt = cls(straight, **kw)
    for g in grads_seq:
        set_grads(straight.grads, g)
        opt.step()

    first = FakeModel(dtype)
    opt1 = cls(first, **kw)
    for g in grads_seq[:10]:
        set_grads(first.grads, g)
        opt1.step()
    sd = opt1.state_dict()
    if via_npz:
        np.savez(tmp_path / "opt.npz", **sd)
        sd = np.load(tmp_path / "opt.npz")
    # resume in a fresh process-like setting: new model (dict path), new optimiser
    params, grads = first.copy_dicts()
    opt2 = cls(params, grads)  # default hyperparameters: loading restores them
    opt2.load_state_dict(sd)
    assert opt2.step_count == 10
    for g in grads_seq[10:]:
        set_grads(grads, g)
        opt2.step()
    for k in params:
        np.testing.assert_array_equal(params[k], straight.params[k])


def test_state_dict_is_a_copy_with_plain_values():
    model = FakeModel()
    opt = Adam(model, lr=0.1)
    set_grads(model.grads, grad_sequence(np.float64, 1)[0])
    opt.step()
    sd = opt.state_dict()
    saved = sd["exp_avg/bias_ih_l0"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["exp_avg/bias_ih_l0"], saved)
    assert sd["optimizer"] == "Adam" and sd["step"] == 1 and sd["lr"] == 0.1
    assert sd["betas"] == (0.9, 0.999) and sd["amsgrad"] is False
    assert "max_exp_avg_sq/bias_ih_l0" not in sd
    # SGD without momentum has no state arrays; with momentum one per parameter
    assert [k for k in SGD(model, lr=0.1).state_dict() if "/" in k] == []
    sgd = SGD(model, lr=0.1, momentum=0.9)
    sgd.step()
    assert sorted(k for k in sgd.state_dict() if "/" in k) == sorted(
        f"momentum_buffer/{k}" for k in SHAPES)


def test_load_state_dict_errors():
    model = FakeModel()
    opt = Adam(model, lr=0.1)
    opt.step()
    good = opt.state_dict()

    def broken(**changes):
        d = dict(good)
        for k, v in changes.items():
            if v is None:
                del d[k]
            else:
                d[k] = v
        return d

    fresh = Adam(FakeModel())
    with pytest.raises(ValueError, match="for a SGD optimiser, expected Adam"):
        fresh.load_state_dict(SGD(model, lr=0.1).state_dict())
    with pytest.raises(ValueError, match="for a Adam optimiser, expected AdamW"):
        AdamW(FakeModel()).load_state_dict(good)
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l0'\]"):
        fresh.load_state_dict(broken(**{"exp_avg/bias_hh_l0": None}))
    with pytest.raises(ValueError, match=r"unexpected \['other'\]"):
        fresh.load_state_dict(broken(**{"exp_avg/other": np.zeros(3)}))
    with pytest.raises(ValueError, match=r"has shape \(11,\), expected \(12,\)"):
        fresh.load_state_dict(broken(**{"exp_avg_sq/bias_hh_l0": np.zeros(11)}))
    with pytest.raises(ValueError, match="no 'lr' entry"):
        fresh.load_state_dict(broken(lr=None))
    with pytest.raises(ValueError, match="invalid lr"):
        fresh.load_state_dict(broken(lr=-1.0))
    with pytest.raises(ValueError, match="unknown entries"):
        fresh.load_state_dict(broken(momentum=0.9))
    with pytest.raises(ValueError, match="invalid step"):
        fresh.load_state_dict(broken(step=-1))
    no_state = {k: v for k, v in good.items() if not k.startswith("exp_avg")}
    with pytest.raises(ValueError, match="no 'exp_avg' entries"):
        fresh.load_state_dict(no_state)
    # a failed load changes nothing
    assert fresh.step_count == 0 and fresh.lr == 1e-3


def test_zero_grad_in_place():
    model = FakeModel()
    model.flat_grads[:] = 1.0
    views = dict(model.grads)
    Adam(model).zero_grad()
    assert not model.flat_grads.any()
    params, grads = model.copy_dicts()
    for g in grads.values():
        g[...] = 2.0
    SGD(params, grads, lr=0.1).zero_grad()
    assert all(not g.any() for g in grads.values())
    assert all(model.grads[k] is views[k] for k in views)


def test_hyperparameters_settable_and_validated():
    opt = Adam(FakeModel(), lr=0.1)
    opt.lr = 0.01
    assert opt.lr == 0.01
    with pytest.raises(ValueError, match="invalid lr"):
        opt.lr = -1
    assert opt.lr == 0.01


@pytest.mark.parametrize("kw,match", [
    (dict(lr=-1e-3), r"invalid lr: expected a finite number >= 0, got -0.001"),
    (dict(lr=float("nan")), "invalid lr"),
    (dict(betas=(1.0, 0.999)), r"index 0: expected 0 <= beta < 1, got 1.0"),
    (dict(betas=(0.9, -0.1)), r"index 1: expected 0 <= beta < 1, got -0.1"),
    (dict(betas=0.9), "expected a pair"),
    (dict(eps=-1e-8), "invalid eps"),
    (dict(weight_decay=-0.1), "invalid weight_decay"),
    (dict(amsgrad="yes"), "invalid amsgrad"),
])
def test_adam_rejects_bad_hyperparameters(kw, match):
    for cls in (Adam, AdamW):
        with pytest.raises(ValueError, match=match):
            cls(FakeModel(), **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(lr=-0.1), "invalid lr"),
    (dict(momentum=-0.9), "invalid momentum"),
    (dict(weight_decay=-1), "invalid weight_decay"),
    (dict(nesterov=True), "Nesterov momentum requires momentum > 0"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "and dampening == 0"),
])
def test_sgd_rejects_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        SGD(FakeModel(), **kw)


def test_rejects_mismatched_params_and_grads():
    params, grads = FakeModel().copy_dicts()
    g = dict(grads)
    del g["bias_hh_l0"]
    g["extra"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"missing from grads: \['bias_hh_l0'\], "
                                         r"in grads but not in params: \['extra'\]"):
        Adam(params, g)
    g = dict(grads, bias_hh_l0=np.zeros(11))
    with pytest.raises(ValueError,
                       match=r"grads\['bias_hh_l0'\] has shape \(11,\), expected \(12,\)"):
        Adam(params, g)
    g = dict(grads, bias_hh_l0=np.zeros(12, np.float32))
    with pytest.raises(ValueError, match="has dtype float32, expected float64"):
        Adam(params, g)
    with pytest.raises(ValueError, match="must be float32 or float64, got int64"):
        SGD({"w": np.zeros(3, np.int64)}, {"w": np.zeros(3, np.int64)})
    with pytest.raises(ValueError, match="empty parameter dict"):
        Adam({}, {})
    with pytest.raises(ValueError, match="shares memory"):
        Adam(params, params)
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        Adam({"w": ro}, {"w": np.zeros(3)})
    with pytest.raises(TypeError, match="grads is required"):
        Adam(params)
    with pytest.raises(TypeError, match="model with .params and .grads"):
        Adam([np.zeros(3)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("form", ["model", "dict", "list"])
def test_clip_grad_norm_matches_torch(form, max_norm, norm_type, dtype):
    torch = pytest.importorskip("torch")
    model = FakeModel(dtype)
    set_grads(model.grads, grad_sequence(dtype, 1)[0])
    original = model.flat_grads.copy()
    tparams = []
    for v in model.grads.values():
        t = torch.zeros(v.shape, dtype=torch.from_numpy(v).dtype, requires_grad=True)
        t.grad = torch.from_numpy(v.copy())
        tparams.append(t)
    expected = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type, foreach=False))
    if form == "model":
        target = model
    elif form == "dict":
        target = model.grads
    else:
        target = list(model.grads.values())
    total = clip_grad_norm(target, max_norm, norm_type)
    assert isinstance(total, float)
    tol = TOL[dtype]
    np.testing.assert_allclose(total, expected, rtol=tol["rtol"] * 10)
    for v, t in zip(model.grads.values(), tparams):
        np.testing.assert_allclose(v, t.grad.numpy(), **tol)
    if max_norm > total:
        np.testing.assert_array_equal(model.flat_grads, original)  # untouched
    else:
        assert not np.array_equal(model.flat_grads, original)


def test_clip_grad_norm_separate_arrays_and_edge_cases():
    a = np.array([3.0, 0.0])
    b = np.array([[0.0], [4.0]])
    assert clip_grad_norm([a, b], 1.0) == 5.0
    np.testing.assert_allclose(a, [3.0 / (5 + 1e-6), 0.0])
    np.testing.assert_allclose(b[1, 0], 4.0 / (5 + 1e-6))
    assert clip_grad_norm({}, 1.0) == 0.0
    assert clip_grad_norm(np.zeros(0), 1.0) == 0.0
    nan = np.array([np.nan, 1.0])
    with pytest.raises(FloatingPointError):
        clip_grad_norm(nan, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="invalid norm_type"):
        clip_grad_norm(a, 1.0, norm_type=0)
    with pytest.raises(ValueError, match="invalid max_norm"):
        clip_grad_norm(a, -1.0)
    with pytest.raises(TypeError):
        clip_grad_norm([np.zeros(2, np.int64)], 1.0)


@pytest.mark.parametrize("cls,kw", OPTIMISERS, ids=OPT_IDS)
def test_non_contiguous_arrays_agree_exactly(cls, kw, chunked):
    model = FakeModel()
    params, grads = model.copy_dicts()
    # the same values, held in transposed (Fortran-order) arrays
    tp = {k: np.asfortranarray(v) for k, v in params.items()}
    tg = {k: np.asfortranarray(v) for k, v in grads.items()}
    opt_c, opt_f = cls(params, grads, **kw), cls(tp, tg, **kw)
    for g in grad_sequence(np.float64, 5):
        set_grads(grads, g)
        set_grads(tg, g)
        opt_c.step()
        opt_f.step()
    for k in params:
        np.testing.assert_array_equal(params[k], tp[k])
