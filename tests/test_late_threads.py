"""A busy machine: the row split's late-thread fallback (a thread done with its rows
takes over a late thread's remaining steps) and the pause on one thread after a late
team (DEVELOPERS.md, "Threads"). Both are forced here through kernel knobs: a delay of
every thread but the first, and a share of lost time that every team exceeds."""
import numpy as np
import pytest
from knobs import kernel_knob

import clstm
from clstm import kernels

pytestmark = pytest.mark.skipif(not kernels.openmp_enabled(), reason="built without OpenMP")


def train_once(net, x, threads, dy=None):
    """Outputs, final state, input and state gradients and the weight gradients of one
    forward and backward at ``threads`` threads (the gradients start at zero)."""
    rng = np.random.default_rng(5)
    dy = rng.standard_normal((x.shape[0], x.shape[1], net.hidden_size)).astype(net.dtype)
    net.zero_grad()
    with clstm.threads(threads):
        y, (h_n, c_n) = net.forward(x)
        dx, (dh0, dc0) = net.backward(dy)
    return dict(y=np.array(y), h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
                grads=net.flat_grads.copy())


def assert_identical(got, want):
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [2, 7])        # rows 0:1 | 1:2, and 0:3 | 3:7
def test_rows_of_a_late_thread_are_taken_over_with_the_same_result(dtype, B):
    T, I, H = 9, 5, 24
    net = clstm.LSTM(I, H, 2, dtype=dtype, seed=3, peephole=True)
    x = np.random.default_rng(4).standard_normal((T, B, I)).astype(dtype)
    with kernel_knob(kernels._set_min_flops_per_thread, 0):
        with kernel_knob(kernels._set_row_handover, False):
            static = train_once(net, x, 2)      # each thread its own rows, as before
        on_time = train_once(net, x, 2)
        before = kernels._row_steps_taken_over()
        # thread 1 starts 50 ms late: thread 0 runs its own rows, then all of thread 1's
        with kernel_knob(kernels._set_late_thread_delay, 0.05):
            late = train_once(net, x, 2)
            assert kernels._threads_used_by_last_call() == 2
        taken = kernels._row_steps_taken_over() - before
    # every layer's forward and backward: all T steps of thread 1's block
    assert taken >= 2 * 2 * T
    # the same blocks of rows through the same arithmetic, whichever thread ran them
    assert_identical(on_time, static)
    assert_identical(late, static)
    one = train_once(net, x, 1)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for key in one:
        np.testing.assert_allclose(late[key], one[key], err_msg=key, **tol)


def test_a_late_team_puts_the_next_calls_on_one_thread_and_a_team_on_time_ends_it():
    T, B, I, H = 6, 8, 5, 32
    net = clstm.LSTM(I, H, dtype="float64", seed=6)
    x = np.random.default_rng(7).standard_normal((T, B, I))
    want = train_once(net, x, 1)
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2):
        with kernel_knob(kernels._set_max_lost_share, -1.0):    # every team is late
            net.forward(x)
            assert kernels._threads_used_by_last_call() == 2
            assert kernels._calls_on_one_thread() == 0    # one late call alone: no pause
            net.forward(x)
            assert kernels._threads_used_by_last_call() == 2
            first = kernels._calls_on_one_thread()        # the second in a row: a pause
            assert first >= 2
            for _ in range(first):
                net.forward(x)
                assert kernels._threads_used_by_last_call() == 1
            assert kernels._calls_on_one_thread() == 0
            net.forward(x)                                        # a retry, late again
            assert kernels._threads_used_by_last_call() == 2
            assert kernels._calls_on_one_thread() == 2 * first   # twice as long
            paused = train_once(net, x, 2)
            assert kernels._threads_used_by_last_call() == 1
        for _ in range(2 * first - 2):
            net.forward(x)                       # the pause runs out, on one thread
        assert kernels._calls_on_one_thread() == 0
        with kernel_knob(kernels._set_max_lost_share, 2.0):     # no team is late
            net.forward(x)
            assert kernels._threads_used_by_last_call() == 2
            net.forward(x)
            assert kernels._threads_used_by_last_call() == 2     # no pause
    tol = dict(rtol=1e-12, atol=1e-14)
    for key in want:
        np.testing.assert_allclose(paused[key], want[key], err_msg=key, **tol)


