"""Validation of user input by clstm.LSTM.

Rules protected here (the lead's contract):

* bad shapes, sizes and constructor values raise ValueError;
* non-numeric data (complex, object, str) raises TypeError;
* integer and bool arrays are converted to the layer's dtype, and so are
  float64 arrays given to a float32 layer (and float32 to float64);
* non-contiguous arrays (slices, transposes, Fortran order) are accepted and
  give exactly the contiguous result.

Every error must come from clstm's own validation, not from deep inside NumPy or
a Cython buffer: the message is matched against words clstm's messages use
("expected", "must", "got", or the argument's name) and must not read like an
internal error.
"""

import contextlib

import numpy as np
import pytest

import clstm

T, B, I, H, L = 3, 2, 4, 5, 2

# a word from clstm's messages ("expected (T, B, 4), got ...", "... must be ..., got ...")
WORDING = r"(?i)expected|must|got"
# phrases of errors raised by NumPy / Cython internals instead of by clstm's validation
INTERNAL = ("buffer", "could not broadcast", "cannot reshape", "matmul", "operands",
            "not enough values to unpack", "too many values to unpack")


@contextlib.contextmanager
def raises(exc, match=WORDING):
    with pytest.raises(exc, match=match) as info:
        yield info
    msg = str(info.value).lower()
    assert not any(phrase in msg for phrase in INTERNAL), f"not clstm's own validation: {msg!r}"


def make_net(dtype="float64", peephole=False, **kwargs):
    net = clstm.LSTM(I, H, L, dtype=dtype, peephole=peephole, seed=0, **kwargs)
    rng = np.random.default_rng(0)
    for name in sorted(net.params):
        net.params[name][...] = rng.uniform(-0.5, 0.5, net.params[name].shape)
    return net


def data(dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, B, I)).astype(dtype)
    state = (rng.normal(size=(L, B, H)).astype(dtype), rng.normal(size=(L, B, H)).astype(dtype))
    dy = rng.normal(size=(T, B, H)).astype(dtype)
    dstate = (rng.normal(size=(L, B, H)).astype(dtype), rng.normal(size=(L, B, H)).astype(dtype))
    return x, state, dy, dstate


def forward_backward(net, x, state, dy, dstate):
    net.zero_grad()
    y, (h_n, c_n) = net.forward(x, state)
    dx, (dh0, dc0) = net.backward(dy, dstate)
    return [np.array(a) for a in (y, h_n, c_n, dx, dh0, dc0, net.flat_grads)]


def assert_all_equal(got, want):
    names = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "flat_grads")
    for name, a, b in zip(names, got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)


# --------------------------------------------------------------------------
# constructor


@pytest.mark.parametrize("hidden_size", [0, -1, -4])
def test_constructor_rejects_non_positive_hidden_size(hidden_size):
    with raises(ValueError, match="hidden_size"):
        clstm.LSTM(3, hidden_size)


@pytest.mark.parametrize("input_size", [0, -2])
def test_constructor_rejects_non_positive_input_size(input_size):
    with raises(ValueError, match="input_size"):
        clstm.LSTM(input_size, 3)


@pytest.mark.parametrize("num_layers", [0, -1])
def test_constructor_rejects_non_positive_num_layers(num_layers):
    with raises(ValueError, match="num_layers"):
        clstm.LSTM(3, 4, num_layers)


def test_constructor_rejects_non_integer_sizes():
    with raises(TypeError, match="hidden_size: expected an int"):
        clstm.LSTM(3, 2.5)


def test_constructor_accepts_numpy_integer_sizes():
    net = clstm.LSTM(np.int64(3), np.int32(4), np.int64(2), dtype="float64")
    assert net.params["weight_hh_l1"].shape == (16, 4)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_constructor_rejects_dropout_outside_zero_one(dropout):
    with raises(ValueError, match="dropout"):
        clstm.LSTM(3, 4, 2, dropout=dropout)


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex128", "banana"])
def test_constructor_rejects_unknown_or_unsupported_dtype(dtype):
    with raises(ValueError, match="dtype: expected 'float32' or 'float64'"):
        clstm.LSTM(3, 4, dtype=dtype)


