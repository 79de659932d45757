"""Benchmarks of clstm against its peers: `python -m bench --help`.

Which clstm is benchmarked: `python -m bench` run from the repository root puts the root
first on sys.path, where `import clstm` would find the source tree's `clstm/` folder.  That
folder is only usable once built in place (`python setup.py build_ext --inplace`, which
leaves the compiled `kernels*.so` beside the sources); after a plain `pip install .` the
compiled package lives in site-packages.  So, before anything imports clstm:

* when the environment variable BENCH_CLSTM_PATH names a folder, that folder goes first on
  sys.path: the benchmark's child processes (bench/memory.py) get it from their parent, so
  that they import the very clstm the parent measured;
* otherwise, when the source tree's `clstm/` holds no compiled kernels, the repository root
  (and '' or '.' where they stand for it) leaves sys.path, so that the installed clstm is
  found; a tree built in place is used as it is.

`bench` itself is imported by then, and its submodules are found through bench.__path__
(absolute), so they still import.
"""

import os as _os
import sys as _sys

REPO_DIR = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
CLSTM_PATH_ENV = "BENCH_CLSTM_PATH"


def source_tree_built(repo=REPO_DIR):
    """Whether `<repo>/clstm/` holds compiled kernels (built in place)."""
    try:
        names = _os.listdir(_os.path.join(repo, "clstm"))
    except OSError:
        return False
    return any(n.startswith("kernels") and n.endswith((".so", ".pyd")) for n in names)


def _same_dir(entry, directory):
    try:
        return _os.path.samefile(entry or _os.curdir, directory)
    except OSError:
        return False


def _choose_clstm():
    forced = _os.environ.get(CLSTM_PATH_ENV)
    if forced:
        if not _sys.path or not _same_dir(_sys.path[0], forced):
            _sys.path.insert(0, forced)
        return
    if "clstm" in _sys.modules or source_tree_built():
        return
    _sys.path[:] = [p for p in _sys.path if not _same_dir(p, REPO_DIR)]


_choose_clstm()
