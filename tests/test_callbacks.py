"""The training loop's callbacks (Keras' semantics) and the learning-rate schedules
(PyTorch's rules), with fit and by hand."""
import csv

import numpy as np
import pytest

import clstm
from clstm.callbacks import (Callback, CSVLogger, EarlyStopping, History,
                             LearningRateScheduler, ModelCheckpoint)
from clstm.schedules import CosineAnnealingLR, ExponentialLR, ReduceLROnPlateau, StepLR


def regression_data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 6, 1))
    return x, 0.25 * x.sum(axis=(1, 2))


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"epoch_begin {epoch}")

    def on_batch_end(self, batch, logs=None):
        self.calls.append(f"batch {batch}")
        assert "loss" in logs

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch}")
        assert self.model is not None and "loss" in logs

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def test_fit_calls_every_hook_in_order():
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=0)
    rec = Recorder()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[rec])
    assert rec.calls == ["train_begin", "epoch_begin 0", "batch 0", "batch 1", "epoch_end 0",
                         "epoch_begin 1", "batch 0", "batch 1", "epoch_end 1", "train_end"]


def test_a_plain_function_is_still_a_callback_and_can_stop_training():
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=0)
    seen = []
    model.fit(x, y, epochs=5, verbose=0, callbacks=[lambda e, logs: seen.append(e) or e == 1])
    assert seen == [0, 1]
    assert model.history_.epoch == [0, 1]


def test_history_is_the_dict_of_epoch_logs_and_keras_like():
    x, y = regression_data()
    model = clstm.Sequential([clstm.LSTM(1, 8, seed=1), clstm.LastStep(),
                              clstm.Dense(8, 1, seed=2)], loss="mse")
    history = model.fit(x, y, epochs=3, verbose=0, validation_data=(x[:8], y[:8]))
    assert isinstance(history, History)
    assert history.history is history and len(history["loss"]) == 3
    assert sorted(history) == ["loss", "val_loss"] and history.epoch == [0, 1, 2]
    assert model.history_ is history


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=3)
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.1])
    best = {}

    def fake_validation(epoch, logs):       # runs before EarlyStopping sees the logs
        logs["val_loss"] = next(losses)
        if logs["val_loss"] == 0.5:
            best["weights"] = model.state_dict()

    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    model.fit(x, y, epochs=6, verbose=0, callbacks=[fake_validation, stop],
              optimizer=clstm.SGD(model, lr=0.1))
    assert stop.stopped_epoch == 3 and stop.best == 0.5 and stop.best_epoch == 1
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, best["weights"][name])


def test_early_stopping_mode_follows_the_monitored_name():
    assert EarlyStopping(monitor="val_accuracy")._watch.mode == "max"
    assert EarlyStopping(monitor="loss")._watch.mode == "min"
    with pytest.raises(ValueError, match="mode: expected"):
        EarlyStopping(mode="up")
    with pytest.raises(TypeError, match="patience: expected an int"):
        EarlyStopping(patience=1.5)


def test_early_stopping_names_a_missing_log_entry():
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=4)
    with pytest.raises(ValueError, match="expected 'val_loss' in the epoch's logs"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[EarlyStopping()])


def test_model_checkpoint_saves_loadable_models_named_by_epoch_and_logs(tmp_path):
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=5)
    path = str(tmp_path / "ckpt-{epoch:02d}-{loss:.3f}.npz")
    ckpt = ModelCheckpoint(path, monitor="loss", save_best_only=False)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[ckpt])
    assert len(ckpt.saved) == 2 and "ckpt-02-" in ckpt.saved[1]
    loaded = clstm.load(ckpt.saved[1])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_model_checkpoint_best_only_saves_on_improvement(tmp_path):
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=6)
    values = iter([3.0, 2.0, 2.5, 1.0])
    ckpt = ModelCheckpoint(tmp_path / "best-{epoch}.npz", monitor="score", mode="min",
                           save_best_only=True)
    model.fit(x, y, epochs=4, verbose=0,
              callbacks=[lambda e, logs: logs.update(score=next(values)), ckpt])
    assert [p.rsplit("-", 1)[1] for p in ckpt.saved] == ["1.npz", "2.npz", "4.npz"]


def test_csv_logger_writes_a_row_per_epoch(tmp_path):
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=7)
    path = tmp_path / "log.csv"
    model.fit(x, y, epochs=3, verbose=0, validation_data=(x[:8], y[:8]),
              callbacks=[CSVLogger(path)])
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[-1]["loss"]) == pytest.approx(model.history_["loss"][-1])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[CSVLogger(path, append=True)])
    assert len(list(csv.DictReader(open(path)))) == 4


