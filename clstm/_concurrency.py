"""What lets one model serve many threads: kernel workspaces that no two calls share,
forward caches kept per thread, and locks that survive a fork.

A layer's kernel workspace is tens of MB at large shapes, and glibc maps a fresh one on
every allocation (page faults and zeroing: ~10% of a training step at S5 in float64), so
workspaces are reused. They used to be kept one per layer on the model: two threads
calling the same model then wrote into the same buffers and read each other's gates
(silently wrong outputs, NaN weights after a few concurrent training steps). Here a
call *takes* workspaces from a pool and gives them back when it no longer needs them
(inference: at its end; training: when backward has consumed them), so calls in flight
never share one; a call that finds the pool empty allocates.

What a forward leaves for its backward is kept per thread (:class:`PerThread`), so the
forward and backward of one thread pair up whatever other threads do meanwhile.
"""
import os
import threading
import weakref

import numpy as np

# Every lock here is replaced in a forked child: a lock held by another thread at the
# fork would never be released there (that thread does not exist in the child).
_fork_safe = weakref.WeakSet()


def _after_fork_in_child():
    for owner in list(_fork_safe):
        owner._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ForkSafeLock:
    """A ``threading.Lock`` that a forked child finds released.

    ``with lock.lock:`` uses the current ``threading.Lock`` directly (C methods only),
    for paths where the 0.2-0.3 µs of this class's own ``__enter__``/``__exit__`` count;
    read ``.lock`` at each use, never keep it (a fork replaces it)."""

    def __init__(self):
        self.lock = threading.Lock()
        _fork_safe.add(self)

    def _reset_after_fork(self):
        self.lock = threading.Lock()

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


class WorkspacePool:
    """Kernel workspaces of one dtype, reused across calls and never shared by two.

    Keeps at most ``limit_bytes`` of idle buffers (larger ones are dropped when given
    back), so a single long sequence does not pin its memory for the model's lifetime;
    :meth:`clear` drops them all.

    Each thread first reuses what it gave back itself (up to ``per_thread`` buffers,
    kept per thread, so no lock is taken: a thread's forward after forward, or forward
    after backward, takes back the buffers its last call returned); only beyond that do
    buffers go through the shared, locked list. The lock, the scan and the sort cost
    1-1.5 µs per call, which at T = 20, B = 4, H = 32 was 5% of a forward.
    """

    per_thread = 8

    def __init__(self, dtype, limit_bytes):
        self.dtype = np.dtype(dtype)
        self.limit_bytes = limit_bytes
        self._idle = []
        self._lock = ForkSafeLock()
        self._mine = _ThreadIdle()
        self._generation = 0         # clear() drops every thread's own buffers too

    def _own(self):
        """This thread's idle buffers, emptied if clear() ran since."""
        mine = self._mine
        if mine.generation != self._generation:
            mine.buffers = []
            mine.nbytes = 0
            mine.generation = self._generation
        return mine

    def take(self, size, spare=None):
        """A buffer of ``size`` elements (a view into a possibly larger idle one).

        ``spare``: a list of buffers the calling thread holds and no longer needs (its
        last forward's, which a new forward replaces); one that fits is taken from it
        first, with neither lock nor pool in between. Give back what is left of it."""
        if spare:
            for i in range(len(spare) - 1, -1, -1):
                if spare[i].size >= size:
                    return spare.pop(i)[:size]
        mine = self._own()
        own = mine.buffers
        for i in range(len(own) - 1, -1, -1):     # the last given back first
            buffer = own[i]
            if buffer.size >= size:
                del own[i]
                mine.nbytes -= buffer.nbytes
                return buffer[:size]
        with self._lock:
            for i, buffer in enumerate(self._idle):
                if buffer.size >= size:
                    del self._idle[i]
                    return buffer[:size]
        return np.empty(size, dtype=self.dtype)

    def give(self, buffer):
        """Return a buffer from :meth:`take`; it may be handed to another call at once."""
        base = buffer if buffer.base is None else buffer.base
        mine = self._own()
        if len(mine.buffers) < self.per_thread and \
                mine.nbytes + base.nbytes <= self.limit_bytes:
            mine.buffers.append(base)
            mine.nbytes += base.nbytes
            return
        with self._lock:
            idle = sum(b.nbytes for b in self._idle)
            if idle + base.nbytes <= self.limit_bytes:
                self._idle.append(base)
                self._idle.sort(key=lambda b: b.size)   # smallest that fits is taken

    def clear(self):
        """Drop the idle buffers: the shared ones now, each thread's own at its next
        call (this thread's now)."""
        with self._lock:
            self._idle.clear()
            self._generation += 1
        self._own()

    @property
    def idle_bytes(self):
        """Bytes kept idle: the shared buffers and this thread's own."""
        own = self._own().nbytes
        with self._lock:
            return own + sum(b.nbytes for b in self._idle)


class _ThreadIdle(threading.local):
    """A pool's idle buffers of one thread, and their bytes."""
    generation = -1
    buffers = ()
    nbytes = 0


class PerThread(threading.local):
    """One value per thread (what a forward keeps for the backward of the same thread).
    A ``threading.local`` itself: reading the value is one attribute lookup."""

    value = None

    def get(self):
        return self.value

    def set(self, value):
        self.value = value

    def pop(self):
        value = self.value
        self.value = None
        return value


# -- modes --------------------------------------------------------------------------------
# predict() and evaluate() used to switch the whole model to eval() and back: with two
# threads, one thread's restore switched the other's prediction back into training mode
# (dropout on) halfway. The switch is now per thread.

_mode = threading.local()


class inference_mode:
    """Within the block, every layer reads as in eval mode, for the calling thread only;
    the models' own ``training`` flags are untouched."""

    def __enter__(self):
        self._previous = getattr(_mode, "inference", False)
        _mode.inference = True
        return self

    def __exit__(self, *exc):
        _mode.inference = self._previous
        return False


class TrainingFlag:
    """A model's ``training`` attribute: its own setting, read as False inside
    :class:`inference_mode` in the reading thread."""

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if getattr(_mode, "inference", False):
            return False
        return obj.__dict__.get("_training", True)

    def __set__(self, obj, value):
        obj.__dict__["_training"] = bool(value)
