"""One model serving many threads, forked workers, Ctrl-C during a long call, non-finite
weights, and sizes past what the kernels can index: the failures a probe of a server's
use found, each pinned here."""
import ctypes
import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest
from knobs import kernel_knob

import clstm
from clstm import kernels


def data(rng, T, B, I, dtype=np.float32):
    return rng.standard_normal((T, B, I)).astype(dtype)


# --------------------------------------------------------------------------------------
# one model, many threads


def run_in_threads(n, target):
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("num_threads", [1, 2])
def test_threads_sharing_one_model_get_the_outputs_of_single_calls(num_threads):
    rng = np.random.default_rng(0)
    net = clstm.LSTM(16, 64, 2, seed=0).eval()
    xs = [data(rng, 50, 4, 16) for _ in range(4)]
    with clstm.threads(num_threads):
        want = [net.forward(x)[0].copy() for x in xs]
        wrong = []

        def serve(i):
            for _ in range(25):
                y, _ = net.forward(xs[i])
                if not np.array_equal(y, want[i]):
                    wrong.append(i)

        run_in_threads(4, serve)
    assert wrong == []


def test_threads_stepping_one_model_get_the_outputs_of_single_calls():
    rng = np.random.default_rng(1)
    net = clstm.LSTM(8, 32, 2, seed=1).eval()
    streams = [data(rng, 30, 2, 8) for _ in range(4)]

    def run_stream(x):
        state, ys = None, []
        for x_t in x:
            y, state = net.step(x_t, state)
            ys.append(y)
        return np.stack(ys)

    want = [run_stream(x) for x in streams]
    got = [None] * 4

    def serve(i):
        got[i] = run_stream(streams[i])

    run_in_threads(4, serve)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_threads_backward_differentiates_its_own_forward_while_others_run_forward():
    rng = np.random.default_rng(2)
    net = clstm.LSTM(16, 64, 2, seed=2)
    x, other = data(rng, 50, 4, 16), data(rng, 50, 4, 16)
    dy = rng.standard_normal((50, 4, 64)).astype(np.float32)
    net.forward(x)
    net.backward(dy)
    want = net.flat_grads.copy()
    stop = threading.Event()

    def other_thread():
        while not stop.is_set():
            net.forward(other)

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        for _ in range(20):
            net.zero_grad()
            net.forward(x)
            net.backward(dy)
            np.testing.assert_allclose(net.flat_grads, want, rtol=1e-5, atol=1e-6)
    finally:
        stop.set()
        t.join()


def test_concurrent_backwards_all_add_into_the_gradients():
    rng = np.random.default_rng(3)
    net = clstm.LSTM(8, 24, seed=3, dtype="float64")
    xs = [data(rng, 20, 3, 8, np.float64) for _ in range(4)]
    net.zero_grad()
    for x in xs:
        y, _ = net.forward(x)
        net.backward(np.ones_like(y))
    want = net.flat_grads.copy()
    net.zero_grad()

    def train(i):
        y, _ = net.forward(xs[i])
        net.backward(np.ones_like(y))

    run_in_threads(4, train)
    np.testing.assert_allclose(net.flat_grads, want, rtol=1e-12, atol=1e-12)


def test_backward_in_a_thread_without_its_own_forward_is_refused():
    net = clstm.LSTM(4, 8, seed=4)
    y, _ = net.forward(np.ones((3, 2, 4), np.float32))
    errors = []

    def other():
        try:
            net.backward(np.ones_like(y))
        except ValueError as e:
            errors.append(str(e))

    run_in_threads(1, lambda i: other())
    assert errors and "same thread" in errors[0]
    net.backward(np.ones_like(y))          # the forward's own thread still can


def test_optimizer_steps_from_several_threads_apply_one_at_a_time():
    net = clstm.LSTM(4, 64, 2, seed=14, dtype="float64")
    net.flat_params[:] = 0.0
    net.flat_grads[:] = 1.0
    opt = clstm.SGD(net, lr=0.5)

    def train(i):
        for _ in range(200):
            opt.step()

    run_in_threads(4, train)
    np.testing.assert_array_equal(net.flat_params, -0.5 * 800)
    assert opt.step_count == 800


def small_classifier(seed):
    return clstm.Classifier(hidden_size=16, num_classes=3, vocab_size=20, embed_dim=8,
                            dropout=0.5, seed=seed)


