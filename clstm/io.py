"""Saving and loading models, and weights from Keras and PyTorch.

File format (``format_version`` 1)
----------------------------------
One ``.npz`` archive (a zip of ``.npy`` arrays, readable by ``numpy.load``) holding

* every parameter under its ``state_dict`` name (``"weight_ih_l0"`` for an LSTM,
  ``"1.weight_ih_l0"`` for a Sequential or a ready model), and
* ``"__clstm_config__"``: a uint8 array of UTF-8 JSON,
  ``{"format_version": 1, "class": "Regressor", "config": {...constructor arguments...},
  "clstm_version": "..."}``.

:func:`load` reads it with ``allow_pickle=False``, so a file can never run code; builds
the model from the config; and checks that the weights have exactly the names, shapes and
dtype of that model before copying them in. Anything else is refused with a
``ValueError`` saying what was expected and what was found. :func:`save` writes to a
temporary file in the target's directory, fsyncs it and renames it over the target, so a
crash or an error leaves either the old file or the new one, never a partial file.

Optimiser state is not saved (see ``Optimizer.state_dict``).
"""
import contextlib
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .lstm import LSTM
from .models import Classifier, LanguageModel, Regressor, Sequential, layer_config

__all__ = ["save", "load", "FORMAT_VERSION", "lstm_from_keras", "lstm_to_keras",
           "to_torch_state_dict", "from_torch_state_dict"]

FORMAT_VERSION = 1
CONFIG_KEY = "__clstm_config__"
_CLASSES = {cls.__name__: cls for cls in
            (LSTM, Sequential, LanguageModel, Regressor, Classifier)}


# ------------------------------------------------------------------------- configs

def _model_config(model):
    """{"class": ..., "config": ...} for a model of one of the saveable classes."""
    name = type(model).__name__
    if _CLASSES.get(name) is not type(model):
        raise ValueError(f"save: expected a model of class {sorted(_CLASSES)}, got "
                         f"{type(model).__module__}.{type(model).__qualname__}")
    if isinstance(model, LSTM):
        config = {k: v for k, v in layer_config(model).items() if k != "type"}
    else:
        config = model.get_config()
    return {"class": name, "config": config}


def _build(name, config):
    cls = _CLASSES[name]
    if cls is LSTM:
        args = dict(config)
        positional = [args.pop("input_size", None), args.pop("hidden_size", None),
                      args.pop("num_layers", 1)]
        return LSTM(*positional, **args)
    return cls.from_config(config)


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

def _describe_start(head):
    if not head:
        return "an empty file"
    if head[:1] == b"\x80":
        return ("a pickle, which is refused: unpickling can run arbitrary code")
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    return f"a file starting with {head[:8]!r}"


def _read_arrays(path):
    """Every array of the archive, read eagerly (so that truncation shows here)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(b"PK"):
        raise ValueError(f"{path}: expected a clstm model file (an .npz zip archive), "
                         f"got {_describe_start(head)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as e:
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise ValueError(f"{path}: expected arrays of numbers, got pickled objects, "
                             "which are refused: unpickling can run arbitrary code") from None
        raise ValueError(f"{path}: expected a complete .npz archive, but it cannot be read "
                         f"(truncated or corrupt?): {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise ValueError(f"{path}: expected a complete .npz archive, but it cannot be read "
                         f"(truncated or corrupt?): {type(e).__name__}: {e}") from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # NpzFile hands out non-.npy members raw
            raise ValueError(f"{path}: expected only .npy arrays in the archive, got "
                             f"a member {name!r} that is not one")
    return arrays


def _read_header(arrays, path):
    raw = arrays.pop(CONFIG_KEY, None)
    if raw is None:
        raise ValueError(f"{path}: expected a {CONFIG_KEY!r} entry (the model's config), "
                         f"got only {sorted(arrays)}: not a file written by clstm.save")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{path}: expected {CONFIG_KEY!r} as a 1-D uint8 array, got "
                         f"dtype {raw.dtype}, shape {raw.shape}")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: expected the config as UTF-8 JSON, got undecodable "
                         f"data ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: expected the config as a JSON object, got "
                         f"{type(header).__name__}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: expected format_version {FORMAT_VERSION}, got "
                         f"{version!r}" + (" (written by a newer clstm?)"
                                           if isinstance(version, int) and version > 1
                                           else ""))
    if header.get("class") not in _CLASSES:
        raise ValueError(f"{path}: expected a model class in {sorted(_CLASSES)}, got "
                         f"{header.get('class')!r}")
    if not isinstance(header.get("config"), dict):
        raise ValueError(f"{path}: expected the constructor arguments as a JSON object "
                         f"under 'config', got {header.get('config')!r}")
    return header


def _check_weights(model, arrays, path):
    """Names, shapes and dtypes of the file against the model its config builds."""
    params = model.params
    missing = sorted(set(params) - set(arrays))
    unexpected = sorted(set(arrays) - set(params))
    if missing or unexpected:
        raise ValueError(f"{path}: expected the weights {sorted(params)} for this "
                         f"{type(model).__name__}; missing {missing}, unexpected "
                         f"{unexpected}")
    for name, value in arrays.items():
        expected = params[name]
        if value.shape != expected.shape:
            raise ValueError(f"{path}: weight {name!r}: expected shape {expected.shape} "
                             f"(from the config), got {value.shape}")
        if value.dtype != expected.dtype:
            raise ValueError(f"{path}: weight {name!r}: expected dtype {expected.dtype} "
                             f"(from the config), got {value.dtype}")


def load(path):
    """Load a model saved by :func:`save`.

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
        No file at ``path``.
    ValueError
        Not an npz archive, a truncated or corrupt one, pickled content, a missing or
        unknown config or format version, or weights whose names, shapes or dtypes differ
        from those of the model the config describes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"clstm.load: expected a model file, got no file at "
                                f"{path!r}")
    arrays = _read_arrays(path)
    header = _read_header(arrays, path)
    try:
        model = _build(header["class"], header["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: the config cannot build a {header['class']}: "
                         f"{type(e).__name__}: {e}") from None
    _check_weights(model, arrays, path)
    model.load_state_dict(arrays)
    return model


# ---------------------------------------------------------------------------- Keras

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
    kernel = np.asarray(kernel)
    recurrent_kernel = np.asarray(recurrent_kernel)
    if kernel.ndim != 2 or kernel.shape[1] % 4 or kernel.shape[1] == 0:
        raise ValueError(f"kernel: expected shape (input_size, 4 * units), got "
                         f"{kernel.shape}")
    I, H = kernel.shape[0], kernel.shape[1] // 4
    if recurrent_kernel.shape != (H, 4 * H):
        raise ValueError(f"recurrent_kernel: expected shape {(H, 4 * H)} (from the kernel's "
                         f"{4 * H} columns), got {recurrent_kernel.shape}")
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
        A peephole LSTM (Keras' LSTM has no peepholes) or a layer out of range.
    """
    if net.peephole:
        raise ValueError("lstm_to_keras: expected an LSTM without peepholes, got "
                         "peephole=True")
    if not 0 <= layer < net.num_layers:
        raise ValueError(f"lstm_to_keras: expected layer in [0, {net.num_layers}), got "
                         f"{layer}")
    p = net.params
    return [p[f"weight_ih_l{layer}"].T.copy(), p[f"weight_hh_l{layer}"].T.copy(),
            p[f"bias_ih_l{layer}"] + p[f"bias_hh_l{layer}"]]


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
