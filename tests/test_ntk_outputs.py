"""Every (method, output) pair for one and several outputs, against the loop reference."""

import keras
import numpy as np
import pytest

import keras_ntk
from test_ntk_loop_reference import assert_close, loop_ntk, reduce_output

RTOL = 1e-5


def _model(k):
    keras.utils.set_random_seed(8 + k)
    inputs = keras.Input((4, 4, 1))
    h = keras_ntk.layers.Conv2D(3, 2, activation="relu", b_std=0.1)(inputs)
    h = keras.layers.Flatten()(h)
    h = keras_ntk.layers.Dense(6, activation="tanh")(h)
    return keras.Model(inputs, keras_ntk.layers.Dense(k)(h))


MODELS = {k: _model(k) for k in (1, 3)}
X = np.random.default_rng(9).normal(size=(3, 4, 4, 1)).astype(np.float32)
REFERENCE = {k: loop_ntk(model, X) for k, model in MODELS.items()}


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("output", ["full", "trace", "diagonal"])
@pytest.mark.parametrize("method", ["structured", "jacobian", "ntk_vp"])
def test_method_and_output_equal_the_loop_reference(method, output, k):
    kernel = keras_ntk.empirical_ntk(MODELS[k], X, output=output, method=method)
    expected = reduce_output(REFERENCE[k], output)
    assert kernel.shape == expected.shape
    assert_close(kernel, expected, RTOL)
