"""Saving and loading models, and weights from Keras and PyTorch.

File format (``format_version`` 1)
----------------------------------
One ``.npz`` archive (a zip of ``.npy`` arrays, readable by ``numpy.load``) holding

* every parameter under its ``state_dict`` name (``"weight_ih_l0"`` for an LSTM,
  ``"1.weight_ih_l0"`` for a Sequential or a ready model), and
* ``"__clstm_config__"``: a uint8 array of UTF-8 JSON,
  ``{"format_version": 1, "class": "Regressor", "config": {...constructor arguments...},
  "clstm_version": "..."}``.

:func:`load` is safe on files from anywhere. Nothing is unpickled, so a file can never
run code. Before the model is built (which allocates its parameters), the config is
checked field by field with strict JSON types and sane ranges, the parameter names,
shapes and dtypes it implies are computed from it, and the archive's members are matched
against them through their ``.npy`` headers; each member's data is then read with a bound
of exactly the bytes its shape implies (a deflated member cannot inflate further, and
members that would expand to more than 16 times the file are refused as a bomb). So a
refusal costs about what the file is, never what it claims. Anything else than what
:func:`save` writes is refused with a ``ValueError`` saying, in a short message, what was
expected and what was found. :func:`save` writes to a temporary file in the target's
directory, fsyncs it and renames it over the target, so a crash or an error leaves
either the old file or the new one, never a partial file.

Optimiser state is not saved (see ``Optimizer.state_dict``).
"""
import contextlib
import json
import os
import tempfile

import numpy as np

from ._npz_reader import Refused as _Refused
from ._npz_reader import check_header as _check_npy
from ._npz_reader import open_archive as _open_archive
from ._npz_reader import read_data as _read_data
from ._npz_reader import read_header as _read_npy_header
from ._npz_reader import short as _short
from ._npz_reader import short_text as _short_text
from . import models as _models  # noqa: F401  (registers the model classes)
from ._config import BadConfig as _BadConfig
from ._config import read_module_config as _read_module_config
from ._config import what as _what
from .gru import GRU
from .lstm import LSTM
from .module import Module

__all__ = ["save", "load", "FORMAT_VERSION", "lstm_from_keras", "lstm_to_keras",
           "lstm_from_keras_layers", "lstm_to_keras_layers", "gru_from_keras", "gru_to_keras",
           "to_torch_state_dict", "from_torch_state_dict"]

FORMAT_VERSION = 1
CONFIG_KEY = "__clstm_config__"


def _saveable():
    """{name: class} of the modules save/load handle: the registered classes that read
    their own config back (clstm.module.Module.read_config)."""
    return {name: cls for name, cls in Module.registry.items()
            if cls.read_config.__func__ is not Module.read_config.__func__}


# ------------------------------------------------------------------------- configs

def _model_config(model):
    """{"class": ..., "config": ...} for a model of one of the saveable classes."""
    name, classes = type(model).__name__, _saveable()
    if classes.get(name) is not type(model):
        raise ValueError(f"save: expected a model of class {sorted(classes)}, got "
                         f"{type(model).__module__}.{type(model).__qualname__}")
    return {"class": name, "config": model.get_config()}


def _json_default(value):
    # numpy scalars sneak into configs from user arguments (np.int64(32) hidden units)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"a {type(value).__name__} in the model's config cannot be saved "
                    "as JSON")


# --------------------------------------------------------------------------- saving

