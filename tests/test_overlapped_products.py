"""A batch too small to split over the team (B = 1 at 2 threads): the whole-sequence
products (the forward's input projection; the backward's dX, dW_ih, dW_hh, db) run in
chunks of steps on a second thread beside the time loop (DEVELOPERS.md, "Threads").
Checked here: the same results as one thread and as the NumPy reference, the same bits
from run to run and whichever thread ran which chunk (a late helper included), finite
differences, a stop by Ctrl-C, and that the path engages only where it should."""
import os
import signal
import threading

import numpy as np
import pytest
from knobs import kernel_knob
from reference import reference_gru_backward, reference_gru_forward
from test_lstm import (assert_results_close, fd_check, fd_check_all, make_data, make_net, run,
                       run_reference)

import clstm
from clstm import kernels

pytestmark = pytest.mark.skipif(not kernels.openmp_enabled(), reason="built without OpenMP")


def run_overlapped(net, x, state, dy, dstate, chunk_rows=3, min_flops=0):
    """`run` at 2 threads with chunks of `chunk_rows` rows and a work threshold of
    `min_flops` per thread, checking that the forward and the backward both overlapped
    their products."""
    flags = []
    with kernel_knob(kernels._set_min_flops_per_thread, min_flops), \
            kernel_knob(kernels._set_overlap_chunk_rows, chunk_rows), clstm.threads(2):
        net.zero_grad()
        y, (h_n, c_n) = net.forward(x, state)
        flags.append(kernels._last_call_overlapped())
        dx, (dh0, dc0) = net.backward(dy, dstate)
        flags.append(kernels._last_call_overlapped())
    assert flags == [True, True]
    return dict(y=np.array(y), h_n=np.array(h_n), c_n=np.array(c_n), dx=np.array(dx),
                dh0=np.array(dh0), dc0=np.array(dc0),
                grads={name: np.array(g) for name, g in net.grads.items()})


def assert_identical(got, want):
    for key in ("y", "h_n", "c_n", "dx", "dh0", "dc0"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for name in want["grads"]:
        np.testing.assert_array_equal(got["grads"][name], want["grads"][name], err_msg=name)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T, I, H, peephole, num_layers, with_state, chunk_rows", [
    (23, 5, 24, False, 1, False, 3),      # 8 chunks, the last (steps 0:2) shorter
    (9, 3, 17, True, 2, True, 2),         # H not a multiple of the vector width
    (40, 64, 64, False, 1, True, 16),     # S1's widths: chunks of 16 steps
    (5, 4, 8, True, 1, False, 4),         # 2 chunks: steps 1:5 and 0:1
])
def test_overlapped_products_match_one_thread_and_the_reference(
        dtype, T, I, H, peephole, num_layers, with_state, chunk_rows):
    rng = np.random.default_rng(T * 100 + H)
    net = make_net(I, H, num_layers, dtype=dtype, peephole=peephole, seed=T)
    x, state, R, Rstate = make_data(rng, T, 1, I, H, num_layers, dtype=np.dtype(dtype))
    state = state if with_state else None
    with clstm.threads(1):
        one = run(net, x, state, R, Rstate)
    got = run_overlapped(net, x, state, R, Rstate, chunk_rows)
    again = run_overlapped(net, x, state, R, Rstate, chunk_rows)
    # the chunks add into dW_ih, db and dW_hh in their fixed order, whoever runs them
    assert_identical(again, got)
    # one thread sums the same products in one pass: another order, rounding apart
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    assert_results_close(got, one, **tol)
    loose = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    assert_results_close(got, run_reference(net, num_layers, peephole, x, state, R, Rstate),
                         **loose)


