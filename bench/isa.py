"""Which instruction-set level ran, and `--isa LEVEL`: the whole run at a chosen level.

clstm picks its kernels (the packed recurrent GEMM, the gate loops) by CPU at load time;
`CLSTM_ISA=avx512|avx2|generic` in the environment forces a level where the build has
that switch (`clstm.kernels.isa()` then reports it; where the build has
`kernels._set_isa`, it is called too).  The GEMM ceiling (bench/ceiling.py) runs SciPy's
OpenBLAS, whose kernel is chosen when the library loads, from `OPENBLAS_CORETYPE`; NumPy's
own OpenBLAS (the numpy reference peer) reads the same variable.  Both libraries load when
`bench.run` is imported, so `--isa` re-executes the process with both variables set
(`reexec_for_isa`), and the run then checks with threadpoolctl that every OpenBLAS reports
the architecture asked for.  PyTorch takes ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA.

ONNX Runtime (MLAS) has no switch at all, and MKL's choice inside PyTorch is its own; so
where the CPU has CPUID faulting (Linux x86-64, `cpuid_fault` in /proc/cpuinfo), the
re-executed process also runs with clstm's `_hide_cpu` library preloaded
(src/hide_cpu.c, `LD_PRELOAD` + `CLSTM_HIDE_CPU=level`): every library in it, its child
processes too, then reads from CPUID a CPU without AVX-512 (without AVX at `generic`) and
picks the kernels such a CPU runs.  The results record whether that took
(`isa.hidden_cpu`).
"""

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

LEVELS = ("avx512", "avx2", "generic")
# OpenBLAS core types of the same vector width: AVX-512 (SkylakeX), AVX2 + FMA (Haswell),
# SSE only (Nehalem; "Prescott" maps to Katmai in SciPy's DYNAMIC_ARCH build).
OPENBLAS_CORETYPE = {"avx512": "SkylakeX", "avx2": "Haswell", "generic": "Nehalem"}
# The CPU flags a level needs.
NEEDS = {"avx512": ("avx512f",), "avx2": ("avx2", "fma"), "generic": ()}
REEXEC_ENV = "BENCH_ISA_REEXEC"


