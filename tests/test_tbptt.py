"""Tests of clstm.tbptt: the batchify layout, chunking, carried state and what a chunk's
gradient is (truncated at the chunk's start, exactly)."""

import numpy as np
import pytest

import clstm
from clstm.models import LanguageModel
from clstm.tbptt import batchify, num_chunks, reset_state, tbptt_chunks
from reference import numerical_gradient as numgrad  # tests/ is on sys.path


def run_chunks(net, x, k, state=None):
    """Forward over x in chunks of k steps, carrying the state; outputs concatenated."""
    ys = []
    for xc, _ in tbptt_chunks(x, k, targets=x):
        y, state = net.forward(xc, state)
        ys.append(np.array(y))
    return np.concatenate(ys), state


# ------------------------------------------------------------------------- batchify

def test_batchify_columns_are_contiguous_pieces_of_the_stream():
    data = batchify(np.arange(10), 3)
    np.testing.assert_array_equal(data, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    assert data.flags.c_contiguous


def test_batchify_keeps_feature_axes_and_drops_the_remainder():
    stream = np.arange(22 * 2).reshape(22, 2)
    data = batchify(stream, 4)
    assert data.shape == (5, 4, 2)
    for b in range(4):
        np.testing.assert_array_equal(data[:, b], stream[5 * b:5 * (b + 1)])


def test_consecutive_chunks_of_a_batch_row_continue_each_other():
    stream = np.arange(101)
    data = batchify(stream, 4)
    chunks = list(tbptt_chunks(data, 7))
    x = np.concatenate([c[0] for c in chunks])
    y = np.concatenate([c[1] for c in chunks])
    for b in range(4):
        row = stream[25 * b:25 * (b + 1)]
        np.testing.assert_array_equal(x[:, b], row[:-1])
        np.testing.assert_array_equal(y[:, b], row[1:])


@pytest.mark.parametrize("stream, batch_size, words", [
    (np.arange(3), 4, "at least batch_size=4 steps, got a stream of 3"),
    (np.arange(3), 0, "batch_size an int >= 1, got 0"),
    (np.array(5), 1, "0-d"),
])
def test_batchify_rejects_bad_input_naming_what_was_expected(stream, batch_size, words):
    with pytest.raises(ValueError, match=words):
        batchify(stream, batch_size)


# ----------------------------------------------------------------------- tbptt_chunks

def test_chunks_tile_the_steps_in_order_with_a_shorter_last_chunk():
    x = np.arange(23)
    chunks = list(tbptt_chunks(x, 5, targets=-x))
    assert [len(c[0]) for c in chunks] == [5, 5, 5, 5, 3]
    assert len(chunks) == num_chunks(23, 5)
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), x)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), -x)


def test_language_model_targets_are_the_inputs_shifted_by_one():
    x = np.arange(11)
    chunks = list(tbptt_chunks(x, 4))
    assert len(chunks) == num_chunks(10, 4) == 3
    for xc, yc in chunks:
        np.testing.assert_array_equal(yc, xc + 1)


def test_chunks_reject_bad_arguments_when_called_not_when_iterated():
    with pytest.raises(ValueError, match="k .* int >= 1, got 0"):
        tbptt_chunks(np.arange(5), 0)
    with pytest.raises(ValueError, match="targets with 5 steps"):
        tbptt_chunks(np.arange(5), 2, targets=np.arange(4))
    with pytest.raises(ValueError, match="at least 2 steps"):
        tbptt_chunks(np.arange(1), 2)


# ------------------------------------------------------------------------ reset_state

def test_reset_state_zeroes_only_the_selected_rows_and_copies():
    rng = np.random.default_rng(0)
    h, c = rng.standard_normal((2, 3, 4, 5))
    h2, c2 = reset_state((h, c), [1, 3])
    assert np.all(h2[:, [1, 3]] == 0) and np.all(c2[:, [1, 3]] == 0)
    np.testing.assert_array_equal(h2[:, [0, 2]], h[:, [0, 2]])
    np.testing.assert_array_equal(c2[:, [0, 2]], c[:, [0, 2]])
    assert np.all(h[:, 1] != 0), "the input must not be modified"


def test_reset_state_takes_masks_none_and_model_state_lists():
    h = np.ones((1, 3, 2))
    (h2, _), = reset_state([(h, h)], np.array([True, False, True]))
    np.testing.assert_array_equal(h2[0, :, 0], [0, 1, 0])
    assert reset_state(None, [0]) is None
    same, _ = reset_state((h, h), [])
    np.testing.assert_array_equal(same, h)
    with pytest.raises(ValueError, match=r"rows in \[0, 3\)"):
        reset_state((h, h), [3])
    with pytest.raises(ValueError, match=r"mask of shape \(3,\)"):
        reset_state((h, h), np.array([True, False]))


