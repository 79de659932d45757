"""clstm side by side with its peers: the grid, peak memory, streaming latency.

    python -m bench [--quick] [--shapes S1,S3] [--cell lstm|gru|both] [--dtypes float32,float64]
                    [--threads 1,2] [--modes fwd,train] [--repeats N] [--peers torch,torch-nodnnl,numpy,keras,jax,onnxruntime]
                    [--stream-threads 1] [--out DIR] [--no-memory] [--no-streaming] [--no-chart]
                    [--no-serving] [--no-varlen] [--no-grid] [--isa avx512|avx2|generic] [--busy]

Writes DIR/results.json, DIR/results.md and (with matplotlib) DIR/chart.png, and prints the
Markdown.  `--cell gru` times clstm.GRU against torch.nn.GRU (and the other peers' GRUs) on
the same shapes, `--cell both` both cells (each shape's LSTM cell, then its GRU cell); the
streaming and busy tables follow `--cell` too; the memory and serving tables stay the LSTM's.  `--isa LEVEL` re-executes the run with clstm and OpenBLAS forced to that level
(bench/isa.py); `--busy` runs everything beside a CPU hog and adds the table of clstm's
n-thread / 1-thread time under that load (bench/busy.py); the serving table (1, 2, 4 Python
threads sharing one model) comes from `python -m bench.serving`, run in a subprocess; the
variable-length and bidirectional rows (torch.nn.LSTM on packed sequences and on the padded
batch; a bidirectional layer at B = 1 on n threads against 1) from bench/varlen.py, on the
grid's shapes with B > 1 (`--no-grid --no-memory --no-streaming --no-serving` runs those
alone).  Every implementation runs in this process, interleaved; peak memory is measured
in fresh processes (bench/memory.py), which import the same clstm as this process.  Which
clstm that is (the source tree when built in place, else the installed package): see
bench/__init__.py; results.json records its path under machine.clstm_file.
"""

import argparse
import gc
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import CLSTM_PATH_ENV, busy, isa, report, streaming, varlen  # noqa: E402
from bench.ceiling import GemmCeiling, blas_controller  # noqa: E402
from bench.peers import (PEERS, REPO_ROOT, ClstmPeer, Skip, clstm_location,  # noqa: E402
                         clstm_module, make_input, make_params)
from bench.shapes import (CELLS, DTYPES, MODES, SHAPES, parse_cells, parse_shapes,  # noqa: E402
                          shape_spec, step_flops, with_cell)
from bench.timing import OPENBLAS_SPIN_PAUSE_S, interleaved  # noqa: E402

ALL_CORES = os.cpu_count() or 1
CEILING, CEILING_TWIN = "ceiling", "ceiling 1x1x1 twin"  # timed after the peers, not peers

# What --quick changes; explicit flags still win.  Quick leaves out the NumPy reference
# (tests/reference.py, one step at a time: the slowest peer in every cell, about a third of
# the grid's time, and not a performance contender) and streams on one thread only (B = 1,
# H = 64 is far too small to split).
QUICK = dict(shapes="S1,S2,S3", dtypes="float32", repeats=3, warmup=1, min_time=0.01,
             memory_shapes="S3", stream_steps=500, stream_threads="1",
             peers=",".join(p for p in PEERS if p != "numpy"))
FULL = dict(shapes=",".join(SHAPES), dtypes=",".join(DTYPES), repeats=7, warmup=2,
            min_time=0.05, memory_shapes=None, stream_steps=2000, stream_threads=None,
            peers=",".join(PEERS))

