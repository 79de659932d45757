"""Snapshot of the C ABI that clstm.kernels exports to other Cython code.

Other extensions that ``cimport`` from ``clstm.kernels`` are compiled against the
signatures in ``clstm/kernels.pxd``, and at import Cython checks those against the
capsules in ``clstm.kernels.__pyx_capi__``, whose names are the C signatures. Any
change here breaks every downstream extension built against an earlier clstm, so it
must be deliberate: update this snapshot only together with a note in the changelog.
"""
import ctypes
import re

import clstm.kernels

_F = "int, int, int, int, {t} const *, {t} const *, {t} const *, {t} const *, " \
     "{t} const *, {t} const *, {t} const *, {t} *, {t} *, int"
_B = "int, int, int, int, {t} const *, {t} const *, {t} const *, {t} const *, " \
     "{t} const *, {t} const *, {t} const *, {t} *, {t} *, {t} const *, {t} const *, " \
     "{t} *, {t} *, {t} *, {t} *, {t} *, {t} *, {t} *, int"

# The packed (variable-length, either direction) layer, added after the first five.
_FP = "int, int, int, int, int, int const *, int, {t} const *, {t} const *, {t} const *, " \
      "{t} const *, {t} const *, {t} const *, {t} const *, {t} const *, {t} *, {t} *, " \
      "{t} *, {t} *, int"
_BP = "int, int, int, int, int, int const *, int, {t} const *, {t} const *, {t} const *, " \
      "{t} const *, {t} const *, {t} const *, {t} const *, {t} const *, {t} *, {t} *, " \
      "{t} const *, {t} const *, {t} *, {t} *, {t} *, {t} *, {t} *, {t} *, {t} *, {t} *, int"

# The GRU's packed layer, added after the LSTM's.
_GF = "int, int, int, int, int const *, int, {t} const *, {t} const *, {t} const *, " \
      "{t} const *, {t} const *, {t} const *, {t} *, {t} *, {t} *, int"
_GB = "int, int, int, int, int const *, int, {t} const *, {t} const *, {t} const *, " \
      "{t} const *, {t} const *, {t} *, {t} *, {t} const *, {t} *, {t} *, {t} *, {t} *, " \
      "{t} *, {t} *, int"

EXPECTED = {
    "lstm_workspace_size": "Py_ssize_t (int, int, int)",
    "lstm_packed_workspace_size": "Py_ssize_t (int, int, int, int, int const *)",
    "lstm_forward_packed_f32": f"int ({_FP.format(t='float')})",
    "lstm_forward_packed_f64": f"int ({_FP.format(t='double')})",
    "lstm_backward_packed_f32": f"int ({_BP.format(t='float')})",
    "lstm_backward_packed_f64": f"int ({_BP.format(t='double')})",
    "lstm_forward_f32": f"int ({_F.format(t='float')})",
    "lstm_forward_f64": f"int ({_F.format(t='double')})",
    "lstm_backward_f32": f"int ({_B.format(t='float')})",
    "lstm_backward_f64": f"int ({_B.format(t='double')})",
    "gru_packed_workspace_size": "Py_ssize_t (int, int, int, int const *)",
    "gru_forward_packed_f32": f"int ({_GF.format(t='float')})",
    "gru_forward_packed_f64": f"int ({_GF.format(t='double')})",
    "gru_backward_packed_f32": f"int ({_GB.format(t='float')})",
    "gru_backward_packed_f64": f"int ({_GB.format(t='double')})",
}

_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.argtypes = [ctypes.py_object]
_get_name.restype = ctypes.c_char_p


def capsule_signature(capsule):
    """The name of a PyCapsule, which Cython sets to the C signature."""
    return _get_name(capsule).decode()


def normalise(signature):
    # Only spacing is free to differ between Cython versions; everything else is ABI.
    return re.sub(r"\s+", " ", re.sub(r"\s*([(),*])\s*", r"\1 ", signature)).strip()


def test_exported_names():
    assert sorted(clstm.kernels.__pyx_capi__) == sorted(EXPECTED)


def test_exported_signatures():
    actual = {name: normalise(capsule_signature(capsule))
              for name, capsule in clstm.kernels.__pyx_capi__.items()}
    assert actual == {name: normalise(sig) for name, sig in EXPECTED.items()}


def test_signature_arity():
    # A readable cross-check of the snapshot itself: arguments per function.
    arity = {name: sig.count(",") + 1 for name, sig in EXPECTED.items()}
    assert arity == {"lstm_workspace_size": 3, "lstm_forward_f32": 14,
                     "lstm_forward_f64": 14, "lstm_backward_f32": 23,
                     "lstm_backward_f64": 23, "lstm_packed_workspace_size": 5,
                     "lstm_forward_packed_f32": 20, "lstm_forward_packed_f64": 20,
                     "lstm_backward_packed_f32": 28, "lstm_backward_packed_f64": 28,
                     "gru_packed_workspace_size": 4, "gru_forward_packed_f32": 16,
                     "gru_forward_packed_f64": 16, "gru_backward_packed_f32": 21,
                     "gru_backward_packed_f64": 21}
