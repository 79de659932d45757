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