def test_a_reset_row_continues_as_if_its_sequence_started_fresh():
    net = clstm.LSTM(3, 4, dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 3))
    _, state = net.forward(x[:3])
    y, _ = net.forward(x[3:], reset_state(state, [1]))
    fresh, _ = net.forward(x[3:, 1:2])
    np.testing.assert_allclose(y[:, 1], fresh[:, 0], rtol=0, atol=1e-14)


# ------------------------------------------------------- carried state and gradients

@pytest.mark.parametrize("k", [1, 4, 7, 23])
def test_chunks_with_carried_state_reproduce_one_forward_over_the_whole_sequence(k):
    net = clstm.LSTM(3, 5, num_layers=2, dtype="float64", seed=2)
    x = np.random.default_rng(3).standard_normal((23, 4, 3))
    y_full, (h_full, c_full) = net.forward(x)
    y, (h, c) = run_chunks(net, x, k)
    np.testing.assert_allclose(y, y_full, rtol=0, atol=1e-13)
    np.testing.assert_allclose(h, h_full, rtol=0, atol=1e-13)
    np.testing.assert_allclose(c, c_full, rtol=0, atol=1e-13)


def test_sequential_model_state_carries_across_chunks_like_a_whole_forward():
    model = LanguageModel(11, 4, 6, num_layers=2, dtype="float64", seed=0)
    model.eval()
    data = batchify(np.random.default_rng(4).integers(0, 11, 60), 3)
    full, _ = model.forward(data)
    state, outs = None, []
    for xc, _ in tbptt_chunks(data, 6, targets=data):
        out, state = model.forward(xc, state)
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs), full, rtol=0, atol=1e-13)


class LastChunkProblem:
    """A prefix of 12 steps, then a chunk of 5 with a loss sum(y * R) on it alone."""

    def __init__(self):
        rng = np.random.default_rng(5)
        self.net = clstm.LSTM(3, 4, dtype="float64", peephole=True, seed=6)
        self.prefix = rng.standard_normal((12, 2, 3))
        self.chunk = rng.standard_normal((5, 2, 3))
        self.R = rng.standard_normal((5, 2, 4))
        # The carried-in state, computed once from the current weights and then frozen.
        _, self.state = run_chunks(self.net, self.prefix, 5)

    def loss(self):
        y, _ = self.net.forward(self.chunk, self.state)
        return float(np.sum(y * self.R))

    def tbptt_grads(self):
        """Forward/backward over the last chunk alone, from the carried state."""
        self.net.zero_grad()
        self.net.forward(self.chunk, self.state)
        _, dstate0 = self.net.backward(self.R)
        return {n: g.copy() for n, g in self.net.grads.items()}, dstate0


def test_chunk_gradient_equals_finite_differences_with_the_carried_state_frozen():
    prob = LastChunkProblem()
    grads, _ = prob.tbptt_grads()
    for name, w in prob.net.params.items():
        np.testing.assert_allclose(grads[name], numgrad(prob.loss, w), rtol=1e-6,
                                   atol=1e-8, err_msg=name)


def test_chunk_gradient_is_the_full_gradient_minus_exactly_what_crosses_the_boundary():
    """Full BPTT of the last chunk's loss = the chunk's own (truncated) gradient + the
    gradient its initial state sends back through the prefix; so truncation drops that
    part and nothing else."""
    prob = LastChunkProblem()
    net = prob.net
    grads, (dh0, dc0) = prob.tbptt_grads()

    whole = np.concatenate([prob.prefix, prob.chunk])
    dy = np.zeros((17, 2, 4))
    dy[12:] = prob.R
    net.zero_grad()
    net.forward(whole)
    net.backward(dy)
    full = {n: g.copy() for n, g in net.grads.items()}

    net.zero_grad()
    net.forward(prob.prefix)
    net.backward(np.zeros((12, 2, 4)), dstate=(dh0, dc0))
    crossing = net.grads

    for name in full:
        assert np.abs(crossing[name]).max() > 1e-6, "the test needs a real difference"
        np.testing.assert_allclose(grads[name] + crossing[name], full[name], rtol=1e-10,
                                   atol=1e-12, err_msg=name)


# ------------------------------------------------------- sequences of their own lengths

from clstm.tbptt import (chunk_lengths, forward_chunk, put_rows,  # noqa: E402
                         take_rows)


