"""The unvectorized brute-force NTK used by the engine's tests, checked by finite differences.

tape.jacobian and tf.vectorized_map go through TensorFlow's automatic vectorization
(pfor), which is wrong for some layers (grouped convolutions), so the reference here
is references.loop_jacobian: a plain loop of tape.gradient calls, one per example
and output.
"""

import keras
import numpy as np
import tensorflow as tf

from references import loop_jacobian


def loop_ntk(model, x):
    """Brute-force NTK (N, N, K, K) float64: sum_p J[i, k, p] J[j, l, p] (`loop_jacobian`)."""
    j = loop_jacobian(model, x)
    return np.einsum("ikp,jlp->ijkl", j, j)


def reduce_output(full, output):
    """A reference output mode from a full (N, N, K, K) kernel."""
    if output == "full":
        return full
    if output == "trace":
        return np.einsum("ijkk->ij", full) / full.shape[-1]
    return np.einsum("iikl->ikl", full)


def assert_close(actual, expected, rtol):
    """|actual - expected| <= rtol * max |expected|, entrywise."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


def float64_copy(model):
    """The same network in float64 (layers rebuilt from their configs, weights copied)."""

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float64"})

    inputs = keras.Input(model.input_shape[1:], dtype="float64")
    copy = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _finite_difference_jacobian(model, x, h=1e-6):
    """Central differences of f(x) in every trainable parameter, (N, K, P) float64."""
    forward = tf.function(lambda inputs: model(inputs, training=False))
    x = tf.constant(x)
    columns = []
    for variable in model.trainable_variables:
        values = variable.numpy()
        for index in np.ndindex(values.shape):
            shifted = []
            for step in (h, -h):
                moved = values.copy()
                moved[index] += step
                variable.assign(moved)
                shifted.append(np.reshape(forward(x).numpy(), (x.shape[0], -1)))
            variable.assign(values)
            columns.append((shifted[0] - shifted[1]) / (2 * h))
    return np.stack(columns, axis=-1)


def test_loop_jacobian_equals_finite_differences_on_a_grouped_convolution():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3, 3, 4), dtype="float64")
    h = keras.layers.Conv2D(4, 2, groups=2, activation="tanh", dtype="float64")(inputs)
    h = keras.layers.Flatten(dtype="float64")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, dtype="float64")(h))
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4))
    expected = _finite_difference_jacobian(model, x)
    np.testing.assert_allclose(loop_jacobian(model, x), expected, rtol=1e-6, atol=1e-8)