def _default_mode():
    """The permission bits a plain open() would give a new file (0o666 minus umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path, write):
    """Call ``write(file)`` on a temporary file, then move it over ``path``.

    The temporary file lives in the target's directory (``os.replace`` is atomic only
    within one file system) and is fsynced before the rename, so that after a crash the
    target is the old file or the complete new one. On any error it is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(model, path):
    """Save a model's configuration and weights to one ``.npz`` file, atomically.

    Parameters
    ----------
    model : LSTM, Sequential, LanguageModel, Regressor or Classifier
        Sequentials of LSTM, Embedding, Dense, Dropout and LastStep layers only.
    path : str or os.PathLike
        Written exactly as given (no ``.npz`` is appended); replaced if it exists.

    Raises
    ------
    ValueError
        A model (or a layer) of a class that cannot be described in the config.
    """
    path = os.fspath(path)
    header = dict(format_version=FORMAT_VERSION, **_model_config(model))
    from . import __version__
    header["clstm_version"] = __version__
    try:
        text = json.dumps(header, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save: the model's config cannot be written as JSON: {e}") from None
    arrays = model.state_dict()
    arrays[CONFIG_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _atomic_write(path, lambda f: np.savez(f, **arrays))


# -------------------------------------------------------------------------- loading
#
# load() reads files from anywhere (the module docstring says in which order it checks
# them); clstm._npz_reader does the bounded reading of the archive itself.

_MAX_CONFIG_BYTES = 1 << 20  # save writes a few hundred bytes per layer
# a weight count this close to the config's is reported name by name; beyond it, only
# the counts are (listing them could take longer than the file is worth)
_NEAR_MISS = 100


def _describe_start(head):
    if not head:
        return "an empty file"
    if head[:1] == b"\x80":
        return ("a pickle, which is refused: unpickling can run arbitrary code")
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    return f"a file starting with {head[:8]!r}"


def _names(names, limit=5):
    """A list of names for a message, the first few only."""
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return "[" + ", ".join(_short(n, 40) for n in names[:limit]) + more + "]"


def _label(key):
    return f"{CONFIG_KEY!r}" if key == CONFIG_KEY else f"weight {_short(key)}"


def _read_header(archive, members, path):
    """The checked header of the archive's config member: {"class", "config", ...}."""
    if CONFIG_KEY not in members:
        raise _Refused(f"{path}: expected a {CONFIG_KEY!r} entry (the model's config), "
                       f"got only {_names(sorted(members))}: not a file written by "
                       "clstm.save")
    npy = _read_npy_header(archive, members[CONFIG_KEY], path, _label(CONFIG_KEY))
    if npy.dtype != np.uint8 or len(npy.shape) != 1 or npy.shape[0] > _MAX_CONFIG_BYTES:
        raise _Refused(f"{path}: expected {CONFIG_KEY!r} as a 1-D uint8 array of at most "
                       f"{_MAX_CONFIG_BYTES} bytes, got dtype {_short_text(str(npy.dtype))}, "
                       f"shape {_short(npy.shape)}")
    raw = _read_data(archive, members[CONFIG_KEY], npy, path, _label(CONFIG_KEY),
                     np.uint8, npy.shape)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"),
                            object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _BadConfig as e:
        raise _Refused(f"{path}: the config: {e}") from None
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; deep nesting recurses
    except (ValueError, RecursionError) as e:
        raise _Refused(f"{path}: expected the config as UTF-8 JSON, got undecodable data: "
                       f"{type(e).__name__}: {_short_text(str(e))}") from e
    if type(header) is not dict:
        raise _Refused(f"{path}: expected the config as a JSON object, got {_what(header)}")
    version = header.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise _Refused(f"{path}: expected format_version {FORMAT_VERSION}, got "
                       f"{_short(version)}" + (" (written by a newer clstm?)"
                                               if type(version) is int and version > 1
                                               else ""))
    name, classes = header.get("class"), _saveable()
    if type(name) is not str or name not in classes:
        raise _Refused(f"{path}: expected a model class in {sorted(classes)}, got "
                       f"{_short(name)}")
    if type(header.get("config")) is not dict:
        raise _Refused(f"{path}: expected the constructor arguments as a JSON object "
                       f"under 'config', got {_what(header.get('config'))}")
    if type(header.get("clstm_version", "")) is not str:
        raise _Refused(f"{path}: expected clstm_version as a string, got "
                       f"{_what(header['clstm_version'])}")
    unknown = sorted(set(header) - {"format_version", "class", "config", "clstm_version"})
    if unknown:
        raise _Refused(f"{path}: expected the header fields format_version, class, config "
                       f"and clstm_version, got also {_short(unknown)}")
    return header


def _unique_keys(pairs):
    """json's object hook: a dict, refusing a key given twice (json keeps the last)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise _BadConfig(f"expected each key once in a JSON object, got "
                             f"{_short(key)} more than once")
        result[key] = value
    return result


def _no_constant(name):
    raise _BadConfig(f"expected finite numbers, got {name}")


def _read_weights(archive, members, cls, config, path):
    """{name: array} of every parameter, checked against what the config implies.

    In this order, each step bounded by the previous one: the number of weights, every
    member's .npy header (a pickle is named as one wherever it is), the names, every
    shape and dtype, and only then the data.
    """
    names = set(members) - {CONFIG_KEY}
    # Count first: a config may claim a million layers, and an archive hold thousands
    # of members, and listing either would cost more than the file is worth. (A near
    # miss goes on to name the differences.)
    count = cls.parameter_count(config)
    if abs(count - len(names)) > _NEAR_MISS:
        raise _Refused(f"{path}: expected {count} weights for this config, got "
                       f"{len(names)} in the archive")
    headers = {name: _read_npy_header(archive, members[name], path, _label(name))
               for name in sorted(names)}
    expected = {name: (shape, dtype) for name, shape, dtype in cls.parameter_shapes(config)}
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    if missing or unexpected:
        raise _Refused(f"{path}: expected the weights that the config describes; missing "
                       f"{_names(missing)}, unexpected {_names(unexpected)}")
    for name, (shape, dtype) in expected.items():  # every header before any data
        _check_npy(headers[name], members[name], path, _label(name), dtype, shape)
    return {name: _read_data(archive, members[name], headers[name], path, _label(name),
                             dtype, shape)
            for name, (shape, dtype) in expected.items()}


def _check_weights(model, arrays, path):
    """The built model's parameters against the arrays read for it.

    A backstop: the arrays were read to the config's shapes already, so this fails only
    if a class's constructor and its parameter_shapes disagree.
    """
    params = model.params
    if sorted(params) != sorted(arrays) or any(
            params[n].shape != a.shape or params[n].dtype != a.dtype
            for n, a in arrays.items()):
        raise ValueError(f"{path}: the {type(model).__name__} the config builds does not "
                       "have the parameters clstm.io expects (a clstm bug)")


def load(path):
    """Load a model saved by :func:`save`; safe on files from anywhere.

    Nothing in the file runs as code (no pickle), and a file costs no more to refuse
    than it holds: the config's sizes are checked against the arrays the archive holds
    before the model is built, and every read is bounded by what the config implies.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    LSTM, Sequential, LanguageModel, Regressor or Classifier
        In training mode, as a freshly built model is.

    Raises
    ------
    FileNotFoundError
        No file at ``path`` (and the OSError of a file that cannot be opened).
    ValueError
        Anything but a file :func:`save` could have written, with a short message: not
        an npz archive, a truncated or corrupt one, pickled content, a missing or
        unknown config or format version, a config field of the wrong JSON type or out
        of range, duplicate, missing or unexpected members, or weights whose shapes or
        dtypes differ from those of the model the config describes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"clstm.load: expected a model file, got no file at "
                                f"{path!r}")
    try:
        name, config, arrays = _read_model_file(path)
    except _Refused as e:
        # a plain ValueError for the caller; a parser's exception stays its cause
        raise ValueError(str(e)) from e.__cause__
    try:
        model = Module.registry[name].from_config(config)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: the config cannot build a {name}: "
                         f"{type(e).__name__}: {_short_text(str(e), 200)}") from e
    _check_weights(model, arrays, path)
    model.load_state_dict(arrays)
    return model