def test_threads_predicting_with_a_model_in_training_mode_all_get_eval_outputs():
    rng = np.random.default_rng(15)
    clf = small_classifier(15)
    tokens = [rng.integers(0, 20, (16, 12)) for _ in range(4)]
    clf.eval()
    want = [clf.predict(t) for t in tokens]
    clf.train()                          # predict must not switch it for other threads
    wrong = []

    def serve(i):
        for _ in range(20):
            if not np.array_equal(clf.predict(tokens[i]), want[i]):
                wrong.append(i)

    run_in_threads(4, serve)
    assert wrong == [] and clf.training


def test_threads_training_one_sequential_pair_their_own_forward_and_backward():
    rng = np.random.default_rng(16)
    model = clstm.Sequential([clstm.Embedding(20, 8, seed=1),
                              clstm.LSTM(8, 16, dtype="float32", seed=2),
                              clstm.LastStep(), clstm.Dense(16, 3, seed=3)])
    model.eval()                         # no dropout draws: the sum is order-free
    batches = [rng.integers(0, 20, (12, 5)) for _ in range(4)]

    def train_on(tokens):
        out, _ = model.forward(tokens)
        model.backward(np.ones_like(out))

    model.zero_grad()
    for b in batches:
        train_on(b)
    want = model.flat_grads.copy()
    model.zero_grad()
    run_in_threads(4, lambda i: [train_on(batches[i]) for _ in range(5)])
    np.testing.assert_allclose(model.flat_grads, 5 * want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------
# workspaces


def test_release_workspace_frees_the_kept_buffers_and_the_model_still_works():
    net = clstm.LSTM(8, 32, 2, seed=5)
    x = np.ones((40, 4, 8), np.float32)
    y, _ = net.forward(x)
    net.backward(np.ones_like(y))
    assert net._workspaces.idle_bytes > 0
    net.forward(x)
    net.release_workspace()
    assert net._workspaces.idle_bytes == 0
    with pytest.raises(ValueError, match="expected a forward pass"):
        net.backward(np.ones_like(y))
    y2, _ = net.forward(x)
    np.testing.assert_array_equal(y, y2)


def test_workspaces_beyond_the_cache_bound_are_not_kept(monkeypatch):
    net = clstm.LSTM(4, 16, seed=6)
    net._workspaces.limit_bytes = 1024
    y, _ = net.forward(np.ones((50, 4, 4), np.float32))    # 16 KB of workspace
    net.backward(np.ones_like(y))
    assert net._workspaces.idle_bytes == 0


# --------------------------------------------------------------------------------------
# fork


def _forward_in_child(net, x, queue):
    y, _ = net.forward(x)
    queue.put((y, kernels.fork_limited() and clstm.get_num_threads() == 1))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_after_multithreaded_kernels_runs_them():
    rng = np.random.default_rng(7)
    net = clstm.LSTM(16, 64, 2, seed=7)
    x = data(rng, 50, 8, 16)
    with clstm.threads(2), kernel_knob(kernels._set_min_flops_per_thread, 0):
        want, _ = net.forward(x)           # starts the OpenMP team in this process
        assert kernels._threads_used_by_last_call() == 2
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_forward_in_child, args=(net, x, queue))
        child.start()
        try:
            # (read before join: the child exits only once its result left the pipe)
            y, limited = queue.get(timeout=120)
        except Exception:  # noqa: BLE001 - queue.Empty: the child is stuck
            y = limited = None
        child.join(10)
        if child.is_alive():
            child.kill()
    assert y is not None, "the forked child hung in its first kernel call"
    assert limited                          # it ran on one thread
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------
# Ctrl-C


