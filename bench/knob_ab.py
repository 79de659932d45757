"""A/B of one kernel tuning knob in one process: `python -m bench.knob_ab KNOB A B`.

The kernels expose their tuning choices as `clstm.kernels._set_<knob>(value)` setters
(each returns the previous value). This times clstm on the same network and input with
the knob at A and at B, interleaved (bench.timing.interleaved: calibrated samples,
rotating order, medians), so that a kernel change is measured against the code it
replaced without a second build. Examples, as used for the commits of the kernels:

    python -m bench.knob_ab gates_avx512 1 0 --shapes S1,S2 --threads 1
    python -m bench.knob_ab gates_isa avx2 c --shapes S1,S2 --threads 1
    python -m bench.knob_ab min_step_flops_per_unit_thread 6e4 1e30 --shapes 1,100,256,256,1 --threads 2
    python -m bench.knob_ab min_parallel_pass_bytes 262144 1e30 --shapes S3,S4 --threads 2
    python -m bench.knob_ab overlap_products 1 0 --shapes "S1;1,300,24,48,1" --threads 2 --cell both

With `--cell gru` (or `both`) the network is a clstm.GRU of the same sizes.
"""

import argparse
import time

import numpy as np

from bench import shapes as shapes_mod
from bench.peers import clstm_class
from bench.shapes import MODES, SHAPES, parse_cells, with_cell
from bench.timing import interleaved


def parse_shape(text):
    """A grid name (S1..S5) or "B,T,I,H,L" (bench.shapes.parse_shape)."""
    try:
        return shapes_mod.parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def split_shapes(text):
    """"S1,S2" or "S2,8:150:40:96:1" is a comma list; "1,100,64,64,1" one custom shape;
    ';' separates any."""
    if ";" in text:
        return text.split(";")
    items = text.split(",")
    if all(item.strip().upper() in SHAPES or ":" in item for item in items):
        return items
    return [text]


def parse_value(text):
    """The knob's value: an int where it reads as one (booleans as 0/1), else a float,
    else the text itself (`gates_isa c avx2`, `isa avx2 generic`)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def measure(kernels, clstm, setter, a, b, shape, dtype, mode, repeats, clock=time.perf_counter):
    """Median seconds per call with the knob at a and at b; the knob is restored."""
    net = clstm_class(clstm, shape.cell)(shape.I, shape.H, shape.L, dtype=dtype, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((shape.T, shape.B, shape.I)).astype(dtype)
    dy = np.ones((shape.T, shape.B, shape.H), dtype=dtype)

    def call():
        if mode == "fwd":
            net.forward(x)
        else:
            net.zero_grad()
            net.forward(x)
            net.backward(dy, input_grad=False)

    def with_knob(value):
        def run():
            setter(value)
            call()
        return run

    old = setter(a)
    try:
        timings = interleaved({"A": with_knob(a), "B": with_knob(b)}, repeats, clock=clock)
    finally:
        setter(old)
    for name, timing in timings.items():
        if timing.error:
            raise RuntimeError(f"knob value {name}: {timing.error}")
    return timings["A"].median, timings["B"].median


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.knob_ab",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("knob", help="name after kernels._set_ (e.g. gates_avx512)")
    ap.add_argument("a", type=parse_value, help="value A")
    ap.add_argument("b", type=parse_value, help="value B")
    ap.add_argument("--shapes", default="S1,S2", help="comma list of S1..S5 or B,T,I,H,L "
                    "(separate several custom shapes with ';')")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cell", default="lstm", help="lstm (default), gru, or both")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU seconds (every thread) instead of wall "
                    "time; for 1-thread runs on a machine shared with other jobs, whose "
                    "time slices are then not counted")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    import clstm
    from clstm import kernels

    setter = getattr(kernels, f"_set_{args.knob}", None)
    if setter is None:
        knobs = sorted(n[len("_set_"):] for n in dir(kernels) if n.startswith("_set_"))
        ap.error(f"no knob {args.knob!r}; the kernels have: {', '.join(knobs)}")
    try:
        cells = parse_cells(args.cell)
    except ValueError as exc:
        ap.error(f"--cell: {exc}")
    shapes = [with_cell(parse_shape(s), c) for s in split_shapes(args.shapes) for c in cells]
    clstm.set_num_threads(args.threads)
    print(f"knob {args.knob}: A = {args.a}, B = {args.b}; {args.threads} thread(s), "
          f"medians of {args.repeats} interleaved samples, {args.clock} time")
    for shape in shapes:
        for dtype in args.dtypes.split(","):
            for mode in args.modes.split(","):
                ta, tb = measure(kernels, clstm, setter, args.a, args.b, shape, dtype, mode,
                                 args.repeats, clock)
                print(f"  {shape.label()} {dtype} {mode:5}: A {ta * 1e3:9.3f} ms  "
                      f"B {tb * 1e3:9.3f} ms  B/A {tb / ta:5.3f}", flush=True)


if __name__ == "__main__":
    main()
