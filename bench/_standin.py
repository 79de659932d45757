"""A stand-in for `clstm` with its Python API, built on torch.nn.LSTM.

Only for exercising the benchmark harness end to end while clstm itself is not importable:
`python -m bench --standin torch`.  Every figure it produces is PyTorch's, labelled
"clstm[standin:torch]" in the report; never quote it as clstm's.
"""

import types

import numpy as np


class StandInLSTM:
    """clstm.LSTM's contract (DEVELOPERS.md) over torch.nn.LSTM; NumPy in, NumPy out."""

    def __init__(self, input_size, hidden_size, num_layers=1, *, dtype="float32", seed=None,
                 **_ignored):
        import torch
        self._torch = torch
        torch.manual_seed(0 if seed is None else seed)
        self._module = torch.nn.LSTM(input_size, hidden_size, num_layers,
                                     dtype=getattr(torch, dtype))
        self._names = [n for n, _ in self._module.named_parameters()]
        # NumPy views of the parameters: writing into them writes into the module
        self.params = {n: p.detach().numpy() for n, p in self._module.named_parameters()}
        self.grads = {n: np.zeros_like(v) for n, v in self.params.items()}
        self.training = True
        self._y = None

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def forward(self, x, state=None):
        torch = self._torch
        xt = torch.from_numpy(np.ascontiguousarray(x))
        st = None if state is None else tuple(torch.as_tensor(s) for s in state)
        if self.training:
            y, (h, c) = self._module(xt, st)
            self._y = y
        else:
            with torch.inference_mode():
                y, (h, c) = self._module(xt, st)
        return y.detach().numpy(), (h.detach().numpy(), c.detach().numpy())

    def backward(self, dy, dstate=None, *, input_grad=True):
        if self._y is None:
            raise RuntimeError("backward without a training-mode forward")
        torch = self._torch
        params = [dict(self._module.named_parameters())[n] for n in self._names]
        grads = torch.autograd.grad(self._y, params, torch.from_numpy(np.ascontiguousarray(dy)))
        for name, g in zip(self._names, grads):
            self.grads[name] += g.numpy()
        self._y = None
        return None, (None, None)


def standin_module(kind):
    if kind != "torch":
        raise ValueError(f"unknown stand-in {kind!r}; the only one is 'torch'")
    import torch
    return types.SimpleNamespace(
        LSTM=StandInLSTM,
        set_num_threads=torch.set_num_threads,
        get_num_threads=torch.get_num_threads,
        __version__=f"standin:torch {torch.__version__}",
    )
