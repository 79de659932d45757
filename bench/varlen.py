"""Variable-length and bidirectional batches: clstm with ``lengths`` against the same
padded batch without them, and against torch.nn.LSTM on packed sequences
(pack_padded_sequence(enforce_sorted=False) / pad_packed_sequence) and on the padded batch.
``--cell gru`` (or ``both``): clstm.GRU against torch.nn.GRU, the same way.

    python -m bench.varlen [--shapes S2,S3] [--cell lstm|gru|both] [--threads 1,2]
                           [--modes fwd,train] [--bidirectional 0,1] [--repeats 7]

Lengths are drawn uniformly between T/4 and T (seed 0). The contenders run in turns,
interleaved, within one process; the table gives the median of the repeats, in ms.
"""
import argparse
import statistics
import time

import numpy as np

import clstm

from .shapes import SHAPES, parse_cells


def _clstm_call(net, x, lengths, mode, dy):
    def call():
        y, _ = net.forward(x, lengths=lengths)
        if mode == "train":
            net.backward(dy, input_grad=False)
    return call


def _torch_calls(torch, module, x, lengths, mode):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    xt = torch.from_numpy(x)
    lt = torch.from_numpy(lengths)
    T = x.shape[0]

    def packed():
        with torch.set_grad_enabled(mode == "train"):
            p = pack_padded_sequence(xt, lt, enforce_sorted=False)
            y, _ = module(p)
            y, _ = pad_packed_sequence(y, total_length=T)
            if mode == "train":
                y.sum().backward()

    def padded():
        with torch.set_grad_enabled(mode == "train"):
            y, _ = module(xt)
            if mode == "train":
                y.sum().backward()
    return packed, padded


def _gru_class():
    gru = getattr(clstm, "GRU", None)
    if gru is None:
        from clstm.gru import GRU as gru
    return gru


def _time(fn, min_time=0.05):
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="S2,S3")
    ap.add_argument("--cell", default="lstm", help="lstm (default), gru or both")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--modes", default="fwd,train")
    ap.add_argument("--bidirectional", default="0,1")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    try:
        cells = parse_cells(args.cell)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    torch = None
    if not args.no_torch:
        import torch
    print("| shape | cell | bidir | mode | thr | clstm padded | clstm lengths | torch packed | "
          "torch padded | lengths vs padded | torch packed / clstm | torch padded / clstm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        s = SHAPES[name]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(s.T, s.B, s.I)).astype(np.float32)
        lengths = rng.integers(max(1, s.T // 4), s.T + 1, size=s.B)
        for cell, bid in [(c, b) for c in cells for b in map(int, args.bidirectional.split(","))]:
            kind = clstm.LSTM if cell == "lstm" else _gru_class()
            net = kind(s.I, s.H, s.L, bidirectional=bool(bid), seed=0)
            dy = np.ones((s.T, s.B, s.H * (2 if bid else 1)), np.float32)
            module = net.to_torch() if torch is not None else None
            for mode in args.modes.split(","):
                for thr in map(int, args.threads.split(",")):
                    calls = {"clstm padded": _clstm_call(net, x, None, mode, dy),
                             "clstm lengths": _clstm_call(net, x, lengths, mode, dy)}
                    if torch is not None:
                        torch.set_num_threads(thr)
                        calls["torch packed"], calls["torch padded"] = _torch_calls(
                            torch, module, x, lengths, mode)
                    samples = {k: [] for k in calls}
                    with clstm.threads(thr):
                        for r in range(args.repeats):
                            keys = list(calls)
                            keys = keys[r % len(keys):] + keys[:r % len(keys)]
                            for k in keys:
                                samples[k].append(_time(calls[k]))
                    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
                    tp = med.get("torch packed", float("nan"))
                    tq = med.get("torch padded", float("nan"))
                    cl = med["clstm lengths"]
                    print(f"| {name} | {cell} | {bid} | {mode} | {thr} | {med['clstm padded']:.2f} | "
                          f"{cl:.2f} | {tp:.2f} | {tq:.2f} | "
                          f"{med['clstm padded'] / cl:.2f}x | {tp / cl:.2f}x | "
                          f"{tq / cl:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