def _read_model_file(path):
    """(class name, config, {name: array}) of a model file, everything checked."""
    with open(path, "rb") as f:
        head = f.read(8)
        if not head.startswith(b"PK"):
            raise _Refused(f"{path}: expected a clstm model file (an .npz zip archive), "
                           f"got {_describe_start(head)}")
        archive, members = _open_archive(f, path)
        with archive:
            header = _read_header(archive, members, path)
            name = header["class"]
            cls = Module.registry[name]
            try:
                config = _read_module_config(cls, header["config"], "config")
            except _BadConfig as e:
                raise _Refused(f"{path}: the config cannot build a {name}: {e}") from None
            return name, config, _read_weights(archive, members, cls, config, path)


# ---------------------------------------------------------------------------- Keras

def _keras_kernels(kernel, recurrent_kernel, gates):
    """A Keras layer's kernel (I, gates * H) and recurrent kernel (H, gates * H) as
    arrays, checked against each other, and I, H (the LSTM's and the GRU's)."""
    kernel = np.asarray(kernel)
    recurrent_kernel = np.asarray(recurrent_kernel)
    if kernel.ndim != 2 or kernel.shape[1] % gates or kernel.shape[1] == 0:
        raise ValueError(f"kernel: expected shape (input_size, {gates} * units), got "
                         f"{kernel.shape}")
    I, H = kernel.shape[0], kernel.shape[1] // gates
    if recurrent_kernel.shape != (H, gates * H):
        raise ValueError(f"recurrent_kernel: expected shape {(H, gates * H)} (from the "
                         f"kernel's {gates * H} columns), got {recurrent_kernel.shape}")
    return kernel, recurrent_kernel, I, H


