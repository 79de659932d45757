"""Streaming inference: one time step per call with the state carried, B = 1.

clstm calls `net.step(x_t, state)` with x_t of shape (1, I) when the package has it, else
`net.forward(x_t, state)` with x_t of shape (1, 1, I); PyTorch calls its LSTM module with
x_t of shape (1, 1, I), the whole measurement inside torch.inference_mode() (a streaming
loop enters it once, not per step).
Each implementation sees the same sequence of inputs and the same weights; per-step latency
is timed call by call, blocks of calls alternating between implementations.
"""

import itertools
import statistics

import numpy as np

from bench.peers import clstm_module, make_params
from bench.shapes import Shape
from bench.timing import per_call_latencies

N_INPUTS = 256  # distinct inputs, cycled


def _clstm_stepper(mod, shape, dtype, params, xs):
    net = mod.LSTM(shape.I, shape.H, shape.L, dtype=dtype, seed=0)
    for name, value in params.items():
        net.params[name][...] = value
    net.eval()
    step = getattr(net, "step", None)
    if callable(step):  # one time step, (B, I)
        call, inputs = step, itertools.cycle([x[0] for x in xs])
    else:  # a sequence of length 1, (1, B, I)
        call, inputs = net.forward, itertools.cycle(xs)
    state = [None]

    def advance():
        y, state[0] = call(next(inputs), state[0])
        return y
    return advance, ("step" if callable(step) else "forward")


def _torch_stepper(shape, dtype, params, xs):
    import torch
    module = torch.nn.LSTM(shape.I, shape.H, shape.L, dtype=getattr(torch, dtype))
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    module.eval()
    inputs = itertools.cycle([torch.from_numpy(x) for x in xs])
    state = [None]

    def advance():
        y, state[0] = module(next(inputs), state[0])
        return y
    return advance


def _agreement(a, b, steps=50):
    """Max |difference| of the outputs of two fresh steppers over `steps` steps."""
    worst = 0.0
    for _ in range(steps):
        ya, yb = np.asarray(a()).reshape(-1), np.asarray(b()).reshape(-1)
        worst = max(worst, float(np.max(np.abs(ya - yb))))
    return worst


def run(layers, dtype, threads, steps=2000, hidden=64, with_nodnnl=True, settle=0.0):
    """Per-step latency of clstm and PyTorch for one streaming configuration (a dict)."""
    import torch
    shape = Shape(f"stream-L{layers}", B=1, T=1, I=hidden, H=hidden, L=layers)
    params = make_params(shape, dtype)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 1, shape.I)).astype(dtype) for _ in range(N_INPUTS)]
    mod = clstm_module()
    mod.set_num_threads(threads)
    torch.set_num_threads(threads)

    with torch.inference_mode():
        check_c, _ = _clstm_stepper(mod, shape, dtype, params, xs)
        max_diff = _agreement(check_c, _torch_stepper(shape, dtype, params, xs))

        clstm_step, clstm_call = _clstm_stepper(mod, shape, dtype, params, xs)
        steppers = {"clstm": clstm_step, "torch": _torch_stepper(shape, dtype, params, xs)}
        contexts = {}
        if with_nodnnl:
            steppers["torch-nodnnl"] = _torch_stepper(shape, dtype, params, xs)
            contexts["torch-nodnnl"] = lambda: torch.backends.mkldnn.flags(enabled=False)
        latencies = per_call_latencies(
            steppers, steps, block=min(200, steps), warmup=min(100, steps), contexts=contexts,
            settle=settle)

    def summary(lat):
        lat = sorted(lat)
        return dict(median_us=statistics.median(lat) * 1e6,
                    p90_us=lat[int(0.9 * (len(lat) - 1))] * 1e6, steps=len(lat))

    per_impl = {name: summary(lat) for name, lat in latencies.items()}
    clstm_us = per_impl["clstm"]["median_us"]
    return dict(
        layers=layers, dtype=dtype, threads=threads, hidden=hidden, input=hidden, batch=1,
        clstm_call=clstm_call, max_abs_diff_vs_torch=max_diff,
        impls=per_impl,
        ratio_vs_torch=per_impl["torch"]["median_us"] / clstm_us,
        ratio_vs_best_torch=min(v["median_us"] for k, v in per_impl.items() if k != "clstm")
        / clstm_us,
    )

