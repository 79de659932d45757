"""The package as users get it: what the sdist carries, an install from the sdist into a
fresh environment, and the kernels built with clang and with a compiler that has no
OpenMP.

The builds compile the kernels (30-60 s each on 2 cores) and are marked ``slow``: they run
by default; ``pytest -m "not slow"`` leaves them out. They work on copies in temporary
directories, so the source tree is never written to, and they need no network: the sdist
is built and installed without build isolation, from the packages already installed
(setuptools, Cython, NumPy, SciPy; ``pip install ".[test]"`` brings them). Skipped where
the sources are not next to the tests (tests run from an installed copy) or what a build
needs is missing, with the reason.
"""
import fnmatch
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import venv
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

import clstm

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "setup.py").is_file() or not (ROOT / "src" / "kernels.pyx").is_file():
    pytest.skip("the package's sources (setup.py, src/) are not next to the tests",
                allow_module_level=True)

VERSION_FILE = ROOT / "clstm" / "_version.py"

# Never in an sdist: compiled code, Cython's generated C, caches, local environments.
BUILD_PRODUCTS = ["*.so", "*.pyd", "*.o", "*.dylib", "*.pyc", "*/__pycache__/*",
                  "src/kernels.c", "build/*", "dist/*", "examples/cython/*.c",
                  "examples/cython/build/*", ".venv/*", "venv/*", ".pytest_cache/*"]
# What the sdist adds of its own, or a checkout has that users do not need.
NOT_SHIPPED = ["PKG-INFO", "setup.cfg", "*.egg-info/*", ".gitignore", "*/.gitignore",
               ".git/*", "bench/results/*"]
ALWAYS_SHIPPED = ["bench/results/README.md"]
# The tests' view of a tree to copy: no VCS data, no build products, no environments.
COPY_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".venv", "venv", "*.so", "*.pyd",
                                     "*.o")


def matches(path, patterns):
    return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)


def version():
    """The version as clstm/_version.py writes it, read without importing it."""
    namespace = {}
    exec(VERSION_FILE.read_text(encoding="utf-8"), namespace)
    return namespace["__version__"]


def source_files():
    """Files of the project that the sdist must carry: those git tracks in a checkout;
    elsewhere (an unpacked sdist, say) every file of the tree but build products."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
        if out.returncode == 0:
            files = [f for f in out.stdout.decode().split("\0") if f]
            return sorted(f for f in files if (ROOT / f).is_file())
    files = (p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file())
    return sorted(f for f in files if not matches(f, BUILD_PRODUCTS))


def installed(name):
    """Whether the distribution ``name`` is installed. (Not importlib.util.find_spec: that
    takes a build/ directory in the working directory for the `build` package, and for
    pip setuptools' distutils hack unloads distutils from this process.)"""
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_for_build():
    """Why the sdist cannot be built and installed without isolation here, or None."""
    requirements = {"setuptools": (77,), "Cython": (3, 0, 10), "numpy": (2, 0),
                    "scipy": (1, 11)}
    for name, minimum in requirements.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            return f"building the sdist needs {name} installed (pip install '.[test]')"
        numbers = tuple(int(part) for part in installed.split(".")[:3] if part.isdigit())
        if numbers < minimum:
            return (f"building the sdist needs {name} >= {'.'.join(map(str, minimum))}, "
                    f"{installed} is installed")
    return None


def cannot_compile(cc):
    """Why ``cc`` cannot build a C extension here, or None."""
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python headers (Python.h) to build a C extension against"
    if shutil.which(cc.split()[0]) is None:
        return f"no C compiler: {cc.split()[0]!r} is not on PATH"
    return None


def run(cmd, **kwargs):
    """Run ``cmd``; its output in the failure message if it fails."""
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                    f"{result.stdout[-8000:]}", pytrace=False)
    return result.stdout


# A forward pass through kernels built elsewhere, run in a child process whose working
# directory is outside every source tree; it prints what the parent compares.
FORWARD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import clstm, clstm.kernels
    clstm.set_num_threads(2)
    net = clstm.LSTM(5, 24, num_layers=2, dtype="float64", seed=3)
    x = np.random.default_rng(0).standard_normal((7, 4, 5))
    y, (h, c) = net.forward(x)
    net.backward(np.ones_like(y))
    print(json.dumps({"file": clstm.__file__, "version": clstm.__version__,
                      "openmp": clstm.kernels.openmp_enabled(), "y": y.tolist(),
                      "grad": net.flat_grads.tolist()}))
