"""Callbacks for ``fit``: small objects that ``fit`` calls at the start and end of
training, of every epoch and of every batch, as in Keras (``keras.callbacks``).

A callback sees the model (``self.model``, set by ``fit``) and the epoch's ``logs``
(``loss``, ``accuracy``, ``val_loss``, ...). It stops training by setting
``self.model.stop_training = True`` or by returning True from ``on_epoch_end``. A plain
function ``f(epoch, logs)`` is accepted wherever a callback is, as an ``on_epoch_end``.
Epochs are counted from 0 in the calls, as in Keras; file names and messages count
from 1.
"""
import csv
import math
import numbers
import os

import numpy as np

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "CSVLogger",
           "LearningRateScheduler"]


class Callback:
    """Base class: every hook does nothing.

    ``rank0_only = True`` marks a callback that writes files: in a distributed ``fit``
    (:mod:`clstm.distributed`) it runs on rank 0 alone.
    """

    model = None
    rank0_only = False

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class _FunctionCallback(Callback):
    """A plain ``f(epoch, logs)``, called after each epoch; a true return stops."""

    def __init__(self, function):
        self.function = function

    def on_epoch_end(self, epoch, logs=None):
        return self.function(epoch, logs)


def as_callbacks(callbacks):
    """A list of Callback objects from what ``fit`` was given (None, a list of
    callbacks and functions), or a TypeError saying what is wrong."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or callable(callbacks) \
            or not isinstance(callbacks, (list, tuple)):
        raise TypeError("callbacks: expected a list of callables (Callback objects or "
                        f"functions f(epoch, logs)), got {type(callbacks).__name__}")
    out = []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Callback):
            out.append(cb)
        elif callable(cb):
            out.append(_FunctionCallback(cb))
        else:
            raise TypeError("callbacks: expected callables (Callback objects or functions "
                            f"f(epoch, logs)), got {type(cb).__name__} at index {i}")
    return out


class History(dict, Callback):
    """The per-epoch logs of a ``fit``: ``history["loss"]`` is the list of epoch losses
    (a dict, as ``fit`` returned before); ``history.history`` is the same dict, and
    ``history.epoch`` the epochs run (from 0), as in Keras."""

    def __init__(self):
        super().__init__()
        self.epoch = []

    @property
    def history(self):
        return self

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.setdefault(key, []).append(value)


def _monitor_mode(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _check_monitor(monitor):
    if not isinstance(monitor, str):
        raise TypeError(f"monitor: expected the name of a log entry such as 'val_loss', "
                        f"got {type(monitor).__name__}")
    return monitor


def _non_negative(name, value, integer=False):
    kinds = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name}: expected {'an int' if integer else 'a number'} >= 0, "
                        f"got {type(value).__name__}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return value


class _Monitor:
    """Which value of the logs is watched, and whether a new one is better."""

    def __init__(self, monitor, mode, min_delta):
        self.monitor = _check_monitor(monitor)
        self.mode = _monitor_mode(monitor, mode)
        self.min_delta = float(_non_negative("min_delta", min_delta))

    def value(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"{type(self).__name__}: expected {self.monitor!r} in the "
                             f"epoch's logs, got only {sorted(logs or {})} (pass "
                             "validation_data to fit for val_ entries)")
        return float(value)

    def better(self, value, best):
        if best is None:
            return not math.isnan(value)
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta


class EarlyStopping(Callback):
    """Stop when the monitored value has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, default "val_loss"
    min_delta : float, default 0
        A change smaller than this is no improvement.
    patience : int, default 0
        Epochs without improvement before stopping.
    mode : {"auto", "min", "max"}
        "auto": "max" for accuracies, else "min".
    baseline : float, optional
        Stop if the value has not become better than this within ``patience`` epochs.
    restore_best_weights : bool, default False
        At the end of training, put back the parameters of the best epoch.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 baseline=None, restore_best_weights=False):
        self._watch = _Monitor(monitor, mode, min_delta)
        self.patience = int(_non_negative("patience", patience, integer=True))
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.stopped_epoch = None
        self.best = None
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0

    def on_train_begin(self, logs=None):
        self.stopped_epoch = self.best_epoch = self.best_weights = None
        self.best = self.baseline
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        value = self._watch.value(logs)
        if self._watch.better(value, self.best):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            return False
        self.wait += 1
        if self.wait >= self.patience:      # Keras: after `patience` epochs without gain
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model after every epoch (or only when the monitored value improved),
    through ``clstm.save`` (written to a temporary file and renamed: a crash never
    leaves a half-written checkpoint).

    Parameters
    ----------
    filepath : str or path
        May hold ``{epoch}`` (from 1) and any log entry, with format specs:
        ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``.
    monitor, mode, min_delta
        As for :class:`EarlyStopping`; used with ``save_best_only``.
    save_best_only : bool, default False
    """

    rank0_only = True

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto",
                 min_delta=0.0):
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(f"filepath: expected a str or path, got {type(filepath).__name__}")
        self.filepath = os.fspath(filepath)
        self.save_best_only = bool(save_best_only)
        self._watch = _Monitor(monitor, mode, min_delta)
        self.best = None
        self.saved = []

    def on_epoch_end(self, epoch, logs=None):
        from .io import save  # io imports the models, which import this module

        logs = logs or {}
        if self.save_best_only:
            value = self._watch.value(logs)
            if not self._watch.better(value, self.best):
                return False
            self.best = value
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} names "
                             f"something the logs lack ({e}); the logs hold "
                             f"{sorted(logs)} and epoch") from None
        save(self.model, path)
        self.saved.append(path)
        return False


class CSVLogger(Callback):
    """Append one row per epoch (``epoch`` and every log entry) to a CSV file.

    Parameters
    ----------
    filename : str or path
    separator : str, default ","
    append : bool, default False
        Keep the rows already in the file (a resumed run); the header is written only
        to a new or empty file.
    """

    rank0_only = True

    def __init__(self, filename, separator=",", append=False):
        if not isinstance(filename, (str, os.PathLike)):
            raise TypeError(f"filename: expected a str or path, got {type(filename).__name__}")
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = bool(append)
        self._keys = None

    def on_train_begin(self, logs=None):
        if not self.append and os.path.exists(self.filename):
            os.remove(self.filename)
        self._keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
        new = not os.path.exists(self.filename) or os.path.getsize(self.filename) == 0
        with open(self.filename, "a", newline="") as f:
            writer = csv.writer(f, delimiter=self.separator)
            if new:
                writer.writerow(["epoch"] + self._keys)
            writer.writerow([epoch] + [logs.get(k, "") for k in self._keys])
        return False


class LearningRateScheduler(Callback):
    """Set the optimiser's learning rate before each epoch to ``schedule(epoch, lr)``.

    Parameters
    ----------
    schedule : callable
        ``schedule(epoch, lr) -> new lr``, epoch from 0, lr the current rate.
    verbose : int, default 0
        1 prints the rate when it changes.
    """

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise TypeError(f"schedule: expected a function schedule(epoch, lr), got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        lr = self.schedule(epoch, optimizer.lr)
        if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, (numbers.Real, np.floating)):
            raise TypeError(f"LearningRateScheduler: expected the schedule to return a "
                            f"number, got {type(lr).__name__}")
        if lr != optimizer.lr and self.verbose:
            print(f"epoch {epoch + 1}: learning rate {float(lr):.6g}")
        optimizer.lr = float(lr)
