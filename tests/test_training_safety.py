"""Training that fails safely: non-finite losses and gradients stop (or skip) a batch before
its update, clip_grad_norm neither overflows nor zeroes finite gradients, a Ctrl-C never
leaves an update half applied, and fit checks its arguments before it trains."""
import math
import signal

import numpy as np
import pytest

import clstm
import clstm.optim
from clstm.layers import Dense
from clstm.models import NonFiniteError, Regressor, Sequential
from clstm.optim import SGD, Adam, clip_grad_norm


def data(n=64, T=6, F=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    return x, x.sum(axis=(1, 2))


def trained_on(x, y, **kw):
    """A fresh Regressor (seed 0) fitted once over x, y in order: the reference runs."""
    model = Regressor(3, 8, seed=0)
    model.fit(x, y, batch_size=16, shuffle=False, verbose=0, **kw)
    return model


# ----------------------------------------------------------------------- clip_grad_norm

def float64_norm(arrays, p):
    flat = np.concatenate([np.abs(a.astype(np.float64)).ravel() for a in arrays])
    if p == math.inf:
        return flat.max()
    top = flat.max()
    return top * float(((flat / top) ** p).sum()) ** (1 / p)


@pytest.mark.parametrize("p", [1, 2, 3, math.inf])
@pytest.mark.parametrize("value", [1e30, 1e-30])
def test_clip_grad_norm_of_float32_gradients_far_from_one_neither_overflows_nor_underflows(
        p, value):
    # all entries 1e30: the float32 sum of squares overflowed to inf and the gradients
    # were multiplied by 0; entries of 1e-30 had their squares flush to a norm of 0
    grads = {"a": np.full(1000, value, np.float32), "b": np.full((3, 4), -value, np.float32)}
    expected = float64_norm(grads.values(), p)
    total = clip_grad_norm(grads, 1.0, norm_type=p)
    assert total == pytest.approx(expected, rel=1e-6, abs=0)
    if value > 1:
        after = float64_norm(grads.values(), p)
        assert 0.99 < after <= 1.0 + 1e-5   # clipped to max_norm, not to zero


def test_clip_grad_norm_of_huge_float64_gradients():
    grads = [np.full(10, 1e200), np.full(5, -1e200)]
    total = clip_grad_norm(grads, 2.0)
    assert total == pytest.approx(1e200 * math.sqrt(15), rel=1e-12)
    assert float64_norm(grads, 2) == pytest.approx(2.0, rel=1e-6)


def test_clip_grad_norm_keeps_a_coefficient_below_float32s_smallest_normal():
    # norm 3e40, max_norm 1e-6: the coefficient 3.3e-47 is 0 in float32, the products
    # (1e-8) are not
    grads = [np.full(10_000, 3e38, np.float32)]
    clip_grad_norm(grads, 1e-6)
    np.testing.assert_allclose(grads[0], 1e-8, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_grad_norm_leaves_nonfinite_gradients_unchanged_and_returns_their_norm(bad):
    grads = {"a": np.full(100, 1e30, np.float32), "b": np.ones(4, np.float32)}
    grads["b"][2] = bad
    before = {k: v.copy() for k, v in grads.items()}
    total = clip_grad_norm(grads, 1.0)
    assert math.isnan(total) if np.isnan(bad) else total == math.inf
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])
    with pytest.raises(FloatingPointError, match="total norm"):
        clip_grad_norm(grads, 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_reports_nan_over_inf():
    assert math.isnan(clip_grad_norm([np.array([np.inf]), np.array([np.nan])], 1.0))


# ------------------------------------------------------------------- non-finite in fit

def test_a_nan_input_stops_fit_before_its_update_naming_epoch_and_batch():
    x, y = data()
    x[37, 4, 1] = np.nan                       # sample 37: batch 3 of 4 (batches of 16)
    model = Regressor(3, 8, seed=0)
    with pytest.raises(NonFiniteError, match=r"loss of nan at epoch 1/2, batch 3/4") as e:
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, clip_norm=1.0, verbose=0)
    assert isinstance(e.value, FloatingPointError)
    assert (e.value.what, e.value.epoch, e.value.batch) == ("loss", 1, 3)
    # the parameters are those after batch 2: the same as training on batches 1-2 only
    reference = trained_on(x[:32], y[:32], clip_norm=1.0)
    np.testing.assert_array_equal(model.flat_params, reference.flat_params)
    assert np.isfinite(model.predict(x[:4])).all()


