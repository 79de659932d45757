"""clstm.io's Keras conversions against Keras itself: a Keras LSTM, GRU(reset_after=True),
stacked layers and Bidirectional(LSTM) with random weights, run by Keras on a random
batch, equal the clstm models built from their weights; and clstm's weights set into
Keras layers give Keras the clstm outputs. (tests/test_io.py checks the conversions
at the weight level without Keras.)

Keras runs on whichever backend is installed (KERAS_BACKEND; the test extra brings JAX).
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported, unless set
keras = pytest.importorskip("keras")

import clstm  # noqa: E402
from clstm.io import (gru_from_keras, gru_to_keras, lstm_from_keras,  # noqa: E402
                      lstm_from_keras_layers, lstm_to_keras, lstm_to_keras_layers)

TOL = dict(rtol=2e-4, atol=2e-5)  # float32, two libraries' summation orders


def _randomize(layer, rng, scale=0.4):
    layer.set_weights([rng.uniform(-scale, scale, w.shape).astype(np.float32)
                       for w in layer.get_weights()])


def _keras_model(layers, T, I, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(T, I), dtype="float32")
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, h)


def _clstm_batch_first(net, x):
    net.batch_first = True
    return net.forward(x)[0]


@pytest.mark.parametrize("use_bias", [True, False])
def test_lstm_layer_both_ways(use_bias):
    rng = np.random.default_rng(0)
    T, B, I, H = 9, 3, 5, 7
    layer = keras.layers.LSTM(H, return_sequences=True, use_bias=use_bias)
    model = _keras_model([layer], T, I, 0)
    _randomize(layer, rng)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    want = np.asarray(model(x))
    net = lstm_from_keras(*layer.get_weights())
    np.testing.assert_allclose(_clstm_batch_first(net, x), want, **TOL)
    # the other way: a clstm LSTM's weights into the Keras layer
    other = clstm.LSTM(I, H, bias=use_bias, seed=4)
    layer.set_weights(lstm_to_keras(other))
    np.testing.assert_allclose(np.asarray(model(x)), _clstm_batch_first(other, x), **TOL)


@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_layer_both_ways(use_bias):
    rng = np.random.default_rng(1)
    T, B, I, H = 8, 4, 6, 5
    layer = keras.layers.GRU(H, return_sequences=True, reset_after=True, use_bias=use_bias)
    model = _keras_model([layer], T, I, 1)
    _randomize(layer, rng)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    want = np.asarray(model(x))
    net = gru_from_keras(*layer.get_weights())
    np.testing.assert_allclose(_clstm_batch_first(net, x), want, **TOL)
    other = clstm.GRU(I, H, bias=use_bias, seed=5)
    layer.set_weights(gru_to_keras(other))
    np.testing.assert_allclose(np.asarray(model(x)), _clstm_batch_first(other, x), **TOL)


def test_gru_reset_before_is_refused():
    layer = keras.layers.GRU(4, return_sequences=True, reset_after=False)
    _keras_model([layer], 3, 2, 2)
    with pytest.raises(ValueError):
        gru_from_keras(*layer.get_weights())


def test_stacked_bidirectional_lstm_both_ways():
    """Bidirectional(LSTM) over Bidirectional(LSTM), merge_mode concat: Keras' backward
    layer becomes the reverse direction (its outputs re-reversed, as Keras does)."""
    rng = np.random.default_rng(2)
    T, B, I, H = 7, 3, 4, 6
    layers = [keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True)),
              keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True))]
    model = _keras_model(layers, T, I, 3)
    for layer in layers:
        _randomize(layer, rng)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    want = np.asarray(model(x))
    net = lstm_from_keras_layers(*[layer.get_weights() for layer in layers],
                                 bidirectional=True)
    assert net.bidirectional and net.num_layers == 2
    np.testing.assert_allclose(_clstm_batch_first(net, x), want, **TOL)
    other = clstm.LSTM(I, H, 2, bidirectional=True, seed=6)
    for layer, weights in zip(layers, lstm_to_keras_layers(other)):
        layer.set_weights(weights)
    np.testing.assert_allclose(np.asarray(model(x)), _clstm_batch_first(other, x), **TOL)


def test_stacked_unidirectional_lstm():
    rng = np.random.default_rng(3)
    T, B, I, H = 6, 2, 3, 5
    layers = [keras.layers.LSTM(H, return_sequences=True) for _ in range(3)]
    model = _keras_model(layers, T, I, 4)
    for layer in layers:
        _randomize(layer, rng)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    net = lstm_from_keras_layers(*[layer.get_weights() for layer in layers])
    np.testing.assert_allclose(_clstm_batch_first(net, x), np.asarray(model(x)), **TOL)


def test_other_merge_modes_are_refused():
    layer = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True),
                                       merge_mode="sum")
    _keras_model([layer], 4, 2, 5)
    with pytest.raises(ValueError):
        lstm_from_keras_layers(layer.get_weights(), bidirectional=True, merge_mode="sum")
