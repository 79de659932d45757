"""Data-parallel training over MPI (Horovod's pattern, through mpi4py).

Every process (rank) holds the whole model, trains on its shard of every global batch,
and before each optimiser step the gradients are summed over the ranks by an MPI
allreduce, weighted so that the result is the gradient one process would compute on the
combined batch. Every rank then applies the same update to the same parameters: N ranks
give the parameters of one process, to rounding.

Launch with an MPI launcher, one process per rank::

    mpiexec -n 4 python -m mpi4py train.py     # -m mpi4py: an exception aborts the job

Three levels of use:

- ``model.fit(x, y, ..., distributed=True)`` (or a communicator, or a :class:`Distributed`):
  everything below, plus sharding, agreed shuffling, metrics reduced over ranks, rank-0
  output and checkpoints, early stopping agreed by all ranks.
- :class:`DistributedOptimizer` around any clstm optimiser, for a training loop of your
  own: one changed line (``opt = DistributedOptimizer(Adam(model), model)``).
- :func:`broadcast_parameters` and :func:`allreduce_gradients`, the two collective steps.

This module imports without mpi4py; using it without mpi4py raises an ImportError that
says what to install (``pip install clstm-cpu[mpi]``, or ``pip install mpi4py mpich``).
"""
import math
import os
import sys
import threading
import time
import traceback

import numpy as np

__all__ = ["Distributed", "DistributedOptimizer", "broadcast_parameters",
           "allreduce_gradients", "shard_bounds", "threads_per_rank"]

_INSTALL = ("clstm.distributed needs mpi4py and an MPI library: pip install "
            "'clstm-cpu[mpi]' (or: pip install mpi4py mpich), then launch with "
            "mpiexec -n N python -m mpi4py your_script.py")


