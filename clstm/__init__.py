"""clstm: fast LSTMs and GRUs on the CPU.

Compiled kernels (Cython over SciPy's BLAS, OpenMP across the batch) under a thin NumPy
API with explicit forward and backward passes. See README.md for a tour.
"""
from ._threads import get_num_threads, set_num_threads, threads
from ._version import __version__
from .kernels import isa, supported_isas
from .io import (from_torch_state_dict, gru_from_keras, gru_to_keras, load, lstm_from_keras,
                 lstm_to_keras, save, to_torch_state_dict)
from .layers import (Dense, Dropout, Embedding, last_valid_step, last_valid_step_backward,
                     lengths_to_mask)
from .losses import log_softmax, mse, softmax, softmax_cross_entropy
from .lstm import LSTM
from .gru import GRU
from .models import (Classifier, LanguageModel, LastStep, NonFiniteError, Regressor,
                     Sequential)
from .optim import SGD, Adam, AdamW, clip_grad_norm
from . import onnx  # clstm.onnx.export/load: the onnx package is imported only inside them
from .tbptt import batchify, reset_state, tbptt_chunks

__all__ = [
    "LSTM", "GRU", "set_num_threads", "get_num_threads", "threads", "isa", "supported_isas",
    "Embedding", "Dense", "Dropout", "last_valid_step", "last_valid_step_backward",
    "lengths_to_mask", "softmax", "log_softmax", "softmax_cross_entropy", "mse",
    "Adam", "AdamW", "SGD", "clip_grad_norm",
    "Sequential", "LastStep", "NonFiniteError", "LanguageModel", "Regressor", "Classifier",
    "batchify", "tbptt_chunks", "reset_state",
    "save", "load", "lstm_from_keras", "lstm_to_keras", "gru_from_keras", "gru_to_keras", "to_torch_state_dict",
    "from_torch_state_dict",
]
