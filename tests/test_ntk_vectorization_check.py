"""The engine's check of TensorFlow's vectorized gradients, with a vectorization made wrong.

TensorFlow vectorizes each op of a loop body by a converter registered with
RegisterPFor (tensorflow/python/ops/parallel_for/pfor.py). The tests replace the
converter of SigmoidGrad (sigmoid's gradient op) by one that returns 1.5 times the
true value: every vectorized gradient through a sigmoid activation is then wrong,
and unvectorized gradients stay right, as with a real converter bug.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops.parallel_for import pfor

import keras_ntk
from references import brute_force_ntk
from test_ntk_loop_reference import assert_close, loop_ntk, reduce_output

RTOL = 1e-5


@pytest.fixture
def wrong_sigmoid_vectorization(monkeypatch):
    right = pfor._pfor_converter_registry["SigmoidGrad"]

    def wrong(pfor_input, *args, **kwargs):
        return [pfor.wrap(1.5 * t.t, t.is_stacked) for t in right(pfor_input, *args, **kwargs)]

    monkeypatch.setitem(pfor._pfor_converter_registry, "SigmoidGrad", wrong)


class Gain(keras.layers.Layer):
    """A layer without a structured rule: its parameters take the Jacobian path."""

    def build(self, shape):
        self.gain = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gain


def _sigmoid_model():
    """Gain (Jacobian path) and dense_0 (probed deltas) both behind a sigmoid."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((4,))
    h = Gain(name="gain")(inputs)
    h = keras.layers.Dense(8, activation="sigmoid", name="dense_0")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="readout")(h))


X = np.random.default_rng(6).normal(size=(5, 4)).astype(np.float32)


def test_the_injected_fault_corrupts_vectorized_gradients(wrong_sigmoid_vectorization):
    """Precondition of the tests below: tape.jacobian's kernel is far off, the loop is not."""
    model = _sigmoid_model()
    reference = loop_ntk(model, X)
    vectorized = brute_force_ntk(model, X)
    assert np.abs(vectorized - reference).max() > 0.05 * np.abs(reference).max()


@pytest.mark.parametrize("method", ["structured", "jacobian", "ntk_vp"])
def test_failing_layers_fall_back_to_unvectorized_gradients(method, wrong_sigmoid_vectorization):
    model = _sigmoid_model()
    reference = loop_ntk(model, X)
    ntk = keras_ntk.NTK(model, method=method)
    with pytest.warns(RuntimeWarning, match="vectorized gradients of .* disagree"):
        kernel = ntk(X)
    assert_close(kernel, reference, RTOL)
    if method == "ntk_vp":
        assert ntk.strategy.unvectorized
    else:  # the readout's gradients do not pass through the sigmoid
        assert set(ntk.strategy.feature_map.unvectorized) == {"gain", "dense_0"}
    if method == "ntk_vp":  # the diagonal has its own compiled products
        with pytest.warns(RuntimeWarning):
            diagonal = keras_ntk.NTK(model, method=method, output="diagonal")(X)
        assert_close(diagonal, reduce_output(reference, "diagonal"), RTOL)


def test_passing_layers_keep_vectorization():
    """Without a fault nothing falls back and nothing is reported."""
    model = _sigmoid_model()
    ntk = keras_ntk.NTK(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        kernel = ntk(X)
    assert ntk.strategy.feature_map.unvectorized == ()
    assert_close(kernel, loop_ntk(model, X), RTOL)


@tf.custom_gradient
def _batch_scaled_identity(x):
    def grad(dy):
        return dy * tf.cast(tf.shape(dy)[0], dy.dtype)

    return tf.identity(x), grad


class BatchScaledGradient(keras.layers.Layer):
    """Identity whose gradient is scaled by the batch size: per-example gradients
    that depend on the batch, which no unvectorized path can repair."""

    def call(self, x):
        return _batch_scaled_identity(x)


def test_a_layer_that_fails_unvectorized_too_raises_naming_it():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh", name="dense_0")(inputs)
    h = BatchScaledGradient()(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="readout")(h))
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="NTK of dense_0 disagrees"):
        keras_ntk.NTK(model)(X)
