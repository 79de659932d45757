"""`python -m bench.distributed_drift`: how far 2 ranks drift from one process, next to how
far one process drifts from itself when its initial weights change by 1e-15.

examples/char_lm.py's model (Embedding 48 -> LSTM 256 -> Dense, float64, Adam 3e-3,
clip 1, 32 streams x 64 steps, 2 epochs over Python's help text, 1 thread per process) is
trained three times: one process; one process with every initial weight scaled by
(1 + 1e-15); ``mpiexec -n 2`` with ``fit(distributed=True)``. The parameters are saved
every 25 steps and the largest difference from the first run is printed per snapshot.
A training whose rounding differences grow the same way in both comparisons is sensitive
to rounding itself; the distribution adds nothing to it. About 4 minutes on 2 cores.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def _train(args):
    import clstm

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "examples"))
    import char_lm

    ids, vocab = char_lm.encode(char_lm.load_text(args.max_chars))
    clstm.set_num_threads(1)
    model = clstm.LanguageModel(len(vocab), 48, args.hidden, dtype="float64", seed=0)
    if args.perturb:
        model.flat_params *= 1 + 1e-15
    snapshots = []

    class Snapshot(clstm.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch % 25 == 0:
                snapshots.append(model.flat_params.copy())

    model.fit(ids, epochs=2, batch_size=32, bptt=64, optimizer=clstm.Adam(model, lr=3e-3),
              clip_norm=1.0, verbose=0, callbacks=[Snapshot()],
              distributed=True if args.distributed else None)
    if not args.distributed or _rank() == 0:
        np.save(args.out, np.array(snapshots))


def _rank():
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.distributed_drift",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--perturb", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--max-chars", type=int, default=0, help="0: the whole text")
    args = p.parse_args(argv)
    if args.train:
        return _train(args)
    common = ["-m", "bench.distributed_drift", "--train", "--hidden", str(args.hidden),
              "--max-chars", str(args.max_chars)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: os.path.join(tmp, f"{k}.npy") for k in ("one", "perturbed", "ranks")}
        subprocess.run([sys.executable, *common, "--out", paths["one"]], check=True, env=env)
        subprocess.run([sys.executable, *common, "--perturb", "--out", paths["perturbed"]],
                       check=True, env=env)
        subprocess.run(["mpiexec", "-n", "2", sys.executable, *common, "--distributed",
                        "--out", paths["ranks"]], check=True, env=env)
        one, perturbed, ranks = (np.load(paths[k]) for k in ("one", "perturbed", "ranks"))
    per_epoch = len(one) // 2
    print("| snapshot (epoch, step) | one process, weights x (1 + 1e-15) | 2 ranks |")
    print("|---|---|---|")
    for i in range(len(one)):
        where = f"{i // per_epoch + 1}, {25 * (i % per_epoch)}"
        print(f"| {where} | {np.abs(perturbed[i] - one[i]).max():.1e} | "
              f"{np.abs(ranks[i] - one[i]).max():.1e} |")


if __name__ == "__main__":
    main()
