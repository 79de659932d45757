"""Limits refused up front with a clear ValueError: thread counts that would start
thousands of OS threads, and layer sizes the kernels cannot index or no machine can hold
(before anything is allocated)."""
import os
import subprocess
import sys

import pytest

import clstm
import clstm._threads
import clstm._validate
from clstm.layers import Dense, Embedding


def test_thread_count_is_capped_at_four_per_cpu():
    limit = clstm._threads.MAX_THREADS
    assert limit == 4 * os.cpu_count()
    previous = clstm.get_num_threads()
    for n in (limit + 1, 10**5):
        with pytest.raises(ValueError, match=f"expected at most {limit} threads .*got {n}"):
            clstm.set_num_threads(n)
        with pytest.raises(ValueError, match="expected at most"):
            with clstm.threads(n):
                pass
        assert clstm.get_num_threads() == previous
    with clstm.threads(limit):
        assert clstm.get_num_threads() == limit


def test_an_omp_num_threads_above_the_cap_is_held_to_it(tmp_path):
    # The child imports the clstm this test imported (an installed one, or an in-place
    # build), not the source tree in the working directory, which has no compiled kernels.
    package_root = os.path.dirname(os.path.dirname(clstm.__file__))
    env = dict(os.environ, OMP_NUM_THREADS="100000", PYTHONPATH=package_root)
    out = subprocess.run([sys.executable, "-c", "import clstm, clstm._threads as t; "
                          "print(clstm.get_num_threads() == t.MAX_THREADS)"],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("args, kw, match", [
    ((1, 2**31), {}, "hidden_size: expected at most 536870911 .*got 2147483648"),
    ((1, 2**29), {}, "hidden_size: expected at most 536870911 .*got 536870912"),
    ((2**31, 1), {}, "input_size: expected at most 2147483647 .*got 2147483648"),
    ((1, 2**20), {}, "LSTM: number of parameters: expected at most 68719476736"),
    ((10**6, 10**5), {}, "LSTM: number of parameters"),
    ((1, 1, 10**12), {}, "LSTM: number of parameters"),   # refused before a list of names
])
def test_lstm_sizes_beyond_the_kernels_are_refused_before_allocating(args, kw, match):
    with pytest.raises(ValueError, match=match):
        clstm.LSTM(*args, **kw)


@pytest.mark.parametrize("make, match", [
    (lambda: Dense(2**31, 1), "in_features: expected at most 2147483647"),
    (lambda: Dense(1, 2**31), "out_features: expected at most 2147483647"),
    (lambda: Dense(2**20, 2**20), "Dense: number of parameters: expected at most"),
    (lambda: Embedding(2**30, 2**10), "Embedding: number of parameters: expected at most"),
])
def test_dense_and_embedding_sizes_are_refused_before_allocating(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_parameter_limit_counts_exactly(monkeypatch):
    for make, count in [(lambda: clstm.LSTM(3, 5, 2, peephole=True), 470),
                        (lambda: clstm.LSTM(3, 5), 200),
                        (lambda: Dense(3, 4), 16), (lambda: Embedding(5, 3), 15)]:
        monkeypatch.setattr(clstm._validate, "MAX_PARAMETERS", count)
        layer = make()
        assert sum(p.size for p in layer.params.values()) == count
        monkeypatch.setattr(clstm._validate, "MAX_PARAMETERS", count - 1)
        with pytest.raises(ValueError, match=f"at most {count - 1} .*got {count}"):
            make()
