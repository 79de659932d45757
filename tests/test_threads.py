"""Thread control: clstm's count governs its kernels only, and a kernel call leaves the
process's BLAS settings as it found them."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import clstm


def blas_threads():
    return sorted((info["filepath"], info["num_threads"]) for info in threadpool_info()
                  if info["user_api"] == "blas")


def test_set_num_threads_leaves_the_process_blas_alone():
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        with clstm.threads(1):
            assert clstm.get_num_threads() == 1
            assert blas_threads() == before


def test_a_kernel_call_restores_the_blas_thread_count():
    net = clstm.LSTM(8, 16, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 4, 8)).astype(np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        for n in (1, 2):
            with clstm.threads(n):
                y, _ = net.forward(x)
                net.backward(np.ones_like(y))
                net.step(x[0])
            assert blas_threads() == before


def test_threads_context_restores_the_previous_count_after_an_error():
    previous = clstm.get_num_threads()
    with pytest.raises(RuntimeError):
        with clstm.threads(1):
            raise RuntimeError("boom")
    assert clstm.get_num_threads() == previous


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                        ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_what_is_not_a_positive_int(bad, error):
    previous = clstm.get_num_threads()
    with pytest.raises(error, match="expected a positive int"):
        clstm.set_num_threads(bad)
    assert clstm.get_num_threads() == previous