""")


def check_forward(python, env, cwd):
    """Run FORWARD with ``python``; it must give what this process's clstm gives."""
    out = run([str(python), "-c", FORWARD], env=env, cwd=cwd)
    child = json.loads(out.strip().splitlines()[-1])
    net = clstm.LSTM(5, 24, num_layers=2, dtype="float64", seed=3)
    x = np.random.default_rng(0).standard_normal((7, 4, 5))
    y, _ = net.forward(x)
    net.backward(np.ones_like(y))
    assert_allclose(np.array(child["y"]), y, rtol=1e-10, atol=1e-12)
    assert_allclose(np.array(child["grad"]), net.flat_grads, rtol=1e-9, atol=1e-12)
    return child


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# The sdist


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist, built from a copy of the source tree (build products and all, so that
    MANIFEST.in's exclusions are tested), without build isolation."""
    reason = missing_for_build()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("sdist")
    tree = tmp / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", ".pytest_cache", ".venv", "venv"))
    # what an in-place build leaves next to the sources, which must stay out
    (tree / "clstm" / "kernels.cpython-3x-stale.so").write_bytes(b"")
    (tree / "src" / "kernels.c").write_text("/* generated */\n")
    (tree / "tests" / "__pycache__").mkdir(exist_ok=True)
    (tree / "tests" / "__pycache__" / "reference.cpython-311.pyc").write_bytes(b"")
    out = tmp / "dist"
    if installed("build"):
        cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation",
               "--outdir", str(out), str(tree)]
    else:  # `build` is in the test extra; setuptools alone still does it
        cmd = [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(out)]
    run(cmd, cwd=tree, env=child_env())
    archives = list(out.glob("*.tar.gz"))
    assert len(archives) == 1, archives
    return archives[0]


def members(archive):
    """The sdist's files, relative to its top directory."""
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    top = f"clstm_cpu-{version()}/"
    assert all(name.startswith(top) for name in names), names
    return sorted(name[len(top):] for name in names)


def test_sdist_is_named_for_the_distribution_and_the_version(sdist):
    assert sdist.name == f"clstm_cpu-{version()}.tar.gz"


def test_sdist_carries_every_source_file(sdist):
    shipped = set(members(sdist))
    expected = [f for f in source_files()
                if not matches(f, NOT_SHIPPED) or f in ALWAYS_SHIPPED]
    assert [f for f in expected if f not in shipped] == []
    # the ones that were missing or are easy to lose
    for f in ["LICENSE", "MANIFEST.in", "setup.py", "pyproject.toml", "README.md",
              "DEVELOPERS.md", "clstm/_version.py", "clstm/kernels.pxd",
              "src/kernels.pyx", "src/gates.h", "examples/data/words.tsv",
              "examples/data/sunspots_yearly.csv", "examples/cython/lstm_embed.pyx",
              "tests/reference.py", "tests/knobs.py", "bench/__main__.py",
              "bench/results/README.md"]:
        assert f in shipped, f


def test_sdist_carries_no_build_products(sdist):
    assert [f for f in members(sdist) if matches(f, BUILD_PRODUCTS)] == []


def test_sdist_metadata_declares_the_licence_and_the_version(sdist):
    with tarfile.open(sdist) as tar:
        top = f"clstm_cpu-{version()}/"
        pkg_info = tar.extractfile(top + "PKG-INFO").read().decode()
        licence = tar.extractfile(top + "LICENSE").read().decode()
    fields = [line.split(": ", 1) for line in pkg_info.splitlines() if ": " in line]
    assert ["Name", "clstm-cpu"] in fields
    assert ["Version", version()] in fields
    assert ["License-Expression", "BSD-3-Clause"] in fields
    assert ["License-File", "LICENSE"] in fields
    assert ["Provides-Extra", "tqdm"] in fields
    assert "BSD 3-Clause License" in licence and "the clstm developers" in licence


def test_version_lives_in_one_place():
    assert clstm.__version__ == version()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = re.search(r"^\[project\]$(.*?)^\[", pyproject, re.M | re.S).group(1)
    assert re.search(r'^dynamic = \[.*"version".*\]', project, re.M)
    assert not re.search(r"^version\s*=", project, re.M), "a version in pyproject.toml"
    assert 'version = { attr = "clstm._version.__version__" }' in pyproject


