"""`python -m bench.distributed`: data-parallel training on this machine, over MPI.

Measures, for the S2-S5 shapes (float32, one training step: forward, backward, gradient
sum over the ranks, Adam):

- the step time of 1 rank x 2 threads (the whole batch in one process) against 2 ranks
  x 1 thread (half the batch each, gradients summed by an allreduce), both launched with
  ``mpiexec``, in alternating rounds;
- in the 2-rank runs: the step without any gradient sum (``compute``), with one
  blocking ``Allreduce`` after the backward (``blocking``) and with a layer's
  ``Iallreduce`` started as soon as its backward is done (``overlap``: MPICH moves the
  sums on only in the ``Testall`` at each layer's start and in the final ``Waitall``), and
  the same with a progress thread testing them every ``--interval`` seconds
  (``overlap_thread``), interleaved;
- the time of one ``Allreduce`` per gradient size (float32 elements).

The time a step spends inside MPI calls (the gradient sum's exposed part: the blocking
``Allreduce``, or the ``Iallreduce`` starts and the final ``Waitall``) is timed directly,
as the smallest over the ranks (the rank that arrives last waits least: its time is the
sum's cost without the wait for a slower rank); the share that overlap hides is
``1 - in_MPI(overlap) / in_MPI(blocking)``. (The difference of whole step times is too
noisy on a shared 2-core machine for a sum that takes a few percent of the step.)

Writes bench/results/distributed.json and prints a table, with a projection of the
efficiency on 2-64 machines over Ethernet from those figures (see ``project``).
Each model is a Sequential of one LSTM layer per stacked layer and a Dense head, so that
each layer's gradients can be sent separately.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = ("S2", "S3", "S4", "S5")
SIZES = (2**10, 2**14, 2**17, 2**20, 2**22)   # allreduce sizes, float32 elements


# --------------------------------------------------------------------- the worker

def _worker(args):
    import numpy as np

    import clstm
    from clstm.distributed import DistributedOptimizer, broadcast_parameters
    from mpi4py import MPI

    from bench.shapes import SHAPES as GRID

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    clstm.set_num_threads(args.threads)
    out = {"ranks": size, "threads": args.threads, "shapes": {}, "allreduce": {}}

    def timed(fn, number):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = (time.perf_counter() - t0) / number
        return comm.allreduce(elapsed, op=MPI.MAX)     # a step ends when the last rank's does

    for name in args.shapes:
        s = GRID[name]
        layers = [clstm.LSTM(s.I if k == 0 else s.H, s.H, seed=k) for k in range(s.L)]
        model = clstm.Sequential(layers + [clstm.LastStep(), clstm.Dense(s.H, 1, seed=9)],
                                 loss="mse")
        broadcast_parameters(model)
        lo, hi = clstm.distributed.shard_bounds(s.B, rank, size)
        rng = np.random.default_rng(rank)
        x = rng.standard_normal((s.T, hi - lo, s.I)).astype(np.float32)
        dout = np.full((hi - lo, 1), 1e-3, dtype=np.float32)
        plain = clstm.Adam(model, lr=1e-5)
        opts = {"compute": plain,
                "blocking": DistributedOptimizer(clstm.Adam(model, lr=1e-5), model,
                                                 overlap=False),
                "overlap": DistributedOptimizer(clstm.Adam(model, lr=1e-5), model,
                                                overlap=True),
                "overlap_thread": DistributedOptimizer(clstm.Adam(model, lr=1e-5), model,
                                                       overlap=True,
                                                       progress_interval=args.interval)}
        model.layer_done_hook = None       # installed by the overlap one: set per mode

        exposed = {"compute": 0.0, "blocking": 0.0, "overlap": 0.0, "overlap_thread": 0.0}

        def step(mode):
            """One training step; adds the time spent in MPI calls (the part of the
            gradient sum not hidden behind computation) to exposed[mode]."""
            opt = opts[mode]
            model.zero_grad()
            model.forward(x)
            if mode == "compute":
                model.backward(dout)
                opt.step()
                return
            reducer = opt._reducer

            def hook(i):
                t0 = time.perf_counter()
                reducer.layer_done(i)
                exposed[mode] += time.perf_counter() - t0

            model.backward(dout, layer_done=hook if mode.startswith("overlap") else None)
            t0 = time.perf_counter()
            reducer.finish()
            exposed[mode] += time.perf_counter() - t0
            opt.optimizer.step()

        modes = ("compute",) if size == 1 else ("compute", "blocking", "overlap",
                                                "overlap_thread")
        step("compute")                                    # warm up workspaces
        t = timed(lambda: step("compute"), 1)
        number = max(1, int(args.min_time / max(t, 1e-6)))
        samples = {m: [] for m in modes}
        waits = {m: [] for m in modes}
        for r in range(args.repeats):
            for m in modes[r % len(modes):] + modes[:r % len(modes)]:   # rotate the order
                exposed[m] = 0.0
                samples[m].append(timed(lambda: step(m), number))
                # the rank that arrives last at the sum waits least: its time in MPI is
                # the sum's cost without the other's wait for it (load imbalance)
                waits[m].append(comm.allreduce(exposed[m] / number, op=MPI.MIN))
        out["shapes"][name] = {m: statistics.median(v) for m, v in samples.items()}
        out["shapes"][name].update({f"{m}_mpi": statistics.median(v)
                                    for m, v in waits.items()})
        out["shapes"][name]["grad_bytes"] = model.flat_grads.nbytes
        out["shapes"][name]["samples"] = samples

    if size > 1:
        for n in args.sizes:
            buf = np.ones(n, dtype=np.float32)
            fn = lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # noqa: E731
            fn()
            number = max(3, int(args.min_time / max(timed(fn, 3), 1e-7)))
            out["allreduce"][n] = statistics.median(timed(fn, number)
                                                    for _ in range(args.repeats))
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(out, f)


# --------------------------------------------------------------------- the driver

def _launch(ranks, threads, args, path):
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "bench.distributed",
           "--worker", "--threads", str(threads), "--out", path,
           "--repeats", str(args.repeats), "--min-time", str(args.min_time),
           "--interval", str(args.interval),
           "--shapes", *args.shapes]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(cmd, check=True, env=env)
    with open(path) as f:
        return json.load(f)


def project(compute_s, grad_bytes, hidden, machines, gbit, latency_s):
    """Efficiency of N machines on a ring allreduce, weak scaling (each machine its own
    batch of the measured size, so its compute time stays ``compute_s``):

        t_allreduce = 2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency
        efficiency  = compute / (compute + (1 - hidden) x t_allreduce)
    """
    n = machines
    t_ar = 2 * (n - 1) / n * grad_bytes / (gbit * 1e9 / 8) + 2 * (n - 1) * latency_s
    return compute_s / (compute_s + (1 - hidden) * t_ar), t_ar


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES))
    p.add_argument("--repeats", type=int, default=5, help="samples per mode and round")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternating rounds of the 1x2 and 2x1 launches")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per sample")
    p.add_argument("--latency-us", type=float, default=25.0,
                   help="per-message latency assumed for the Ethernet projection")
    p.add_argument("--quick", action="store_true", help="S2-S3, fewer samples")
    p.add_argument("--interval", type=float, default=5e-4,
                   help="the progress thread's interval in overlap_thread (seconds)")
    p.add_argument("--report", metavar="JSON", default=None,
                   help="print the tables of a saved bench/results/distributed.json again")
    args = p.parse_args(argv)
    args.sizes = SIZES
    if args.worker:
        return _worker(args)
    if args.quick:
        args.shapes, args.repeats, args.rounds, args.min_time = ["S2", "S3"], 3, 1, 0.2

    import shutil
    import tempfile

    if not args.report and (shutil.which("mpiexec") is None
                            or importlib.util.find_spec("mpi4py") is None):
        raise SystemExit("bench.distributed: needs mpi4py and mpiexec: pip install "
                         "'clstm-cpu[mpi]' (or pip install mpi4py mpich)")

    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        runs, load = saved["runs"], saved["result"]["loadavg_after"]
        args.shapes = [s for s in SHAPES if s in runs["2x1"][0]["shapes"]]
    else:
        runs = {"1x2": [], "2x1": []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for key, (ranks, threads) in (("1x2", (1, 2)), ("2x1", (2, 1))):
                    runs[key].append(_launch(ranks, threads, args,
                                             os.path.join(tmp, "o.json")))
        load = os.getloadavg()
    report(runs, args, load)


def report(runs, args, load):
    def med(key, shape, mode):
        return statistics.median(run["shapes"][shape][mode] for run in runs[key])

    result = {"machine": os.uname().nodename, "cpus": os.cpu_count(),
              "loadavg_after": load,
              "latency_assumed_us": args.latency_us, "shapes": {}, "allreduce_s": {},
              "projection": {}}
    print(f"load average after the runs: {load[0]:.2f} on {os.cpu_count()} CPUs")
    print("\ntraining step, float32, ms (medians; 1x2 = 1 rank x 2 threads, whole "
          "batch; 2x1 = 2 ranks x 1 thread, half the batch each)")
    print("| shape | grad MiB | 1x2 | 2x1 compute | 2x1 blocking | 2x1 overlap | "
          "2x1 overlap + thread | 1x2 / 2x1 overlap | in MPI: blocking | overlap | "
          "overlap + thread | hidden: overlap | overlap + thread |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in args.shapes:
        one = med("1x2", s, "compute")
        comp, block, over, over_t = (med("2x1", s, m) for m in
                                     ("compute", "blocking", "overlap", "overlap_thread"))
        cost, left, left_t = (med("2x1", s, f"{m}_mpi") for m in
                              ("blocking", "overlap", "overlap_thread"))
        hidden = 1 - left / cost if cost > 0 else float("nan")
        hidden_t = 1 - left_t / cost if cost > 0 else float("nan")
        gb = runs["2x1"][0]["shapes"][s]["grad_bytes"]
        result["shapes"][s] = {"1x2": one, "2x1_compute": comp, "2x1_blocking": block,
                               "2x1_overlap": over, "2x1_overlap_thread": over_t,
                               "grad_bytes": gb, "hidden": hidden, "hidden_thread": hidden_t,
                               "mpi_blocking": cost, "mpi_overlap": left,
                               "mpi_overlap_thread": left_t,
                               "machine_step": min(one, comp)}
        print(f"| {s} | {gb / 2**20:.2f} | {one * 1e3:.1f} | {comp * 1e3:.1f} | "
              f"{block * 1e3:.1f} | {over * 1e3:.1f} | {over_t * 1e3:.1f} | "
              f"{one / over:.2f} | {cost * 1e3:.2f} | {left * 1e3:.2f} | "
              f"{left_t * 1e3:.2f} | {hidden:.0%} | {hidden_t:.0%} |")
    print("\nAllreduce (2 ranks, shared memory), float32:")
    print("| elements | MiB | us | GB/s (2(N-1)/N x bytes / t) |")
    print("|---|---|---|---|")
    for n in SIZES:
        t = statistics.median(run["allreduce"][str(n)] for run in runs["2x1"])
        result["allreduce_s"][n] = t
        print(f"| {n} | {n * 4 / 2**20:.3f} | {t * 1e6:.1f} | {n * 4 / t / 1e9:.2f} |")
    print(f"\nprojected efficiency, weak scaling (each machine the shape's batch on all "
          f"its cores; compute = the faster of the 1x2 step and the 2x1 step without the "
          f"sum: the faster the compute, the larger the sum's share), ring allreduce, latency "
          f"{args.latency_us:.0f} us per message; without overlap / with the hidden "
          f"share measured above:")
    machines = (2, 4, 8, 16, 32, 64)
    print("| shape | compute ms | grad MiB | t_allreduce ms, N=64, 10 / 25 Gbit/s |")
    print("|---|---|---|---|")
    for s in args.shapes:
        r = result["shapes"][s]
        t10, t25 = (project(r["machine_step"], r["grad_bytes"], 0.0, 64, g,
                            args.latency_us * 1e-6)[1] for g in (10, 25))
        print(f"| {s} | {r['machine_step'] * 1e3:.1f} | {r['grad_bytes'] / 2**20:.2f} | "
              f"{t10 * 1e3:.1f} / {t25 * 1e3:.1f} |")
    print()
    print("| shape | Gbit/s | " + " | ".join(f"N={n}" for n in machines) + " |")
    print("|---|---|" + "---|" * len(machines))
    for s in args.shapes:
        r = result["shapes"][s]
        hidden = max(0.0, min(1.0, r["hidden"])) if r["hidden"] == r["hidden"] else 0.0
        for gbit in (10, 25):
            cells = []
            for n in machines:
                e0, _ = project(r["machine_step"], r["grad_bytes"], 0.0, n, gbit,
                                args.latency_us * 1e-6)
                e1, _ = project(r["machine_step"], r["grad_bytes"], hidden, n, gbit,
                                args.latency_us * 1e-6)
                result["projection"][f"{s}/{gbit}/{n}"] = [e0, e1]
                cells.append(f"{e0:.0%} / {e1:.0%}")
            print(f"| {s} | {gbit} | " + " | ".join(cells) + " |")
    if args.report:
        return
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "distributed.json")
    with open(path, "w") as f:
        json.dump({"result": result, "runs": runs}, f, indent=1)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
