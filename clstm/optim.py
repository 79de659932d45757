"""Optimisers and gradient clipping for NumPy parameter dicts.

:class:`Adam`, :class:`AdamW` and :class:`SGD` reproduce the update rules of
``torch.optim.Adam``, ``torch.optim.AdamW`` and ``torch.optim.SGD`` (their
single-tensor, ``foreach=False`` implementations): given the same gradients
they follow the same trajectory up to float rounding.  :func:`clip_grad_norm`
is ``torch.nn.utils.clip_grad_norm_``, except where that overflows or turns
non-finite gradients into zeros.  ``step()`` holds a Ctrl-C back until its
update is complete.

An optimiser works on two dicts with the same keys, ``params`` and ``grads``
(name -> ndarray), or on a model object exposing them as ``.params`` and
``.grads`` (see ``DEVELOPERS.md``).  Parameters are updated *in place*: the
arrays are never rebound, because models hold views into them.

When every parameter is a view into one contiguous buffer, and the gradients
tile another buffer the same way (``clstm.LSTM``'s ``flat_params`` and
``flat_grads``), the whole model is updated with a handful of NumPy ufunc calls
over the flat buffers, with ``out=`` and no temporaries (in cache-sized
chunks, so that the passes of one update reuse the L2 cache).  Otherwise the
same calls run once per array.  Either way the optimiser state (``exp_avg``,
...) lives in one flat array per kind, in the parameters' dtype.
"""

import math
import threading
from collections.abc import Mapping
from types import SimpleNamespace

import numpy as np

from ._concurrency import ForkSafeLock

try:  # the C functions under the signal module's enum wrappers: ~5 us a step, not ~25
    import _signal as _sig
except ImportError:
    import signal as _sig

__all__ = ["Optimizer", "Adam", "AdamW", "SGD", "clip_grad_norm"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Bytes per array in one chunk of an update: about seven arrays are live at
# once, so 256 KiB each keeps a chunk's working set within a typical L2 cache.
_CHUNK_BYTES = 256 * 1024


# --------------------------------------------------------------------------
# hyperparameter validation

def _nonneg(name):
    def check(value):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"invalid {name}: expected a number >= 0, got {value!r}") from None
        # written as "not (a <= v < b)" so that NaN fails too
        if not (0.0 <= v < math.inf):
            raise ValueError(
                f"invalid {name}: expected a finite number >= 0, got {value!r}")
        return v
    return check


def _finite(name):
    def check(value):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"invalid {name}: expected a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"invalid {name}: expected a finite number, got {value!r}")
        return v
    return check


def _flag(name):
    def check(value):
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()  # np.load gives 0-d arrays
        if isinstance(value, (bool, np.bool_, int, np.integer)) and value in (0, 1):
            return bool(value)
        raise ValueError(f"invalid {name}: expected True or False, got {value!r}")
    return check


def _betas(value):
    try:
        b1, b2 = value
        b1, b2 = float(b1), float(b2)
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid betas: expected a pair of numbers in [0, 1), got {value!r}") from None
    for i, b in enumerate((b1, b2)):
        if not (0.0 <= b < 1.0):
            raise ValueError(
                f"invalid beta parameter at index {i}: expected 0 <= beta < 1, got {b!r}")
    return (b1, b2)


def _hyper(name, doc):
    """A validated, settable hyperparameter (so that schedules can change lr)."""
    def fget(self):
        return self._hp[name]

    def fset(self, value):
        self._hp[name] = self._checks[name](value)

    return property(fget, fset, doc=doc)