def test_pauses_double_up_to_256_calls():
    net = clstm.LSTM(5, 32, dtype="float64", seed=8)
    x = np.ones((4, 8, 5))
    lengths = []
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2), \
            kernel_knob(kernels._set_max_lost_share, -1.0):
        net.forward(x)                           # the first late call: a strike only
        assert kernels._calls_on_one_thread() == 0
        for _ in range(8):
            net.forward(x)                       # the second in a row, then late retries
            lengths.append(kernels._calls_on_one_thread())
            kernels._team_pause_state((0, lengths[-1]))   # skip the pause, keep its length
    assert lengths == [8, 16, 32, 64, 128, 256, 256, 256]


def test_a_single_late_call_between_calls_on_time_starts_no_pause():
    """A virtual machine loses a time slice to its host now and then: one late call
    between calls on time never puts the next calls on one thread."""
    net = clstm.LSTM(5, 32, dtype="float64", seed=8)
    x = np.ones((4, 8, 5))
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2):
        for _ in range(3):
            with kernel_knob(kernels._set_max_lost_share, -1.0):    # late
                net.forward(x)
            with kernel_knob(kernels._set_max_lost_share, 2.0):     # on time
                net.forward(x)
                assert kernels._threads_used_by_last_call() == 2
            assert kernels._team_pause_state() == (0, 0)


def test_the_units_split_leaving_for_one_thread_starts_a_pause():
    net = clstm.LSTM(8, 160, seed=9)
    x = np.random.default_rng(9).standard_normal((60, 1, 8)).astype(np.float32)
    with clstm.threads(2), kernel_knob(kernels._set_max_late_share, -1.0), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        net.forward(x)
        assert kernels._last_forward_split_units()
        assert kernels._team_left_at_last_call() == 17
        assert kernels._calls_on_one_thread() == 8
        net.forward(x)
        assert kernels._threads_used_by_last_call() == 1
        assert not kernels._last_forward_split_units()


# ---- the packed driver (the GRU; the LSTM with lengths or bidirectional) ----------------

def packed_net(cell, bidirectional, dtype="float64", H=24):
    cls = clstm.GRU if cell == "gru" else clstm.LSTM
    return cls(5, H, 2, dtype=dtype, seed=3, bidirectional=bidirectional)


def train_packed(net, x, threads, lengths):
    """train_once for either cell, with ``lengths`` (None: all T), so that the LSTM runs
    the packed driver where it has lengths or two directions; the GRU always does."""
    rng = np.random.default_rng(5)
    D = 2 if net.bidirectional else 1
    dy = rng.standard_normal((x.shape[0], x.shape[1], D * net.hidden_size)).astype(net.dtype)
    net.zero_grad()
    with clstm.threads(threads):
        y, state = net.forward(x, lengths=lengths)
        dx, dstate = net.backward(dy)
    out = dict(y=np.array(y), dx=dx, grads=net.flat_grads.copy())
    for name, value in (("state", state), ("dstate", dstate)):
        parts = value if isinstance(value, tuple) else (value,)
        for k, part in enumerate(parts):
            out[f"{name}{k}"] = np.array(part)
    return out


LENGTHS = [9, 4, 9, 7, 2, 8, 5]        # unsorted: the packing sorts them


@pytest.mark.usefixtures("isa_level")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell, lengths, bidirectional", [
    ("gru", None, False), ("gru", LENGTHS, False), ("gru", LENGTHS, True),
    ("lstm", LENGTHS, False), ("lstm", LENGTHS, True), ("lstm", None, True)])