def cpu_info():
    """CPU model and the flags that decide the level: {"model", "avx512f", "avx2", "fma"}."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key == "model name" and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif key == "flags" and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return dict(model=model, **{f: f in flags for f in ("avx512f", "avx2", "fma")})


def cpu_level(cpu=None):
    """The highest level of LEVELS this CPU runs."""
    cpu = cpu or cpu_info()
    return next(level for level in LEVELS if all(cpu.get(f) for f in NEEDS[level]))


def describe_cpu(cpu):
    have = [f for f in ("avx512f", "avx2", "fma") if cpu.get(f)]
    lack = [f for f in ("avx512f", "avx2", "fma") if not cpu.get(f)]
    return (f"{cpu['model']} ({', '.join(have) or 'none of avx512f/avx2/fma'}"
            + (f"; no {', '.join(lack)}" if lack else "") + ")")


def check_level(level, cpu=None):
    """None when this CPU can run `level`, else why not."""
    cpu = cpu or cpu_info()
    missing = [f for f in NEEDS[level] if not cpu.get(f)]
    if missing:
        return (f"--isa {level}: this CPU ({cpu['model']}) lacks {', '.join(missing)} "
                f"(it runs up to {cpu_level(cpu)})")
    return None


# PyTorch's own switches for its ATen kernels and oneDNN, so that at a forced lower level
# the PyTorch peers run the code they would run on such a CPU too (ONNX Runtime's MLAS
# has no such switch: it keeps what the CPU offers, which the report notes).
TORCH_ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


HIDE_CPU_ENV = "CLSTM_HIDE_CPU"


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == "flags":
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def hide_cpu_library():
    """The path of clstm's `_hide_cpu` library (built on Linux x86-64), found without
    importing clstm; None where there is none."""
    spec = importlib.util.find_spec("clstm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("_hide_cpu*.so"))
        if found:
            return str(found[0])
    return None


def hide_cpu_env(level, env=None):
    """The variables that preload `_hide_cpu` to hide what `level` lacks, or {} where
    that cannot work here (no library, no CPUID faulting, nothing to hide)."""
    env = os.environ if env is None else env
    library = hide_cpu_library()
    if level == "avx512" or library is None or "cpuid_fault" not in cpu_flags():
        return {}
    preload = [p for p in env.get("LD_PRELOAD", "").split() if p and p != library]
    return {"LD_PRELOAD": " ".join([library] + preload), HIDE_CPU_ENV: level}


def hidden_cpu():
    """What `_hide_cpu` did in this process: {"asked", "active", "level", "traps"} (traps:
    CPUID instructions answered so far), or None when it is not loaded."""
    library = hide_cpu_library()
    asked = os.environ.get(HIDE_CPU_ENV)
    if library is None or library not in os.environ.get("LD_PRELOAD", "").split():
        return None
    lib = ctypes.CDLL(library)  # the preloaded copy: the same handle
    status = lib.clstm_hide_cpu_status()
    lib.clstm_hide_cpu_traps.restype = ctypes.c_long
    return dict(asked=asked, active=status == 1,
                level={0: None, 1: "avx2", 2: "generic"}.get(lib.clstm_hide_cpu_level()),
                error=None if status >= 0 else os.strerror(-status),
                traps=int(lib.clstm_hide_cpu_traps()))


def wanted_env(level):
    return {"CLSTM_ISA": level, "OPENBLAS_CORETYPE": OPENBLAS_CORETYPE[level],
            **TORCH_ISA_ENV.get(level, {}), **hide_cpu_env(level)}


def reexec_for_isa(level, argv, repo_root):
    """Re-execute `python -m bench ARGV` with CLSTM_ISA and OPENBLAS_CORETYPE set for
    `level`, unless they already are (then return: this process is the re-executed one, or
    the caller set them).  Must run before clstm, NumPy or SciPy load their libraries in a
    way that matters: in practice, first thing in main()."""
    want = wanted_env(level)
    if all(os.environ.get(k) == v for k, v in want.items()):
        return
    if os.environ.get(REEXEC_ENV) == level:  # set and still not taking: do not loop
        return
    env = dict(os.environ, **want)
    env[REEXEC_ENV] = level
    # `bench` must be importable from wherever the child starts; bench/__init__.py drops
    # the repository root again when its clstm/ is unbuilt (the installed clstm is used).
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
        filter(None, [env.get("PYTHONPATH"), str(repo_root)])))
    if os.environ.get("OPENBLAS_CORETYPE") not in (None, want["OPENBLAS_CORETYPE"]):
        env["BENCH_ISA_PREVIOUS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    print(f"--isa {level}: re-executing with "
          + " ".join(f"{k}={v}" for k, v in want.items() if k != "LD_PRELOAD"), file=sys.stderr, flush=True)
    if "LD_PRELOAD" in want:
        print(f"--isa {level}: and with {want['LD_PRELOAD'].split()[0]} preloaded (hides "
              f"{'AVX-512' if level == 'avx2' else 'AVX and above'} from every library)",
              file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bench"] + list(argv), env)


def apply_clstm_isa(kernels, level):
    """Call `kernels._set_isa(level)` where the build has it; returns what it said, or why
    not."""
    setter = getattr(kernels, "_set_isa", None)
    if not callable(setter):
        return "kernels._set_isa absent (CLSTM_ISA in the environment is the only switch)"
    try:
        return f"kernels._set_isa({level!r}) -> {setter(level)!r}"
    except Exception as exc:
        return f"kernels._set_isa({level!r}) failed: {type(exc).__name__}: {exc}"


def clstm_isa(kernels):
    """What clstm's kernels run: {"level", "source", ...details}.

    `kernels.isa()` where it exists; otherwise derived from the packed GEMM's kernel
    (`packed_gemm_isa()`: avx512 / avx2 / generic) and the float32 gate loop
    (`gates_isa()`: "avx512" intrinsics or "c", compiler-vectorised clones per level).
    """
    out = {}
    for name in ("gates_isa", "packed_gemm_isa"):
        fn = getattr(kernels, name, None)
        if callable(fn):
            try:
                out[name] = fn()
            except Exception as exc:
                out[name] = f"? ({type(exc).__name__})"
    fn = getattr(kernels, "isa", None)
    if callable(fn):
        try:
            value = fn()
        except Exception as exc:
            value = f"? ({type(exc).__name__}: {exc})"
        if isinstance(value, dict):
            out["isa"] = value
            value = value.get("level") or value.get("isa") or str(value)
        out.update(level=str(value), source="kernels.isa()")
        return out
    level = out.get("packed_gemm_isa", "?")
    if out.get("gates_isa") == "avx512":
        level = "avx512"
    out.update(level=level, source="kernels.packed_gemm_isa()/gates_isa() (no kernels.isa())")
    return out


def openblas_cores(info):
    """The architecture every OpenBLAS in threadpoolctl's `info` reports: [(file, arch)]."""
    return [(Path(lib.get("filepath", "?")).name, lib.get("architecture"))
            for lib in info if lib.get("internal_api") == "openblas"]


