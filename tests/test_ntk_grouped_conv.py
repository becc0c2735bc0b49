"""Grouped convolutions (Keras Conv2D with groups > 1) against the unvectorized loop reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk.ntk import rules
from references import loop_jacobian
from test_ntk_loop_reference import assert_close

RTOL = 1e-5


def _grouped_model():
    """An ungrouped conv whose deltas flow back through two grouped ones, then a readout."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(6, 3, groups=2, activation="tanh", name="grouped_2")(h)
    h = keras.layers.Conv2D(6, 2, groups=3, strides=2, padding="same", name="grouped_3")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


MODEL = _grouped_model()
X = np.random.default_rng(4).normal(size=(4, 5, 5, 2)).astype(np.float32)
JACOBIAN = loop_jacobian(MODEL, X)
FULL = np.einsum("ikp,jlp->ijkl", JACOBIAN, JACOBIAN)


def _layer_share(layer):
    """The loop reference's NTK over one layer's variables (its columns of the Jacobian)."""
    sizes = [int(np.prod(v.shape)) for v in MODEL.trainable_variables]
    starts = np.cumsum([0] + sizes)
    mine = {id(v) for v in layer.trainable_variables}
    columns = [
        np.arange(starts[i], starts[i + 1])
        for i, v in enumerate(MODEL.trainable_variables)
        if id(v) in mine
    ]
    j = JACOBIAN[:, :, np.concatenate(columns)]
    return np.einsum("ikp,jlp->ijkl", j, j)


@pytest.mark.parametrize("method", ["structured", "jacobian", "ntk_vp"])
def test_grouped_convolutions_equal_the_loop_reference(method):
    assert_close(keras_ntk.NTK(MODEL, method=method)(X), FULL, RTOL)


def test_grouped_layer_shares_and_the_structured_rule():
    """Each grouped layer gets a structured rule (no fall-back to unvectorized
    gradients) and its per-layer kernel is that layer's share of the reference."""
    ntk = keras_ntk.NTK(MODEL, per_layer=True)
    per_layer = ntk(X)
    feature_map = ntk.strategy.feature_map
    ruled = {r.name: r.groups for r in feature_map.rules}
    assert ruled["grouped_2"] == 2 and ruled["grouped_3"] == 3
    assert feature_map.unvectorized == ()
    for name in ("grouped_2", "grouped_3"):
        assert_close(per_layer[name], _layer_share(MODEL.get_layer(name)), RTOL)
    assert_close(sum(v.numpy() for v in per_layer.values()), FULL, RTOL)


def test_grouped_rule_computes_the_layers_pre_activation_and_gradients():
    """linear() by per-group convolutions equals Keras' grouped convolution, and
    gradients() from patches and deltas lays entries out as the kernel does."""
    layer = MODEL.get_layer("grouped_2")
    rule = rules.rule_for(layer)
    a = tf.constant(np.random.default_rng(5).normal(size=(2, 5, 5, 4)).astype(np.float32))
    np.testing.assert_allclose(layer.activation(rule.linear(a)), layer(a), rtol=1e-5, atol=1e-6)
    # with delta = e_k at every position, the kernel gradient is the patch sum per group
    delta = tf.ones((2, 1, 9, 6))
    grads = rule.gradients(rule.patches(a), delta).numpy()[:, 0]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(rule.linear(a[:1]))
    expected = tape.gradient(total, [layer.kernel.value, layer.bias.value])
    np.testing.assert_allclose(
        grads[0], np.concatenate([np.ravel(g.numpy()) for g in expected]), rtol=1e-5, atol=1e-5
    )