def lstm_from_keras(kernel, recurrent_kernel, bias=None, *, dtype=None):
    """A one-layer clstm.LSTM with the weights of a Keras ``LSTM`` layer.

    Keras computes ``z = x @ kernel + h @ recurrent_kernel + bias`` and splits ``z`` into
    the gates i, f, c, o, which are our i, f, g, o in the same order; so the weights are
    transposed, and the single bias goes to ``bias_ih_l0`` with ``bias_hh_l0`` zero.
    ``lstm_from_keras(*layer.get_weights())`` converts a layer directly.

    Only Keras' defaults match our cell: ``activation="tanh"``,
    ``recurrent_activation="sigmoid"`` (old Keras 1 used hard_sigmoid), no dropout at
    inference. Keras layers are batch-first; the returned LSTM is time-major unless you
    set ``net.batch_first = True``.

    Parameters
    ----------
    kernel : array_like, shape (input_size, 4 * H)
    recurrent_kernel : array_like, shape (H, 4 * H)
    bias : array_like, shape (4 * H,), optional
        None for a layer built with ``use_bias=False``.
    dtype : {"float32", "float64"}, optional
        Default: the kernel's, if float64, else float32.

    Returns
    -------
    LSTM

    Raises
    ------
    ValueError
        Shapes that do not fit together, saying which.
    """
    kernel, recurrent_kernel, I, H = _keras_kernels(kernel, recurrent_kernel, gates=4)
    bias = np.zeros(4 * H) if bias is None else np.asarray(bias)
    if bias.shape != (4 * H,):
        raise ValueError(f"bias: expected shape {(4 * H,)}, got {bias.shape}")
    if dtype is None:
        dtype = "float64" if kernel.dtype == np.float64 else "float32"
    net = LSTM(I, H, dtype=dtype)
    net.load_state_dict({"weight_ih_l0": kernel.T, "weight_hh_l0": recurrent_kernel.T,
                         "bias_ih_l0": bias, "bias_hh_l0": np.zeros(4 * H)})
    return net


def lstm_to_keras(net, layer=0):
    """Keras ``LSTM`` weights ``[kernel, recurrent_kernel, bias]`` of one layer.

    The two biases are summed into Keras' single one; pass the list to
    ``keras_layer.set_weights``.

    Raises
    ------
    ValueError
        A peephole, projected or bidirectional LSTM (see :func:`lstm_to_keras_layers`
        for the last), or a layer out of range.
    """
    if net.peephole:
        raise ValueError("lstm_to_keras: expected an LSTM without peepholes, got "
                         "peephole=True")
    if net.bidirectional:
        raise ValueError("lstm_to_keras: expected a unidirectional LSTM, got "
                         "bidirectional=True (lstm_to_keras_layers gives a Keras "
                         "Bidirectional layer's weights)")
    if not 0 <= layer < net.num_layers:
        raise ValueError(f"lstm_to_keras: expected layer in [0, {net.num_layers}), got "
                         f"{layer}")
    return lstm_to_keras_layers(net)[layer]


