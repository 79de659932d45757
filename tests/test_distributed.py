"""clstm.distributed: the scripts in tests/mpi/ run under ``mpiexec -n 2`` (2 ranks on
loopback), and the pure-Python pieces in this process.

The MPI runs are skipped, saying why, when mpi4py or mpiexec is missing
(``pip install mpi4py mpich`` provides both). Each script imports the clstm this test
imported (installed or built in place): PYTHONPATH names its parent directory and the
working directory is outside the source tree.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import clstm
import clstm.distributed as dist

MPI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi")
# the launcher installed beside this Python (the mpich wheel's) before any other on PATH:
# an mpiexec of another MPI than mpi4py's would start N separate 1-rank jobs
_BESIDE = os.path.join(os.path.dirname(sys.executable), "mpiexec")
MPIEXEC = _BESIDE if os.access(_BESIDE, os.X_OK) else shutil.which("mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None

needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC),
    reason="needs mpi4py and mpiexec (pip install mpi4py mpich): "
           f"mpi4py {'found' if HAVE_MPI4PY else 'missing'}, "
           f"mpiexec {'found' if MPIEXEC else 'missing'}")


def run_ranks(tmp_path, script, *args, ranks=2, timeout=180):
    env = dict(os.environ,
               PYTHONPATH=os.path.dirname(os.path.dirname(clstm.__file__)),
               OMP_NUM_THREADS="1")
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable,
                           os.path.join(MPI_DIR, script), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_ok_on_every_rank(result, ranks=2):
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in range(ranks):
        assert f"rank {rank}: OK" in result.stdout, result.stdout + result.stderr


@needs_mpi
def test_two_ranks_equal_one_process_on_the_combined_batch(tmp_path):
    # LSTM stack by hand (DistributedOptimizer, overlap and blocking), Regressor and
    # Classifier (LSTM and GRU) fit(distributed=True), LanguageModel TBPTT (LSTM and GRU):
    # float64, >= 20 Adam steps,
    # parameters within 1e-10 of one process's; histories alike
    assert_ok_on_every_rank(run_ranks(tmp_path, "equal_one_process.py"))


@needs_mpi
def test_stops_agree_and_rank_0_alone_prints_and_writes_files(tmp_path):
    assert_ok_on_every_rank(run_ranks(tmp_path, "agreement.py", str(tmp_path)))


@needs_mpi
def test_ranks_with_different_models_fail_on_every_rank_not_hang(tmp_path):
    assert_ok_on_every_rank(run_ranks(tmp_path, "faults.py", "mismatch", timeout=60))


@needs_mpi
def test_an_exception_on_one_rank_aborts_the_job(tmp_path):
    result = run_ranks(tmp_path, "faults.py", "raise", timeout=60)
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode != 0, output
    assert "rank 1 of 2 failed; aborting all ranks" in result.stderr, output
    assert "injected failure on rank 1" in result.stderr, output
    assert "should have been aborted" not in result.stdout


# ------------------------------------------------------------------ one process

def test_shards_cover_a_batch_once_in_order_sizes_differing_by_at_most_one():
    for n in (0, 1, 5, 7, 32, 33):
        for size in (1, 2, 3, 8):
            bounds = [dist.shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert dist.shard_bounds(5, 0, 2) == (0, 3) and dist.shard_bounds(5, 1, 2) == (3, 5)
    with pytest.raises(ValueError, match="rank"):
        dist.shard_bounds(4, 2, 2)


def test_threads_per_rank_share_the_cores_never_below_one():
    assert dist.threads_per_rank(16, 4) == 4
    assert dist.threads_per_rank(2, 2) == 1
    assert dist.threads_per_rank(2, 4) == 1
    assert dist.threads_per_rank(16, 2, visible=3) == 3    # bound by the launcher
    assert dist.threads_per_rank(16, 2, visible=16) == 8


def test_imports_without_mpi4py_and_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)       # import mpi4py now fails
    assert dist.shard_bounds(4, 1, 2) == (2, 4)
    with pytest.raises(ImportError, match=r"pip install 'clstm-cpu\[mpi\]'"):
        dist.Distributed()
    model = clstm.Regressor(2, 3, seed=0)
    with pytest.raises(ImportError, match="mpi4py mpich"):
        model.fit(np.ones((4, 3, 2)), np.ones(4), verbose=0, distributed=True)
    with pytest.raises(ImportError, match="mpi4py"):
        dist.broadcast_parameters(model)


def test_distributed_argument_is_checked():
    model = clstm.Regressor(2, 3, seed=0)
    with pytest.raises(TypeError, match="distributed: expected"):
        model.fit(np.ones((4, 3, 2)), np.ones(4), verbose=0, distributed="yes")


def test_layer_done_reports_each_layer_after_its_backward_top_down():
    model = clstm.Sequential([clstm.LSTM(2, 3, seed=0), clstm.LastStep(),
                              clstm.Dense(3, 1, seed=1)], loss="mse")
    out, _ = model.forward(np.ones((4, 2, 2), dtype=np.float32))
    seen = []
    model.backward(np.ones_like(out), layer_done=lambda i: seen.append(
        (i, bool(np.any(model.layers[i].grads.get("weight_ih_l0", 1))))))
    assert [i for i, _ in seen] == [2, 1, 0]
    assert seen[-1][1]      # the LSTM's gradients are in place when it is reported


@needs_mpi
def test_char_lm_example_on_two_ranks_scores_as_one_process(tmp_path):
    example = os.path.join(os.path.dirname(MPI_DIR), os.pardir, "examples", "char_lm.py")
    if not os.path.isfile(example):
        pytest.skip("examples/char_lm.py is not in this checkout")
    tiny = ["--max-chars", "20000", "--epochs", "1", "--hidden", "32", "--embed", "16",
            "--batch", "8", "--bptt", "32", "--lr", "1e-2", "--sample-length", "10",
            "--threads", "1", "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(clstm.__file__)))
    one = subprocess.run([sys.executable, example, *tiny], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    two = subprocess.run([MPIEXEC, "-n", "2", sys.executable, example, *tiny,
                          "--distributed"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr

    def bits(out):
        return float(out.split("held-out bits/char: ")[1].split()[0])

    assert "2 processes x 1 thread" in two.stdout
    assert two.stdout.count("char_lm:") == 1          # rank 0 alone reports
    assert abs(bits(one.stdout) - bits(two.stdout)) <= 0.002   # float32, to rounding