# --------------------------------------------------------------------------
# forward: x


@pytest.mark.parametrize("shape", [(I,), (1, T, B, I), (T, B, I, 1)], ids=["1-D", "4-D", "4-D-tail"])
def test_forward_rejects_wrong_ndim(shape):
    with raises(ValueError):
        make_net().forward(np.zeros(shape))


@pytest.mark.parametrize("shape", [(T, B, I + 1), (T, B, I - 1), (T, I + 1)])
def test_forward_rejects_feature_size_mismatch(shape):
    with raises(ValueError):
        make_net().forward(np.zeros(shape))


@pytest.mark.parametrize("shape", [(0, B, I), (T, 0, I), (0, I)], ids=["T=0", "B=0", "unbatched-T=0"])
def test_forward_rejects_size_zero(shape):
    with raises(ValueError, match=WORDING + "|empty|zero"):
        make_net().forward(np.zeros(shape))


@pytest.mark.parametrize("make_x", [
    lambda x: x.astype(np.complex128),
    lambda x: x.astype(object),
    lambda x: x.astype(str),
    lambda x: "not an array",
], ids=["complex", "object", "str-array", "string"])
def test_forward_rejects_non_real_input_with_type_error(make_x):
    x, _, _, _ = data()
    with raises(TypeError):
        make_net().forward(make_x(x))


# --------------------------------------------------------------------------
# forward: state


@pytest.mark.parametrize("shape", [(L, B + 1, H), (L + 1, B, H), (L, B, H + 1), (B, H), (1, L, B, H)])
@pytest.mark.parametrize("which", ["h0", "c0"])
def test_forward_rejects_state_of_wrong_shape(shape, which):
    x, (h0, c0), _, _ = data()
    bad = np.zeros(shape)
    state = (bad, c0) if which == "h0" else (h0, bad)
    with raises(ValueError):
        make_net().forward(x, state)


def test_forward_rejects_unbatched_state_for_unbatched_input_of_wrong_shape():
    x, _, _, _ = data()
    with raises(ValueError):
        make_net().forward(x[:, 0], (np.zeros((L, B, H)), np.zeros((L, B, H))))


@pytest.mark.parametrize("make_state", [
    lambda h0, c0: (h0,),
    lambda h0, c0: (h0, c0, c0),
    lambda h0, c0: "hc",
    lambda h0, c0: 3.0,
    lambda h0, c0: np.stack([h0, c0, c0]),
], ids=["1-tuple", "3-tuple", "string", "float", "stacked-array-of-3"])
def test_forward_rejects_state_that_is_not_a_pair(make_state):
    x, (h0, c0), _, _ = data()
    with raises(TypeError, match="state: expected a pair"):
        make_net().forward(x, make_state(h0, c0))


def test_forward_rejects_complex_state():
    x, (h0, c0), _, _ = data()
    with raises(TypeError):
        make_net().forward(x, (h0.astype(np.complex128), c0))


# --------------------------------------------------------------------------
# backward


def test_backward_before_forward_raises():
    _, _, dy, _ = data()
    # the same exception as every other layer's backward before its forward
    with raises(ValueError, match="expected a forward pass"):
        make_net().backward(dy)


@pytest.mark.parametrize("shape", [(T, B, H + 1), (T + 1, B, H), (T, B + 1, H), (T, B), (T, B, H, 1)])
def test_backward_rejects_dy_of_wrong_shape(shape):
    net = make_net()
    x, _, _, _ = data()
    net.forward(x)
    with raises(ValueError):
        net.backward(np.zeros(shape))


@pytest.mark.parametrize("shape", [(L, B, H + 1), (L - 1, B, H), (L, B + 1, H), (B, H)])
def test_backward_rejects_dstate_of_wrong_shape(shape):
    net = make_net()
    x, _, dy, (dh, dc) = data()
    net.forward(x)
    with raises(ValueError):
        net.backward(dy, (dh, np.zeros(shape)))
    net.forward(x)
    with raises(ValueError):
        net.backward(dy, (np.zeros(shape), dc))