def test_finite_loss_with_overflowing_gradients_stops_fit_too():
    # w = 0, b = 0, y = 1, x = 3e38: the output 0 and the loss 1 are finite, but
    # dL/dw = 2 * (0 - 1) * 3e38 overflows float32
    for clip_norm in (None, 1.0):
        model = Sequential([Dense(1, 1, seed=0)], loss="mse")
        model.flat_params[:] = 0
        x, y = np.full((1, 1, 1), 3e38, np.float32), np.ones((1, 1, 1))
        with pytest.raises(NonFiniteError, match="gradients of norm inf at epoch 1/1, "
                                                 "batch 1/1") as e:
            model.fit(x, y, clip_norm=clip_norm, verbose=0)
        assert e.value.what == "gradients"
        np.testing.assert_array_equal(model.flat_params, 0)   # no update applied
        assert np.isfinite(model.flat_grads).sum() == 1       # the gradient, left as it is


def test_overflowing_gradients_stop_fit_in_a_model_of_mixed_dtypes():
    # float32 then float64 layers: no flat buffer, so each gradient array is checked
    first, second = Dense(1, 1, dtype="float32"), Dense(1, 1, dtype="float64")
    model = Sequential([first, second], loss="mse")
    assert model.flat_grads is None
    for layer in (first, second):
        layer.params["weight"][...] = 0
        layer.params["bias"][...] = 0
    second.params["weight"][...] = 1      # dL/dw1 = 2 * (0 - 1) * 1 * 3e38: -inf in float32
    x, y = np.full((1, 1, 1), 3e38, np.float32), np.ones((1, 1, 1))
    with pytest.raises(NonFiniteError, match="gradients of norm inf"):
        model.fit(x, y, verbose=0)
    assert first.params["weight"][0, 0] == 0 and second.params["weight"][0, 0] == 1


def test_skip_leaves_nonfinite_batches_out_and_counts_them_in_the_history(capsys):
    x, y = data()
    x[37, 4, 1] = np.nan
    model = Regressor(3, 8, seed=0)
    history = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, clip_norm=1.0,
                        on_nonfinite="skip").history_
    assert history["skipped_batches"] == [1, 1]
    assert "skipped_batches 1" in capsys.readouterr().out
    # exactly the run without batch 3: the same updates, the same losses
    keep = np.r_[0:32, 48:64]
    reference = Regressor(3, 8, seed=0)
    expected = reference.fit(x[keep], y[keep], epochs=2, batch_size=16, shuffle=False,
                             clip_norm=1.0, verbose=0).history_
    np.testing.assert_array_equal(model.flat_params, reference.flat_params)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-12)


def test_skip_restarts_the_carried_state_after_a_skipped_chunk():
    # per-step model, chunks of 5 steps: the NaN at t = 2 spoils chunk 1 of the batch; the
    # state carried out of it is NaN, so chunk 2 must start from zeros to be usable
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 10, 1)).astype(np.float32)
    y = np.cumsum(x, axis=1)
    x[0, 2, 0] = np.nan
    model = Sequential([clstm.LSTM(1, 4, seed=0), Dense(4, 1, seed=0)], loss="mse")
    history = model.fit(x, y, bptt=5, batch_size=4, on_nonfinite="skip", verbose=0)
    assert history["skipped_batches"] == [1]
    assert np.isfinite(model.flat_params).all()


def test_nan_weights_propagate_and_stop_fit_at_the_first_batch():
    x, y = data(n=16)
    model = Regressor(3, 8, seed=0)
    model.params["0.weight_hh_l0"][0, 0] = np.nan
    assert np.isnan(model.predict(x[:2])).all()              # IEEE: not sanitised
    with pytest.raises(NonFiniteError, match="batch 1/1"):
        model.fit(x, y, batch_size=16, verbose=0)


# --------------------------------------------------------------------------- Ctrl-C

def interrupt_update(opt, at_step, at_chunk):
    """Make ``opt`` receive a SIGINT (a real Ctrl-C) in the middle of one update."""
    calls = {"step": 0, "chunk": 0}
    update, step = opt._update, opt.step

    def counting_step():
        calls["step"] += 1
        calls["chunk"] = 0
        step()

    def signalling_update(*args):
        calls["chunk"] += 1
        if (calls["step"], calls["chunk"]) == (at_step, at_chunk):
            signal.raise_signal(signal.SIGINT)
        update(*args)

    opt.step, opt._update = counting_step, signalling_update