@pytest.mark.usefixtures("isa_level")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_several_rows_too_little_recurrent_work_to_split_overlap_too(dtype):
    """A batch of 3 rows whose recurrence is too small for a second thread (the row
    split's threshold) but whose whole-sequence products are not: chunks of several rows
    per step."""
    T, B, I, H = 20, 3, 64, 4
    rng = np.random.default_rng(31)
    net = make_net(I, H, 1, dtype=dtype, peephole=True, seed=31)
    x, state, R, Rstate = make_data(rng, T, B, I, H, 1, dtype=np.dtype(dtype))
    with clstm.threads(1):
        one = run(net, x, state, R, Rstate)
    # recurrent work 8·T·B·H² = 7.7 kFLOP, the helper's 2·T·B·4H·(2I + H) = 253 kFLOP
    got = run_overlapped(net, x, state, R, Rstate, chunk_rows=4, min_flops=1e5)
    again = run_overlapped(net, x, state, R, Rstate, chunk_rows=4, min_flops=1e5)
    assert_identical(again, got)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    assert_results_close(got, one, **tol)
    gnet = clstm.GRU(I, H, dtype=dtype, seed=31)
    gx, h0, dy, dh_n = gru_data(rng, T, B, I, H, 1, dtype, True)
    gone = gru_run(gnet, gx, h0, dy, dh_n, 1)
    # (the GRU's forward projection: 2·T·B·3H·I = 92 kFLOP)
    with kernel_knob(kernels._set_min_flops_per_thread, 5e4), \
            kernel_knob(kernels._set_overlap_chunk_rows, 4), clstm.threads(2):
        gnet.zero_grad()
        y, h_n = gnet.forward(gx, h0)
        assert kernels._last_call_overlapped()
        dx, dh0 = gnet.backward(dy, dh_n)
        assert kernels._last_call_overlapped()
    ggot = dict(y=np.array(y), h_n=np.array(h_n), dx=np.array(dx), dh0=np.array(dh0),
                grads={name: np.array(g) for name, g in gnet.grads.items()})
    assert_gru_close(ggot, gone, **tol)


@pytest.mark.usefixtures("isa_level")
@pytest.mark.parametrize("peephole", [False, True])
def test_overlapped_gradients_match_finite_differences_float64(peephole):
    rng = np.random.default_rng(41 + peephole)
    T, B, I, H, L = 7, 1, 3, 4, 1
    net = make_net(I, H, L, peephole=peephole, seed=5)
    x, (h0, c0), R, Rstate = make_data(rng, T, B, I, H, L)
    got = run_overlapped(net, x, (h0, c0), R, Rstate, chunk_rows=2)   # 4 chunks
    fd_check_all(net, x, (h0, c0), R, Rstate, got, rng)


@pytest.mark.usefixtures("isa_level")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_late_helper_leaves_its_chunks_to_the_caller_with_the_same_bits(dtype):
    T, I, H = 30, 6, 32
    rng = np.random.default_rng(12)
    net = make_net(I, H, 1, dtype=dtype, peephole=True, seed=12)
    x, state, R, Rstate = make_data(rng, T, 1, I, H, 1, dtype=np.dtype(dtype))
    on_time = run_overlapped(net, x, state, R, Rstate, chunk_rows=4)
    before = kernels._overlap_chunks_run_by_caller()
    # the helper sleeps 50 ms at its start, as a descheduled thread: the caller walks all
    # steps, then (forward: before each chunk's first step) runs every chunk itself
    with kernel_knob(kernels._set_late_thread_delay, 0.05):
        late = run_overlapped(net, x, state, R, Rstate, chunk_rows=4)
    chunks = -(-T // 4)
    assert kernels._overlap_chunks_run_by_caller() - before == 2 * chunks
    assert_identical(late, on_time)


def test_the_products_overlap_only_when_the_rows_leave_a_thread_idle():
    net = make_net(8, 32, 1, dtype="float32")
    x = np.ones((40, 4, 8), np.float32)
    with kernel_knob(kernels._set_min_flops_per_thread, 0):
        with clstm.threads(2):
            net.forward(x[:, :1])
            assert kernels._last_call_overlapped()
            assert kernels._threads_used_by_last_call() == 2
            net.forward(x)                  # 4 rows: the row split, no overlap
            assert not kernels._last_call_overlapped()
            net.forward(x[:1, :1])          # one step: nothing to overlap
            assert not kernels._last_call_overlapped()
            with kernel_knob(kernels._set_overlap_products, False):
                net.forward(x[:, :1])       # the knob: the products before the time loop
                assert not kernels._last_call_overlapped()
                assert kernels._threads_used_by_last_call() == 1
        with clstm.threads(1):
            net.forward(x[:, :1])
            assert not kernels._last_call_overlapped()
    with clstm.threads(2):                  # the default threshold: too little work
        net.forward(x[:3, :1])
        assert not kernels._last_call_overlapped()
    # idle threads that sleep: the helper would be woken for every call
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2), \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_WAIT_POLICY", "Passive")
        net.forward(x[:, :1])
        assert not kernels._last_call_overlapped()
        mp.setenv("OMP_WAIT_POLICY", "active")
        net.forward(x[:, :1])
        assert kernels._last_call_overlapped()