def test_packed_rows_of_a_late_thread_are_taken_over_with_the_same_result(
        dtype, cell, lengths, bidirectional):
    T, B = 9, 7
    net = packed_net(cell, bidirectional, dtype)
    x = np.random.default_rng(4).standard_normal((T, B, 5)).astype(dtype)
    # with 2 threads the two directions would run at once (a thread each, no row
    # split): one after the other here, so that each direction's rows are split
    with kernel_knob(kernels._set_min_flops_per_thread, 0), \
            kernel_knob(kernels._set_parallel_directions, False):
        with kernel_knob(kernels._set_row_handover, False):
            static = train_packed(net, x, 2, lengths)     # each thread its own rows
        on_time = train_packed(net, x, 2, lengths)
        before = kernels._row_steps_taken_over()
        with kernel_knob(kernels._set_late_thread_delay, 0.05):
            late = train_packed(net, x, 2, lengths)
            assert kernels._threads_used_by_last_call() == 2
            assert not kernels._last_forward_split_units()
        taken = kernels._row_steps_taken_over() - before
    # every layer and direction, forward and backward: thread 1's block, T iterations
    D = 2 if bidirectional else 1
    assert taken >= 2 * D * 2 * T
    assert_identical(on_time, static)
    assert_identical(late, static)
    one = train_packed(net, x, 1, lengths)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for key in one:
        np.testing.assert_allclose(late[key], one[key], err_msg=key, **tol)


@pytest.mark.parametrize("cell, lengths, parallel_directions", [
    ("gru", None, False), ("gru", LENGTHS, False), ("lstm", LENGTHS, False),
    ("gru", LENGTHS, True), ("lstm", None, True)])
def test_a_late_thread_of_the_packed_driver_starts_the_pause(cell, lengths,
                                                            parallel_directions):
    """As for the padded driver: a member that lost its core (here: asleep for 50 ms
    while thread 0 ran its rows) makes the call late, the second late call in a row
    starts the pause, and the paused calls give the same results on one thread. With
    the directions at once, the late thread is the one running the reverse direction."""
    T, B = 9, 7
    net = packed_net(cell, parallel_directions, "float64", H=32)
    x = np.random.default_rng(4).standard_normal((T, B, 5))
    want = train_packed(net, x, 1, lengths)
    with kernel_knob(kernels._set_min_flops_per_thread, 0), \
            kernel_knob(kernels._set_parallel_directions, parallel_directions), \
            clstm.threads(2):
        net.forward(x, lengths=lengths)      # on time (the fixture's share): no pause
        assert kernels._threads_used_by_last_call() == 2
        assert kernels._team_pause_state() == (0, 0)
        # the default share, and thread 1 asleep for 50 ms in every split
        with kernel_knob(kernels._set_max_lost_share, 0.25), \
                kernel_knob(kernels._set_late_thread_delay, 0.05):
            net.forward(x, lengths=lengths)  # the first layer late: a strike; the second
            assert kernels._threads_used_by_last_call() == 2     # in a row: the pause
        assert kernels._calls_on_one_thread() > 0
        paused = train_packed(net, x, 2, lengths)
        assert kernels._threads_used_by_last_call() == 1
    for key in want:
        np.testing.assert_allclose(paused[key], want[key], err_msg=key, rtol=1e-12,
                                   atol=1e-14)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_packed_units_split_leaving_for_one_thread_starts_a_pause(cell):
    net = (clstm.GRU if cell == "gru" else clstm.LSTM)(8, 160, seed=9)
    x = np.random.default_rng(9).standard_normal((60, 1, 8)).astype(np.float32)
    lengths = None if cell == "gru" else [59]       # the LSTM's packed driver
    with clstm.threads(2), kernel_knob(kernels._set_max_late_share, -1.0), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        net.forward(x, lengths=lengths)
        assert kernels._last_forward_split_units()
        assert kernels._team_left_at_last_call() == 17
        assert kernels._calls_on_one_thread() == 8
        net.forward(x, lengths=lengths)
        assert kernels._threads_used_by_last_call() == 1
        assert not kernels._last_forward_split_units()


def test_knobs_restore_and_report_their_previous_values():
    assert kernels._set_row_handover(False) is True
    assert kernels._set_row_handover(True) is False
    assert kernels._set_late_thread_delay(0.5) == 0
    assert kernels._set_late_thread_delay(0) == 0.5
    old = kernels._set_max_lost_share(0.4)
    assert kernels._set_max_lost_share(old) == 0.4
    assert kernels._team_pause_state((3, 4)) == (0, 0)
    assert kernels._calls_on_one_thread() == 3
    kernels._reset_team_pause()
    assert kernels._team_pause_state() == (0, 0)
