"""clstm's `_hide_cpu` library (src/hide_cpu.c): preloaded with CLSTM_HIDE_CPU=avx2 or
generic, every library in the process reads a CPU without AVX-512 (without AVX and above)
from CPUID and picks the kernels such a CPU runs; crashes still report as they would.

It needs Linux x86-64 with CPUID faulting (`cpuid_fault` in /proc/cpuinfo); each check
runs in a child process started with the library preloaded."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bench", reason="bench/ is not next to the tests")  # tests/conftest.py imports it
from bench import isa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = isa.hide_cpu_library()

pytestmark = [
    pytest.mark.skipif(LIBRARY is None, reason="clstm._hide_cpu is built on Linux x86-64 only"),
    pytest.mark.skipif("cpuid_fault" not in isa.cpu_flags(),
                       reason="this CPU or kernel has no CPUID faulting"),
]

# what a child reports: the level each library chose, and the library's own state
PROBE = r"""
import json, os, sys
sys.path.insert(0, os.environ["REPO_ROOT"])
from bench import isa
import numpy, threadpoolctl
import clstm.kernels as kernels
out = dict(hidden=isa.hidden_cpu(), clstm=kernels.isa(),
           openblas=[i.get("architecture") for i in threadpoolctl.threadpool_info()
                     if i.get("internal_api") == "openblas"])
try:
    import torch
    out["torch"] = torch.backends.cpu.get_cpu_capability()
except ImportError:
    pass
print(json.dumps(out))
"""


def _child_env(level, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLSTM_ISA", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY",
                        "ONEDNN_MAX_CPU_ISA", "LD_PRELOAD", isa.HIDE_CPU_ENV)}
    env["REPO_ROOT"] = str(ROOT)
    if level is not None:
        env.update(LD_PRELOAD=LIBRARY, **{isa.HIDE_CPU_ENV: level})
    env.update(extra)
    return env


def _run(code, level, timeout=240, **extra):
    return subprocess.run([sys.executable, "-c", code], env=_child_env(level, **extra),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _probe(level):
    proc = _run(PROBE, level)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_not_asked_hides_nothing():
    native = _probe(None)
    assert native["hidden"] is None
    preloaded = _run(PROBE, None, LD_PRELOAD=LIBRARY)
    assert preloaded.returncode == 0, preloaded.stderr
    state = json.loads(preloaded.stdout.strip().splitlines()[-1])
    assert state["hidden"]["active"] is False and state["hidden"]["traps"] == 0
    assert state["clstm"] == native["clstm"]


def test_avx2_hides_avx512_from_every_library():
    got = _probe("avx2")
    assert got["hidden"]["active"] and got["hidden"]["level"] == "avx2"
    assert got["hidden"]["traps"] > 0  # the libraries did ask
    assert got["clstm"] == "avx2"
    assert got["openblas"] and not any(
        a.lower() in ("skylakex", "cooperlake", "sapphirerapids") for a in got["openblas"])
    if "torch" in got:
        assert got["torch"] == "AVX2"


def test_generic_hides_avx_and_above():
    got = _probe("generic")
    assert got["hidden"]["active"] and got["hidden"]["level"] == "generic"
    assert got["clstm"] == "generic"
    assert not any(a.lower() in ("haswell", "zen", "skylakex") for a in got["openblas"])
    if "torch" in got:
        assert got["torch"] == "DEFAULT"


def test_a_wrong_level_hides_nothing_and_says_so():
    proc = _run(PROBE, "avx3")
    assert proc.returncode == 0, proc.stderr
    assert "CLSTM_HIDE_CPU must be avx2 or generic" in proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["hidden"]["active"] is False and state["hidden"]["error"]


@pytest.mark.parametrize("level", ["avx2", "generic"])
def test_results_equal_the_native_run(level, tmp_path):
    """The kernels of the hidden level run (not only report) and agree with the native
    ones, LSTM and GRU with lengths."""
    code = r"""
import os, sys
sys.path.insert(0, os.environ["REPO_ROOT"])
import bench  # noqa: F401 (the installed clstm where the source tree's is unbuilt)
import numpy as np, clstm
rng = np.random.default_rng(3)
x = rng.standard_normal((30, 5, 24)).astype(np.float32)
out = [cell(24, 40, 2, seed=1).forward(x, lengths=np.array([30, 7, 19, 1, 30]))[0]
       for cell in (clstm.LSTM, clstm.GRU)]
np.save(os.environ["OUT"], np.stack(out))
"""
    native = _run(code, None, OUT=str(tmp_path / "native.npy"))
    hidden = _run(code, level, OUT=str(tmp_path / "hidden.npy"))
    assert native.returncode == 0 and hidden.returncode == 0, native.stderr + hidden.stderr
    a, b = np.load(tmp_path / "native.npy"), np.load(tmp_path / "hidden.npy")
    assert np.abs(a).max() > 0.05  # outputs, not zeros
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_onnxruntime_runs_under_the_mask(tmp_path):
    """ONNX Runtime asks CPUID for its kernels (MLAS) under the mask and still agrees."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    code = r"""
import os, sys
sys.path.insert(0, os.environ["REPO_ROOT"])
from bench import isa  # first: the installed clstm where the source tree's is unbuilt
import numpy as np, clstm, clstm.onnx
net = clstm.LSTM(16, 32, seed=2)
x = np.random.default_rng(0).standard_normal((12, 3, 16)).astype(np.float32)
clstm.onnx.export(net, os.environ["OUT"])
before = isa.hidden_cpu()["traps"]
import onnxruntime as ort
session = ort.InferenceSession(os.environ["OUT"], providers=["CPUExecutionProvider"])
y = session.run(None, {session.get_inputs()[0].name: x})[0]
want = net.forward(x)[0]
print(float(np.abs(y.reshape(want.shape) - want).max()), isa.hidden_cpu()["traps"] - before)
"""
    proc = _run(code, "avx2", OUT=str(tmp_path / "lstm.onnx"))
    assert proc.returncode == 0, proc.stderr
    diff, traps = proc.stdout.split()[-2:]
    assert float(diff) < 1e-5
    assert int(traps) > 0  # ONNX Runtime's own CPUID instructions went through the mask


def test_a_crash_still_reports_through_faulthandler():
    """A real SIGSEGV is not taken for a CPUID: Python's faulthandler (installed after
    the library took the signal) still prints its traceback and the process dies of it."""
    proc = _run("import faulthandler, ctypes; faulthandler.enable(); ctypes.string_at(0)",
                "avx2")
    assert proc.returncode == -11, (proc.returncode, proc.stderr)
    assert "Segmentation fault" in proc.stderr and "string_at" in proc.stderr


def test_bench_env_preloads_the_library_for_lower_levels_only():
    assert isa.hide_cpu_env("avx512") == {}
    env = isa.hide_cpu_env("avx2", env={"LD_PRELOAD": "libother.so"})
    assert env[isa.HIDE_CPU_ENV] == "avx2"
    assert env["LD_PRELOAD"].split() == [LIBRARY, "libother.so"]
    # preloading twice does not list it twice
    again = isa.hide_cpu_env("avx2", env={"LD_PRELOAD": env["LD_PRELOAD"]})
    assert again["LD_PRELOAD"].split() == [LIBRARY, "libother.so"]