def _check_pair(params, grads):
    """Validate matching params/grads dicts; raise with expected vs got."""
    if not isinstance(params, Mapping) or not isinstance(grads, Mapping):
        raise TypeError(
            "params and grads must be dicts of name -> ndarray, got "
            f"{type(params).__name__} and {type(grads).__name__}")
    missing = [k for k in params if k not in grads]
    extra = [k for k in grads if k not in params]
    if missing or extra:
        raise ValueError(
            "params and grads must have the same keys; missing from grads: "
            f"{missing}, in grads but not in params: {extra}")
    if not params:
        raise ValueError("got an empty parameter dict: nothing to optimise")
    for name, p in params.items():
        g = grads[name]
        if not isinstance(p, np.ndarray):
            raise TypeError(
                f"params[{name!r}] must be a NumPy array, got {type(p).__name__}")
        if not isinstance(g, np.ndarray):
            raise TypeError(
                f"grads[{name!r}] must be a NumPy array, got {type(g).__name__}")
        if p.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"params[{name!r}] must be float32 or float64, got {p.dtype}")
        if g.shape != p.shape:
            raise ValueError(
                f"grads[{name!r}] has shape {g.shape}, expected {p.shape} "
                f"(the shape of params[{name!r}])")
        if g.dtype != p.dtype:
            raise ValueError(
                f"grads[{name!r}] has dtype {g.dtype}, expected {p.dtype} "
                f"(the dtype of params[{name!r}])")
        if not p.flags.writeable:
            raise ValueError(
                f"params[{name!r}] is read-only, but the optimiser updates it in place")
        if np.may_share_memory(p, g):
            raise ValueError(f"grads[{name!r}] shares memory with params[{name!r}]")
    return list(params)


def _chunks(p, g, st):
    """Split 1-D param/grad/state arrays into aligned chunks of _CHUNK_BYTES."""
    n = p.size
    step = _CHUNK_BYTES // p.dtype.itemsize
    if n <= step:
        yield p, g, st
        return
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield p[start:stop], g[start:stop], {k: v[start:stop] for k, v in st.items()}


# --------------------------------------------------------------------------
# Ctrl-C

class _HoldSigint:
    """Hold Ctrl-C (SIGINT) back for the duration of a block, then deliver it.

    An update stopped halfway would leave some parameters (or moments) updated and
    others not, a state no training step produces. Inside the block a SIGINT is only
    recorded; on exit the previous handler is restored and called, so Python's default
    raises KeyboardInterrupt right after the block. Signals reach only the main
    thread, so elsewhere (and under a handler installed outside Python) this does
    nothing.
    """

    __slots__ = ("previous", "frames")

    def __enter__(self):
        self.previous = None
        self.frames = []
        if threading.current_thread() is threading.main_thread():
            previous = _sig.getsignal(_sig.SIGINT)
            if previous is not None:  # None: set from C, could not be put back
                _sig.signal(_sig.SIGINT, self._record)
                self.previous = previous
        return self

    def _record(self, signum, frame):
        self.frames.append(frame)

    def __exit__(self, *exc):
        if self.previous is None:
            return False
        _sig.signal(_sig.SIGINT, self.previous)
        if self.frames:
            if callable(self.previous):
                self.previous(_sig.SIGINT, self.frames[0])
            elif self.previous == _sig.SIG_DFL:
                _sig.raise_signal(_sig.SIGINT)
        return False


# --------------------------------------------------------------------------
# optimisers

