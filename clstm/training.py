"""The training loop behind ``fit``: epochs of optimisation steps, validation, progress,
callbacks, and what happens when a loss turns NaN or Ctrl-C arrives.

The model supplies the data side (its steps of time-major batches, the loss) through a
few methods (``_loss``, ``forward``, ``backward``, ``zero_grad``, ``state_dict``);
everything about running epochs lives here, apart from the layers (as in Keras, whose
trainer is separate from its layers).
"""
import math
import numbers
import sys
import time

import numpy as np

from . import distributed as _distributed
from ._concurrency import inference_mode
from .callbacks import History, as_callbacks
from .optim import Adam, Optimizer, clip_grad_norm
from .tbptt import forward_chunk

_ON_NONFINITE = ("raise", "skip")


class NonFiniteError(FloatingPointError):
    """``fit`` met a NaN or infinite loss, or a finite loss with NaN or infinite gradients.

    Raised before that batch's optimiser step, so the parameters are those after the last
    batch that was finite. ``fit(..., on_nonfinite="skip")`` skips such batches instead.

    Attributes
    ----------
    what : {"loss", "gradients"}
    value : float
        The loss, or the gradients' norm (NaN or inf).
    epoch, batch : int
        Where, counted from 1 as ``fit`` prints them.
    """

    def __init__(self, what, value, epoch, epochs, batch, batches):
        self.what, self.value, self.epoch, self.batch = what, value, epoch, batch
        got = f"a loss of {value}" if what == "loss" else f"gradients of norm {value}"
        super().__init__(
            f"fit: expected a finite loss and finite gradients, got {got} at epoch "
            f"{epoch}/{epochs}, batch {batch}/{batches}; that batch's update was not "
            "applied (the parameters are those after the batch before). Look for NaN or "
            "inf in its inputs and targets, or lower the learning rate; "
            "fit(..., on_nonfinite='skip') skips such batches")


# ---------------------------------------------------------------- progress and tallies

class Tally:
    """Running, count-weighted means of the loss and the accuracy over an epoch."""

    def __init__(self):
        self.loss_sum = 0.0
        self.count = 0
        self.correct = 0
        self.skipped = 0  # batches left out for a non-finite loss or gradient
        self.start = time.perf_counter()

    def add(self, loss, count, correct):
        if count:
            self.loss_sum += loss * count
            self.count += count
            self.correct += correct or 0

    def logs(self, with_accuracy):
        logs = {"loss": self.loss_sum / self.count if self.count else math.nan}
        if with_accuracy:
            logs["accuracy"] = self.correct / self.count if self.count else math.nan
        return logs

    def rate(self):
        return self.count / max(time.perf_counter() - self.start, 1e-9)


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """One line per epoch; while it runs, a progress bar through tqdm when it is
    installed, else on a terminal a live line redrawn with a carriage return."""

    def __init__(self, epoch, epochs, unit, verbose, total=None, stream=None):
        self.prefix = f"epoch {epoch + 1}/{epochs}"
        self.unit = unit
        self.verbose = verbose
        self.stream = sys.stdout if stream is None else stream
        tqdm = _tqdm() if verbose else None
        self.bar = (tqdm(total=total, desc=self.prefix, unit="batch", leave=False,
                         dynamic_ncols=True) if tqdm is not None else None)
        self.live = (self.bar is None and bool(verbose)
                     and getattr(self.stream, "isatty", lambda: False)())
        self.last_draw = 0.0
        self.width = 0

    def _draw(self, text, end=""):
        pad = " " * max(self.width - len(text), 0)  # wipe a longer previous line
        self.stream.write(("\r" if self.live else "") + text + pad + end)
        self.stream.flush()
        self.width = len(text)

    def update(self, step, total, tally):
        if self.bar is not None:
            self.bar.update(1)
            if step == total or step % 10 == 0:
                self.bar.set_postfix(loss=f"{tally.logs(False)['loss']:.4f}", refresh=False)
            return
        now = time.perf_counter()
        if not self.live or (now - self.last_draw < 0.1 and step < total):
            return
        self.last_draw = now
        loss = tally.logs(False)["loss"]
        self._draw(f"{self.prefix} [{step}/{total}] - loss {loss:.4f} - "
                   f"{tally.rate():,.0f} {self.unit}/s")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end(self, logs, tally):
        self.close()
        if not self.verbose:
            return
        parts = [f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}"
                 for k, v in logs.items()]
        seconds = time.perf_counter() - tally.start
        self._draw(" - ".join([self.prefix] + parts +
                              [f"{tally.rate():,.0f} {self.unit}/s", f"{seconds:.1f}s"]),
                   end="\n")


# ------------------------------------------------------------------------ the loop