# Relative error (max |peer - clstm| / max |clstm|) above which a peer is reported as
# disagreeing with clstm: it would mean the two are not doing the same work.
TOLERANCE = {"float32": 2e-3, "float64": 1e-8}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="about a minute on an idle 2-core machine: S1-S3, float32, 3 "
                         "repeats, no numpy peer, streaming on 1 thread")
    ap.add_argument("--shapes", help=f"comma list of {','.join(SHAPES)} and custom shapes "
                    "B:T:I:H:L (e.g. S2,8:150:40:96:1)")
    ap.add_argument("--cell", default="lstm",
                    help="the recurrent cell of the grid: lstm (default), gru, or both")
    ap.add_argument("--dtypes", help="comma list of float32,float64")
    ap.add_argument("--threads", default=f"1,{ALL_CORES}" if ALL_CORES > 1 else "1",
                    help="comma list of thread counts (default: 1 and all cores)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of fwd,train")
    ap.add_argument("--repeats", type=int, help="timed samples per implementation and cell")
    ap.add_argument("--warmup", type=int, help="untimed calls before timing")
    ap.add_argument("--min-time", type=float, help="seconds one timed sample lasts at least")
    ap.add_argument("--peers", help=f"comma list of {','.join(PEERS)} (default: all; "
                    "--quick: all but numpy)")
    ap.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    ap.add_argument("--memory-shapes", help="shapes for the peak-memory runs (default: --shapes)")
    ap.add_argument("--stream-steps", type=int, help="steps timed per streaming configuration")
    ap.add_argument("--stream-threads",
                    help="thread counts for streaming (default: --threads; --quick: 1)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds of sleep before each multi-threaded sample, so that the "
                         "previous implementation's spinning worker threads go idle "
                         "(default 0: on a busy machine the sleep hurts more than it helps)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-streaming", action="store_true")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--no-serving", action="store_true",
                    help="leave out the serving-from-threads table (python -m bench.serving)")
    ap.add_argument("--no-varlen", action="store_true",
                    help="leave out the variable-length and bidirectional rows "
                         "(bench/varlen.py)")
    ap.add_argument("--no-grid", action="store_true",
                    help="leave out the whole-sequence grid (e.g. to run the variable-length "
                         "rows alone)")
    ap.add_argument("--isa", choices=isa.LEVELS,
                    help="run clstm (CLSTM_ISA) and the BLAS ceiling (OPENBLAS_CORETYPE) at "
                         "this instruction-set level: the process re-executes itself with "
                         "both set (default: what the CPU picks)")
    ap.add_argument("--busy", action="store_true",
                    help="run beside a busy-loop process pinned to one core, and report "
                         "clstm's time at the largest thread count / at 1 thread under that "
                         "load for every shape, cell, dtype and mode (target <= 1.1)")
    args = ap.parse_args(argv)

    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.shapes = parse_shapes(args.shapes)
        args.memory_shapes = (args.shapes if args.memory_shapes is None
                              else parse_shapes(args.memory_shapes))
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    try:
        args.cells = parse_cells(args.cell)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    args.dtypes = _choices(args.dtypes, DTYPES, "dtype")
    args.modes = _choices(args.modes, MODES, "mode")
    args.peers = _choices(args.peers, list(PEERS), "peer")
    args.threads = sorted({int(t) for t in args.threads.split(",")}, reverse=True)
    args.stream_threads = (args.threads if args.stream_threads is None else
                           sorted({int(t) for t in args.stream_threads.split(",")}, reverse=True))
    return args


def _choices(text, allowed, what):
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}(s) {bad}; choose from {list(allowed)}")
    return items


def log(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine


def machine_info(clstm_peer, peers):
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"numpy": np.__version__}
    import scipy
    versions["scipy"] = scipy.__version__
    versions["clstm"] = _safe(clstm_peer.version)
    clstm_file = _safe(clstm_peer.file)
    for peer in peers:
        if peer.available() is None and peer.name != "torch-nodnnl":
            versions[peer.name] = _safe(peer.version)
    blas = []
    for lib in blas_controller().info():
        if lib.get("user_api") == "blas":
            blas.append(f"{lib.get('internal_api')} {lib.get('version')} "
                        f"({lib.get('threading_layer')}, {lib.get('architecture')}, "
                        f"{Path(lib['filepath']).name})")
        else:
            blas.append(f"{lib.get('internal_api')} ({Path(lib['filepath']).name})")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = ALL_CORES
    flags = {k: v for k, v in isa.cpu_info().items() if k != "model"}
    return dict(cpu=cpu, cpu_flags=flags, cores=ALL_CORES, usable_cores=affinity,
                platform=platform.platform(),
                python=platform.python_version(), python_executable=sys.executable,
                clstm_file=clstm_file, clstm_source="in-place build of this checkout"
                if _inside(clstm_file, REPO_ROOT) else "installed package",
                versions=versions, blas=blas,
                threadpoolctl=blas_controller().info())