class Optimizer:
    """Base class: binding to params/grads, state storage, checkpoints.

    Subclasses define ``_hyper_checks`` (hyperparameter name -> validator),
    ``_kinds`` (names of the per-element state arrays), ``_prepare`` and
    ``_update``.  Not meant to be instantiated directly.
    """

    _hyper_checks = {}
    _kinds = ()
    _required_kinds = ()

    def __init__(self, params, grads, **hyper):
        # Two threads stepping one optimiser would interleave their read-modify-writes
        # of the parameters and moments: one update at a time.
        self._step_lock = ForkSafeLock()
        if grads is None:
            if isinstance(params, Mapping):
                raise TypeError(
                    "grads is required when params is a dict; pass "
                    "(params, grads) or a model with .params and .grads alone")
            if not (hasattr(params, "params") and hasattr(params, "grads")):
                raise TypeError(
                    "params must be a dict of name -> ndarray (with grads) or a "
                    f"model with .params and .grads, got {type(params).__name__}")
            self._model, self._pdict, self._gdict = params, None, None
        else:
            if not isinstance(params, Mapping):
                raise TypeError(
                    "pass a model alone (grads=None), or two dicts; got "
                    f"params of type {type(params).__name__} with grads")
            self._model, self._pdict, self._gdict = None, params, grads
        self._checks = self._hyper_checks
        self._hp = {}
        for key, value in hyper.items():
            setattr(self, key, value)
        self._check_combination(self._hp)
        self._step_count = 0
        self._state = {}       # kind -> (flat ndarray or None, {name: view})
        self._scratch = {}     # dtype -> two 1-D work buffers (see _work)
        self._bind(initial=True)

    # -- binding ------------------------------------------------------------

    def _sources(self):
        """(params, grads, flat_params, flat_grads) as they are now: a model's are read
        at every step, so a container that adopts the model later is followed."""
        if self._model is None:
            return self._pdict, self._gdict, None, None
        m = self._model
        return (m.params, m.grads,
                getattr(m, "flat_params", None), getattr(m, "flat_grads", None))

    def _bind(self, initial):
        """Check the parameters and lay out the state: one flat array per kind, in the
        order of ``params``, which is the order of a model's flat buffers (a
        :class:`clstm.module.Module` creates its views in that order), so that the state
        lines up element by element with ``flat_params``."""
        params, grads, flat_p, flat_g = self._sources()
        names = _check_pair(params, grads)
        if initial:
            self._names = names
            self._shapes = {n: params[n].shape for n in names}
            self._dtypes = {n: params[n].dtype for n in names}
            self._sizes = {n: params[n].size for n in names}
            dtypes = set(self._dtypes.values())
            self._dtype = dtypes.pop() if len(dtypes) == 1 else None
            self._offsets, off = {}, 0
            for n in names:
                self._offsets[n] = off
                off += self._sizes[n]
            self._size = off
        else:
            if set(names) != set(self._names):
                raise ValueError(
                    "the parameter names changed since the optimiser was created: "
                    f"expected {sorted(self._names)}, got {sorted(names)}")
            for n in names:
                p = params[n]
                if p.shape != self._shapes[n] or p.dtype != self._dtypes[n]:
                    raise ValueError(
                        f"params[{n!r}] is now {p.shape} {p.dtype}, expected "
                        f"{self._shapes[n]} {self._dtypes[n]} as when the "
                        "optimiser was created")
        # the exact objects, to notice a model that assigns new arrays
        self._p = {n: params[n] for n in self._names}
        self._g = {n: grads[n] for n in self._names}
        # The flat path: a model's own buffers, taken as they are (no search for them).
        self._flat = (flat_p is not None and flat_g is not None
                      and flat_p.size == self._size and flat_g.size == self._size)

    def _refresh(self):
        """Rebind if the model now holds different arrays (cheap identity check);
        returns the flat buffers to update, or (None, None) for the per-array path."""
        params, grads, flat_p, flat_g = self._sources()
        p, g = self._p, self._g
        if not (isinstance(params, Mapping) and isinstance(grads, Mapping)
                and len(params) == len(p) and len(grads) == len(g)
                and all(params.get(n) is p[n] and grads.get(n) is g[n] for n in p)):
            self._bind(initial=False)
            # an array assigned by hand lies outside the model's buffer
            self._flat = False
        return (flat_p, flat_g) if self._flat else (None, None)

    # -- storage ------------------------------------------------------------

    def _alloc(self):
        if self._dtype is not None:
            flat = np.zeros(self._size, dtype=self._dtype)
            views = {n: flat[o:o + self._sizes[n]].reshape(self._shapes[n])
                     for n, o in self._offsets.items()}
            return flat, views
        # mixed float32/float64 parameters: one array per name, each in its
        # parameter's dtype
        return None, {n: np.zeros(self._shapes[n], self._dtypes[n]) for n in self._names}

    def _ensure(self, kind):
        if kind not in self._state:
            self._state[kind] = self._alloc()

    # -- public API ---------------------------------------------------------

    @property
    def step_count(self):
        """int: number of ``step()`` calls so far (restored by ``load_state_dict``)."""
        return self._step_count

    @property
    def is_flat(self):
        """bool: True when updates run over the model's flat buffers (the fast path)."""
        return self._refresh()[0] is not None

    def step(self):
        """Update every parameter in place from the current gradients.

        A Ctrl-C (KeyboardInterrupt) that arrives during the update is held back until
        the update is complete, then raised: the parameters, the optimiser's state and
        ``step_count`` are never left half updated.
        """
        with self._step_lock, _HoldSigint():
            flat = self._refresh()
            self._prepare()
            self._step_count += 1
            c = self._constants()
            for p, g, st in self._segments(*flat):
                self._update(p, g, st, self._work(p), c)
            self._after_step()

    def _segments(self, flat_p, flat_g):
        """Yield ``(param, grad, {kind: state})`` pieces covering every element.

        Contiguous data goes in 1-D chunks of ``_CHUNK_BYTES`` so that the
        dozen passes of an update over one chunk hit the L2 cache instead of
        streaming the whole model through memory each time (measured about
        2x faster for models larger than the L3 cache), and so that the work
        buffers stay chunk-sized instead of doubling the memory footprint.
        """
        kinds = list(self._state)
        if flat_p is not None:
            yield from _chunks(flat_p, flat_g, {k: self._state[k][0] for k in kinds})
            return
        for n in self._names:
            p, g = self._p[n], self._g[n]
            st = {k: self._state[k][1][n] for k in kinds}
            if p.flags.c_contiguous and g.flags.c_contiguous:
                # state views are contiguous by construction
                yield from _chunks(p.reshape(-1), g.reshape(-1),
                                   {k: v.reshape(-1) for k, v in st.items()})
            else:
                yield p, g, st

    def _work(self, p):
        """Two scratch arrays shaped like ``p``, reused across steps."""
        buf = self._scratch.get(p.dtype)
        if buf is None or buf[0].size < p.size:
            size = max(p.size, _CHUNK_BYTES // p.dtype.itemsize)
            buf = self._scratch[p.dtype] = (np.empty(size, p.dtype), np.empty(size, p.dtype))
        return buf[0][:p.size].reshape(p.shape), buf[1][:p.size].reshape(p.shape)

    def zero_grad(self):
        """Set every gradient to zero in place."""
        flat_g = self._refresh()[1]
        if flat_g is not None:
            flat_g.fill(0)
        else:
            for g in self._g.values():
                g.fill(0)

    def state_dict(self):
        """Return a checkpoint of the optimiser as a flat dict.

        Returns
        -------
        dict
            ``"optimizer"`` (class name), ``"step"`` (int), one entry per
            hyperparameter (numbers, ``betas`` a pair), and one array per
            state kind and parameter under ``"<kind>/<name>"`` (copies).
            It round-trips through ``np.savez(path, **d)`` and
            ``np.load(path)``.
        """
        d = {"optimizer": type(self).__name__, "step": self._step_count}
        d.update(self._hp)
        for kind in self._kinds:
            if kind in self._state:
                views = self._state[kind][1]
                for n in self._names:
                    d[f"{kind}/{n}"] = views[n].copy()
        return d

    def load_state_dict(self, state_dict):
        """Restore a checkpoint made by :meth:`state_dict`.

        Parameters
        ----------
        state_dict : mapping
            A dict from :meth:`state_dict`, or the ``np.load`` of one saved
            with ``np.savez``.

        Raises
        ------
        ValueError
            If it is for another optimiser class, lacks an entry, has unknown
            entries, or its parameter names or shapes differ from this
            optimiser's.  Nothing is changed in that case.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping, got {type(state_dict).__name__}")

        def get(key):
            if key not in state_dict:
                raise ValueError(f"state dict has no {key!r} entry")
            value = state_dict[key]
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            return value

        cls = str(get("optimizer"))
        if cls != type(self).__name__:
            raise ValueError(
                f"state dict is for a {cls} optimiser, expected {type(self).__name__}")
        step = get("step")
        try:
            ok = (not isinstance(step, (bool, np.bool_, str))
                  and float(step).is_integer() and step >= 0)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"invalid step in state dict: expected an int >= 0, got {step!r}")
        hp = {k: check(get(k)) for k, check in self._checks.items()}
        self._check_combination(hp)

        known = set(self._checks) | {"optimizer", "step"}
        found = {}
        unknown = []
        for key in state_dict:
            if key in known:
                continue
            kind, sep, name = str(key).partition("/")
            if sep and kind in self._kinds:
                found.setdefault(kind, {})[name] = key
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"state dict has unknown entries: {sorted(map(str, unknown))}")
        expected = set(self._names)
        arrays = {}
        for kind, keys in found.items():
            missing = sorted(expected - set(keys))
            extra = sorted(set(keys) - expected)
            if missing or extra:
                raise ValueError(
                    f"state dict {kind!r} entries do not match the parameters: "
                    f"missing {missing}, unexpected {extra}")
            arrays[kind] = {}
            for n, key in keys.items():
                a = np.asarray(state_dict[key])
                if a.shape != self._shapes[n]:
                    raise ValueError(
                        f"state dict entry {key!r} has shape {a.shape}, expected "
                        f"{self._shapes[n]} (the shape of params[{n!r}])")
                if not (np.issubdtype(a.dtype, np.floating)
                        or np.issubdtype(a.dtype, np.integer)):
                    raise ValueError(
                        f"state dict entry {key!r} has dtype {a.dtype}, expected a float array")
                arrays[kind][n] = a
        for kind in self._needed_kinds(hp, int(step)):
            if kind not in arrays:
                raise ValueError(f"state dict has no {kind!r} entries")

        # all checks passed: commit
        self._hp = hp
        self._step_count = int(step)
        for kind in self._kinds:
            if kind in arrays:
                self._ensure(kind)
                views = self._state[kind][1]
                for n, a in arrays[kind].items():
                    np.copyto(views[n], a, casting="unsafe")
            else:
                self._state.pop(kind, None)

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self._hp.items())
        return (f"{type(self).__name__}({hp}; {len(self._names)} arrays, "
                f"{self._size} elements, step {self._step_count})")

    # -- subclass hooks -----------------------------------------------------

    def _check_combination(self, hp):
        pass

    def _needed_kinds(self, hp, step):
        return self._required_kinds

    def _prepare(self):
        pass

    def _after_step(self):
        pass

    def _constants(self):
        raise NotImplementedError

    def _update(self, p, g, st, tmp, c):
        raise NotImplementedError


class Adam(Optimizer):
    """Adam, with exactly ``torch.optim.Adam``'s update rule.

    Parameters
    ----------
    params : dict of str to ndarray, or model
        Parameters to update in place, float32 or float64.  A model object
        with ``.params`` and ``.grads`` (and optionally ``.flat_params`` /
        ``.flat_grads``) may be passed alone; it is re-read at every step, so
        arrays the model reassigns are followed.
    grads : dict of str to ndarray, optional
        Gradients, same keys, shapes and dtypes as ``params``.  Required when
        ``params`` is a dict.
    lr : float, default 1e-3
        Learning rate, >= 0.  Settable between steps (``opt.lr = ...``).
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment averages, in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0
        L2 penalty: ``weight_decay * param`` is added to the gradient.
    amsgrad : bool, default False
        Normalise by the running maximum of the second moment (AMSGrad).

    Attributes
    ----------
    step_count : int
        Steps taken so far.
    is_flat : bool
        Whether updates run over single flat buffers.

    Notes
    -----
    At step t, with g the gradient (plus ``weight_decay * p`` here; see
    :class:`AdamW` for the decoupled form)::

        m = lerp(m, g, 1 - beta1)
        v = beta2 * v + (1 - beta2) * g * g
        v_hat = max(v_hat, v)                       (amsgrad only)
        p -= lr / (1 - beta1**t) * m / (sqrt(v or v_hat) / sqrt(1 - beta2**t) + eps)

    The state (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) has the
    parameters' dtype.  ``state_dict`` / ``load_state_dict`` checkpoint it.

    Examples
    --------
    >>> opt = Adam(net, lr=1e-3)                       # doctest: +SKIP
    >>> net.zero_grad(); net.backward(dy); opt.step()   # doctest: +SKIP
    """

    _hyper_checks = {
        "lr": _nonneg("lr"),
        "betas": _betas,
        "eps": _nonneg("eps"),
        "weight_decay": _nonneg("weight_decay"),
        "amsgrad": _flag("amsgrad"),
    }
    _kinds = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    lr = _hyper("lr", "float: learning rate.")
    betas = _hyper("betas", "(float, float): moment decay rates.")
    eps = _hyper("eps", "float: denominator term.")
    weight_decay = _hyper("weight_decay", "float: weight decay factor.")
    amsgrad = _hyper("amsgrad", "bool: whether AMSGrad is on.")

    def __init__(self, params, grads=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False):
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad)

    def _needed_kinds(self, hp, step):
        if step == 0:
            return ()  # zero state is the initial state
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hp["amsgrad"] else ())

    def _prepare(self):
        self._ensure("exp_avg")
        self._ensure("exp_avg_sq")
        if self._hp["amsgrad"]:
            self._ensure("max_exp_avg_sq")

    def _constants(self):
        hp = self._hp
        lr, wd = hp["lr"], hp["weight_decay"]
        beta1, beta2 = hp["betas"]
        # Python doubles, in torch's order of operations, so that the scalars
        # handed to the array ops are the same numbers torch uses.
        step = float(self._step_count)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        return SimpleNamespace(
            decay=1 - lr * wd if (self._decoupled and wd != 0) else None,
            l2=wd if (not self._decoupled and wd != 0) else None,
            w1=1 - beta1,
            beta2=beta2,
            one_minus_beta2=1 - beta2,
            bc2_sqrt=bias_correction2 ** 0.5,
            eps=hp["eps"],
            neg_step_size=-step_size,
            amsgrad=hp["amsgrad"],
        )

    def _update(self, p, g, st, tmp, c):
        t1, t2 = tmp
        m, v = st["exp_avg"], st["exp_avg_sq"]
        if c.decay is not None:
            np.multiply(p, c.decay, out=p)
        if c.l2 is not None:
            # torch: grad = grad.add(param, alpha=wd), a new tensor; the
            # user's gradient is left untouched
            np.multiply(p, c.l2, out=t1)
            np.add(g, t1, out=t1)
            g = t1
        # m.lerp_(g, w): torch's lerp switches formula at w = 0.5
        np.subtract(g, m, out=t2)
        if abs(c.w1) < 0.5:
            np.multiply(t2, c.w1, out=t2)
            np.add(m, t2, out=m)
        else:
            np.multiply(t2, 1 - c.w1, out=t2)
            np.subtract(g, t2, out=m)
        # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        np.multiply(v, c.beta2, out=v)
        np.multiply(g, c.one_minus_beta2, out=t2)
        np.multiply(t2, g, out=t2)
        np.add(v, t2, out=v)
        if c.amsgrad:
            vmax = st["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        # denom = sqrt(v) / sqrt(bc2) + eps   (g is dead now; t1 reusable)
        np.sqrt(v, out=t1)
        np.divide(t1, c.bc2_sqrt, out=t1)
        np.add(t1, c.eps, out=t1)
        # p.addcdiv_(m, denom, value=-step_size) = p + (-step_size * m) / denom
        np.multiply(m, c.neg_step_size, out=t2)
        np.divide(t2, t1, out=t2)
        np.add(p, t2, out=p)


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    Same parameters as :class:`Adam`, except that ``weight_decay`` (default
    0.01) shrinks the parameters directly, ``p *= 1 - lr * weight_decay``,
    before the Adam step, instead of being added to the gradient.
    """

    _decoupled = True

    def __init__(self, params, grads=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.01, amsgrad=False):
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : dict of str to ndarray, or model
        Parameters to update in place (see :class:`Adam`).
    grads : dict of str to ndarray, optional
        Gradients, same keys, shapes and dtypes as ``params``.
    lr : float, default 1e-3
        Learning rate, >= 0 (torch's default).
    momentum : float, default 0
        Momentum factor, >= 0.
    dampening : float, default 0
        Dampening for momentum.
    weight_decay : float, default 0
        L2 penalty added to the gradient, >= 0.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    Notes
    -----
    With g the gradient plus ``weight_decay * p``::

        b = g                                   (first step)
        b = momentum * b + (1 - dampening) * g  (later steps)
        g = g + momentum * b if nesterov else b (when momentum != 0)
        p -= lr * g

    The momentum buffer is created on the first step with momentum != 0 and
    appears in ``state_dict`` from then on.
    """

    _hyper_checks = {
        "lr": _nonneg("lr"),
        "momentum": _nonneg("momentum"),
        "dampening": _finite("dampening"),
        "weight_decay": _nonneg("weight_decay"),
        "nesterov": _flag("nesterov"),
    }
    _kinds = ("momentum_buffer",)

    lr = _hyper("lr", "float: learning rate.")
    momentum = _hyper("momentum", "float: momentum factor.")
    dampening = _hyper("dampening", "float: dampening for momentum.")
    weight_decay = _hyper("weight_decay", "float: L2 penalty.")
    nesterov = _hyper("nesterov", "bool: Nesterov momentum.")

    def __init__(self, params, grads=None, lr=1e-3, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov=False):
        super().__init__(params, grads, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _check_combination(self, hp):
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening == 0, got "
                f"momentum={hp['momentum']!r}, dampening={hp['dampening']!r}")

    def _prepare(self):
        # torch creates the buffer as a copy of the first gradient it sees
        self._first = self._hp["momentum"] != 0 and "momentum_buffer" not in self._state
        if self._hp["momentum"] != 0:
            self._ensure("momentum_buffer")

    def _constants(self):
        hp = self._hp
        return SimpleNamespace(
            l2=hp["weight_decay"] if hp["weight_decay"] != 0 else None,
            momentum=hp["momentum"],
            alpha=1 - hp["dampening"],
            nesterov=hp["nesterov"],
            neg_lr=-hp["lr"],
            first=self._first,
        )

    def _update(self, p, g, st, tmp, c):
        t1, t2 = tmp
        if c.l2 is not None:
            np.multiply(p, c.l2, out=t1)
            np.add(g, t1, out=t1)
            g = t1
        if c.momentum != 0:
            buf = st["momentum_buffer"]
            if c.first:
                np.copyto(buf, g)
            else:
                np.multiply(buf, c.momentum, out=buf)
                if c.alpha == 1:
                    np.add(buf, g, out=buf)
                else:
                    np.multiply(g, c.alpha, out=t2)
                    np.add(buf, t2, out=buf)
            if c.nesterov:
                np.multiply(buf, c.momentum, out=t2)
                np.add(g, t2, out=t2)
                g = t2
            else:
                g = buf
        np.multiply(g, c.neg_lr, out=t2)
        np.add(p, t2, out=p)


# --------------------------------------------------------------------------
# clipping

def _grad_arrays(grads):
    """The arrays to clip: one flat view when they tile a buffer, else all."""
    hint = None
    if isinstance(grads, np.ndarray):
        d = {"0": grads}
    elif isinstance(grads, Mapping):
        d = dict(grads)
    elif isinstance(grads, (list, tuple)):
        d = {str(i): a for i, a in enumerate(grads)}
    elif hasattr(grads, "grads"):
        hint = getattr(grads, "flat_grads", None)
        if not isinstance(grads.grads, Mapping):
            raise TypeError(
                f"model.grads must be a dict, got {type(grads.grads).__name__}")
        d = dict(grads.grads)
    else:
        raise TypeError(
            "grads must be a dict or list of arrays, an array, or a model with "
            f".grads, got {type(grads).__name__}")
    for name, a in d.items():
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            raise TypeError(
                f"gradient {name!r} must be a float ndarray, got "
                f"{getattr(a, 'dtype', type(a).__name__)}")
    if not d:
        return []
    if hint is not None and hint.size == sum(a.size for a in d.values()) \
            and all(np.may_share_memory(a, hint) for a in d.values()):
        return [hint]     # the model's own buffer: one pass over it
    return list(d.values())


def _array_norm(x, p):
    """The p-norm of a 1-D float array as a Python float.

    NaN when ``x`` holds a NaN, inf when it holds an inf (and no NaN), else the norm
    with no overflow or underflow in the intermediate sums: a float32 sum of squares
    overflows from a norm of about 1.8e19 (entries of 1e30 give inf), so when the fast
    sum leaves the range where it is exact, the sum is redone in float64 on ``x``
    divided by its largest magnitude.
    """
    if p == 2:
        with np.errstate(over="ignore", invalid="ignore"):  # handled just below
            s = float(np.dot(x, x))  # BLAS, in x's dtype: exact inside the bounds below
        info = np.finfo(x.dtype)
        # below the lower bound the squares that flushed to zero could matter
        if x.size * float(info.tiny) / float(info.eps) <= s <= float(info.max):
            return math.sqrt(s)
    amax = float(np.maximum(x.max(), -x.min()))  # np.maximum keeps a NaN
    if p == math.inf or amax == 0.0 or not math.isfinite(amax):
        return amax
    total = 0.0
    step = _CHUNK_BYTES // 8
    for start in range(0, x.size, step):
        y = x[start:start + step].astype(np.float64)
        y /= amax  # every |y| <= 1: no power below can overflow
        if p == 2:
            total += float(np.dot(y, y))
        else:
            np.abs(y, out=y)
            if p != 1:
                np.power(y, p, out=y)
            total += float(y.sum())
    return amax * total ** (1.0 / p)  # inf only when the norm itself exceeds float64


def _combine_norms(norms, p):
    """The p-norm of the per-array norms, with the same care as :func:`_array_norm`."""
    if not norms:
        return 0.0
    if any(math.isnan(n) for n in norms):
        return math.nan
    top = max(norms)
    if p == math.inf or top == 0.0 or top == math.inf:
        return top
    return top * sum((n / top) ** p for n in norms) ** (1.0 / p)


def clip_grad_norm(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale gradients in place so that their total norm is at most ``max_norm``.

    The equivalent of ``torch.nn.utils.clip_grad_norm_``: the norm is taken
    over all gradients as if concatenated into one vector, and when
    ``max_norm / (total_norm + 1e-6) < 1`` every gradient is multiplied by
    that coefficient.

    Two differences from PyTorch, both where PyTorch loses information: the
    norm is computed without overflow (float32 gradients of 1e30 have a norm
    of 3.2e31 here, inf in PyTorch, which then multiplies them by 0), and
    gradients holding NaN or inf are left unchanged (PyTorch multiplies them
    by 0 or NaN): the non-finite norm is returned for the caller to act on.
    A finite gradient is not turned into zero for ``max_norm > 0`` (unless
    ``max_norm / norm`` underflows float64 itself, below 5e-324).

    Parameters
    ----------
    grads : dict of str to ndarray, list of ndarray, ndarray, or model
        The gradients, or a model with ``.grads`` (and optionally
        ``.flat_grads``).
    max_norm : float
        Largest allowed norm, >= 0.
    norm_type : float, default 2.0
        Order p > 0 of the norm; ``float("inf")`` for the max norm.
    error_if_nonfinite : bool, default False
        Raise instead of returning when the total norm is NaN or infinite.

    Returns
    -------
    float
        Total norm of the gradients before clipping: NaN if any gradient is
        NaN, else inf if any is infinite.

    Raises
    ------
    FloatingPointError
        With ``error_if_nonfinite=True`` and a non-finite total norm.
    """
    max_norm = _nonneg("max_norm")(max_norm)
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        p = math.nan
    if not p > 0:
        raise ValueError(
            f"invalid norm_type: expected a number > 0 or inf, got {norm_type!r}")
    arrays = _grad_arrays(grads)
    total = _combine_norms([_array_norm(a.reshape(-1), p)  # a view; only read
                            for a in arrays if a.size], p)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise FloatingPointError(
                f"the total norm of order {p} of the gradients is {total}, so it "
                "cannot be clipped; pass error_if_nonfinite=False to leave them "
                "unchanged and get the norm back")
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for a in arrays:
            # NumPy multiplies in a's dtype, where a coefficient below the smallest
            # normal number (float32: 1.2e-38) loses its digits or becomes 0 even
            # when the products are representable: apply it in two halves then.
            if coef >= float(np.finfo(a.dtype).tiny) or coef == 0.0:
                np.multiply(a, coef, out=a)
            else:
                half = math.sqrt(coef)
                np.multiply(a, half, out=a)
                np.multiply(a, half, out=a)
    return total
