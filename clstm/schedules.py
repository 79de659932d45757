"""Learning-rate schedules, with PyTorch's rules (``torch.optim.lr_scheduler``).

Each is bound to an optimiser and changes its ``lr`` when ``step()`` is called, once per
epoch, as in PyTorch; each is also a :class:`clstm.callbacks.Callback`, so it can be
passed to ``fit(..., callbacks=[...])``, which calls ``step()`` after every epoch
(``ReduceLROnPlateau`` with the monitored value). Without an optimiser, the schedule
binds to the one ``fit`` uses.

    opt = clstm.Adam(model, lr=1e-2)
    sched = clstm.schedules.CosineAnnealingLR(opt, T_max=20)
    for epoch in range(20):
        ...                        # a hand-written epoch
        sched.step()
"""
import math
import numbers

from .callbacks import Callback, _Monitor, _non_negative

__all__ = ["StepLR", "ExponentialLR", "CosineAnnealingLR", "ReduceLROnPlateau"]


def _positive(name, value, integer=False):
    kinds = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name}: expected {'an int' if integer else 'a number'} > 0, got "
                        f"{type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return value


class _Schedule(Callback):
    """Bound to an optimiser (now, or by ``fit``); ``step()`` advances one epoch."""

    def __init__(self, optimizer=None):
        self.optimizer = None
        self.last_epoch = 0
        if optimizer is not None:
            self._bind(optimizer)

    def _bind(self, optimizer):
        from .optim import Optimizer

        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a clstm optimiser, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)

    def set_model(self, model):
        super().set_model(model)
        if self.optimizer is None:
            self._bind(model.optimizer)

    def get_last_lr(self):
        return self.optimizer.lr

    def step(self):
        if self.optimizer is None:
            raise ValueError(f"{type(self).__name__}.step: expected an optimiser, got none "
                             "(pass one, or the schedule to fit as a callback)")
        self.last_epoch += 1
        self.optimizer.lr = self._lr(self.last_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.step()
        return False

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state):
        self.last_epoch = int(state["last_epoch"])
        self.base_lr = float(state["base_lr"])


class StepLR(_Schedule):
    """lr = base_lr · gamma^(epoch // step_size)."""

    def __init__(self, optimizer=None, step_size=1, gamma=0.1):
        self.step_size = _positive("step_size", step_size, integer=True)
        self.gamma = float(_positive("gamma", gamma))
        super().__init__(optimizer)

    def _lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(_Schedule):
    """lr = base_lr · gamma^epoch."""

    def __init__(self, optimizer=None, gamma=0.9):
        self.gamma = float(_positive("gamma", gamma))
        super().__init__(optimizer)

    def _lr(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(_Schedule):
    """lr = eta_min + (base_lr - eta_min) · (1 + cos(π · epoch / T_max)) / 2 (PyTorch's
    closed form; past T_max it rises again along the same cosine)."""

    def __init__(self, optimizer=None, T_max=10, eta_min=0.0):
        self.T_max = _positive("T_max", T_max, integer=True)
        self.eta_min = float(_non_negative("eta_min", eta_min))
        super().__init__(optimizer)

    def _lr(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


class ReduceLROnPlateau(_Schedule):
    """Multiply lr by ``factor`` when the metric has not improved for ``patience``
    epochs (PyTorch's rule, relative or absolute threshold, cooldown, min_lr).

    ``step(metric)`` by hand; as a ``fit`` callback it reads ``monitor`` from the logs.
    """

    def __init__(self, optimizer=None, mode="min", factor=0.1, patience=10,
                 threshold=1e-4, threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8,
                 monitor="val_loss"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        factor = float(_positive("factor", factor))
        if factor >= 1:
            raise ValueError(f"factor: expected a number < 1, got {factor!r}")
        self.mode, self.factor, self.threshold_mode = mode, factor, threshold_mode
        self.patience = int(_non_negative("patience", patience, integer=True))
        self.threshold = float(_non_negative("threshold", threshold))
        self.cooldown = int(_non_negative("cooldown", cooldown, integer=True))
        self.min_lr = float(_non_negative("min_lr", min_lr))
        self.eps = float(_non_negative("eps", eps))
        self._watch = _Monitor(monitor, mode, 0.0)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(optimizer)

    def _improved(self, value):
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return value < self.best * (1 - self.threshold)
            return value < self.best - self.threshold
        if self.threshold_mode == "rel":
            return value > self.best * (1 + self.threshold)
        return value > self.best + self.threshold

    def step(self, metric):
        if self.optimizer is None:
            raise ValueError("ReduceLROnPlateau.step: expected an optimiser, got none")
        value = float(metric)
        self.last_epoch += 1
        if self._improved(value):
            self.best = value
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.step(self._watch.value(logs))
        return False