def test_a_late_overlapped_call_puts_the_next_ones_on_one_thread_doubling_while_late():
    """A helper that another process keeps off the CPU stalls a short call for a time
    slice: two late overlapped calls in a row make the next 64 that would overlap run on
    one thread (one alone starts nothing), a late retry doubles that, each call on time
    shortens the next pause by one (src/runtime.c)."""
    net = make_net(8, 32, 1, dtype="float32")
    x = np.ones((40, 1, 8), np.float32)

    def forward_overlapped():
        net.forward(x)
        return kernels._last_call_overlapped()

    kernels._reset_team_pause()
    try:
        with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2):
            with kernel_knob(kernels._set_max_lost_share, -1.0):    # every call is late
                assert forward_overlapped()
                assert kernels._overlap_calls_skipped() == 0         # one strike
                assert forward_overlapped()
                assert kernels._overlap_calls_skipped() == 64
                assert not any(forward_overlapped() for _ in range(64))
                assert forward_overlapped()                          # the retry, late
                assert kernels._overlap_calls_skipped() == 128
            # (the autouse fixture's share: no call is late)
            assert not any(forward_overlapped() for _ in range(128))
            assert forward_overlapped()                              # on time: 127
            assert kernels._overlap_calls_skipped() == 0
            assert forward_overlapped()                              # 126
            with kernel_knob(kernels._set_max_lost_share, -1.0):
                assert forward_overlapped()
                assert kernels._overlap_calls_skipped() == 252
            kernels._reset_team_pause()
            assert kernels._overlap_calls_skipped() == 0
            assert forward_overlapped()
            with kernel_knob(kernels._set_max_lost_share, -1.0):
                assert forward_overlapped()
                assert kernels._overlap_calls_skipped() == 0         # from the start
                assert forward_overlapped()
                assert kernels._overlap_calls_skipped() == 64
    finally:
        kernels._reset_team_pause()


def test_one_late_call_between_calls_on_time_starts_no_pause():
    """A single stall (a wake-up on a virtual machine, another library's pool still
    spinning) is forgiven: late, on time, late never pauses; with the strike count at 1
    the first late call does."""
    net = make_net(8, 32, 1, dtype="float32")
    x = np.ones((40, 1, 8), np.float32)

    def forward_overlapped(late):
        with kernel_knob(kernels._set_max_lost_share, -1.0 if late else 2.0):
            net.forward(x)
        return kernels._last_call_overlapped()

    kernels._reset_team_pause()
    try:
        with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2):
            for late in (True, False, True, False, True):
                assert forward_overlapped(late)
                assert kernels._overlap_calls_skipped() == 0
            with kernel_knob(kernels._set_overlap_strikes, 1):
                assert forward_overlapped(True)
                assert kernels._overlap_calls_skipped() == 64
        with pytest.raises(ValueError, match="at least 1"):
            kernels._set_overlap_strikes(0)
    finally:
        kernels._reset_team_pause()


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                        ("4", TypeError), (True, TypeError)])
def test_overlap_chunk_rows_must_be_a_positive_int(bad, error):
    with pytest.raises(error, match="rows: expected"):
        kernels._set_overlap_chunk_rows(bad)
    assert kernels._set_overlap_chunk_rows(16) == 16      # unchanged by the refusals


