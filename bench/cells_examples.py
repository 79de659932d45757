"""LSTM against GRU on the workloads of examples/forecast.py and examples/classify.py:
the training time per epoch of each cell, interleaved in one process.

    python -m bench.cells_examples [--rounds 5] [--threads 0]

The examples' own wall times (``fit_seconds``) are single runs, which a shared machine
can stretch by 2x or more; here each round trains the LSTM model and the GRU model (in
alternating order) for the same epochs on the same data (one epoch of the classifier, 30
of the much smaller forecaster), and the table gives the medians per epoch and the median
of the per-round ratios GRU time / LSTM time (< 1: the GRU is faster).
Models, sizes and data are the examples' defaults: a Regressor of 16 units on the
sunspot windows (batch 16), a Classifier of 64 units over the letters of the 14,400
training words with lengths (batch 64).
"""
import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np

import clstm

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"clstm_example_{name}",
                                                  EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def forecast_workload():
    """(make a model for a cell, train it, epochs trained): examples/forecast.py's
    training windows."""
    forecast = _example("forecast")
    _, counts = forecast.load_sunspots()
    z = np.sqrt(counts)
    n_train = len(counts) - int(round(0.15 * len(counts)))
    scaled = (z - z[:n_train].mean()) / z[:n_train].std()
    inputs, targets, idx = forecast.windows(scaled, 12)
    train = idx < n_train
    x = inputs[train][:, :, None].astype(np.float32)
    y = targets[train].astype(np.float32)

    def make(cell):
        model = clstm.Regressor(1, 16, cell=cell, seed=0)
        return model, clstm.Adam(model, lr=3e-3)

    def epochs(model, opt):
        model.fit(x, y, epochs=30, batch_size=16, seed=0, verbose=0, optimizer=opt)
    return make, epochs, 30


def classify_workload():
    """(make a model for a cell, train it, epochs trained): examples/classify.py's
    training words."""
    classify = _example("classify")
    words, langs = classify.load_words()
    order = np.random.default_rng(classify.SPLIT_SEED).permutation(len(words))
    words = [words[i] for i in order]
    names = sorted(set(langs))
    labels = np.array([names.index(langs[i]) for i in order])
    n_test = len(words) // 5
    n_val = (len(words) - n_test) // 10
    train = np.arange(n_test + n_val, len(words))
    alphabet = sorted(set("".join(words)))
    ids, lengths = classify.encode(words, alphabet)

    def make(cell):
        model = clstm.Classifier(hidden_size=64, num_classes=len(names),
                                 vocab_size=len(alphabet) + 1, embed_dim=16, padding_idx=0,
                                 cell=cell, seed=0)
        return model, clstm.Adam(model, lr=3e-3)

    def epochs(model, opt):
        model.fit(ids[train], labels[train], lengths=lengths[train], epochs=1,
                  batch_size=64, seed=0, verbose=0, optimizer=opt, clip_norm=5.0)
    return make, epochs, 1


WORKLOADS = {"forecast": forecast_workload, "classify": classify_workload}


def compare(make, train, epochs, rounds):
    """Per-cell seconds per epoch over ``rounds`` rounds, cells alternating."""
    models = {cell: make(cell) for cell in ("lstm", "gru")}
    for cell, (model, opt) in models.items():   # warm-up: workspaces, first calls
        train(model, opt)
    times = {cell: [] for cell in models}
    for r in range(rounds):
        for cell in (("lstm", "gru") if r % 2 == 0 else ("gru", "lstm")):
            start = time.perf_counter()
            train(*models[cell])
            times[cell].append((time.perf_counter() - start) / epochs)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0,
                    help="clstm threads (default 0: clstm's default)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args(argv)
    if args.threads > 0:
        clstm.set_num_threads(args.threads)
    print(f"clstm {clstm.__version__}, ISA {clstm.isa()}, {clstm.get_num_threads()} "
          f"thread(s), {args.rounds} rounds")
    print("| workload | LSTM ms/epoch | GRU ms/epoch | GRU / LSTM (median of rounds) |")
    print("|---|---|---|---|")
    rows = {}
    for name in args.workloads.split(","):
        times = compare(*WORKLOADS[name](), args.rounds)
        ratio = statistics.median(g / lstm for g, lstm in zip(times["gru"], times["lstm"]))
        rows[name] = dict(times, ratio=ratio)
        print(f"| {name} | {statistics.median(times['lstm']) * 1e3:.1f} | "
              f"{statistics.median(times['gru']) * 1e3:.1f} | {ratio:.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
