"""Serving an exported model from ONNX Runtime or from clstm: the same weights, one graph.

    python -m bench.onnx_serving [--repeats 15] [--threads 1] [--match NAME]

Each model is exported with `clstm.onnx.export`, its ONNX Runtime output checked against
clstm's (1e-5) and then both are timed interleaved (the order alternates per repeat),
medians in ms per call, or µs per step for streams:

* whole sequences: `net.forward(x)` / `clf.predict_proba(ids, lengths=...)` against one
  `session.run`;
* streams of 200 steps at B = 1: `net.step(x_t, state)` against one `session.run` per
  step with h, c fed back (the graph exported with `initial_state=True, final_state=True`).

ONNX Runtime runs `intra_op_num_threads` = `--threads`, one inter-op thread, sequential
execution; clstm `clstm.set_num_threads(--threads)`. float32 only: ONNX Runtime's CPU
LSTM has no float64 kernel. Needs onnx and onnxruntime (`pip install ".[onnx]"`).
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import clstm
import clstm.onnx


def _session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _interleaved(a, b, repeats, inner):
    """Medians of a's and b's time per call (s), alternating which runs first."""
    for f in (a, b):
        for _ in range(2):
            f()
    ta, tb = [], []
    for r in range(repeats):
        for f, acc in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            acc.append((time.perf_counter() - t0) / inner)
    return statistics.median(ta), statistics.median(tb)


def _cases(tmp, threads, rng):
    for T, B, I, H, L in [(50, 1, 32, 128, 1), (50, 32, 64, 256, 2), (100, 64, 32, 64, 1)]:
        net = clstm.LSTM(I, H, L, seed=0).eval()
        path = os.path.join(tmp, f"lstm_{H}_{B}.onnx")
        clstm.onnx.export(net, path)
        sess = _session(path, threads)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        yield (f"LSTM T={T}, B={B}, I={I}, H={H}, L={L}", "ms", 1,
               lambda net=net, x=x: net.forward(x)[0],
               lambda s=sess, x=x: s.run(None, {"x": x})[0])
    clf = clstm.Classifier(hidden_size=128, num_classes=4, vocab_size=1000, embed_dim=64,
                           seed=0).eval()
    path = os.path.join(tmp, "clf.onnx")
    clstm.onnx.export(clf, path)
    sess = _session(path, threads)
    ids, lengths = rng.integers(0, 1000, (32, 50)), rng.integers(1, 51, 32)
    yield ("Classifier predict_proba, B=32, T=50, E=64, H=128, lengths", "ms", 1,
           lambda: clf.predict_proba(ids, lengths=lengths),
           lambda: sess.run(None, {"x": ids, "lengths": lengths})[0])
    # the same with a bidirectional LSTM (sequence_lens in every node) and with a GRU
    for cell, bidirectional in (("lstm", True), ("gru", False)):
        model = clstm.Classifier(hidden_size=128, num_classes=4, vocab_size=1000,
                                 embed_dim=64, cell=cell, bidirectional=bidirectional,
                                 seed=0).eval()
        path = os.path.join(tmp, f"clf_{cell}_{bidirectional}.onnx")
        clstm.onnx.export(model, path)
        sess = _session(path, threads)
        yield (f"Classifier({'bidirectional ' if bidirectional else ''}{cell.upper()}) "
               "predict_proba, B=32, T=50, E=64, H=128, lengths", "ms", 1,
               lambda m=model: m.predict_proba(ids, lengths=lengths),
               lambda s=sess: s.run(None, {"x": ids, "lengths": lengths})[0])
    net = clstm.GRU(64, 256, 2, seed=0).eval()
    path = os.path.join(tmp, "gru.onnx")
    clstm.onnx.export(net, path)
    sess = _session(path, threads)
    x = rng.standard_normal((50, 32, 64)).astype(np.float32)
    yield ("GRU T=50, B=32, I=64, H=256, L=2", "ms", 1, lambda: net.forward(x)[0],
           lambda: sess.run(None, {"x": x})[0])
    for H, L in [(128, 1), (256, 2)]:
        net = clstm.LSTM(32, H, L, seed=0).eval()
        path = os.path.join(tmp, f"stream_{H}.onnx")
        clstm.onnx.export(net, path, initial_state=True, final_state=True)
        sess = _session(path, threads)
        xs = rng.standard_normal((200, 1, 32)).astype(np.float32)

        def run_clstm(net=net, xs=xs):
            state = None
            for x in xs:
                y, state = net.step(x, state)
            return y

        def run_ort(sess=sess, xs=xs, L=L, H=H):
            h = np.zeros((L, 1, H), np.float32)
            c = h.copy()
            for x in xs:
                y, h, c = sess.run(None, {"x": x[None], "h0": h, "c0": c})
            return y[0]

        yield (f"stream of 200 steps, B=1, I=32, H={H}, L={L}", "µs/step", len(xs),
               run_clstm, run_ort)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.onnx_serving", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--match", default="", help="only the models whose name contains this")
    args = ap.parse_args(argv)
    clstm.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"| model | clstm | ONNX Runtime | ORT / clstm |  ({args.threads} thread(s), "
          f"medians of {args.repeats})")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, unit, per, run_clstm, run_ort in _cases(tmp, args.threads, rng):
            if args.match not in name:
                continue
            diff = float(np.abs(np.asarray(run_clstm()) - np.asarray(run_ort())).max())
            if not diff <= 1e-5:
                raise SystemExit(f"{name}: ONNX Runtime differs from clstm by {diff}")
            inner = 1 if per > 1 else 5
            tc, to = _interleaved(run_clstm, run_ort, args.repeats, inner)
            scale = 1e6 / per if per > 1 else 1e3
            print(f"| {name} | {tc * scale:.3g} {unit} | {to * scale:.3g} {unit} | "
                  f"{to / tc:.2f} |", flush=True)


if __name__ == "__main__":
    main()