def check_fit_args(model, epochs, optimizer, clip_norm, verbose, callbacks, on_nonfinite):
    """fit's arguments, checked before any training: a wrong one found later costs the
    forward and backward passes before it (``optimizer="adam"`` used to fail inside the
    first optimiser step). Returns (epochs, clip_norm, callbacks)."""
    from ._validate import positive_int

    epochs = positive_int(epochs, "epochs")
    if optimizer is not None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError("optimizer: expected None or a clstm optimiser built on "
                            "this model (clstm.Adam(model), clstm.AdamW, clstm.SGD), "
                            f"got {type(optimizer).__name__} {optimizer!r:.60}")
        ours = {id(a) for a in model.params.values()}
        if not all(id(a) in ours for a in optimizer._sources()[0].values()):
            raise ValueError("optimizer: expected an optimiser over this model's "
                             "parameters (clstm.Adam(model)), got one over other arrays")
    if clip_norm is not None:
        if isinstance(clip_norm, bool) or not isinstance(clip_norm, numbers.Real):
            raise TypeError(f"clip_norm: expected a number > 0 or None, got "
                            f"{type(clip_norm).__name__}")
        if not 0 < clip_norm < math.inf:
            raise ValueError(f"clip_norm: expected a finite number > 0 or None, got "
                             f"{clip_norm!r}")
        clip_norm = float(clip_norm)
    if not isinstance(verbose, (bool, int, np.integer)):
        raise TypeError(f"verbose: expected 0 or 1, got {type(verbose).__name__}")
    if verbose < 0:
        raise ValueError(f"verbose: expected 0 or 1, got {verbose!r}")
    callbacks = as_callbacks(callbacks)
    if not isinstance(on_nonfinite, str):
        raise TypeError(f"on_nonfinite: expected 'raise' or 'skip', got "
                        f"{type(on_nonfinite).__name__}")
    if on_nonfinite not in _ON_NONFINITE:
        raise ValueError(f"on_nonfinite: expected 'raise' or 'skip', got {on_nonfinite!r}")
    return epochs, clip_norm, callbacks


def nonfinite_grads(model):
    """0.0 when every gradient is finite, else NaN (one is NaN) or inf.

    Minimum and maximum: NaN and inf show in them, with no temporary array and no
    overflow (a sum of squares of large finite gradients can overflow).
    """
    arrays = ([model.flat_grads] if model.flat_grads is not None
              else list(model.grads.values()))
    worst = 0.0
    for a in arrays:
        if a.size:
            lo, hi = float(a.min()), float(a.max())
            if math.isnan(lo) or math.isnan(hi):
                return math.nan
            if math.isinf(lo) or math.isinf(hi):
                worst = math.inf
    return worst


def step_forward(model, step, state):
    """The forward of one step of a model's data: (out, yt, mask, state).

    A step is ``(xt, yt, mask, lengths, reset)``. A whole batch (lengths given, or no
    mask and nothing carried in) runs as it is. A chunk of longer sequences (truncated
    BPTT: a state carried in, or sequences whose lengths show only in the loss mask)
    runs through :func:`clstm.tbptt.forward_chunk`: its rows that still have steps
    only, each over its own steps, the others' state carried unchanged; ``yt`` and
    ``mask`` are then those rows', and ``out`` is None when no row has a step.
    """
    xt, yt, mask, lb, reset = step
    carried = None if reset else state
    if lb is not None or (reset and mask is None):
        out, state = model.forward(xt, carried, lengths=lb)
        return out, yt, mask, state
    # The steps give a chunk's mask (lengths_to_mask of the sequences' lengths, sliced
    # to the chunk: a prefix of each column), not its lengths: they are its column sums.
    lengths = (mask.sum(axis=0) if mask is not None
               else np.full(xt.shape[1], xt.shape[0], dtype=np.int64))
    out, state, rows = forward_chunk(model, xt, carried, lengths)
    if rows is None:
        return None, yt, mask, state
    return out, yt[:, rows], None if mask is None else mask[:, rows], state


def train_step(model, step, state, optimizer, clip_norm):
    """One optimisation step: (loss, count, correct, state, bad).

    ``bad`` is None, or ``(what, value)`` when the loss or the gradients are not finite:
    then no update is applied, since one NaN in the step would spread to every parameter
    (and through Adam's moments, to every later step).
    """
    model.zero_grad()
    out, yt, mask, state = step_forward(model, step, state)
    if out is None:  # a chunk past the end of every sequence of its batch
        return 0.0, 0, None, state, None
    loss, dout, count, correct = model._loss(out, yt, mask)
    if not count:  # a chunk of padding only has nothing to learn from
        return loss, count, correct, state, None
    if not math.isfinite(loss):
        return loss, count, correct, state, ("loss", float(loss))
    model.backward(dout)
    # clip_grad_norm leaves non-finite gradients as they are and returns their norm
    norm = (clip_grad_norm(model, clip_norm) if clip_norm is not None
            else nonfinite_grads(model))
    if not math.isfinite(norm):
        return loss, count, correct, state, ("gradients", norm)
    optimizer.step()  # holds a Ctrl-C back until the update is complete
    return loss, count, correct, state, None


