"""The base of every layer and model: one owner of named parameters and gradients.

A :class:`Module` holds its parameters as named views (``params``, PyTorch's names and
shapes) into one flat buffer (``flat_params``), and its gradients the same way
(``grads`` into ``flat_grads``), so that an optimiser updates the whole module with a few
vector operations over two arrays. A container (:class:`clstm.Sequential`) *adopts* its
children's parameters once, explicitly (:meth:`Module._adopt`): their values move into
slices of the container's buffers and the children's views are rebound there, so the
child used alone and the container see the same memory. An optimiser takes the module
and reads its flat buffers; it never has to find out where the arrays live.

Also here, for every module: ``train``/``eval``, ``zero_grad``, ``state_dict`` /
``load_state_dict``, ``parameters``/``named_parameters``, per-thread state for what a
forward leaves for its backward, and backward calls that add into ``grads`` one at a time.

Saving and loading: each class is the one place that knows its config. ``get_config``
gives the constructor's arguments as JSON values, ``from_config`` builds from them,
``read_config`` checks one read from an untrusted file field by field, and
``parameter_shapes`` says which parameters a config implies without building anything.
Every public subclass registers itself by its class name (:data:`Module.registry`), so a
new layer is saved, loaded and used in a :class:`clstm.Sequential` by defining those four
methods on it, nowhere else.
"""
import functools
import threading

import numpy as np

from ._concurrency import ForkSafeLock, TrainingFlag
from ._config import BadConfig
from ._validate import as_float_array, check_shape

__all__ = ["Module", "module_config", "build_module"]


class _PerThreadAttribute:
    """An attribute with one value per thread (see ``Module._saved_for_backward``)."""

    def __init__(self, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj._thread_state, self.name, None)

    def __set__(self, obj, value):
        setattr(obj._thread_state, self.name, value)


def _one_at_a_time(backward):
    """A backward that holds the module's gradient lock: backward calls from several
    threads add into ``grads`` one after another, never interleaved."""
    @functools.wraps(backward)
    def locked(self, *args, **kwargs):
        with self._grad_lock.lock:
            return backward(self, *args, **kwargs)
    return locked