def test_chunk_lengths_are_each_rows_steps_inside_the_chunk():
    lengths = np.array([10, 3, 7, 5])
    np.testing.assert_array_equal(chunk_lengths(lengths, 0, 5), [5, 3, 5, 5])
    np.testing.assert_array_equal(chunk_lengths(lengths, 5, 5), [5, 0, 2, 0])
    x = np.zeros((10, 4, 1))
    got = [lc for _, _, lc in tbptt_chunks(x, 4, targets=x, lengths=lengths)]
    np.testing.assert_array_equal(got, [[4, 3, 4, 4], [4, 0, 3, 1], [2, 0, 0, 0]])
    # without targets the last step of a sequence has no successor: n - 1 inputs count
    got = [lc for _, _, lc in tbptt_chunks(x, 4, lengths=lengths)]
    np.testing.assert_array_equal(got, [[4, 2, 4, 4], [4, 0, 2, 0], [1, 0, 0, 0]])


def test_chunk_lengths_bad_input_is_refused_when_called():
    x = np.zeros((6, 3, 1))
    with pytest.raises(ValueError, match=r"lengths: expected shape \(3,\)"):
        tbptt_chunks(x, 2, targets=x, lengths=[1, 2])
    with pytest.raises(ValueError, match=r"lengths: expected integers in \[1, 6\], got "
                                         r"min 0, max 7"):
        tbptt_chunks(x, 2, targets=x, lengths=[0, 7, 3])
    with pytest.raises(TypeError, match="lengths: expected integers, got dtype float64"):
        tbptt_chunks(x, 2, targets=x, lengths=[1.0, 2.0, 3.0])
    net = clstm.LSTM(1, 2)
    with pytest.raises(ValueError, match=r"lengths: expected integers in \[0, 6\] \(steps "
                                         r"in the chunk\), got min -1"):
        forward_chunk(net, x, None, [-1, 2, 3])
    with pytest.raises(TypeError, match="lengths: expected integers"):
        forward_chunk(net, x, None, [True, True, False])


def chunked_forward(net, x, lengths, k, state=None):
    """forward_chunk over x in chunks of k (a unidirectional net), outputs scattered back
    to all rows (zeros where a row has ended); returns (y, final state, each chunk's
    start state)."""
    T, B = x.shape[:2]
    ys, starts = [], []
    for t in range(0, T, k):
        lc = chunk_lengths(lengths, t, k)
        starts.append(state)
        out, state, rows = forward_chunk(net, x[t:t + k], state, lc)
        y = np.zeros((min(k, T - t), B, getattr(net, "proj_size", 0) or net.hidden_size))
        if rows is not None:
            y[:, rows] = out
        ys.append(y)
    return np.concatenate(ys), state, starts


def chunked_backward(net, x, dy, lengths, k, starts, dstate):
    """Backward through the chunks of `chunked_forward` in reverse, each chunk's forward
    rerun from its start state for its cache, dL/dstate carried from chunk to chunk;
    returns (dx, dL/d(initial state))."""
    T, B = x.shape[:2]
    dx, carried = np.zeros_like(x), dstate
    for c in reversed(range(len(starts))):
        t = c * k
        _, _, rows = forward_chunk(net, x[t:t + k], starts[c], chunk_lengths(lengths, t, k))
        if rows is None:
            continue
        dxc, part = net.backward(dy[t:t + k][:, rows], take_rows(carried, rows))
        dx[t:t + k][:, rows] = dxc
        carried = put_rows(carried, rows, part, B)
    return dx, carried


LSTM_CASES = [dict(num_layers=1), dict(num_layers=2), dict(num_layers=3, peephole=True),
              dict(num_layers=2, proj_size=3), dict(num_layers=2, bias=False)]