def test_ctrl_c_during_an_update_completes_it_then_stops_fit(monkeypatch):
    monkeypatch.setattr(clstm.optim, "_CHUNK_BYTES", 256)  # several chunks per update
    x, y = data()
    model = Regressor(3, 8, seed=0)
    opt = Adam(model, lr=1e-2)
    interrupt_update(opt, at_step=3, at_chunk=2)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, optimizer=opt, verbose=0)
    assert signal.getsignal(signal.SIGINT) is handler
    reference = Regressor(3, 8, seed=0)                      # 3 complete Adam updates
    ref_opt = Adam(reference, lr=1e-2)
    reference.fit(x[:48], y[:48], batch_size=16, shuffle=False, optimizer=ref_opt,
                  verbose=0)
    np.testing.assert_array_equal(model.flat_params, reference.flat_params)
    assert opt.step_count == ref_opt.step_count == 3
    state, ref_state = opt.state_dict(), ref_opt.state_dict()
    for key in ref_state:
        np.testing.assert_array_equal(state[key], ref_state[key])
    # the model stays usable: predict, and a later fit that carries on
    assert np.isfinite(model.predict(x[:4])).all()
    model.fit(x, y, batch_size=16, verbose=0)
    assert opt.step_count == 7


def test_a_sigint_that_is_ignored_stays_ignored_during_an_update():
    model = Regressor(3, 8, seed=0)
    opt = SGD(model, lr=0.1)
    interrupt_update(opt, at_step=1, at_chunk=1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        opt.step()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert opt.step_count == 1


def test_ctrl_c_in_a_forward_stops_fit_before_that_batch_and_keeps_the_history(monkeypatch):
    x, y = data()
    model = Regressor(3, 8, seed=0)
    calls = {"n": 0}
    forward = model.forward

    def interrupted_forward(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:        # epoch 2, batch 2: a Ctrl-C inside the kernels
            raise KeyboardInterrupt
        return forward(*args, **kw)

    monkeypatch.setattr(model, "forward", interrupted_forward)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    monkeypatch.undo()
    assert list(model.history) == ["loss"] and len(model.history["loss"]) == 1
    # 5 complete updates: epoch 1 and the first batch of epoch 2
    reference = Regressor(3, 8, seed=0)
    reference.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    reference.fit(x[:16], y[:16], batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_array_equal(model.flat_params, reference.flat_params)
    assert model.optimizer.step_count == 5
    assert np.isfinite(model.predict(x[:4])).all()
    assert len(model.fit(x, y, epochs=2, batch_size=16, verbose=0).history_["loss"]) == 2


# ------------------------------------------------------------- fit's arguments, up front

@pytest.mark.parametrize("kw, error, match", [
    ({"optimizer": "adam"}, TypeError, "optimizer: expected None or a clstm optimiser.*got str"),
    ({"optimizer": Adam(Regressor(3, 8, seed=1))}, ValueError,
     "optimizer: expected an optimiser over this model's parameters"),
    ({"clip_norm": "1"}, TypeError, "clip_norm: expected a number > 0 or None, got str"),
    ({"clip_norm": 0}, ValueError, "clip_norm: expected a finite number > 0 or None, got 0"),
    ({"clip_norm": math.nan}, ValueError, "clip_norm: expected a finite number > 0"),
    ({"clip_norm": math.inf}, ValueError, "clip_norm: expected a finite number > 0"),
    ({"epochs": 2.5}, TypeError, "epochs: expected an int >= 1, got float"),
    ({"batch_size": "8"}, TypeError, "batch_size: expected an int >= 1, got str"),
    ({"callbacks": print}, TypeError, "callbacks: expected a list of callables"),
    ({"callbacks": [print, 3]}, TypeError, "callbacks: expected callables .* int at index 1"),
    ({"on_nonfinite": "ignore"}, ValueError,
     "on_nonfinite: expected 'raise' or 'skip', got 'ignore'"),
    ({"on_nonfinite": None}, TypeError, "on_nonfinite: expected 'raise' or 'skip'"),
    ({"verbose": "1"}, TypeError, "verbose: expected 0 or 1, got str"),
    ({"shuffle": "yes"}, TypeError, "shuffle: expected True or False, got str"),
])
def test_fit_refuses_bad_arguments_before_it_trains(monkeypatch, kw, error, match):
    x, y = data(n=8)
    model = Regressor(3, 8, seed=0)
    before = model.flat_params.copy()

    def no_forward(*args, **kwargs):
        raise AssertionError("fit ran a forward pass before checking its arguments")

    monkeypatch.setattr(model, "forward", no_forward)
    with pytest.raises(error, match=match):
        model.fit(x, y, **{"verbose": 0, **kw})
    np.testing.assert_array_equal(model.flat_params, before)
    assert model.optimizer is None


def test_fit_accepts_the_documented_optimisers():
    x, y = data(n=8)
    model = Regressor(3, 8, seed=0)
    for opt in (Adam(model), SGD(model.params, model.grads, lr=0.01),
                Adam(model.layers[0])):          # the LSTM alone: the rest stays fixed
        model.fit(x, y, optimizer=opt, verbose=0)
        assert opt.step_count == 1
