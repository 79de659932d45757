"""Streaming inference: one time step per call with the state carried, B = 1.

clstm calls `net.step(x_t, state)` with x_t of shape (1, I) when the package has it, else
`net.forward(x_t, state)` with x_t of shape (1, 1, I); PyTorch calls its LSTM module with
x_t of shape (1, 1, I), the whole measurement inside torch.inference_mode() (a streaming
loop enters it once, not per step).  ONNX Runtime (when installed, float32 only: its CPU
LSTM has no float64) runs a T = 1 graph per step, `session.run` with the previous step's
h and c of every layer fed back as inputs (bench/onnx_lstm.py).
Each implementation sees the same sequence of inputs and the same weights; per-step latency
is timed call by call, blocks of calls alternating between implementations.
`run(..., cell="gru")` does the same for clstm.GRU, torch.nn.GRU and ONNX Runtime's GRU
(h alone fed back).
"""

import itertools
import statistics

import numpy as np

from bench.peers import clstm_class, clstm_module, make_params
from bench.shapes import Shape
from bench.timing import per_call_latencies

N_INPUTS = 256  # distinct inputs, cycled


def _clstm_stepper(mod, shape, dtype, params, xs):
    net = clstm_class(mod, shape.cell)(shape.I, shape.H, shape.L, dtype=dtype, seed=0)
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
    kind = torch.nn.GRU if shape.cell == "gru" else torch.nn.LSTM
    module = kind(shape.I, shape.H, shape.L, dtype=getattr(torch, dtype))
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    module.eval()
    inputs = itertools.cycle([torch.from_numpy(x) for x in xs])
    state = [None]

    def advance():
        y, state[0] = module(next(inputs), state[0])
        return y
    return advance


def _onnx_stepper(shape, dtype, params, xs, threads):
    """ONNX Runtime called one step at a time: a T = 1 graph whose final h, c (a GRU's h)
    per layer are fed back as the next call's initial state (bench/onnx_lstm.py,
    with_state=True)."""
    from bench import onnx_lstm
    model = onnx_lstm.build_model(params, shape.L, shape.H, dtype, with_state=True,
                                  cell=shape.cell)
    session = onnx_lstm.make_session(model, threads)
    states = "h" if shape.cell == "gru" else "hc"
    out_names = ["Y"] + [f"{v}T_l{k}" for k in range(shape.L) for v in states]
    zeros = np.zeros((1, 1, shape.H), dtype=dtype)
    feed = {f"{v}0_l{k}": zeros for k in range(shape.L) for v in states}
    inputs = itertools.cycle(xs)
    state_names = out_names[1:]
    feed_names = [f"{v}0_l{k}" for k in range(shape.L) for v in states]

    def advance():
        feed["X"] = next(inputs)
        out = session.run(out_names, feed)
        for name, value in zip(feed_names, out[1:]):
            feed[name] = value
        return out[0]
    assert len(state_names) == len(feed_names)
    return advance


def _agreement(a, b, steps=50):
    """Max |difference| of the outputs of two fresh steppers over `steps` steps."""
    worst = 0.0
    for _ in range(steps):
        ya, yb = np.asarray(a()).reshape(-1), np.asarray(b()).reshape(-1)
        worst = max(worst, float(np.max(np.abs(ya - yb))))
    return worst


def run(layers, dtype, threads, steps=2000, hidden=64, with_nodnnl=True, settle=0.0,
        with_onnx=False, cell="lstm"):
    """Per-step latency of clstm and PyTorch (and, with `with_onnx`, ONNX Runtime where it
    runs `dtype`) for one streaming configuration (a dict) of an LSTM or a GRU."""
    import torch
    shape = Shape(f"stream-L{layers}", B=1, T=1, I=hidden, H=hidden, L=layers, cell=cell)
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
        skipped = {}
        if with_onnx:
            from bench import onnx_lstm
            why = onnx_lstm.dtype_unsupported(dtype, cell)
            if why:
                skipped["onnxruntime"] = why
            else:
                check_o = _onnx_stepper(shape, dtype, params, xs, threads)
                check_c, _ = _clstm_stepper(mod, shape, dtype, params, xs)
                max_diff_onnx = _agreement(check_c, check_o)
                steppers["onnxruntime"] = _onnx_stepper(shape, dtype, params, xs, threads)
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
    out = dict(
        layers=layers, cell=cell, dtype=dtype, threads=threads, hidden=hidden, input=hidden,
        batch=1,
        clstm_call=clstm_call, max_abs_diff_vs_torch=max_diff,
        impls=per_impl,
        ratio_vs_torch=per_impl["torch"]["median_us"] / clstm_us,
        ratio_vs_best_torch=min(v["median_us"] for k, v in per_impl.items()
                                if k.startswith("torch")) / clstm_us,
        skipped=skipped,
    )
    if "onnxruntime" in per_impl:
        out["max_abs_diff_vs_onnxruntime"] = max_diff_onnx
        out["ratio_vs_onnxruntime"] = per_impl["onnxruntime"]["median_us"] / clstm_us
    return out