# Keras' Bidirectional wrapper combines the two directions' outputs by its merge_mode;
# a clstm.LSTM (as torch.nn.LSTM) concatenates them, forward direction first: "concat".
_KERAS_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _check_merge_mode(merge_mode):
    if merge_mode is not None and not isinstance(merge_mode, str):
        raise TypeError(f"merge_mode: expected 'concat', got {type(merge_mode).__name__}")
    if merge_mode != "concat":
        why = ("one of Keras' modes, but " if merge_mode in _KERAS_MERGE_MODES
               else "not a Keras merge mode; and ")
        raise ValueError(
            f"merge_mode: expected 'concat' (a clstm.LSTM concatenates the two directions' "
            f"outputs, forward first, as Keras' default Bidirectional does), got "
            f"{merge_mode!r}: {why}a bidirectional clstm.LSTM cannot represent it (build "
            f"it as concat and combine the two halves of the output yourself)")


def _keras_direction(weights, where, I, H, dtype):
    """(w_ih, w_hh, b_ih, b_hh) in our layout from one Keras LSTM's [kernel,
    recurrent_kernel(, bias)], checked against the input width I (None: any) and H
    (None: taken from this kernel). Returns (arrays, I, H)."""
    kernel, recurrent_kernel, bias = (list(weights) + [None])[:3]
    kernel, recurrent_kernel = np.asarray(kernel), np.asarray(recurrent_kernel)
    if kernel.ndim != 2 or kernel.shape[1] % 4 or kernel.shape[1] == 0:
        raise ValueError(f"{where} kernel: expected shape (input_size, 4 * units), got "
                         f"{kernel.shape}")
    if H is None:
        H = kernel.shape[1] // 4
    if I is None:
        I = kernel.shape[0]
    if kernel.shape != (I, 4 * H):
        raise ValueError(f"{where} kernel: expected shape {(I, 4 * H)}, got {kernel.shape}")
    if recurrent_kernel.shape != (H, 4 * H):
        raise ValueError(f"{where} recurrent_kernel: expected shape {(H, 4 * H)}, got "
                         f"{recurrent_kernel.shape}")
    bias = np.zeros(4 * H, dtype) if bias is None else np.asarray(bias)
    if bias.shape != (4 * H,):
        raise ValueError(f"{where} bias: expected shape {(4 * H,)}, got {bias.shape}")
    return (kernel.T, recurrent_kernel.T, bias, np.zeros(4 * H, dtype)), I, H