def _inside(path, folder):
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError, TypeError):
        return False


def _safe(fn):
    try:
        return fn()
    except Exception as exc:
        return f"? ({type(exc).__name__})"


# --------------------------------------------------------------------------- grid


def rel_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def cross_check(runner, mode, expected):
    """Relative error of a peer's output (fwd) or weight gradients (train) against clstm's."""
    if mode == "fwd":
        return rel_error(runner.forward_output(), expected)
    got = runner.train_grads()
    return max(rel_error(got[name], value) for name, value in expected.items())


def run_cell(shape, dtype, threads, args, clstm_peer, peers, ceiling):
    """Every mode of one (shape, dtype, threads): a list of result dicts, one per mode."""
    params, x = make_params(shape, dtype), make_input(shape, dtype)
    runners, skipped = {}, {}
    for peer in [clstm_peer] + peers:
        try:
            runners[peer.name] = peer.setup(shape, dtype, threads, params, x)
        except Skip as exc:
            skipped[peer.name] = str(exc)
        except Exception as exc:
            skipped[peer.name] = f"setup failed: {type(exc).__name__}: {exc}"
    if "clstm" not in runners:
        raise SystemExit(f"clstm could not be set up for {shape.label()}: {skipped['clstm']}")

    cells = []
    for mode in args.modes:
        t0 = time.perf_counter()
        mode_runners = {name: r for name, r in runners.items() if mode in r.modes}
        mode_skipped = dict(skipped)
        for name, r in runners.items():
            if name not in mode_runners:
                mode_skipped[name] = f"{name}: inference only (no {mode} mode)"
        # Inference outputs are checked against clstm's before the timing (one call each):
        # a peer that computes something else is flagged before its times are read.
        early_checks = {}
        if mode == "fwd":
            early_checks = forward_checks(mode_runners)
        # The ceiling on `threads` threads, and on one: n cores can always do what one does.
        ceilings = {n: ceiling.cell(shape, mode, dtype, n, input_grad=False)
                    for n in sorted({threads, 1})}
        contenders = {name: getattr(r, mode) for name, r in mode_runners.items()}
        # clstm's pause on one thread after late teams (DEVELOPERS, "Threads") reacts to
        # the peers of this rotation too: their pools spin for a while after each call,
        # and a retry of the team at the start of clstm's next sample, late for that
        # reason, doubled the pause until every 2-thread sample ran on one thread. Each
        # sample starts from no pause, as in a process of its own; with --busy the
        # pause carries over, since the hog is what it is for.
        reset = importlib.import_module("clstm.kernels")._reset_team_pause
        fresh = {} if args.busy else {n: reset for n in mode_runners if n == "clstm"}
        timings = interleaved(contenders, args.repeats, args.warmup, args.min_time,
                              settle=args.settle if threads > 1 else 0.0,
                              pause_after={name: r.pause_after_s
                                           for name, r in mode_runners.items()},
                              before_sample=fresh)
        # The ceiling is timed after the implementations, not in their rotation: SciPy's
        # OpenBLAS workers spin for ~0.1 s after each multi-threaded GEMM and took a core
        # from whichever implementation ran next (clstm's 2-thread forward measured 2x
        # slower when it followed them). A pause lets them go idle before the next cell.
        gemms = {}
        for n, ce in ceilings.items():
            gemms.update({(CEILING, n): ce.run, (CEILING_TWIN, n): ce.overhead_run})
        gemm_timings = interleaved(gemms, args.repeats, args.warmup, args.min_time)
        time.sleep(OPENBLAS_SPIN_PAUSE_S)
        options = {n: ce.summarise(gemm_timings[(CEILING, n)].best,
                                   gemm_timings[(CEILING_TWIN, n)].best)
                   for n, ce in ceilings.items()}
        ceil = dict(min(options.values(), key=lambda o: o["net_s"]))
        ceil["threads"] = min(options, key=lambda n: options[n]["net_s"])
        ceil["by_threads"] = {n: {k: v for k, v in o.items() if k != "gemms"}
                              for n, o in options.items()}
        impls = {name: dict(median_s=t.median, samples_s=t.samples, calls_per_sample=t.number,
                            spread=t.spread(), error=t.error)
                 for name, t in timings.items()}

        reference = None
        if mode == "fwd":
            if "clstm" in early_checks:
                impls["clstm"]["error"] = impls["clstm"]["error"] or early_checks["clstm"]
        else:
            try:
                reference = runners["clstm"].train_grads()
            except Exception as exc:
                impls["clstm"]["error"] = (impls["clstm"]["error"]
                                           or f"{type(exc).__name__}: {exc}")
        for name, runner in mode_runners.items():
            if name == "clstm" or impls[name]["error"]:
                continue
            if mode == "fwd":
                impls[name].update(early_checks.get(name, {}))
            elif reference is not None:
                try:
                    impls[name]["rel_error_vs_clstm"] = cross_check(runner, mode, reference)
                except Exception as exc:
                    impls[name]["rel_error_vs_clstm"] = f"{type(exc).__name__}: {exc}"
            else:
                continue
            if hasattr(runner, "path"):
                impls[name]["path"] = runner.path(mode)
            impls[name].update(runner.notes())

        clstm_s = impls["clstm"]["median_s"] if not impls["clstm"]["error"] else math.nan
        peer_times = {n: v["median_s"] for n, v in impls.items()
                      if n != "clstm" and not v["error"] and not math.isnan(v["median_s"])}
        best = min(peer_times, key=peer_times.get) if peer_times else None
        flops = step_flops(shape, mode)
        cells.append(dict(
            shape=shape.name, cell=shape.cell, B=shape.B, T=shape.T, I=shape.I, H=shape.H,
            L=shape.L,
            dtype=dtype, threads=threads, mode=mode, flops=flops,
            impls=impls, skipped=mode_skipped,
            clstm_gflops=flops / clstm_s / 1e9,
            best_peer=best, best_peer_s=peer_times.get(best, math.nan),
            ratio_best_peer=peer_times[best] / clstm_s if best else math.nan,
            ceiling=ceil, ceiling_fraction=ceil["net_s"] / clstm_s,
        ))
        c = cells[-1]
        log(f"  {shape.name}{'' if shape.cell == 'lstm' else ' ' + shape.cell.upper()} "
            f"{dtype} {threads}thr {mode:5s}: "
            + ", ".join(f"{n} {report._ms(v['median_s'])}" + (" ERR" if v["error"] else "")
                        for n, v in impls.items())
            + f" ms | vs best {report._x(c['ratio_best_peer'])}, ceiling "
            f"{report._ms(ceil['net_s'])} ms ({report._pct(c['ceiling_fraction'])})"
            f" [{time.perf_counter() - t0:.1f}s]")
    del runners
    gc.collect()
    return cells


