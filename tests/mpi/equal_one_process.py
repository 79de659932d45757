"""Run under mpiexec -n 2: N ranks training on a global batch give the parameters one
process gets on that batch (float64, 20 Adam steps), for an LSTM stack trained by hand
with DistributedOptimizer (overlap with and without the progress thread, and blocking),
the ready models' fit(distributed=True) (a GRU Classifier too) and the LanguageModel with
truncated BPTT over carried state (an LSTM's (h, c), a GRU's h). Prints OK on every rank."""
import sys

import numpy as np

import clstm
from clstm.distributed import DistributedOptimizer, broadcast_parameters

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
clstm.set_num_threads(1)
TOL = 1e-10


def close(a, b, what):
    err = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    if not err <= TOL:
        raise AssertionError(f"rank {rank}: {what}: max difference {err:g} > {TOL}")
    return err


def stack(seed):
    return clstm.Sequential([clstm.LSTM(3, 8, 2, dtype="float64", seed=seed),
                             clstm.LSTM(8, 5, dtype="float64", seed=seed + 1),
                             clstm.Dense(5, 2, dtype="float64", seed=seed + 2)],
                            loss="mse")


def hand_loop(model, opt, batches, shard):
    for x, y in batches:
        sl = slice(*clstm.distributed.shard_bounds(x.shape[1], rank, size)) if shard \
            else slice(None)
        xs, ys = x[:, sl], y[:, sl]
        model.zero_grad()
        out, _ = model.forward(xs)
        loss, dout = clstm.mse(out, ys)
        if shard:
            opt.set_local_count(xs.shape[1])
        model.backward(dout)
        opt.step()


rng = np.random.default_rng(7)
batches = [(rng.standard_normal((6, 7, 3)), rng.standard_normal((6, 7, 2)))
           for _ in range(20)]            # B = 7: shards of 4 and 3 rows
results = {}
for overlap, interval in ((True, None), (True, 5e-4), (False, None)):
    one = stack(1)
    hand_loop(one, clstm.Adam(one, lr=1e-2), batches, shard=False)
    many = stack(100 + rank)              # different starts: broadcast must fix them
    broadcast_parameters(many)
    opt = DistributedOptimizer(clstm.Adam(many, lr=1e-2), many, overlap=overlap,
                               progress_interval=interval)
    if rank == 0:
        many.load_state_dict(stack(1).state_dict())
    broadcast_parameters(many)
    hand_loop(many, opt, batches, shard=True)
    what = f"stack overlap={overlap}" + (" + progress thread" if interval else "")
    results[what] = close(one.params, many.params, what)

# ready models through fit(distributed=True): 20 steps, uneven last batch, validation
N = 45
x = rng.standard_normal((N, 5, 3))
y = rng.standard_normal(N)
for name, build, target in [
        ("Regressor", lambda: clstm.Regressor(3, 6, num_layers=2, dtype="float64", seed=3),
         y),
        ("Classifier", lambda: clstm.Classifier(3, 6, 3, dtype="float64", seed=4),
         rng.integers(0, 3, N)),
        ("Classifier GRU", lambda: clstm.Classifier(3, 6, 3, cell="gru", dtype="float64",
                                                    seed=4),
         rng.integers(0, 3, N))]:
    one, many = build(), build()
    kw = dict(epochs=4, batch_size=9, seed=11, verbose=0,
              validation_data=(x[:10], target[:10]))      # 5 batches x 4 epochs = 20 steps
    one.fit(x, target, optimizer=clstm.Adam(one, lr=1e-2), **kw)
    many.fit(x, target, optimizer=clstm.Adam(many, lr=1e-2), distributed=True, **kw)
    results[name] = close(one.params, many.params, name)
    for k in one.history_:
        a, b = np.array(one.history_[k]), np.array(many.history_[k])
        if not np.allclose(a, b, rtol=1e-9, atol=1e-12):
            raise AssertionError(f"rank {rank}: {name} history {k}: {a} vs {b}")

# batches of one sample: rank 1 holds no row in any step (and in validation), yet takes
# part in every sum with a weight of 0
xs, ys = x[:6], y[:6]
one = clstm.Regressor(3, 6, dtype="float64", seed=3)
many = clstm.Regressor(3, 6, dtype="float64", seed=3)
kw = dict(epochs=4, batch_size=1, seed=2, verbose=0, validation_data=(xs[:1], ys[:1]))
one.fit(xs, ys, optimizer=clstm.Adam(one, lr=1e-2), **kw)
many.fit(xs, ys, optimizer=clstm.Adam(many, lr=1e-2), distributed=True, **kw)
assert many.optimizer.step_count == 24, many.optimizer.step_count
results["batches of one"] = close(one.params, many.params, "batches of one")
assert np.allclose(one.history_["val_loss"], many.history_["val_loss"], rtol=1e-12)

# language model, a 1-D stream: TBPTT, state carried, each rank its own streams
stream = rng.integers(0, 11, 6 * 5 * 4 + 1)
for name, B, cell in (("LanguageModel", 6, "lstm"), ("LanguageModel uneven", 5, "lstm"),
                      ("LanguageModel GRU uneven", 5, "gru")):   # a GRU carries h alone
    one = clstm.LanguageModel(11, 4, 7, cell=cell, dtype="float64", seed=5)
    many = clstm.LanguageModel(11, 4, 7, cell=cell, dtype="float64", seed=5)
    kw = dict(epochs=3, batch_size=B, bptt=3, verbose=0, validation_data=stream[:40],
              clip_norm=0.5)
    one.fit(stream, optimizer=clstm.Adam(one, lr=1e-2), **kw)
    many.fit(stream, optimizer=clstm.Adam(many, lr=1e-2), distributed=True, **kw)
    assert many.optimizer.step_count >= 20, many.optimizer.step_count
    results[name] = close(one.params, many.params, name)
    for k in one.history_:
        a, b = np.array(one.history_[k]), np.array(many.history_[k])
        if not np.allclose(a, b, rtol=1e-9, atol=1e-12):
            raise AssertionError(f"rank {rank}: {name} history {k}: {a} vs {b}")

print(f"rank {rank}: OK " + ", ".join(f"{k} {v:.1e}" for k, v in results.items()))
sys.stdout.flush()