def run_epoch(model, steps, total, optimizer, clip_norm, progress, on_nonfinite, epoch,
              epochs, callbacks, dist=None):
    model.train()
    tally = Tally()
    state = None
    accuracy = model.loss == "cross_entropy"
    step_fn = train_step if dist is None else dist.train_step
    for i, step in enumerate(steps, 1):
        loss, count, correct, state, bad = step_fn(model, step, state, optimizer,
                                                   clip_norm)
        if bad is None:
            tally.add(loss, count, correct)
        elif on_nonfinite == "skip":
            tally.skipped += 1
            state = None  # a state carried on from a NaN step would poison the rest
        else:
            raise NonFiniteError(*bad, epoch, epochs, i, total)
        progress.update(i, total, tally)
        if callbacks:
            logs = tally.logs(accuracy)
            for cb in callbacks:
                cb.on_batch_end(i - 1, logs)
    return tally


def evaluate_steps(model, steps, reduce=None):
    """Mean loss (and accuracy) over steps, every layer in eval mode for this thread.

    ``reduce(tally)``, when given, sums the tally over the ranks of a distributed run
    (each evaluated its shard) before the means are taken.
    """
    with inference_mode():  # this thread only: others may be training
        tally = Tally()
        state = None
        for step in steps:
            if not step[0].shape[1]:    # a rank's empty shard of a small batch
                continue
            out, yt, mask, state = step_forward(model, step, state)
            if out is None:
                continue
            loss, _, count, correct = model._loss(out, yt, mask)
            tally.add(loss, count, correct)
        if reduce is not None:
            reduce(tally)
        return tally.logs(model.loss == "cross_entropy")


def fit_loop(model, make_steps, total, epochs, *, validate, optimizer, clip_norm, verbose,
             callbacks, unit, on_nonfinite, distributed=None):
    """The epoch loop shared by every kind of data: train, validate, report, call back.

    Returns the :class:`~clstm.callbacks.History`, also kept as ``model.history_`` (and
    ``model.history``) from the start, so that it holds the completed epochs after a
    Ctrl-C too.

    With ``distributed`` (see :mod:`clstm.distributed`), ``make_steps`` yields this
    rank's shard of every global batch and ``validate`` reduces over the ranks; the
    steps sum the gradients over the ranks, the logs are those of the global batches,
    the same on every rank, rank 0 alone prints and runs the callbacks that write files,
    and a stop on any rank stops every rank.
    """
    dist, optimizer = _distributed.fit_hook(model, distributed, optimizer)
    epochs, clip_norm, callbacks = check_fit_args(model, epochs, optimizer, clip_norm,
                                                  verbose, callbacks, on_nonfinite)
    if optimizer is not None:
        model.optimizer = optimizer
    elif model.optimizer is None:
        model.optimizer = Adam(model, lr=1e-3)
    optimizer = model.optimizer
    if dist is not None:
        verbose = dist.start(model, total, verbose, optimizer)
        callbacks = dist.callbacks(callbacks)
    history = History()
    model.history_ = model.history = history
    callbacks = [history] + callbacks
    model.stop_training = False
    for cb in callbacks:
        cb.set_model(model)
    for cb in callbacks:
        cb.on_train_begin()
    logs = {}
    try:
        for epoch in range(epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            progress = Progress(epoch, epochs, unit, verbose, total)
            try:
                tally = run_epoch(model, make_steps(), total, optimizer, clip_norm,
                                  progress, on_nonfinite, epoch + 1, epochs, callbacks[1:],
                                  dist)
            finally:
                progress.close()
            logs = tally.logs(model.loss == "cross_entropy")
            if on_nonfinite == "skip":
                logs["skipped_batches"] = tally.skipped
            if validate is not None:
                logs.update({f"val_{k}": v for k, v in validate().items()})
            progress.end(logs, tally)
            stops = [cb.on_epoch_end(epoch, logs) for cb in callbacks]  # every one, every epoch
            stop = any(stops) or model.stop_training
            if dist is not None:
                stop = model.stop_training = dist.any(stop)   # one rank stops: all stop
            if stop:
                break
    except NonFiniteError:
        raise                  # decided on the global batch: every rank raises it alike
    except BaseException as e:
        if dist is not None:
            dist.abort(e)      # the others would wait in a collective for this rank
        raise
    finally:
        for cb in callbacks:
            cb.on_train_end(logs)
    return history