def test_learning_rate_scheduler_sets_the_rate_before_each_epoch():
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=8)
    opt = clstm.Adam(model, lr=0.1)
    seen = []
    model.fit(x, y, epochs=3, verbose=0, optimizer=opt,
              callbacks=[LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)),
                         lambda epoch, logs: seen.append(opt.lr)])
    assert seen == pytest.approx([0.1, 0.05, 0.1 / 3])


# --------------------------------------------------------------------------------------
# schedules: PyTorch's rules

torch = pytest.importorskip("torch")


def torch_rates(make, epochs, metrics=None):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    sched = make(opt)
    rates = []
    for e in range(epochs):
        opt.step()
        sched.step(metrics[e]) if metrics is not None else sched.step()
        rates.append(opt.param_groups[0]["lr"])
    return rates


def our_rates(make, epochs, metrics=None):
    opt = clstm.SGD({"w": np.zeros(1)}, {"w": np.zeros(1)}, lr=0.5)
    sched = make(opt)
    rates = []
    for e in range(epochs):
        sched.step(metrics[e]) if metrics is not None else sched.step()
        rates.append(opt.lr)
    return rates


@pytest.mark.parametrize("ours, theirs", [
    (lambda o: StepLR(o, step_size=3, gamma=0.5),
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    (lambda o: ExponentialLR(o, gamma=0.9),
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    (lambda o: CosineAnnealingLR(o, T_max=7, eta_min=0.01),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=0.01)),
], ids=["step", "exponential", "cosine"])
def test_schedules_follow_pytorch(ours, theirs):
    np.testing.assert_allclose(our_rates(ours, 12), torch_rates(theirs, 12), rtol=1e-12)


@pytest.mark.parametrize("mode, threshold_mode", [("min", "rel"), ("min", "abs"),
                                                   ("max", "rel")])
def test_reduce_on_plateau_follows_pytorch(mode, threshold_mode):
    metrics = [1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.5, 0.5, 0.6, 0.7, 0.8, 0.4, 0.4, 0.4, 0.4]
    kw = dict(mode=mode, factor=0.5, patience=1, threshold=0.01,
              threshold_mode=threshold_mode, cooldown=1, min_lr=0.05)
    np.testing.assert_allclose(
        our_rates(lambda o: ReduceLROnPlateau(o, **kw), len(metrics), metrics),
        torch_rates(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **kw),
                    len(metrics), metrics), rtol=1e-12)


def test_a_schedule_in_fit_binds_to_fits_optimizer_and_steps_each_epoch():
    x, y = regression_data()
    model = clstm.Regressor(1, 8, seed=9)
    rates = []
    model.fit(x, y, epochs=4, verbose=0, optimizer=clstm.Adam(model, lr=0.08),
              callbacks=[StepLR(step_size=2, gamma=0.5),
                         lambda e, logs: rates.append(model.optimizer.lr)])
    # the function runs after the schedule stepped at the end of each epoch
    assert rates == pytest.approx([0.08, 0.04, 0.04, 0.02])


# --------------------------------------------------------------------------------------
# scikit-learn's conventions for the ready models


def test_ready_models_clone_and_cross_validate_with_scikit_learn():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(20)
    x = rng.integers(0, 6, (60, 7))
    y = x[:, -1] % 2
    clf = clstm.Classifier(hidden_size=12, num_classes=2, vocab_size=6, embed_dim=6, seed=3)
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    np.testing.assert_array_equal(twin.flat_params, clf.flat_params)   # same seed
    assert clf.fit(x, y, epochs=2, verbose=0) is clf and len(clf.history_["loss"]) == 2
    assert clf.predict(x).shape == (60,) and clf.predict(x).dtype.kind == "i"
    np.testing.assert_allclose(clf.predict_proba(x).sum(1), 1, rtol=1e-5)
    scores = cross_val_score(clone(clf).set_params(dropout=0.1), x, y, cv=3,
                             params={"epochs": 3, "verbose": 0})
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))
    assert sklearn.base.is_classifier(clf)


def test_set_params_rebuilds_and_refuses_unknown_names():
    reg = clstm.Regressor(2, 4, seed=1)
    assert reg.set_params(hidden_size=6) is reg
    assert reg.params["0.weight_hh_l0"].shape == (24, 6)
    with pytest.raises(ValueError, match="set_params: expected arguments"):
        reg.set_params(hidden=3)
