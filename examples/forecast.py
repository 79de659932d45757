"""Forecast the yearly sunspot number one year ahead with an LSTM, against two baselines.

    python examples/forecast.py            # about 10-30 s on two cores
    python examples/forecast.py --seed 3   # another initialisation and shuffling
    python examples/forecast.py --cell gru # a GRU in place of the LSTM

The data are the yearly mean sunspot numbers 1700-2008 (NOAA's National Geophysical
Data Center, public domain; see examples/data/README.md). The last 15 % of the years
(1963-2008, about four solar cycles) are held out: they are used neither for training,
nor for choosing the number of epochs, nor for the normalisation statistics.

Every model sees the same input: the previous ``--window`` years, square-root
transformed (the usual variance-stabilising transform for counts, which helps the linear
baseline most) and standardised with the training years' mean and standard deviation.
Each predicts the next year, one step ahead; errors are measured in sunspot numbers.

- persistence: next year = this year (the series has an ~11-year cycle but no fixed
  period, so there is no exact seasonal persistence; "persistence 11 years back" is
  printed for reference);
- AR(p): ordinary least squares on the same p lags plus an intercept, fit on the
  training years with NumPy;
- LSTM (or GRU, ``--cell gru``): ``clstm.Regressor`` (LSTM -> last step -> Dense(1)),
  an average of ``--members`` networks. The number of epochs is chosen on the last 20 % of the
  training years (trained on the first 80 %); then every member is retrained on all
  training years for that many epochs.
"""
import argparse
import os
import sys
import time

import numpy as np

import clstm

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                    "sunspots_yearly.csv")


def load_sunspots(path=DATA):
    """(years, values) from the CSV: columns YEAR, SUNACTIVITY."""
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, 0].astype(int), table[:, 1]


def windows(series, p):
    """(inputs (N, p), targets (N,), target indices (N,)): every run of p values and the
    value after it."""
    inputs = np.lib.stride_tricks.sliding_window_view(series[:-1], p)
    return inputs, series[p:], np.arange(p, len(series))


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def fit_ar(inputs, targets):
    """Least-squares AR coefficients (p lags and an intercept)."""
    design = np.column_stack([inputs, np.ones(len(inputs))])
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return coef


def predict_ar(coef, inputs):
    return np.column_stack([inputs, np.ones(len(inputs))]) @ coef