def _mpi():
    """mpi4py's MPI module, or an ImportError that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from e
    return MPI


def _comm(comm):
    return _mpi().COMM_WORLD if comm is None else comm


# ------------------------------------------------------------------ pure arithmetic

def shard_bounds(n, rank, size):
    """``(lo, hi)``: the rows ``[lo, hi)`` of ``n`` that rank ``rank`` of ``size`` takes.

    Contiguous shards whose sizes differ by at most one, the larger ones first
    (``n = 5, size = 2``: ranks take 3 and 2 rows). A rank may get none (``n < size``).
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"shard_bounds: expected 0 <= rank < size, got rank {rank}, "
                         f"size {size}")
    base, extra = divmod(int(n), size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def threads_per_rank(cores, local_ranks, visible=None):
    """Kernel threads for one rank: its share of the node's cores, at least 1.

    ``cores``: the node's logical CPUs; ``local_ranks``: ranks on this node; ``visible``:
    the CPUs this process may run on (its affinity). A process the launcher bound to
    fewer CPUs than the node has uses exactly those.
    """
    if visible is not None and visible < cores:
        return max(1, visible)
    return max(1, cores // max(1, local_ranks))


def _layer_slices(model):
    """The slice of ``model.flat_grads`` each of a Sequential's layers owns (None for
    layers without parameters), in layer order; one slice for any other model."""
    layers = getattr(model, "layers", None)
    if layers is None:
        return [slice(0, model.flat_grads.size)]
    slices, offset = [], 0
    for layer in layers:
        size = sum(a.size for a in layer.params.values())
        slices.append(slice(offset, offset + size) if size else None)
        offset += size
    return slices


def _describe_model(model):
    """What every rank must agree on before parameters are broadcast."""
    return (type(model).__name__,
            [(name, tuple(a.shape), a.dtype.name) for name, a in model.params.items()])


# --------------------------------------------------------------- the collective steps

def broadcast_parameters(model, root=0, comm=None):
    """Copy the parameters of rank ``root`` to every rank (an identical start).

    First the ranks compare the model's parameter names, shapes and dtypes; if any rank
    differs, every rank raises the same ValueError (no rank is left waiting).

    Raises
    ------
    ValueError
        The ranks' models differ, naming the first rank that differs from ``root``.
    """
    comm = _comm(comm)
    mine = _describe_model(model)
    every = comm.allgather(mine)
    for rank, theirs in enumerate(every):
        if theirs != every[root]:
            raise ValueError(
                f"broadcast_parameters: expected the same model on every rank, got on "
                f"rank {rank} {_summary(theirs)}, on rank {root} {_summary(every[root])}"
                f"{_first_difference(theirs, every[root])}")
    if model.flat_params is not None:
        comm.Bcast(model.flat_params, root=root)
    else:
        for arr in model.params.values():
            buf = np.ascontiguousarray(arr)
            comm.Bcast(buf, root=root)
            arr[...] = buf


def _first_difference(a, b):
    for (n1, s1, d1), (n2, s2, d2) in zip(a[1], b[1]):
        if (n1, s1, d1) != (n2, s2, d2):
            return f"; first difference: {n1} {s1} {d1} against {n2} {s2} {d2}"
    return ""


def _summary(description):
    kind, entries = description
    dtypes = sorted({d for _, _, d in entries})
    size = sum(int(np.prod(s, dtype=np.int64)) for _, s, _ in entries)
    shapes = ", ".join(f"{n} {s}" for n, s, _ in entries[:4])
    more = f", ... ({len(entries)} arrays)" if len(entries) > 4 else ""
    return f"{kind} of {size} {'/'.join(dtypes) or 'no'} parameters ({shapes}{more})"


class _Progress:
    """A helper thread that tests the pending requests every ``interval`` seconds.

    MPICH moves a non-blocking collective on only inside MPI calls; while the kernels
    compute the layers below (the GIL released), nothing would call MPI and the sum
    would wait for the final ``Waitall``. The thread calls ``Testall`` for it, under a
    lock that every other use of the requests also takes (MPI forbids two threads
    completing one request), and sleeps while nothing is pending.
    """

    def __init__(self, MPI, interval):
        self.MPI = MPI
        self.interval = interval
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.pending = []
        self.thread = threading.Thread(target=self._run, name="clstm-mpi-progress",
                                       daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            with self.lock:
                while not self.pending:
                    self.wake.wait()
                self.MPI.Request.Testall(self.pending)
            time.sleep(self.interval)

    def add(self, start):
        """Start a request (``start()``) and poll it from now on."""
        with self.lock:
            request = start()
            self.pending.append(request)
            self.wake.notify()
            return request

    def take(self):
        """Stop polling; the pending requests, for the caller to wait on."""
        with self.lock:
            pending, self.pending = self.pending, []
            return pending


_progress = {}


def _shared_progress(MPI, interval):
    """One progress thread per process (a new one in a forked child), testing at the
    interval its latest user asked for."""
    pid = os.getpid()
    if pid not in _progress:
        _progress.clear()
        _progress[pid] = _Progress(MPI, interval)
    _progress[pid].interval = interval
    return _progress[pid]


class _GradientReducer:
    """Sums the gradients over the ranks, each rank's share weighted by ``weight``.

    With ``overlap``, :meth:`layer_done` starts a non-blocking ``Iallreduce`` of one
    layer's slice of the flat gradient buffer as soon as that layer's backward is done
    (the slices are disjoint: the layers below never write it), each start testing the
    earlier ones, and with ``progress_interval`` (seconds) a helper thread
    (:class:`_Progress`) tests them that often while the layers below compute;
    :meth:`finish` starts the layers that did not report (every rank starts them in the
    same order: reversed layer order) and waits for all. Without overlap, :meth:`finish`
    runs one blocking ``Allreduce`` over the whole buffer.
    """

    def __init__(self, model, comm, overlap=True, progress_interval=None):
        self.MPI = _mpi()
        self.comm = _comm(comm)
        self.model = model
        self.overlap = bool(overlap) and model.flat_grads is not None
        self.slices = _layer_slices(model) if model.flat_grads is not None else None
        self.weight = 1.0 / self.comm.Get_size()
        self.started = set()
        self._progress = None
        if (self.overlap and progress_interval is not None
                and self.MPI.Query_thread() == self.MPI.THREAD_MULTIPLE):
            self._progress = _shared_progress(self.MPI, float(progress_interval))
        self._requests = []       # without the progress thread

    def layer_done(self, i):
        if not self.overlap or self.slices[i] is None:
            return
        if i in self.started:
            raise RuntimeError(
                "DistributedOptimizer: a second backward before the optimiser step; with "
                "overlap=True each step takes one backward (its gradients are already on "
                "their way to the other ranks). Use overlap=False to accumulate gradients")
        self.started.add(i)
        buf = self.model.flat_grads[self.slices[i]]
        if self.weight != 1.0:
            buf *= self.weight
        start = lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, buf,  # noqa: E731
                                             op=self.MPI.SUM)
        if self._progress is not None:
            self._progress.add(start)
        else:
            self._requests.append(start())
            self.MPI.Request.Testall(self._requests)   # moves the earlier ones on

    def finish(self):
        MPI = self.MPI
        flat = self.model.flat_grads
        if flat is None:                       # layers of several dtypes: array by array
            for g in self.model.grads.values():
                buf = np.ascontiguousarray(g) * g.dtype.type(self.weight)
                self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                g[...] = buf
            return
        if not self.overlap:
            if self.weight != 1.0:
                flat *= self.weight
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            return
        for i in range(len(self.slices) - 1, -1, -1):
            if i not in self.started:
                self.layer_done(i)
        pending = self._progress.take() if self._progress is not None else self._requests
        MPI.Request.Waitall(pending)
        self._requests = []
        self.started.clear()


def allreduce_gradients(model, comm=None, weight=None):
    """Sum the gradients over the ranks, each rank's weighted by ``weight``: one
    ``Allreduce`` over the model's flat gradient buffer.

    Parameters
    ----------
    model : Module
    comm : mpi4py communicator, optional
        ``MPI.COMM_WORLD`` by default.
    weight : float, optional
        This rank's share of the combined batch: its samples (or counted tokens) over
        the sum over all ranks. The default ``1 / size`` is right when every rank's loss
        averages over as many samples; give the share when shards differ, so that the
        result is the gradient of one process's mean loss over the combined batch.
    """
    reducer = _GradientReducer(model, comm, overlap=False)
    if weight is not None:
        reducer.weight = float(weight)
    reducer.finish()


class DistributedOptimizer:
    """A clstm optimiser whose ``step`` first sums the gradients over the ranks.

    ``opt = DistributedOptimizer(clstm.Adam(model), model)`` is the one changed line of
    a training loop (``model.backward(dout); opt.step()``); call
    :func:`broadcast_parameters` once before it, so every rank starts alike.

    Parameters
    ----------
    optimizer : clstm.optim.Optimizer
        Over ``model``'s parameters.
    model : Module
    comm : mpi4py communicator, optional
    overlap : bool, default True
        For a :class:`~clstm.Sequential`: the sum of a layer's gradients starts
        (non-blocking) as soon as the layer's backward is done, while the layers below it
        run. Then each step takes exactly one ``backward``; set False to accumulate
        several backward passes into one step.
    progress_interval : float, optional
        With overlap: run a helper thread that tests the pending sums this often
        (seconds), since MPICH moves a non-blocking sum on only inside MPI calls. Off by
        default: on a machine whose cores all compute, the thread costs more than it
        hides (see the README's measurements).

    Notes
    -----
    By default every rank's gradient counts ``1 / size`` (equal shards). When the ranks'
    losses average over different counts, call :meth:`set_local_count` with this rank's
    count *before* ``backward``. Other attributes (``lr``, ``state_dict``, ...) are the
    wrapped optimiser's. With overlap, the optimiser sets ``model.layer_done_hook``;
    set it back to None to use the model without it.
    """

    def __init__(self, optimizer, model, comm=None, overlap=True, progress_interval=None):
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "model", model)
        reducer = _GradientReducer(model, comm, overlap, progress_interval)
        object.__setattr__(self, "_reducer", reducer)
        if reducer.overlap and hasattr(model, "layers"):
            model.layer_done_hook = reducer.layer_done

    @property
    def comm(self):
        return self._reducer.comm

    def set_local_count(self, count):
        """This rank's samples (or counted tokens) in the coming step; one small
        allreduce finds the combined count, and the rank's weight is its share."""
        MPI = self._reducer.MPI
        total = self.comm.allreduce(float(count), op=MPI.SUM)
        self._reducer.weight = float(count) / total if total else 0.0

    def synchronize(self):
        """Finish the sum of the gradients now (e.g. to clip them before ``step``)."""
        self._reducer.finish()
        object.__setattr__(self, "_synced", True)

    def step(self):
        if not getattr(self, "_synced", False):
            self._reducer.finish()
        object.__setattr__(self, "_synced", False)
        self.optimizer.step()

    def zero_grad(self):
        self.model.zero_grad()

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        setattr(self.optimizer, name, value)

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r}, size={self.comm.Get_size()})"