def interrupt_soon(delay):
    """SIGINT to this process after ``delay`` seconds, as Ctrl-C sends it."""
    timer = threading.Timer(delay, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("pass_", ["forward", "backward"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_ctrl_c_stops_an_overlapped_call_and_leaves_the_model_usable(cell, pass_):
    """Both cells, a forward alone or backward then forward: Ctrl-C stops the call,
    and the model gives right answers after it."""
    T, I, H = 100_000, 16, 32
    net = (clstm.GRU if cell == "gru" else clstm.LSTM)(I, H, seed=3)
    x = np.random.default_rng(3).standard_normal((T, 1, I)).astype(np.float32)
    small = x[:50]
    with clstm.threads(2):
        want_small = np.array(net.forward(small)[0])
        y, _ = net.forward(x)
        assert kernels._last_call_overlapped()
        # the signal comes soon, and the call is repeated until it meets one (a SIGINT
        # after the last call would escape pytest.raises and stop the session)
        timer = interrupt_soon(0.02)
        try:
            with pytest.raises(KeyboardInterrupt):
                for _ in range(1000):
                    if pass_ == "forward":
                        net.forward(x)
                    else:
                        net.backward(np.ones_like(y))
                        net.forward(x)
        finally:
            timer.join()
        y, _ = net.forward(small)               # usable again, and still right
        np.testing.assert_allclose(y, want_small, rtol=1e-5, atol=1e-6)
        net.backward(np.ones_like(y))


# --------------------------------------------------------------------------------------
# The GRU (its padded batch runs the packed driver, forward direction)


def gru_run(net, x, h0, dy, dh_n, threads, chunk_rows=3):
    """Forward and backward at ``threads`` threads (no work threshold); with 2, checks
    that both passes overlapped their products."""
    flags = []
    with kernel_knob(kernels._set_min_flops_per_thread, 0), \
            kernel_knob(kernels._set_overlap_chunk_rows, chunk_rows), clstm.threads(threads):
        net.zero_grad()
        y, h_n = net.forward(x, h0)
        flags.append(kernels._last_call_overlapped())
        dx, dh0 = net.backward(dy, dh_n)
        flags.append(kernels._last_call_overlapped())
    assert flags == [threads > 1] * 2
    return dict(y=np.array(y), h_n=np.array(h_n), dx=np.array(dx), dh0=np.array(dh0),
                grads={name: np.array(g) for name, g in net.grads.items()})


def gru_data(rng, T, B, I, H, L, dtype, with_state):
    x = rng.normal(size=(T, B, I)).astype(dtype)
    h0 = rng.normal(size=(L, B, H)).astype(dtype) if with_state else None
    dy = rng.normal(size=(T, B, H)).astype(dtype)
    dh_n = rng.normal(size=(L, B, H)).astype(dtype)
    return x, h0, dy, dh_n


def assert_gru_close(got, want, **tol):
    for key in ("y", "h_n", "dx", "dh0"):
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **tol)
    assert got["grads"]
    for name in got["grads"]:    # (the reference has bias gradients also without bias)
        np.testing.assert_allclose(got["grads"][name], want["grads"][name], err_msg=name,
                                   **tol)


@pytest.mark.usefixtures("isa_level")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T, I, H, L, bias, with_state, chunk_rows", [
    (23, 5, 24, 1, True, False, 3),
    (9, 3, 17, 2, False, True, 2),
    (40, 64, 64, 1, True, True, 16),
])
def test_gru_overlapped_products_match_one_thread_and_the_reference(
        dtype, T, I, H, L, bias, with_state, chunk_rows):
    rng = np.random.default_rng(T * 10 + H)
    net = clstm.GRU(I, H, L, bias=bias, dtype=dtype, seed=T)
    x, h0, dy, dh_n = gru_data(rng, T, 1, I, H, L, dtype, with_state)
    one = gru_run(net, x, h0, dy, dh_n, 1)
    got = gru_run(net, x, h0, dy, dh_n, 2, chunk_rows)
    again = gru_run(net, x, h0, dy, dh_n, 2, chunk_rows)
    assert_gru_close(again, got, rtol=0, atol=0)          # the same bits
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    assert_gru_close(got, one, **tol)
    yr, hr, cache = reference_gru_forward(x.astype(np.float64), net.params, L,
                                          h0=None if h0 is None else h0.astype(np.float64))
    dxr, dh0r, gr = reference_gru_backward(dy.astype(np.float64), cache,
                                           dh_n.astype(np.float64))
    loose = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    assert_gru_close(got, dict(y=yr, h_n=hr, dx=dxr, dh0=dh0r, grads=gr), **loose)