def forward_checks(runners):
    """Each runner's inference output against clstm's, before timing.

    Returns name -> {"rel_error_vs_clstm", "max_abs_diff_vs_clstm"} for the peers, and
    "clstm" -> an error string when clstm's own forward failed.
    """
    try:
        expected = np.asarray(runners["clstm"].forward_output())
    except Exception as exc:
        return {"clstm": f"{type(exc).__name__}: {exc}"}
    out = {}
    for name, runner in runners.items():
        if name == "clstm":
            continue
        try:
            got = np.asarray(runner.forward_output())
            out[name] = dict(rel_error_vs_clstm=rel_error(got, expected),
                             max_abs_diff_vs_clstm=float(np.max(np.abs(
                                 got.astype(np.float64) - expected))) if got.shape ==
                             expected.shape else math.inf)
        except Exception as exc:
            out[name] = dict(rel_error_vs_clstm=f"{type(exc).__name__}: {exc}")
    return out


class _PhaseClock:
    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu():
        try:
            import resource
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            children = kids.ru_utime + kids.ru_stime
        except (ImportError, OSError):  # no resource module (Windows)
            children = 0.0
        return time.process_time() + children

    def lap(self):
        wall, cpu = time.perf_counter(), self._cpu()
        out = dict(wall_s=round(wall - self.wall, 2), cpu_s=round(cpu - self.cpu, 2))
        self.wall, self.cpu = wall, cpu
        return out


