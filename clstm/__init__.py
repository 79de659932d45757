"""clstm: fast LSTMs on the CPU.

Compiled kernels (Cython over SciPy's BLAS, OpenMP across the batch) under a thin NumPy
API with explicit forward and backward passes. See README.md for a tour.
"""
import os as _os

# Idle OpenMP workers sleep instead of spinning (set before the kernels load libgomp).
# A spinning worker holds a core that other threads, of this process or another, are
# waiting for: on a busy 2-core machine that made 2-thread runs 5-30x slower than 1 thread.
# Waking a sleeping worker costs microseconds, once per parallel region of a kernel call.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from ._threads import get_num_threads, set_num_threads, threads  # noqa: E402
from .io import (from_torch_state_dict, load, lstm_from_keras, lstm_to_keras, save,  # noqa: E402
                 to_torch_state_dict)
from .layers import (Dense, Dropout, Embedding, last_valid_step, last_valid_step_backward,  # noqa: E402
                     lengths_to_mask)
from .losses import log_softmax, mse, softmax, softmax_cross_entropy  # noqa: E402
from .lstm import LSTM  # noqa: E402
from .models import Classifier, LanguageModel, LastStep, Regressor, Sequential  # noqa: E402
from .optim import SGD, Adam, AdamW, clip_grad_norm  # noqa: E402
from .tbptt import batchify, reset_state, tbptt_chunks  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "LSTM", "set_num_threads", "get_num_threads", "threads",
    "Embedding", "Dense", "Dropout", "last_valid_step", "last_valid_step_backward",
    "lengths_to_mask", "softmax", "log_softmax", "softmax_cross_entropy", "mse",
    "Adam", "AdamW", "SGD", "clip_grad_norm",
    "Sequential", "LastStep", "LanguageModel", "Regressor", "Classifier",
    "batchify", "tbptt_chunks", "reset_state",
    "save", "load", "lstm_from_keras", "lstm_to_keras", "to_torch_state_dict",
    "from_torch_state_dict",
]