class Module:
    """Named parameters and gradients over one flat buffer each, modes, calling.

    What a forward leaves for its backward (the attributes a subclass names in
    ``_saved_for_backward``) is kept per thread, so threads sharing one model (a server's
    request threads) never read each other's, and each thread's backward pairs with its
    own forward.

    Attributes
    ----------
    params, grads : dict of str to ndarray
        Parameters (PyTorch's names and shapes) and their gradients, views into
        ``flat_params`` and ``flat_grads``; ``backward`` adds into ``grads``.
    flat_params, flat_grads : ndarray or None
        The buffers (None for a module without parameters, or a container whose
        children's dtypes differ).
    training : bool
        True in training mode (the default), False after ``eval()``.
    """

    #: Public subclasses that define get_config or read_config, by class name, for
    #: save/load (a class registers itself). A class of clstm's own is never displaced:
    #: a user's class that reuses its name stays unregistered (so it is not saved as, or
    #: loaded in place of, clstm's class).
    registry = {}
    _saved_for_backward = ()
    training = TrainingFlag()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__name__
        current = Module.registry.get(name)
        # Only a class that describes itself registers: a subclass that inherits its
        # config methods would be saved as what it is not.
        describes_itself = "get_config" in cls.__dict__ or "read_config" in cls.__dict__
        if describes_itself and not name.startswith("_") and (
                current is None or not current.__module__.startswith("clstm.")):
            Module.registry[name] = cls
        for name in cls.__dict__.get("_saved_for_backward", ()):
            setattr(cls, name, _PerThreadAttribute(name))
        if "backward" in cls.__dict__:
            cls.backward = _one_at_a_time(cls.__dict__["backward"])

    def __init__(self):
        self._thread_state = threading.local()
        self._grad_lock = ForkSafeLock()
        self.params = {}
        self.grads = {}
        self.flat_params = None
        self.flat_grads = None
        self.training = True

    # -- parameters -----------------------------------------------------------------------

    def _create_parameters(self, initial, dtype):
        """Own the named parameters ``initial`` (name -> initial values, in order): one
        flat buffer for them and one, zeroed, for their gradients."""
        total = sum(int(np.size(v)) for v in initial.values())
        self.flat_params = np.empty(total, dtype=dtype)
        self.flat_grads = np.zeros(total, dtype=dtype)
        self.params, self.grads = {}, {}
        offset = 0
        for name, value in initial.items():
            shape = np.shape(value)
            size = int(np.prod(shape, dtype=np.int64))
            view = self.flat_params[offset:offset + size].reshape(shape)
            view[...] = value
            self.params[name] = view
            self.grads[name] = self.flat_grads[offset:offset + size].reshape(shape)
            offset += size

    def _adopt(self, flat_params, flat_grads):
        """Move the parameters and gradients into the given 1-D buffers (slices of a
        container's), in ``params`` order, and rebind every view there. Called once, by
        the container that takes this module."""
        offset = 0
        for name in list(self.params):
            p, g = self.params[name], self.grads[name]
            p_view = flat_params[offset:offset + p.size].reshape(p.shape)
            g_view = flat_grads[offset:offset + p.size].reshape(p.shape)
            p_view[...] = p
            g_view[...] = g
            self.params[name], self.grads[name] = p_view, g_view
            offset += p.size
        self.flat_params, self.flat_grads = flat_params, flat_grads

    def parameters(self):
        """The parameter arrays, in order."""
        return list(self.params.values())

    def named_parameters(self):
        """``(name, array)`` pairs, in order."""
        return list(self.params.items())

    def zero_grad(self):
        """Set every gradient to zero (in place: the views stay valid)."""
        with self._grad_lock:
            if self.flat_grads is not None:
                self.flat_grads.fill(0)
            else:
                for g in self.grads.values():
                    g.fill(0)

    def state_dict(self):
        """A copy of the parameters, by name."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state):
        """Copy parameters in (in place), checking that names and shapes match exactly.

        Raises
        ------
        ValueError
            Missing or unexpected names, or a shape that differs, saying which.
        """
        missing = sorted(set(self.params) - set(state))
        unexpected = sorted(set(state) - set(self.params))
        if missing or unexpected:
            raise ValueError(f"load_state_dict: expected the names {sorted(self.params)}; "
                             f"missing {missing}, unexpected {unexpected}")
        converted = {}
        for name, value in state.items():
            target = self.params[name]
            value = as_float_array(value, target.dtype, name)
            check_shape(value, target.shape, name)
            converted[name] = value
        for name, value in converted.items():     # all checked: nothing half loaded
            self.params[name][...] = value

    # -- modes and calls --------------------------------------------------------------------

    def train(self, mode=True):
        """Training mode (dropout active), or eval mode with ``mode=False``; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode; returns self."""
        return self.train(False)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _require_cache(self, cache):
        # ValueError, as clstm.LSTM.backward: the call is fine, what it needs is missing
        if cache is None:
            raise ValueError(f"{type(self).__name__}.backward: expected a forward pass to "
                             "differentiate (in this thread), got none")
        return cache

    # -- configuration ----------------------------------------------------------------------

    def get_config(self):
        """The constructor's arguments as JSON values (weights excluded)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe itself")

    @classmethod
    def from_config(cls, config):
        """A new module built from :meth:`get_config` output (fresh weights)."""
        return cls(**config)

    @classmethod
    def read_config(cls, fields):
        """The config of a file checked field by field, before anything is built.

        ``fields`` is a :class:`clstm._config.Fields` over the JSON object that
        :meth:`get_config` wrote; read every field through it (strict JSON types and
        ranges) and return the checked config. Raises ``clstm._config.BadConfig``; this
        default refuses, so a class that does not define it cannot be loaded.
        """
        raise BadConfig(f"{fields.where}: a {cls.__name__} cannot be loaded from a file")

    @classmethod
    def parameter_shapes(cls, config):
        """``(name, shape, dtype)`` of each parameter, in order, that a module built from
        the checked ``config`` has: what :func:`clstm.load` matches a file's arrays
        against before building it. None by default."""
        return iter(())

    @classmethod
    def parameter_count(cls, config):
        """How many parameters :meth:`parameter_shapes` lists (override it where a config
        can claim millions without listing them)."""
        return sum(1 for _ in cls.parameter_shapes(config))


def module_config(module):
    """``{"type": class name, **module.get_config()}``: what a container saves of a child.

    Raises
    ------
    ValueError
        For a module whose class is not the registered one of its name (a subclass saved
        as its base class would load without its own behaviour) or that cannot describe
        itself.
    """
    kind = type(module)
    if Module.registry.get(kind.__name__) is not kind:
        raise ValueError(f"cannot describe a layer of type {kind.__name__} (from "
                         f"{kind.__module__}): expected a registered Module subclass, one "
                         f"that defines get_config ({', '.join(sorted(Module.registry))})")
    try:
        config = module.get_config()
    except NotImplementedError as e:
        raise ValueError(f"cannot describe a layer of type {kind.__name__}: {e}") from None
    return {"type": kind.__name__, **config}


def build_module(config, **overrides):
    """The module :func:`module_config` describes, with fresh weights (``overrides``, such
    as a seed, join the config's arguments).

    Raises
    ------
    ValueError
        An unknown type, or arguments the class rejects.
    """
    if not isinstance(config, dict) or config.get("type") not in Module.registry:
        raise ValueError(f"layer config: expected a dict with 'type' in "
                         f"{sorted(Module.registry)}, got {config!r}")
    args = {k: v for k, v in config.items() if k != "type"}
    try:
        return Module.registry[config["type"]].from_config({**args, **overrides})
    except (TypeError, ValueError) as e:
        raise ValueError(f"layer config {config!r}: {e}") from None