@pytest.mark.slow
def test_sdist_installs_and_runs_in_a_fresh_environment(sdist, tmp_path):
    """pip installs the sdist into a new virtual environment (reusing the pip, NumPy,
    SciPy and build tools installed here: no network); the installed clstm runs from
    outside any source tree, and the sdist's own example tests pass with the data it
    carries."""
    if not installed("pip"):
        pytest.skip("installing the sdist needs pip")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    env = child_env(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    # The new environment sees the packages this process sees, after its own: what
    # --system-site-packages does, but also when this process runs in a virtual
    # environment itself (as in CI), whose packages --system-site-packages would miss.
    # No pip of its own either: this one runs there and installs into it (and Python
    # 3.11's ensurepip would bring a setuptools too old for the SPDX licence).
    purelib = run([str(python), "-c",
                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  env=env, cwd=tmp_path).strip()
    add = "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages())
    Path(purelib, "_parent_site_packages.pth").write_text(f"import site; {add}\n")
    run([str(python), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-index",
         "--no-deps", "--force-reinstall", str(sdist)], env=env, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    child = check_forward(python, env, elsewhere)
    assert Path(child["file"]).resolve().is_relative_to(env_dir.resolve()), child["file"]
    assert child["version"] == version()
    assert child["openmp"] == clstm.kernels.openmp_enabled()

    probe = ("from importlib import metadata; import pathlib, clstm; "
             "d = metadata.distribution('clstm-cpu'); "
             "print(d.version, d.metadata['License-Expression'], "
             "any(p.name == 'LICENSE' for p in d.files), "
             "(pathlib.Path(clstm.__file__).parent / 'kernels.pxd').is_file())")
    out = run([str(python), "-c", probe], env=env, cwd=elsewhere).split()
    assert out == [version(), "BSD-3-Clause", "True", "True"]

    # The examples' tests from the unpacked sdist, against the installed package: the
    # data files they read must be in the sdist.
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.9.17+/3.10.12+/3.11.4+
            tar.extractall(tmp_path / "unpacked", filter="data")
        else:
            tar.extractall(tmp_path / "unpacked")  # our own archive, just built
    unpacked = tmp_path / "unpacked" / f"clstm_cpu-{version()}"
    out = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
               str(unpacked / "tests" / "test_examples.py"),
               str(unpacked / "tests" / "test_readme.py")], env=env, cwd=elsewhere)
    assert "passed" in out and "skipped" not in out, out


# ---------------------------------------------------------------------------------------
# Other compilers


def build_kernels(tmp_path, cc):
    """Build the kernels in place in a copy of the sources with ``CC=cc``; the copy's
    root and the build's output."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ["setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"]:
        shutil.copy2(ROOT / name, tree / name)
    for name in ["src", "clstm"]:
        shutil.copytree(ROOT / name, tree / name, ignore=COPY_IGNORE)
    out = run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree,
              env=child_env(CC=cc), timeout=900)
    return tree, out


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="clang builds are tried on POSIX only")
def test_kernels_build_and_agree_with_clang(tmp_path):
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed")
    reason = cannot_compile("clang")
    if reason:
        pytest.skip(reason)
    tree, out = build_kernels(tmp_path, "clang")
    assert "clang" in out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    child = check_forward(sys.executable, child_env(PYTHONPATH=str(tree)), elsewhere)
    assert Path(child["file"]).resolve().is_relative_to(tree.resolve())
    # clang with libomp builds the OpenMP kernels; without it the build still succeeds,
    # serially, and says so
    assert child["openmp"] == ("WITHOUT OpenMP" not in out), out[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in compiler is a sh script")
def test_a_compiler_without_openmp_builds_serial_kernels_with_a_warning(tmp_path):
    cc = sysconfig.get_config_var("CC") or "cc"
    reason = cannot_compile(cc)
    if reason:
        pytest.skip(reason)
    # The system's compiler, refusing -fopenmp as one without OpenMP support does.
    fake = tmp_path / "cc-no-openmp"
    fake.write_text("#!/bin/sh\n"
                    'for arg in "$@"; do\n'
                    '    case "$arg" in -fopenmp) echo "cc-no-openmp: error: '
                    "unsupported option '-fopenmp'\" >&2; exit 1;; esac\n"
                    "done\n"
                    f'exec {cc} "$@"\n')
    fake.chmod(0o755)
    tree, out = build_kernels(tmp_path, str(fake))
    assert "building the kernels WITHOUT OpenMP" in out
    assert "cc-no-openmp: error: unsupported option '-fopenmp'" in out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    child = check_forward(sys.executable, child_env(PYTHONPATH=str(tree)), elsewhere)
    assert Path(child["file"]).resolve().is_relative_to(tree.resolve())
    assert child["openmp"] is False