# -------------------------------------------------------------------- fit's context

class Distributed:
    """What ``fit(..., distributed=...)`` runs on: a communicator and its policies.

    Parameters
    ----------
    comm : mpi4py communicator, optional
        ``MPI.COMM_WORLD`` by default.
    threads : int, optional
        Kernel threads per rank, set when training starts. Default: the node's cores
        over the ranks on the node (found with an MPI shared-memory split), or the CPUs
        the launcher bound the rank to; unless ``OMP_NUM_THREADS`` is set or the program
        chose a count with ``clstm.set_num_threads``, which are kept.
    overlap : bool, default True
        Overlap each layer's gradient sum with the backward of the layers below.
    progress_interval : float, optional
        As for :class:`DistributedOptimizer`.
    abort_on_error : bool, default True
        An exception on one rank during training calls ``comm.Abort`` (after printing
        it), so the other ranks are not left waiting in a collective.
    """

    def __init__(self, comm=None, *, threads=None, overlap=True, progress_interval=None,
                 abort_on_error=True):
        self.comm = _comm(comm)
        self.MPI = _mpi()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.threads = threads
        self.overlap = overlap
        self.progress_interval = progress_interval
        self.abort_on_error = abort_on_error
        self._reducer = None

    @property
    def is_root(self):
        return self.rank == 0

    # -- set-up -------------------------------------------------------------------------

    def agreed_seed(self, seed):
        """The seed every rank shuffles with: rank 0's (drawn there when None)."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0]) if self.is_root \
                else None
        return self.comm.bcast(seed, root=0)

    def shard(self, n):
        """This rank's slice of ``n`` rows."""
        lo, hi = shard_bounds(n, self.rank, self.size)
        return slice(lo, hi)

    def check_same(self, what, value):
        """ValueError on every rank when the ranks' ``value`` differ."""
        every = self.comm.allgather(value)
        if any(v != every[0] for v in every):
            raise ValueError(f"distributed fit: expected the same {what} on every rank "
                             f"(each rank passes the whole data set and reads its shard), "
                             f"got {every}")

    def local_threads(self):
        if self.threads is not None:
            return int(self.threads)
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            local_ranks = local.Get_size()
        finally:
            local.Free()
        visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return threads_per_rank(os.cpu_count() or 1, local_ranks, visible)

    def start(self, model, total, verbose, optimizer=None):
        """Before the first step: agree on the model and the steps per epoch, copy rank
        0's parameters (and a resumed optimiser's state) everywhere, set this rank's
        threads, give each rank its own dropout masks. Returns the verbosity for this
        rank (0 off rank 0)."""
        from . import _threads

        self.check_same("number of steps per epoch", total)
        broadcast_parameters(model, 0, self.comm)
        if optimizer is not None and self.any(optimizer.step_count):
            state = self.comm.bcast(optimizer.state_dict() if self.is_root else None, root=0)
            optimizer.load_state_dict(state)
        if self.threads is not None or not _threads_chosen(_threads):
            _threads.set_num_threads(self.local_threads())
        if self.size > 1:
            for layer in getattr(model, "layers", [model]):
                rng = getattr(layer, "_rng", None)
                if isinstance(rng, np.random.Generator):
                    # the same draw on every rank, then one stream per rank
                    layer._rng = np.random.default_rng([int(rng.integers(2**62)),
                                                        self.rank])
        self._reducer = _GradientReducer(model, self.comm, self.overlap,
                                         self.progress_interval)
        return verbose if self.is_root else 0

    def callbacks(self, callbacks):
        """Callbacks that write files (``rank0_only``) run on rank 0 alone."""
        if self.is_root:
            return callbacks
        return [cb for cb in callbacks if not getattr(cb, "rank0_only", False)]

    # -- the step -----------------------------------------------------------------------

    def train_step(self, model, step, state, optimizer, clip_norm):
        """:func:`clstm.training.train_step` over the ranks: (loss, count, correct,
        state, bad), the loss, count and correct of the global batch, the same on every
        rank, as is every decision (skip, raise, clip)."""
        from .optim import clip_grad_norm
        from .training import nonfinite_grads, step_forward

        xt, yt, mask, lb, reset = step
        model.zero_grad()
        count, loss, correct, dout = 0, 0.0, 0, None
        if xt.shape[1]:                          # a rank may hold no row of a small batch
            out, yt, mask, state = step_forward(model, step, state)
            if out is not None:       # None: a chunk past the end of its rows' sequences
                loss, dout, count, correct = model._loss(out, yt, mask)
        sums = np.array([count, loss * count if count else 0.0, correct or 0],
                        dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM)
        total = int(sums[0])
        if not total:
            return math.nan, 0, None, state, None
        g_loss = sums[1] / total
        g_correct = None if model.loss == "mse" else int(sums[2])
        if not math.isfinite(g_loss):
            return g_loss, total, g_correct, state, ("loss", float(g_loss))
        reducer = self._reducer
        reducer.weight = count / total
        try:
            if count:
                model.backward(dout, layer_done=reducer.layer_done)
        finally:
            reducer.finish()
        norm = (clip_grad_norm(model, clip_norm) if clip_norm is not None
                else nonfinite_grads(model))
        if not math.isfinite(norm):
            return g_loss, total, g_correct, state, ("gradients", norm)
        optimizer.step()
        return g_loss, total, g_correct, state, None

    # -- agreement ------------------------------------------------------------------------

    def reduce_tally(self, tally):
        """Sum an evaluation's tally (loss x count, count, correct) over the ranks."""
        sums = np.array([tally.loss_sum, tally.count, tally.correct], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM)
        tally.loss_sum, tally.count, tally.correct = float(sums[0]), int(sums[1]), int(sums[2])
        return tally

    def any(self, flag):
        """True on every rank when it is true on any rank."""
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def abort(self, exc):
        """Print the exception with this rank's number and end the whole job."""
        if self.size > 1 and self.abort_on_error:
            sys.stderr.write(f"clstm.distributed: rank {self.rank} of {self.size} failed; "
                             "aborting all ranks\n")
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            sys.stderr.flush()
            self.comm.Abort(1)


