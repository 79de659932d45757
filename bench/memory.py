"""Peak memory of one training step, in a fresh process.

    python -m bench.memory --impl clstm|torch|torch-nodnnl --shape S3 [--dtype float32]
                           [--threads 1] [--steps 1]

prints one JSON object.  The process imports, builds the model, the input and dy, and
allocates the weight gradients (clstm holds them from construction; PyTorch gets them
pre-created and zeroed in place, so neither side charges its gradient buffers to the step),
then (no warm-up step: the first step's one-time allocations are part of what training
costs) resets the kernel's peak-RSS mark (`echo 5 > /proc/self/clear_refs`, Linux) and reads
the peak (VmHWM; ru_maxrss is recorded too, see `peak_bytes`), runs the step(s), and reads
it again.  The delta is the step's own peak: activations saved for backward, workspaces,
temporaries.  Where the mark cannot be reset the delta can only under-count (the "before"
peak may include import-time spikes); the JSON says which happened.
"""

import argparse
import gc
import json
import os
import resource
import sys
import warnings
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import clstm_module, make_input, make_params  # noqa: E402
from bench.shapes import parse_shape  # noqa: E402

MIB = 1024 * 1024


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_bytes():
    """This process's peak RSS: VmHWM, the mark clear_refs resets; else ru_maxrss.

    ru_maxrss alone will not do in a child process: at exec the kernel seeds it with the
    parent's peak (the benchmark's own, hundreds of MiB), and clear_refs does not lower it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return maxrss_bytes()


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak():
    """Make the peak-RSS mark equal the current RSS; False where the kernel will not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build_step(impl, shape, dtype, threads):
    """The zero-argument training step of `impl`, with everything it needs allocated."""
    params, x = make_params(shape, dtype), make_input(shape, dtype)
    if impl == "clstm":
        mod = clstm_module()
        mod.set_num_threads(threads)
        net = mod.LSTM(shape.I, shape.H, shape.L, dtype=dtype, seed=0)
        for name, value in params.items():
            net.params[name][...] = value
        dy = np.ones((shape.T, shape.B, shape.H), dtype=dtype)
        net.train()

        def step():
            net.zero_grad()
            net.forward(x)
            net.backward(dy, input_grad=False)
        return step

    import contextlib

    import torch
    torch.set_num_threads(threads)
    module = torch.nn.LSTM(shape.I, shape.H, shape.L, dtype=getattr(torch, dtype))
    module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    xt = torch.from_numpy(x)
    dy = torch.ones((shape.T, shape.B, shape.H), dtype=getattr(torch, dtype))
    context = (contextlib.nullcontext if impl == "torch"
               else lambda: torch.backends.mkldnn.flags(enabled=False))

    def step():
        with context():
            module.zero_grad(set_to_none=False)
            y, _ = module(xt)
            y.backward(dy)
    return step


def measure(impl, shape, dtype, threads, steps=1):
    step = build_step(impl, shape, dtype, threads)
    gc.collect()
    rss_before = rss_bytes()
    reset = reset_peak()
    peak_before, maxrss_before = peak_bytes(), maxrss_bytes()
    for _ in range(steps):
        step()
    peak_after, maxrss_after = peak_bytes(), maxrss_bytes()
    return dict(
        impl=impl,
        shape=shape.name, dtype=dtype, threads=threads, steps=steps,
        peak_reset=reset,
        rss_before_mib=rss_before / MIB,
        peak_before_mib=peak_before / MIB,
        peak_after_mib=peak_after / MIB,
        delta_mib=(peak_after - peak_before) / MIB,
        ru_maxrss_before_mib=maxrss_before / MIB,
        ru_maxrss_after_mib=maxrss_after / MIB,
        **({"clstm_file": clstm_module().__file__} if impl == "clstm" else {}),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    ap.add_argument("--impl", required=True, choices=["clstm", "torch", "torch-nodnnl"])
    ap.add_argument("--shape", required=True, help="a grid name or B:T:I:H:L")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    try:
        shape = parse_shape(args.shape)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    result = measure(args.impl, shape, args.dtype, args.threads, args.steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
