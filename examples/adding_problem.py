"""Hochreiter and Schmidhuber's adding problem: remember two marked numbers across a
long sequence and output their sum.

    python examples/adding_problem.py               # T = 100, about 1-3 minutes
    python examples/adding_problem.py --length 200  # longer memory, slower

Each sequence has T steps of two features: a number drawn uniformly from [0, 1], and a
marker that is 1 at exactly two steps (one in the first half, one in the second) and 0
elsewhere. The target is the sum of the two marked numbers, read after the last step, so
the network must carry the first number across up to T steps of distraction.

Always answering the mean (1) scores a mean squared error of 1/6 = 0.167; a network that
does not learn to use the markers cannot do better. ``clstm.Regressor`` (LSTM -> last
step -> Dense(1)) first sits on that plateau for a few epochs, then drops far below it.
Training stops after ``--epochs`` epochs or as soon as the validation MSE is below
``--stop-at``; the test sequences are fresh ones, used only for the final score.
"""
import argparse
import sys
import time

import numpy as np

import clstm


def adding_data(n, length, rng):
    """(x (n, length, 2) float32, y (n,) float32) for the adding problem."""
    x = np.zeros((n, length, 2), dtype=np.float32)
    x[:, :, 0] = rng.uniform(0.0, 1.0, size=(n, length))
    rows = np.arange(n)
    first = rng.integers(0, length // 2, size=n)
    second = rng.integers(length // 2, length, size=n)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = x[rows, first, 0] + x[rows, second, 0]
    return x, y


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=100, help="T, steps per sequence")
    parser.add_argument("--train", type=int, default=10000, help="training sequences")
    parser.add_argument("--val", type=int, default=1000, help="validation sequences")
    parser.add_argument("--test", type=int, default=2000, help="test sequences")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20, help="at most")
    parser.add_argument("--stop-at", type=float, default=0.002,
                        help="stop once the validation MSE is below this")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=0,
                        help="clstm threads (default 0: clstm's default, OMP_NUM_THREADS "
                             "or all cores)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.length < 2:
        raise SystemExit("--length: expected at least 2 steps")
    if args.threads > 0:
        clstm.set_num_threads(args.threads)
    start = time.perf_counter()
    train_rng, val_rng, test_rng = (np.random.default_rng(s)
                                    for s in np.random.SeedSequence(args.seed).spawn(3))
    x_train, y_train = adding_data(args.train, args.length, train_rng)
    x_val, y_val = adding_data(args.val, args.length, val_rng)
    x_test, y_test = adding_data(args.test, args.length, test_rng)
    print(f"adding problem, T = {args.length}: {args.train} training, {args.val} "
          f"validation, {args.test} test sequences")

    model = clstm.Regressor(2, args.hidden, seed=args.seed)
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, optimizer=clstm.Adam(model, lr=args.lr),
                        clip_norm=1.0, validation_data=(x_val, y_val),
                        callbacks=[lambda epoch, logs: logs["val_loss"] < args.stop_at],
                        verbose=0 if args.quiet else 1).history_
    mse = float(model.evaluate(x_test, y_test)["loss"])
    baseline = float(np.mean((y_test - y_train.mean()) ** 2))
    prediction = model.predict(x_test[:3])[:, 0]

    elapsed = time.perf_counter() - start
    epochs = len(history["loss"])
    for target, guess in zip(y_test[:3], prediction):
        print(f"  target {target:.3f}  predicted {guess:.3f}")
    print(f"test MSE on {args.test} fresh sequences after {epochs} epochs: LSTM {mse:.5f}; "
          f"always the training mean: {baseline:.4f} (1/6 = 0.1667)")
    print(f"adding_problem: T={args.length}, test MSE LSTM {mse:.5f} vs mean-prediction "
          f"baseline {baseline:.4f} ({epochs} epochs, seed {args.seed}, {elapsed:.0f} s)")
    return {"mse": mse, "baseline": baseline, "epochs": epochs, "seconds": elapsed,
            "history": history}


if __name__ == "__main__":
    main(sys.argv[1:])