@pytest.mark.parametrize("config", LSTM_CASES)
def test_chunks_with_lengths_give_one_long_forwards_outputs_and_final_state(config):
    rng = np.random.default_rng(len(config) + config["num_layers"])
    net = clstm.LSTM(3, 5, dtype="float64", seed=1, **config)
    T, B, k = 11, 6, 3
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([11, 2, 3, 7, 1, 9])      # ends inside, at and before chunks' ends
    h0 = rng.standard_normal((config["num_layers"], B, config.get("proj_size") or 5))
    c0 = rng.standard_normal((config["num_layers"], B, 5))
    y_long, (h_long, c_long) = net.forward(x, (h0, c0), lengths=lengths)
    y, (h, c), _ = chunked_forward(net, x, lengths, k, (h0, c0))
    np.testing.assert_allclose(y, y_long, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h, h_long, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c, c_long, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("config", LSTM_CASES)
def test_chunked_backward_with_lengths_equals_one_long_backward(config):
    """Back through the chunks in reverse, each chunk's (dh_0, dc_0) handed to the chunk
    before as its dstate (rows that have ended pass it through unchanged): every
    parameter gradient, dx, dh_0 and dc_0 equal one long backward with lengths.
    Truncated BPTT is this with the handing-over left out."""
    rng = np.random.default_rng(7 + config["num_layers"])
    net = clstm.LSTM(3, 5, dtype="float64", seed=2, **config)
    T, B, k = 10, 5, 4
    L, P = config["num_layers"], config.get("proj_size") or 5
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([10, 4, 3, 9, 1])
    state0 = (rng.standard_normal((L, B, P)), rng.standard_normal((L, B, 5)))
    dy = rng.standard_normal((T, B, P)) * clstm.lengths_to_mask(lengths, T)[..., None]
    dstate = (rng.standard_normal((L, B, P)), rng.standard_normal((L, B, 5)))

    net.zero_grad()
    net.forward(x, state0, lengths=lengths)
    dx_long, (dh0_long, dc0_long) = net.backward(dy, dstate)
    grads_long = {n: g.copy() for n, g in net.grads.items()}

    net.zero_grad()
    _, _, starts = chunked_forward(net, x, lengths, k, state0)
    dx, carried = chunked_backward(net, x, dy, lengths, k, starts, dstate)
    for name, g in net.grads.items():
        np.testing.assert_allclose(g, grads_long[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dx, dx_long, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(carried[0], dh0_long, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(carried[1], dc0_long, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_layers, bias", [(1, True), (2, False), (3, True)])
def test_a_grus_chunks_with_lengths_equal_one_long_forward_and_backward(num_layers, bias):
    """The same for a GRU, whose state is h alone (an array, not a pair): chunked
    outputs, final state, every gradient, dx and dh_0 equal one long pass with lengths."""
    rng = np.random.default_rng(30 + num_layers)
    net = clstm.GRU(3, 5, num_layers, bias=bias, dtype="float64", seed=3)
    T, B, k = 10, 5, 4
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([10, 4, 3, 9, 1])
    h0 = rng.standard_normal((num_layers, B, 5))
    dy = rng.standard_normal((T, B, 5)) * clstm.lengths_to_mask(lengths, T)[..., None]
    dh_n = rng.standard_normal((num_layers, B, 5))

    net.zero_grad()
    y_long, h_long = net.forward(x, h0, lengths=lengths)
    dx_long, dh0_long = net.backward(dy, dh_n)
    grads_long = {n: g.copy() for n, g in net.grads.items()}

    net.zero_grad()
    y, h, starts = chunked_forward(net, x, lengths, k, h0)
    np.testing.assert_allclose(y, y_long, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h, h_long, rtol=1e-12, atol=1e-13)
    dx, carried = chunked_backward(net, x, dy, lengths, k, starts, dh_n)
    for name, g in net.grads.items():
        np.testing.assert_allclose(g, grads_long[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dx, dx_long, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(carried, dh0_long, rtol=1e-10, atol=1e-12)


def test_a_chunk_past_every_sequence_runs_nothing_and_keeps_the_state():
    net = clstm.LSTM(2, 3, dtype="float64", seed=0)
    state = (np.ones((1, 2, 3)), np.full((1, 2, 3), 2.0))
    out, new, rows = forward_chunk(net, np.zeros((4, 2, 2)), state, [0, 0])
    assert out is None and rows is None and new is state
    # rows that ended before the chunk keep their state; from None they are zeros
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    out, (h, c), rows = forward_chunk(net, x, None, [0, 3])
    np.testing.assert_array_equal(rows, [1])
    assert out.shape == (4, 1, 3) and not h[:, 0].any() and not c[:, 0].any()
    alone, (h1, _) = net.forward(x[:3, 1:])
    np.testing.assert_allclose(h[:, 1], h1[:, 0], rtol=1e-13)


def test_take_and_put_rows_walk_any_tuple_or_list_of_states():
    rng = np.random.default_rng(3)
    gru_like = (rng.standard_normal((2, 4, 3)),)                  # a one-array state
    model_state = [None, (rng.standard_normal((1, 4, 2)), rng.standard_normal((1, 4, 2)))]
    for state in (gru_like, model_state):
        part = take_rows(state, [1, 3])
        full = put_rows(state, [1, 3], part, 4)
        for a, b in zip(np.concatenate([np.ravel(s) for s in _leaves(full)]),
                        np.concatenate([np.ravel(s) for s in _leaves(state)])):
            assert a == b
    zeros = put_rows(None, [2], (np.ones((1, 1, 2)),), 3)
    np.testing.assert_array_equal(zeros[0][0, :, 0], [0, 0, 1])
    with pytest.raises(TypeError, match="state: expected None, an array"):
        take_rows({"h": 1}, [0])
    with pytest.raises(ValueError, match="state: expected 2 parts"):
        put_rows((np.ones((1, 2, 1)),), [0], (np.ones((1, 1, 1)),) * 2, 2)


def _leaves(state):
    if state is None:
        return []
    if isinstance(state, np.ndarray):
        return [state]
    return [leaf for part in state for leaf in _leaves(part)]


def test_bidirectional_models_cannot_run_in_chunks():
    x = np.zeros((4, 2, 2))
    bi = clstm.LSTM(2, 3, bidirectional=True)
    with pytest.raises(ValueError, match="truncated BPTT: expected a model without "
                                         "bidirectional layers.*got LSTM"):
        forward_chunk(bi, x, None, [4, 2])
    model = clstm.Sequential([clstm.LSTM(2, 3, bidirectional=True, dtype="float64"),
                              clstm.Dense(6, 1, dtype="float64")], loss="mse")
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((8, 6, 2)), rng.standard_normal((8, 6, 1))
    with pytest.raises(ValueError, match="truncated BPTT: expected a model without "
                                         "bidirectional"):
        model.fit(xs, ys, epochs=1, batch_size=4, bptt=3, lengths=np.full(8, 5), verbose=0)
    with pytest.raises(ValueError, match="truncated BPTT: expected a model without "
                                         "bidirectional"):
        model.fit(xs, ys, epochs=1, batch_size=4, bptt=3, verbose=0)
    before = model.layers[0].flat_params.copy()
    with pytest.raises(ValueError, match="truncated BPTT"):
        model.fit(xs, ys, epochs=1, batch_size=4, bptt=3, verbose=0)
    # refused before the first update, not at the second chunk
    np.testing.assert_array_equal(model.layers[0].flat_params, before)


def test_fit_with_bptt_and_lengths_trains_the_live_rows_of_each_chunk():
    """fit's chunks with lengths: each chunk runs its live rows only, over their own
    steps; every update equals the masked update of the whole padded chunk (the loss
    sees valid steps only and the LSTM is causal), so the trained weights are equal."""
    rng = np.random.default_rng(4)
    N, T, k = 12, 9, 3
    x, y = rng.standard_normal((N, T, 2)), rng.standard_normal((N, T, 1))
    lengths = rng.integers(1, T + 1, N)
    lengths[:3] = [1, 3, 9]
    lengths[4:8] = [1, 2, 3, 2]       # a batch whose last two chunks have no live row

    def make():
        return clstm.Sequential([clstm.LSTM(2, 4, num_layers=2, dtype="float64", seed=5),
                                 clstm.Dense(4, 1, dtype="float64", seed=6)], loss="mse")
    fitted = make()
    lstm, calls = fitted.layers[0], []
    forward = lstm.forward

    def spy(x, state=None, *, lengths=None):
        calls.append((x.shape[1], None if lengths is None else list(lengths)))
        return forward(x, state, lengths=lengths)
    lstm.forward = spy
    fitted.fit(x, y, epochs=1, batch_size=4, bptt=k, lengths=lengths, shuffle=False,
               optimizer=clstm.SGD(fitted, lr=0.1), verbose=0)
    # the chunks ran their live rows only, over their own steps (lengths by batch:
    # [1, 3, 9, 7], [1, 2, 3, 2], [2, 9, 5, 1]); the second batch's later chunks not at all
    assert calls == [(4, [1, 3, 3, 3]), (2, [3, 3]), (2, [3, 1]),
                     (4, [1, 2, 3, 2]),
                     (4, [2, 3, 3, 1]), (2, [3, 2]), (1, [3])]
    lstm.forward = forward
    by_hand = make()
    opt = clstm.SGD(by_hand, lr=0.1)
    for start in range(0, N, 4):
        xb = np.ascontiguousarray(x[start:start + 4].swapaxes(0, 1))
        yb = y[start:start + 4].swapaxes(0, 1)
        mask = clstm.lengths_to_mask(lengths[start:start + 4], T)
        state = None
        for t in range(0, T, k):          # the whole padded chunk, the loss masked
            by_hand.zero_grad()
            out, state = by_hand.forward(xb[t:t + k], state)
            if not mask[t:t + k].any():
                continue
            _, dout = clstm.mse(out, yb[t:t + k], mask=mask[t:t + k])
            by_hand.backward(dout)
            opt.step()
    for name, p in fitted.params.items():
        np.testing.assert_allclose(p, by_hand.params[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)
