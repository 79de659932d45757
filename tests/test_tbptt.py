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