def test_backward_rejects_dstate_that_is_not_a_pair():
    net = make_net()
    x, _, dy, (dh, dc) = data()
    net.forward(x)
    with raises(TypeError, match="dstate: expected a pair"):
        net.backward(dy, (dh,))
    net.forward(x)
    with raises(TypeError, match="dstate: expected a pair"):
        net.backward(dy, "dh")


def test_backward_rejects_complex_dy():
    net = make_net()
    x, _, dy, _ = data()
    net.forward(x)
    with raises(TypeError):
        net.backward(dy.astype(np.complex128))


def test_failed_backward_leaves_grads_untouched():
    net = make_net()
    x, _, dy, _ = data()
    net.forward(x)
    with raises(ValueError):
        net.backward(np.zeros((T, B, H + 1)))
    assert np.all(net.flat_grads == 0)


# --------------------------------------------------------------------------
# conversions that are allowed


@pytest.mark.parametrize("net_dtype", ["float32", "float64"])
@pytest.mark.parametrize("in_dtype", [np.int64, np.int32, np.bool_])
def test_integer_and_bool_input_is_converted_to_layer_dtype(net_dtype, in_dtype):
    net = make_net(net_dtype)
    x = np.random.default_rng(2).integers(-3, 4, size=(T, B, I)).astype(in_dtype)
    y, (h_n, _) = net.forward(x)
    assert y.dtype == h_n.dtype == np.dtype(net_dtype)
    want, _ = net.forward(x.astype(net_dtype))
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("net_dtype,in_dtype", [("float32", np.float64), ("float64", np.float32)])
def test_float_input_of_other_precision_is_converted(net_dtype, in_dtype):
    net = make_net(net_dtype)
    x, state, dy, dstate = data(dtype=in_dtype)
    got = forward_backward(net, x, state, dy, dstate)
    assert got[0].dtype == got[3].dtype == np.dtype(net_dtype)
    conv = (lambda a: a.astype(net_dtype))
    want = forward_backward(net, conv(x), tuple(map(conv, state)), conv(dy), tuple(map(conv, dstate)))
    assert_all_equal(got, want)


# --------------------------------------------------------------------------
# non-contiguous arrays


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_strided_slices_give_the_contiguous_result(dtype):
    net = make_net(dtype, peephole=True)
    rng = np.random.default_rng(3)
    big_x = rng.normal(size=(T, 2 * B, I)).astype(dtype)
    big_s = [rng.normal(size=(L, 2 * B, H)).astype(dtype) for _ in range(2)]
    big_dy = rng.normal(size=(T, 2 * B, H)).astype(dtype)
    big_ds = [rng.normal(size=(L, 2 * B, H)).astype(dtype) for _ in range(2)]
    x, dy = big_x[:, ::2], big_dy[:, ::2]
    state, dstate = tuple(s[:, ::2] for s in big_s), tuple(s[:, ::2] for s in big_ds)
    assert not x.flags.c_contiguous and not state[0].flags.c_contiguous
    got = forward_backward(net, x, state, dy, dstate)
    c = np.ascontiguousarray
    want = forward_backward(net, c(x), tuple(map(c, state)), c(dy), tuple(map(c, dstate)))
    assert_all_equal(got, want)


def test_transposed_and_fortran_arrays_give_the_contiguous_result():
    net = make_net(peephole=True)
    x, state, dy, dstate = data(seed=4)
    want = forward_backward(net, x, state, dy, dstate)
    x_t = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)     # a transposed view
    dy_f = np.asfortranarray(dy)
    state_f = tuple(np.asfortranarray(s) for s in state)
    assert not x_t.flags.c_contiguous and not dy_f.flags.c_contiguous
    got = forward_backward(net, x_t, state_f, dy_f, dstate)
    assert_all_equal(got, want)


def test_read_only_input_is_accepted():
    net = make_net()
    x, state, dy, dstate = data(seed=5)
    want = forward_backward(net, x, state, dy, dstate)
    for a in (x, *state, dy, *dstate):
        a.flags.writeable = False
    got = forward_backward(net, x, state, dy, dstate)
    assert_all_equal(got, want)