def summary(requested, kernels, threadpool_info):
    """The `isa` record of results.json, and notes when the run did not get what it asked."""
    cpu = cpu_info()
    clstm = clstm_isa(kernels)
    cores = openblas_cores(threadpool_info)
    record = dict(requested=requested, cpu=cpu, cpu_level=cpu_level(cpu), clstm=clstm,
                  openblas=[dict(library=f, architecture=a) for f, a in cores],
                  env={k: os.environ.get(k) for k in ("CLSTM_ISA", "OPENBLAS_CORETYPE",
                                                      "ATEN_CPU_CAPABILITY",
                                                      "ONEDNN_MAX_CPU_ISA")})
    hidden = hidden_cpu()
    record["hidden_cpu"] = hidden
    notes = []
    if os.environ.get("BENCH_ISA_PREVIOUS_CORETYPE"):
        record["previous_openblas_coretype"] = os.environ["BENCH_ISA_PREVIOUS_CORETYPE"]
        notes.append(f"--isa {requested}: OPENBLAS_CORETYPE was "
                     f"{os.environ['BENCH_ISA_PREVIOUS_CORETYPE']} in the environment; "
                     f"this run set it to {OPENBLAS_CORETYPE[requested]}.")
    if requested:
        want = OPENBLAS_CORETYPE[requested]
        wrong = [f"{f}: {a}" for f, a in cores if (a or "").lower() != want.lower()]
        record["openblas_forced"] = not wrong and bool(cores)
        if wrong:
            notes.append(f"ISA MISMATCH: asked OpenBLAS for {want}, got " + "; ".join(wrong))
        if clstm["level"] != requested:
            notes.append(f"ISA MISMATCH: --isa {requested}, but clstm ran {clstm['level']} "
                         f"({clstm['source']})")
        record["clstm_forced"] = clstm["level"] == requested
        torch_env = TORCH_ISA_ENV.get(requested, {})
        forced = (f"--isa {requested} forces clstm (CLSTM_ISA) and the GEMM ceiling and "
                  f"the numpy peer (OPENBLAS_CORETYPE={want})"
                  + (", and PyTorch (" + ", ".join(f"{k}={v}" for k, v in torch_env.items())
                     + ")" if torch_env else ""))
        if hidden and hidden["active"]:
            notes.append(forced + f"; and the CPU's {'AVX-512' if requested == 'avx2' else 'AVX and above'} "
                         "was hidden from every library in the run (CPUID faulting, "
                         "src/hide_cpu.c): ONNX Runtime's MLAS and PyTorch's MKL chose "
                         f"their kernels for a {requested} CPU too "
                         f"({hidden['traps']} CPUID instructions answered).")
        elif requested != "avx512":
            why = (f"hiding failed: {hidden['error']}" if hidden else
                   "no CPUID faulting here, or clstm's _hide_cpu library is not built")
            notes.append(forced + "; ONNX Runtime keeps its own per-CPU kernels (MLAS has no "
                         f"switch; {why}).")
        else:
            notes.append(forced + ".")
    elif os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("CLSTM_ISA"):
        notes.append("set in the environment: " + ", ".join(
            f"{k}={v}" for k, v in record["env"].items() if v))
    return record, notes


def headline(record):
    """One line for the table header: CPU, clstm's level, OpenBLAS's core."""
    archs = sorted({a or "?" for a in (o["architecture"] for o in record["openblas"])})
    return (f"CPU {describe_cpu(record['cpu'])}; clstm ISA {record['clstm']['level']}"
            + (f" (--isa {record['requested']})" if record["requested"] else "")
            + f"; OpenBLAS core {'/'.join(archs) or '?'}")