# --------------------------------------------------------------------------- memory, streaming


def child_env():
    """Environment for a `python -m bench.*` child that must import this process's clstm.

    The child must import the clstm this process measured, not whatever `-m` finds first
    from cwd: its folder goes first on PYTHONPATH (the repository root after it, for
    `bench`), and BENCH_CLSTM_PATH tells the child's bench/__init__.py to keep it first.
    CLSTM_ISA and OPENBLAS_CORETYPE (--isa) pass on with the rest of the environment.
    """
    where = clstm_location(clstm_module())
    env = dict(os.environ)
    env[CLSTM_PATH_ENV] = where
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys(filter(None, [where, str(REPO_ROOT), env.get("PYTHONPATH")])))
    return env


def run_memory(args):
    """Peak RSS of one training step, clstm and PyTorch, each in a fresh process."""
    threads = max(args.threads)
    clstm_mod = clstm_module()
    env = child_env()
    rows = []
    for shape in args.memory_shapes:
        for dtype in args.dtypes:
            row = dict(shape=shape.name, dtype=dtype, threads=threads)
            for impl in ("clstm", "torch"):
                cmd = [sys.executable, "-m", "bench.memory", "--impl", impl,
                       "--shape", shape_spec(shape), "--dtype", dtype, "--threads", str(threads)]
                proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                                      text=True, timeout=600)
                try:
                    row[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    row[impl] = dict(error=f"exit {proc.returncode}: {tail}")
            child = row["clstm"].get("clstm_file")
            if child and not _same_file(child, clstm_mod.__file__):
                row["clstm"] = dict(error=f"child imported another clstm: {child}")
            c, t = row["clstm"].get("delta_mib"), row["torch"].get("delta_mib")
            row["ratio"] = t / c if c and t is not None else math.nan
            log(f"  memory {shape.name} {dtype}: clstm {c} MiB, torch {t} MiB")
            rows.append(row)
    return rows


def run_serving(args):
    """`python -m bench.serving --json` in a subprocess: Python threads sharing one model
    may crash the process (the model is not yet made safe for that); the grid survives."""
    cmd = [sys.executable, "-m", "bench.serving", "--json"] + (["--quick"] if args.quick else [])
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return dict(error="timed out after 900 s", rows=[])
    for line in proc.stderr.splitlines():
        if line.startswith("  serving"):
            log(line)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(error=f"exit {proc.returncode}: {tail}", rows=[])
    child = out.get("config", {}).get("clstm_file")
    if child and not _same_file(child, clstm_module().__file__):
        return dict(error=f"child imported another clstm: {child}", rows=[])
    return out


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def run_streaming(args):
    rows = []
    for threads in args.stream_threads:
        for dtype in args.dtypes:
            for cell, layers in [(c, n) for c in args.cells for n in (1, 2)]:
                try:
                    row = streaming.run(layers, dtype, threads, steps=args.stream_steps,
                                        with_nodnnl="torch-nodnnl" in args.peers,
                                        with_onnx="onnxruntime" in args.peers
                                        and PEERS["onnxruntime"]().available() is None,
                                        settle=args.settle if threads > 1 else 0.0,
                                        cell=cell)
                except Exception as exc:
                    row = dict(layers=layers, cell=cell, dtype=dtype, threads=threads,
                               error=f"{type(exc).__name__}: {exc}")
                log(f"  streaming {cell.upper()} L={layers} {dtype} {threads}thr: "
                    + (", ".join(f"{k} {v['median_us']:.1f} us" for k, v in row["impls"].items())
                       if "impls" in row else row["error"]))
                rows.append(row)
    return rows


def run_varlen(args, peers, ceiling=None):
    """bench/varlen.py's rows on the grid's shapes with B > 1, dtypes, modes and thread
    counts, torch as the peer when it is among the available peers; and the
    bidirectional B = 1 rows at the largest thread count against 1. ``ceiling``: the
    grid's GemmCeiling, whose large-GEMM peaks (cached) give each row's floor."""
    torch = (importlib.import_module("torch") if any(p.name == "torch" for p in peers)
             else None)
    threads = sorted(args.threads)
    shapes = [s for s in args.shapes if s.B > 1]
    rows = varlen.varlen_rows(shapes, args.dtypes, threads, args.modes, [0, 1],
                              args.repeats, args.min_time, args.warmup, torch=torch, log=log,
                              cells=args.cells,
                              peaks=ceiling.peak_gflops if ceiling is not None else None)
    b1 = (varlen.b1_scaling_rows(shapes, args.dtypes, args.modes, max(threads), args.repeats,
                                 args.min_time, args.warmup, log=log)
          if max(threads) > 1 else [])
    return dict(rows=rows, b1=b1, torch=torch is not None)


# --------------------------------------------------------------------------- notes


def grid_notes(cells, args, unavailable):
    notes = []
    if args.quick:
        notes.append(f"--quick: {','.join(s.name for s in args.shapes)}, "
                     f"{','.join(args.dtypes)}, {args.repeats} repeats, peak memory on "
                     f"{','.join(s.name for s in args.memory_shapes)}, streaming on "
                     f"{','.join(map(str, args.stream_threads))} thread(s)"
                     + ("" if "numpy" in args.peers else
                        "; the numpy reference peer left out (--peers adds it)") + ".")
    for name, why in unavailable.items():
        notes.append(f"{name} skipped: {why}")
    skips = sorted({why for c in cells for why in c["skipped"].values()})
    notes += [f"skipped cells: {why}" for why in skips]

    paths = {}
    for c in cells:
        for name in ("torch", "torch-nodnnl"):
            if "path" in c["impls"].get(name, {}):
                paths.setdefault((c["dtype"], c["mode"]), {})[name] = c["impls"][name]["path"]
    for (dtype, mode), p in sorted(paths.items()):
        if p.get("torch") and p.get("torch-nodnnl"):
            if p["torch"] != p["torch-nodnnl"]:
                notes.append(f"torch-nodnnl {dtype} {mode}: mkldnn.flags(enabled=False) switches "
                             f"PyTorch from its {p['torch']} path to its {p['torch-nodnnl']} "
                             "path (checked with the profiler).")
            else:
                notes.append(f"torch-nodnnl {dtype} {mode}: same {p['torch']} path as torch "
                             "(PyTorch has no oneDNN LSTM for this dtype): the two columns "
                             "differ only by noise.")
    if any(c["impls"].get("numpy", {}).get("input_grad") for c in cells):
        notes.append("numpy (tests/reference.py) always computes the input gradient; its "
                     "training times include that GEMM, the others' do not.")
    for c in cells:
        for name, v in c["impls"].items():
            err = v.get("rel_error_vs_clstm")
            if isinstance(err, str) or (err is not None and err > TOLERANCE[c["dtype"]]):
                notes.append(f"MISMATCH {c['shape']} {c['dtype']} {c['threads']}thr {c['mode']}: "
                             f"{name} differs from clstm by {err} (relative)")
            if v.get("error"):
                notes.append(f"{c['shape']} {c['dtype']} {c['threads']}thr {c['mode']}: "
                             f"{name} failed: {v['error']}")
    if any(c.get("cell") == "gru" for c in cells):
        notes.append("GRU cells: clstm.GRU against torch.nn.GRU (PyTorch has no oneDNN GRU: "
                     "its generic path), Keras' GRU(reset_after=True), a lax.scan GRU in JAX "
                     "and ONNX Runtime's GRU node (linear_before_reset=1), all with the same "
                     "weights; GFLOP/s and the ceiling count 3H gate rows instead of 4H. "
                     "Memory and serving tables: LSTM only.")
    noisy = [f"{c['shape']} {c['dtype']} {c['threads']}thr {c['mode']}" for c in cells
             if c["impls"]["clstm"]["spread"] > 0.25]
    if noisy:
        notes.append("noisy (clstm's samples spread over more than 25% of the median): "
                     + "; ".join(noisy))
    if any(c["L"] > 1 and c["mode"] == "train" for c in cells):
        notes.append("ceiling of multi-layer training includes the input gradient of every "
                     "layer above the first (it feeds the layer below); layer 0's is not "
                     "asked for.")
    notes.append("ceiling: the cell's GEMMs through SciPy's BLAS, timed in the same run right "
                 "after the implementations (best sample; not in their rotation, where "
                 "OpenBLAS's spinning workers slowed whoever ran next), less a twin run of "
                 "1x1x1 GEMMs (the Python "
                 "wrapper's cost); each GEMM at 1 thread or the cell's count, whichever is "
                 "faster alone, and in multi-threaded cells the 1-thread run too if faster; "
                 "never below the FLOPs at a large square GEMM's rate.  Raw figures in "
                 "results.json.")
    onnx_diffs = [c["impls"]["onnxruntime"].get("max_abs_diff_vs_clstm") for c in cells
                  if "onnxruntime" in c["impls"]]
    onnx_diffs = [d for d in onnx_diffs if isinstance(d, float)]
    if onnx_diffs:
        notes.append("onnxruntime: one ONNX LSTM (or GRU) node per layer, "
                     "intra_op_num_threads = the cell's threads, inter_op 1, sequential "
                     "execution; its output checked against clstm's before timing in every "
                     f"inference cell (max abs difference {max(onnx_diffs):.2g}).")
    if "keras" in args.peers and any("keras" in c["impls"] for c in cells):
        notes.append("keras: batch-major input (transposed at setup), forward and gradient "
                     "inside tf.function, no optimizer step.")
    return notes


# --------------------------------------------------------------------------- main


def main(argv=None):
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    args = parse_args(argv)
    if args.isa:
        why = isa.check_level(args.isa)
        if why:
            raise SystemExit(why)
        # returns only once CLSTM_ISA and OPENBLAS_CORETYPE are set in this process
        isa.reexec_for_isa(args.isa, sys.argv[1:] if argv is None else argv, REPO_ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hog = busy.CpuHog() if args.busy else None
    try:
        if hog:
            hog.start()
            log(f"--busy: CPU hog (pid {hog.proc.pid}) spinning on core {hog.core}")
        _main(args, out, hog)
    finally:
        if hog:
            hog.stop()


def _main(args, out, hog):
    clstm_peer = ClstmPeer()
    why = clstm_peer.available()
    if why:
        raise SystemExit(f"{why}\n(install clstm with `pip install .`, or build it in place "
                         "with `python setup.py build_ext --inplace`; the source tree's "
                         "clstm/ is used only when it holds compiled kernels)")
    isa_note = isa.apply_clstm_isa(importlib.import_module("clstm.kernels"), args.isa) \
        if args.isa else None
    peers, unavailable = [], {}
    for name in args.peers:
        peer = PEERS[name]()
        why = peer.available()
        if why:
            unavailable[name] = why
            log(f"skipping {name}: {why}")
        else:
            peers.append(peer)

    isa_record, isa_notes = isa.summary(args.isa, importlib.import_module("clstm.kernels"),
                                        blas_controller().info())
    if isa_note:
        isa_record["set_isa"] = isa_note
    log(isa.headline(isa_record))
    for note in isa_notes:
        if "MISMATCH" in note:
            log(f"WARNING: {note}")
    started = time.time()
    phases = {}
    clock = _PhaseClock()
    ceiling = GemmCeiling(repeats=max(3, args.repeats), min_time=args.min_time,
                          peak_size=512 if args.quick else 1024)
    cells = []
    # The largest thread count first: runtimes whose pool is sized once per process
    # (TensorFlow) are then sized to it.
    for threads in ([] if args.no_grid else args.threads):
        for dtype in args.dtypes:
            log(f"grid: {threads} thread(s), {dtype}")
            for shape in args.shapes:
                for cell in args.cells:
                    cells += run_cell(with_cell(shape, cell), dtype, threads, args, clstm_peer,
                                      peers, ceiling)
        phases[f"grid {threads}thr"] = clock.lap()
    order = {s.name: i for i, s in enumerate(args.shapes)}
    cells.sort(key=lambda c: (DTYPES.index(c["dtype"]), order[c["shape"]],
                              CELLS.index(c.get("cell", "lstm")), c["threads"],
                              MODES.index(c["mode"])))

    results = dict(
        machine=machine_info(clstm_peer, peers),
        config=dict(shapes=[s.name for s in args.shapes], cells=args.cells, dtypes=args.dtypes,
                    threads=sorted(args.threads), modes=args.modes, peers=args.peers,
                    stream_threads=sorted(args.stream_threads), stream_steps=args.stream_steps,
                    memory_shapes=[s.name for s in args.memory_shapes],
                    repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                    settle=args.settle, isa=args.isa, busy=args.busy,
                    quick=args.quick, argv=sys.argv[1:]),
        isa=isa_record,
        gemm_peak_gflops={f"{d} {n}thr": ceiling.peak_gflops(d, n)
                          for d in args.dtypes for n in args.threads},
        cells=cells, memory=[], streaming=[], busy=None, serving=None, varlen=None,
    )
    if not args.no_varlen:
        log("variable lengths and bidirectional layers (bench/varlen.py)")
        results["varlen"] = run_varlen(args, peers, ceiling)
        phases["varlen"] = clock.lap()
    if hog:
        log(f"busy: clstm at {max(args.threads)} thread(s) against 1, under the hog's load")
        results["busy"] = dict(rows=busy.thread_ratio_table(args, clstm_peer, log),
                               target=busy.TARGET)
        phases["busy"] = clock.lap()
    if not args.no_memory:
        log("peak memory (fresh processes)")
        results["memory"] = run_memory(args)
        phases["memory"] = clock.lap()
    if not args.no_streaming:
        log("streaming")
        results["streaming"] = run_streaming(args)
        phases["streaming"] = clock.lap()
    if not args.no_serving:
        log("serving from Python threads (python -m bench.serving, subprocess)")
        results["serving"] = run_serving(args)
        phases["serving"] = clock.lap()
    results["notes"] = isa_notes + grid_notes(cells, args, unavailable)
    if hog:
        results["busy"]["hog"] = hog.stop()
        h = results["busy"]["hog"]
        if max(args.threads) < 2:
            results["notes"].insert(0, "--busy: no n-thread / 1-thread table, --threads has "
                                    "no count above 1.")
        results["notes"].insert(0, f"--busy: every table ran beside a busy-loop process pinned "
                                f"to core {h['core']} (it used {h['busy_fraction']} of a core "
                                f"over {h['wall_s']} s).")
    if not args.no_chart and cells:
        why = report.chart(results, out / "chart.png")
        if why:
            results["notes"].append(why)
    results["elapsed_s"] = time.time() - started
    # wall and CPU seconds (this process's threads plus the memory subprocesses) per phase:
    # CPU far above wall x threads, or wall far above CPU, says the machine was busy
    results["phases"] = phases

    report.write_json(results, out / "results.json")
    md = report.markdown(results)
    (out / "results.md").write_text(md)
    print(md)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}"
        + ("" if args.no_chart or not (out / "chart.png").exists() else f", {out / 'chart.png'}")
        + f" in {results['elapsed_s']:.0f}s")


if __name__ == "__main__":
    main()