def interrupt_soon(delay):
    """SIGINT to this process after ``delay`` seconds, as Ctrl-C sends it."""
    timer = threading.Timer(delay, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("B, H, threads", [(8, 64, 1), (8, 64, 2), (1, 256, 2)],
                         ids=["rows-1thread", "rows-2threads", "units-2threads"])
def test_ctrl_c_stops_a_long_forward_and_leaves_the_model_usable(B, H, threads):
    T, I = 200_000 // B, 16
    rng = np.random.default_rng(8)
    net = clstm.LSTM(I, H, seed=8)
    x = data(rng, T, B, I)
    y = np.full((T, B, H), np.nan, np.float32)
    workspace = np.empty(5 * T * B * H, np.float32)
    w = net.params
    bias = w["bias_ih_l0"] + w["bias_hh_l0"]
    small = x[:5]
    want_small = net.forward(small)[0].copy()
    # A call takes only ~0.1 s at AVX-512 once its 256 MiB workspace is paged in, and a
    # SIGINT after the last one would escape pytest.raises and stop the whole session:
    # so the signal comes soon, and the kernel is called until it meets one.
    timer = interrupt_soon(0.02)
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(500):
                y.fill(np.nan)
                kernels.forward(T, B, I, H, x, w["weight_ih_l0"], w["weight_hh_l0"], bias,
                                None, None, None, y, workspace, threads)
    finally:
        timer.join()
    assert np.isnan(y[-1]).all()            # it stopped before the end
    np.testing.assert_allclose(net.forward(small)[0], want_small, rtol=1e-4, atol=1e-5)


def test_ctrl_c_stops_a_long_backward_and_leaves_the_model_usable():
    T, B, I, H = 20_000, 8, 16, 64
    rng = np.random.default_rng(9)
    net = clstm.LSTM(I, H, seed=9)
    x = data(rng, T, B, I)
    y, _ = net.forward(x)
    timer = interrupt_soon(0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(100):            # the backward is only ~0.1-1 s long
                net.backward(np.ones_like(y))
                y, _ = net.forward(x)
    finally:
        timer.join()
    y, _ = net.forward(x[:5])
    net.backward(np.ones_like(y))           # usable again


# --------------------------------------------------------------------------------------
# the team leaves a per-step split when a member is late (a busy machine)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_late_team_finishes_on_one_thread_with_the_same_result(dtype):
    rng = np.random.default_rng(10)
    T, B, I, H = 60, 1, 8, 160
    net = clstm.LSTM(I, H, seed=10, dtype=dtype.__name__)
    x = data(rng, T, B, I, dtype)
    with clstm.threads(1):
        want_y, _ = net.forward(x)
        want_dx, _ = net.backward(np.ones_like(want_y))
        want_g = net.flat_grads.copy()
    net.zero_grad()
    # A share of -1 counts every step as late: the team leaves after its 16 timed steps.
    with clstm.threads(2), kernel_knob(kernels._set_max_late_share, -1.0), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        y, _ = net.forward(x)
        assert kernels._last_forward_split_units()
        assert kernels._team_left_at_last_call() == 17
        dx, _ = net.backward(np.ones_like(y))
        assert kernels._team_left_at_last_call() == 17
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(y, want_y, **tol)
    np.testing.assert_allclose(dx, want_dx, **tol)
    np.testing.assert_allclose(net.flat_grads, want_g, **tol)


def test_a_team_on_time_stays_split():
    rng = np.random.default_rng(11)
    net = clstm.LSTM(8, 160, seed=11)
    with clstm.threads(2), kernel_knob(kernels._set_max_late_share, 2.0), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        net.forward(data(rng, 60, 1, 8))
        assert kernels._last_forward_split_units()
        assert kernels._team_left_at_last_call() == -1


# --------------------------------------------------------------------------------------
# non-finite weights and limits


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_recurrent_weights_reach_the_first_output_without_a_state(bad):
    net = clstm.LSTM(3, 4, seed=12)
    net.params["weight_hh_l0"][1, 2] = bad
    x = np.ones((2, 1, 3), np.float32)
    y, _ = net.forward(x)
    assert np.isnan(y[0]).any()             # 0·inf and 0·NaN are NaN, as in PyTorch
    y_step, _ = net.step(x[0])
    assert np.isnan(y_step).any()
    np.testing.assert_array_equal(np.isnan(y_step), np.isnan(y[0]))


def test_finite_weights_without_a_state_skip_the_zero_product_exactly():
    rng = np.random.default_rng(13)
    net = clstm.LSTM(3, 4, seed=13, dtype="float64")
    x = data(rng, 4, 2, 3, np.float64)
    y, _ = net.forward(x)
    y0, _ = net.forward(x, state=(np.zeros((1, 2, 4)), np.zeros((1, 2, 4))))
    np.testing.assert_array_equal(y, y0)


def _capi(name, restype, *argtypes):
    capsule = kernels.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.argtypes, get_name.restype = [ctypes.py_object], ctypes.c_char_p
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.argtypes, get_pointer.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


def test_c_api_workspace_size_refuses_sizes_it_cannot_index():
    size = _capi("lstm_workspace_size", ctypes.c_ssize_t, ctypes.c_int, ctypes.c_int,
                 ctypes.c_int)
    assert size(10, 4, 8) == 5 * 10 * 4 * 8
    big = 2**31 - 1
    for T, B, H in [(big, big, big), (big, 1, big), (0, 4, 8), (10, -1, 8)]:
        assert size(T, B, H) == -1