def lstm_from_keras_layers(*layers, bidirectional=False, merge_mode="concat", dtype=None):
    """A clstm.LSTM with the weights of stacked Keras ``LSTM`` or ``Bidirectional(LSTM)``
    layers, one after the other (every layer but the last built with
    ``return_sequences=True``).

    Each argument is one Keras layer's ``get_weights()`` list:

    * ``LSTM``: ``[kernel, recurrent_kernel, bias]`` (``[kernel, recurrent_kernel]`` with
      ``use_bias=False``), converted as in :func:`lstm_from_keras`;
    * ``Bidirectional(LSTM(...))`` (with ``bidirectional=True``): the forward layer's
      list followed by the backward layer's, 6 arrays (4 with ``use_bias=False``). The
      forward layer becomes direction 0 of a layer and the backward layer direction 1
      (``..._reverse``): Keras runs it over the reversed sequence and, with
      ``return_sequences``, reverses its outputs back, so that output t holds both
      directions at step t, as here.

    ``clstm.lstm_from_keras_layers(bi.get_weights(), bidirectional=True)`` converts one
    ``bi = Bidirectional(LSTM(H, return_sequences=True))``; two stacked LSTM layers:
    ``lstm_from_keras_layers(l1.get_weights(), l2.get_weights())``.

    Parameters
    ----------
    *layers : lists of arrays
        One per Keras layer, in order; layer k > 0 reads what layer k-1 puts out
        (``units`` features, or 2 * ``units`` for Bidirectional).
    bidirectional : bool, default False
        The layers are Keras ``Bidirectional`` wrappers around ``LSTM``.
    merge_mode : "concat"
        Keras' ``Bidirectional(merge_mode=...)`` of those layers. Only its default,
        "concat", is what a bidirectional clstm.LSTM computes; "sum", "mul", "ave" and
        None are refused with a ValueError (a stack of them would not even have the
        same layer inputs).
    dtype : {"float32", "float64"}, optional
        Default: the first kernel's, if float64, else float32.

    Returns
    -------
    LSTM
        ``num_layers = len(layers)``, time-major (set ``net.batch_first = True`` for
        Keras' batch-first layout), with ``bias_ih`` = Keras' bias and ``bias_hh`` zero.

    Raises
    ------
    TypeError
        A layer that is not a list of arrays, or a merge_mode or bidirectional of the
        wrong type.
    ValueError
        No layer, a list of the wrong length, shapes that do not fit together (each
        message names the layer, direction and array), or a merge_mode other than
        "concat".
    """
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"bidirectional: expected True or False, got {bidirectional!r}")
    _check_merge_mode(merge_mode)
    if not layers:
        raise ValueError("lstm_from_keras_layers: expected at least one layer's "
                         "get_weights() list, got none")
    D = 2 if bidirectional else 1
    counts = (2 * D, 3 * D)          # arrays per layer: without bias, with bias
    first_len = None
    for k, weights in enumerate(layers):
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"layer {k}: expected the list of arrays get_weights() returns, "
                            f"got {type(weights).__name__}")
        if len(weights) not in counts:
            kind = "Bidirectional(LSTM)" if bidirectional else "LSTM"
            raise ValueError(f"layer {k}: expected {counts[1]} arrays (a Keras {kind}'s "
                             f"get_weights(); {counts[0]} with use_bias=False), got "
                             f"{len(weights)}")
        if first_len is None:
            first_len = len(weights)
        elif len(weights) != first_len:
            raise ValueError(f"layer {k}: expected {first_len} arrays as layer 0 has (all "
                             f"layers with bias or all without), got {len(weights)}")
    has_bias = first_len == counts[1]
    per = 3 if has_bias else 2
    if dtype is None:
        dtype = "float64" if np.asarray(layers[0][0]).dtype == np.float64 else "float32"
    state, I, H, input_size = {}, None, None, None
    for k, weights in enumerate(layers):
        for d in range(D):
            sfx = ("", "_reverse")[d]
            where = (f"layer {k}" + ((" forward", " backward")[d] if D == 2 else ""))
            arrays, I_k, H = _keras_direction(weights[d * per:(d + 1) * per], where,
                                              I, H, dtype)
            if input_size is None:
                input_size = I_k
            for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), arrays):
                state[f"{name}_l{k}{sfx}"] = value
        I = D * H                       # what the next layer reads
    net = LSTM(input_size, H, len(layers), bidirectional=bool(bidirectional), dtype=dtype)
    net.load_state_dict(state)
    return net


def lstm_to_keras_layers(net):
    """Keras weights of every layer of a clstm.LSTM: one list per layer, for
    ``keras_layer.set_weights`` of the matching ``LSTM`` (``[kernel, recurrent_kernel,
    bias]``) or ``Bidirectional(LSTM(...))`` (the forward layer's three arrays, then the
    backward layer's; merge_mode "concat"). The two biases are summed into Keras' single
    one; a bias-free LSTM gives ``[kernel, recurrent_kernel]`` per direction
    (``use_bias=False``). The inverse of :func:`lstm_from_keras_layers`.

    Raises
    ------
    TypeError
        Something that is not a clstm.LSTM.
    ValueError
        Peepholes or a projection (Keras' LSTM has neither).
    """
    if not isinstance(net, LSTM):
        raise TypeError(f"lstm_to_keras_layers: expected a clstm.LSTM, got "
                        f"{type(net).__name__}")
    if net.peephole:
        raise ValueError("lstm_to_keras_layers: expected an LSTM without peepholes (Keras' "
                         "LSTM has none), got peephole=True")
    if net.proj_size:
        raise ValueError(f"lstm_to_keras_layers: expected an LSTM without projection "
                         f"(Keras' LSTM has none), got proj_size={net.proj_size}")
    p, out = net.params, []
    for k in range(net.num_layers):
        weights = []
        for sfx in ("", "_reverse")[:net.num_directions]:
            weights += [p[f"weight_ih_l{k}{sfx}"].T.copy(), p[f"weight_hh_l{k}{sfx}"].T.copy()]
            if net.bias:
                weights.append(p[f"bias_ih_l{k}{sfx}"] + p[f"bias_hh_l{k}{sfx}"])
        out.append(weights)
    return out