def train_members(x, y, epochs, seeds, args, x_watch=None):
    """Train one Regressor per seed; return the models and, with ``x_watch``, their
    predictions for it after every epoch: (members, epochs, len(x_watch))."""
    models, curves = [], []
    for seed in seeds:
        model = clstm.Regressor(1, args.hidden, cell=args.cell, seed=seed)
        curve = []
        callbacks = None
        if x_watch is not None:
            callbacks = [lambda epoch, logs, m=model, c=curve:
                         c.append(m.predict(x_watch)[:, 0])]
        model.fit(x, y, epochs=epochs, batch_size=args.batch_size, seed=seed, verbose=0,
                  optimizer=clstm.Adam(model, lr=args.lr), callbacks=callbacks)
        models.append(model)
        curves.append(curve)
    return models, np.array(curves)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=12, help="lags every model sees")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm",
                        help="the recurrent layer (default: lstm)")
    parser.add_argument("--members", type=int, default=5, help="networks averaged")
    parser.add_argument("--max-epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--threads", type=int, default=0,
                        help="clstm threads (default 0: clstm's default, OMP_NUM_THREADS "
                             "or all cores)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        clstm.set_num_threads(args.threads)
    start = time.perf_counter()
    years, counts = load_sunspots()
    n = len(counts)
    n_train = n - int(round(args.test_fraction * n))      # first year of the test part
    p = args.window

    # Same preprocessing for every model; statistics from the training years only.
    z = np.sqrt(counts)
    mean, std = z[:n_train].mean(), z[:n_train].std()
    scaled = (z - mean) / std

    def to_counts(s):
        return np.maximum(s * std + mean, 0) ** 2

    inputs, targets, idx = windows(scaled, p)
    train = idx < n_train                 # the target year is a training year
    test = ~train
    truth = counts[idx[test]]
    print(f"sunspots {years[0]}-{years[-1]}: {n} years; training {years[0]}-"
          f"{years[n_train - 1]}, held out {years[n_train]}-{years[-1]} "
          f"({test.sum()} one-year-ahead forecasts from the previous {p} years)")

    # Baselines.
    persistence = rmse(counts[idx[test] - 1], truth)
    cycle = rmse(counts[idx[test] - 11], truth)
    coef = fit_ar(inputs[train], targets[train])
    ar = rmse(to_counts(predict_ar(coef, inputs[test])), truth)
    raw_inputs, raw_targets, _ = windows(counts, p)
    ar_raw = rmse(predict_ar(fit_ar(raw_inputs[train], raw_targets[train]),
                             raw_inputs[test]), truth)

    # The network: epochs chosen on the last 20 % of the training windows, then retrained.
    x = inputs[:, :, None].astype(np.float32)             # (N, p, 1): one feature a step
    y = targets.astype(np.float32)
    x_train, y_train = x[train], y[train]
    n_fit = int(round(0.8 * len(x_train)))
    seeds = [int(s) for s in np.random.SeedSequence(args.seed).generate_state(args.members)]
    fit_start = time.perf_counter()
    _, curves = train_members(x_train[:n_fit], y_train[:n_fit], args.max_epochs, seeds,
                              args, x_watch=x_train[n_fit:])
    val_truth = counts[idx[train][n_fit:]]
    val_curve = [rmse(to_counts(pred), val_truth) for pred in curves.mean(axis=0)]
    epochs = int(np.argmin(val_curve)) + 1
    print(f"validation ({years[idx[train][n_fit]]}-{years[n_train - 1]}): best ensemble "
          f"RMSE {val_curve[epochs - 1]:.2f} after {epochs} of {args.max_epochs} epochs")
    models, _ = train_members(x_train, y_train, epochs, seeds, args)
    preds = np.array([m.predict(x[test])[:, 0] for m in models])
    fit_seconds = time.perf_counter() - fit_start   # both trainings, the networks alone
    rnn = rmse(to_counts(preds.mean(axis=0)), truth)
    name = args.cell.upper()
    members = [rmse(to_counts(pr), truth) for pr in preds]

    elapsed = time.perf_counter() - start
    print(f"held-out RMSE (sunspot number), {years[n_train]}-{years[-1]}:")
    rows = [("persistence (last year)", persistence, ""),
            ("persistence (11 years back)", cycle, ""),
            (f"AR({p}), least squares", ar, f"(on untransformed values: {ar_raw:.2f})"),
            (f"{name}({args.hidden}), {args.members} averaged", rnn,
             f"(members alone: {min(members):.2f}-{max(members):.2f}, mean "
             f"{np.mean(members):.2f})")]
    for label, value, note in rows:
        print(f"  {label:<30} {value:7.2f}   {note}".rstrip())
    print(f"forecast: sunspots {years[n_train]}-{years[-1]}, one year ahead, RMSE "
          f"{name} {rnn:.2f} vs AR({p}) {ar:.2f} vs persistence {persistence:.2f} "
          f"(seed {args.seed}, {elapsed:.0f} s, of which {name} training {fit_seconds:.1f} s)")
    # "lstm_rmse" is the network's RMSE whichever the cell (the key predates --cell)
    return {"cell": args.cell, "rnn_rmse": rnn, "lstm_rmse": rnn, "ar_rmse": ar, "persistence_rmse": persistence,
            "cycle_persistence_rmse": cycle, "ar_raw_rmse": ar_raw,
            "member_rmse": members, "epochs": epochs, "seconds": elapsed,
            "fit_seconds": fit_seconds}


if __name__ == "__main__":
    main(sys.argv[1:])
