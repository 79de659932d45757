"""Run under mpiexec -n 2 with a case as argv[1]:

- ``mismatch``: the ranks build models of different sizes or dtypes, or pass data sets
  of different sizes; broadcast_parameters (and fit) raises a ValueError on every rank
  instead of hanging. Prints OK per rank.
- ``raise``: rank 1 raises inside fit (a callback); the job is aborted (a non-zero exit
  of mpiexec within seconds), not left waiting in a collective.
"""
import sys

import numpy as np

import clstm
from clstm.distributed import broadcast_parameters

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
clstm.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 4, 2))
y = rng.standard_normal(16)

if sys.argv[1] == "mismatch":
    model = clstm.Regressor(2, 4 + rank, seed=1)
    for call in (lambda: broadcast_parameters(model),
                 lambda: model.fit(x, y, verbose=0, distributed=True)):
        try:
            call()
        except ValueError as e:
            assert "expected the same model on every rank" in str(e), e
            assert "rank 1" in str(e), e
            assert "first difference: 0.weight_ih_l0 (20, 2)" in str(e), e
        else:
            raise AssertionError("no ValueError")
    other_dtype = clstm.Regressor(2, 4, seed=1, dtype="float32" if rank == 0 else "float64")
    try:
        broadcast_parameters(other_dtype)
    except ValueError as e:
        assert "float64 against" in str(e) and "float32" in str(e), e
    else:
        raise AssertionError("no ValueError for different dtypes")
    try:          # each rank must pass the whole data set: here rank 1 has more
        clstm.Regressor(2, 4, seed=1).fit(np.ones((8 + 8 * rank, 4, 2)), np.ones(8 + 8 * rank),
                                          batch_size=4, verbose=0, distributed=True)
    except ValueError as e:
        assert "expected the same number of steps per epoch on every rank" in str(e), e
    else:
        raise AssertionError("no ValueError for different data sizes")
    print(f"rank {rank}: OK")
elif sys.argv[1] == "raise":
    def fail_on_rank_1(batch, logs=None):
        if rank == 1 and batch == 1:
            raise RuntimeError("injected failure on rank 1")

    cb = clstm.callbacks.Callback()
    cb.on_batch_end = fail_on_rank_1
    clstm.Regressor(2, 4, seed=1).fit(x, y, epochs=50, batch_size=4, verbose=0,
                                      distributed=True, callbacks=[cb])
    print(f"rank {rank}: finished (should have been aborted)")