# Keras' GRU stores its gates z, r, h (our z, r, n); ours are r, z, n. Column blocks of
# Keras' kernels in our order:
_KERAS_GRU_BLOCKS = (1, 0, 2)


def _keras_gru_reorder(a, H):
    """Keras' gate blocks z, r, h along the last axis -> PyTorch's r, z, n (the
    permutation is its own inverse)."""
    return np.concatenate([a[..., b * H:(b + 1) * H] for b in _KERAS_GRU_BLOCKS], axis=-1)


def gru_from_keras(kernel, recurrent_kernel, bias=None, *, dtype=None):
    """A one-layer clstm.GRU with the weights of a Keras ``GRU(reset_after=True)`` layer.

    Keras computes the input part ``x @ kernel + bias[0]`` and the recurrent part
    ``h @ recurrent_kernel + bias[1]`` and splits each into the gates z, r, h; with
    ``reset_after=True`` (Keras 2's and 3's default) r multiplies the recurrent part of
    h *with* its bias, which is PyTorch's GRU. So the weights are transposed and their
    gate blocks reordered to r, z, n; ``bias[0]`` becomes ``bias_ih_l0`` and
    ``bias[1]`` ``bias_hh_l0``. ``gru_from_keras(*layer.get_weights())`` converts a
    layer directly. Only Keras' default activations (tanh, sigmoid) match our cell.
    Keras layers are batch-first; the returned GRU is time-major unless you set
    ``net.batch_first = True``.

    Parameters
    ----------
    kernel : array_like, shape (input_size, 3 * H)
    recurrent_kernel : array_like, shape (H, 3 * H)
    bias : array_like, shape (2, 3 * H), optional
        None for a layer built with ``use_bias=False`` (the GRU then has no biases).
    dtype : {"float32", "float64"}, optional
        Default: the kernel's, if float64, else float32.

    Returns
    -------
    GRU

    Raises
    ------
    ValueError
        Shapes that do not fit together, and the weights of a ``reset_after=False``
        layer (a bias of shape (3 * H,)): that GRU applies r before the recurrent
        product, a different cell that clstm does not have.
    """
    kernel, recurrent_kernel, I, H = _keras_kernels(kernel, recurrent_kernel, gates=3)
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape == (3 * H,):
            raise ValueError(f"bias: expected shape {(2, 3 * H)} (a Keras GRU with "
                             f"reset_after=True), got {bias.shape}: the weights of a GRU "
                             f"with reset_after=False, which applies the reset gate before "
                             f"the recurrent product; clstm's GRU (PyTorch's) cannot run it")
        if bias.shape != (2, 3 * H):
            raise ValueError(f"bias: expected shape {(2, 3 * H)}, got {bias.shape}")
    if dtype is None:
        dtype = "float64" if kernel.dtype == np.float64 else "float32"
    net = GRU(I, H, bias=bias is not None, dtype=dtype)
    state = {"weight_ih_l0": _keras_gru_reorder(kernel, H).T,
             "weight_hh_l0": _keras_gru_reorder(recurrent_kernel, H).T}
    if bias is not None:
        state["bias_ih_l0"] = _keras_gru_reorder(bias[0], H)
        state["bias_hh_l0"] = _keras_gru_reorder(bias[1], H)
    net.load_state_dict(state)
    return net