def _threads_chosen(threads_module):
    """True when OMP_NUM_THREADS is set or the program changed clstm's thread count."""
    from . import kernels

    default = min(max(1, kernels.openmp_max_threads()), threads_module.MAX_THREADS)
    return "OMP_NUM_THREADS" in os.environ or threads_module._num_threads != default


def context(distributed):
    """None (one process), or the :class:`Distributed` that ``distributed`` names: True
    (``MPI.COMM_WORLD``), a communicator, or a Distributed."""
    if distributed is None or distributed is False:
        return None
    if isinstance(distributed, Distributed):
        return distributed
    if distributed is True:
        return Distributed()
    if hasattr(distributed, "Allreduce") and hasattr(distributed, "Get_rank"):
        return Distributed(distributed)
    raise TypeError(f"distributed: expected None, True, an mpi4py communicator or a "
                    f"clstm.distributed.Distributed, got {type(distributed).__name__}")


def fit_hook(model, distributed, optimizer):
    """For ``fit_loop``: (the context or None, the optimiser to step). A
    :class:`DistributedOptimizer` passed to ``fit`` is unwrapped (fit sums the gradients
    itself) and, with ``distributed`` unset, gives its communicator."""
    if isinstance(optimizer, DistributedOptimizer):
        if distributed is None:
            distributed = Distributed(optimizer.comm)
        optimizer = optimizer.optimizer
        if getattr(model, "layer_done_hook", None) is not None:
            model.layer_done_hook = None
    return context(distributed), optimizer
