"""Run under mpiexec -n 2 with a scratch directory as argv[1]: a stop on one rank stops
every rank, EarlyStopping decides alike (the logs are the global ones), rank 0 alone
prints progress and writes checkpoints and CSV rows. Prints OK on every rank."""
import contextlib
import io
import os
import sys

import numpy as np

import clstm
from clstm.callbacks import CSVLogger, EarlyStopping, ModelCheckpoint

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
out_dir = sys.argv[1]
clstm.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.standard_normal((24, 4, 2))
y = rng.standard_normal(24)


def stop_on_rank_1_at_epoch_2(epoch, logs):
    return rank == 1 and epoch == 1


# a stop on one rank stops every rank
model = clstm.Regressor(2, 4, seed=1)
model.fit(x, y, epochs=6, batch_size=8, verbose=0, distributed=True,
          callbacks=[stop_on_rank_1_at_epoch_2])
assert len(model.history_["loss"]) == 2, (rank, model.history_)

# EarlyStopping on the global validation loss: the same epoch everywhere
model = clstm.Regressor(2, 4, seed=1)
early = EarlyStopping(monitor="val_loss", patience=1, min_delta=1e9)   # never improves
model.fit(x, y, epochs=6, batch_size=8, verbose=0, distributed=True,
          validation_data=(x[:5], y[:5]), callbacks=[early])
assert early.stopped_epoch == 1 and len(model.history_["loss"]) == 2, (rank, early.stopped_epoch)

# progress on rank 0 only; checkpoints and CSV written by rank 0 only
ckpt = ModelCheckpoint(os.path.join(out_dir, "ckpt-{epoch}.npz"))
log = CSVLogger(os.path.join(out_dir, "log.csv"))
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    clstm.Regressor(2, 4, seed=1).fit(x, y, epochs=2, batch_size=8, verbose=1,
                                      distributed=True, callbacks=[ckpt, log])
text = printed.getvalue()
if rank == 0:
    assert text.count("epoch ") == 2 and "samples/s" in text, repr(text)
    assert len(ckpt.saved) == 2 and all(os.path.exists(p) for p in ckpt.saved), ckpt.saved
else:
    assert text == "", repr(text)
    assert ckpt.saved == [], ckpt.saved
comm.Barrier()
with open(os.path.join(out_dir, "log.csv")) as f:
    assert len(f.read().splitlines()) == 3        # one header, two epochs: one writer

# threads: by default each rank takes its share of the node's cores
d = clstm.distributed.Distributed()
share = clstm.distributed.threads_per_rank(os.cpu_count(), comm.Get_size(),
                                           len(os.sched_getaffinity(0)))
assert d.local_threads() == share, (d.local_threads(), share)
clstm.set_num_threads(1)                          # chosen by the program: kept
model.fit(x, y, epochs=1, verbose=0, distributed=clstm.distributed.Distributed(threads=1))
assert clstm.get_num_threads() == 1
print(f"rank {rank}: OK ({share} threads per rank)")