@pytest.mark.usefixtures("isa_level")
def test_gru_overlapped_gradients_match_finite_differences_float64():
    rng = np.random.default_rng(77)
    T, I, H = 7, 3, 4
    net = clstm.GRU(I, H, dtype="float64", seed=4)
    x, h0, R, Rh = gru_data(rng, T, 1, I, H, 1, "float64", True)
    got = gru_run(net, x, h0, R, Rh, 2, chunk_rows=2)

    def loss():
        y, h_n = net.forward(x, h0)
        return float((y * R).sum() + (h_n * Rh).sum())

    for name in sorted(net.params):
        fd_check(loss, net.params[name], got["grads"][name], rng, what=name)
    fd_check(loss, x, got["dx"], rng, what="x")
    fd_check(loss, h0, got["dh0"], rng, what="h0")


@pytest.mark.usefixtures("isa_level")
def test_gru_late_helper_leaves_its_chunks_to_the_caller_with_the_same_bits():
    T, I, H = 30, 6, 32
    rng = np.random.default_rng(13)
    net = clstm.GRU(I, H, seed=13)
    x, h0, dy, dh_n = gru_data(rng, T, 1, I, H, 1, "float32", True)
    on_time = gru_run(net, x, h0, dy, dh_n, 2, chunk_rows=4)
    before = kernels._overlap_chunks_run_by_caller()
    with kernel_knob(kernels._set_late_thread_delay, 0.05):
        late = gru_run(net, x, h0, dy, dh_n, 2, chunk_rows=4)
    assert kernels._overlap_chunks_run_by_caller() - before == 2 * (-(-T // 4))
    for key in ("y", "h_n", "dx", "dh0"):
        np.testing.assert_array_equal(late[key], on_time[key], err_msg=key)
    for name in on_time["grads"]:
        np.testing.assert_array_equal(late["grads"][name], on_time["grads"][name],
                                      err_msg=name)


def test_gru_overlaps_only_a_padded_forward_direction():
    net = clstm.GRU(8, 32, seed=1)
    bidir = clstm.GRU(8, 32, bidirectional=True, seed=1)
    x = np.ones((40, 1, 8), np.float32)
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2):
        net.forward(x)
        assert kernels._last_call_overlapped()
        net.forward(x, lengths=[39])       # one row: its lengths leave the batch padded
        assert kernels._last_call_overlapped()
        net.forward(np.ones((40, 2, 8), np.float32), lengths=[40, 30])
        assert not kernels._last_call_overlapped()
        with kernel_knob(kernels._set_parallel_directions, False):
            bidir.forward(x)               # the reverse direction is not overlapped
            assert not kernels._last_call_overlapped()