def gru_to_keras(net, layer=0, *, reverse=False):
    """Keras ``GRU(reset_after=True)`` weights of one layer and direction:
    ``[kernel, recurrent_kernel, bias]`` with bias (2, 3 * H), or ``[kernel,
    recurrent_kernel]`` for a GRU without bias (Keras' ``use_bias=False``); pass the
    list to ``keras_layer.set_weights``.

    Raises
    ------
    ValueError
        A layer out of range, or ``reverse`` for a unidirectional GRU.
    """
    if not 0 <= layer < net.num_layers:
        raise ValueError(f"gru_to_keras: expected layer in [0, {net.num_layers}), got "
                         f"{layer}")
    if reverse and not net.bidirectional:
        raise ValueError("gru_to_keras: expected reverse=False for a unidirectional GRU, "
                         "got reverse=True")
    p, H = net.params, net.hidden_size
    sfx = f"l{layer}{'_reverse' if reverse else ''}"
    weights = [_keras_gru_reorder(p[f"weight_ih_{sfx}"].T, H),
               _keras_gru_reorder(p[f"weight_hh_{sfx}"].T, H)]
    if net.bias:
        weights.append(np.stack([_keras_gru_reorder(p[f"bias_ih_{sfx}"], H),
                                 _keras_gru_reorder(p[f"bias_hh_{sfx}"], H)]))
    return weights


# -------------------------------------------------------------------------- PyTorch

def _renamer(prefixes):
    """name -> torch name: the layer index replaced by ``prefixes[index]``.

    A str prefix (for an LSTM, whose names have no index) is put in front of every name.
    """
    if prefixes is None:
        return lambda name: name
    if isinstance(prefixes, str):
        return lambda name: f"{prefixes}.{name}" if prefixes else name
    table = {str(k): v for k, v in prefixes.items()}

    def rename(name):
        index, _, rest = name.partition(".")
        if index not in table:
            return name
        return f"{table[index]}.{rest}" if table[index] else rest
    return rename


def to_torch_state_dict(model, prefixes=None, *, tensors=True):
    """The model's parameters under PyTorch's names, e.g. for ``module.load_state_dict``.

    Our names already are PyTorch's: ``"weight_ih_l0"`` (``nn.LSTM``), ``"weight"`` and
    ``"bias"`` (``nn.Embedding``, ``nn.Linear``), prefixed by the layer index as in
    ``nn.Sequential`` (``"1.weight_ih_l0"``). A torch model whose submodules have other
    attribute names needs ``prefixes``.

    Parameters
    ----------
    model : LSTM or Sequential (or a ready model)
    prefixes : dict of int to str, or str, optional
        For a Sequential, layer index -> torch attribute name, e.g.
        ``{0: "embed", 1: "lstm", 2: "fc"}`` gives ``"lstm.weight_ih_l0"``; indexes not
        listed keep their number. For an LSTM, one prefix for every name.
    tensors : bool, default True
        ``torch.Tensor`` values (imports torch); False gives NumPy copies.

    Returns
    -------
    dict
    """
    rename = _renamer(prefixes)
    state = {rename(name): value for name, value in model.state_dict().items()}
    if tensors:
        import torch  # only here: clstm never needs torch otherwise
        state = {name: torch.from_numpy(value) for name, value in state.items()}
    return state


def from_torch_state_dict(model, state, prefixes=None):
    """Load a PyTorch ``state_dict`` (tensors or arrays) into the model, in place.

    The inverse of :func:`to_torch_state_dict` with the same ``prefixes``. Names must
    match exactly (a bias-free torch layer has no bias entries: give it zero biases).

    Raises
    ------
    ValueError
        Missing or unexpected names, or shapes that differ.
    """
    rename = _renamer(prefixes)
    ours = {rename(name): name for name in model.params}
    arrays = {}
    for name, value in state.items():
        if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
            value = value.detach().cpu().numpy()
        arrays[ours.get(name, name)] = np.asarray(value)
    model.load_state_dict(arrays)
    return model
