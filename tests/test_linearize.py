"""LinearizedModel against brute-force f0 + J0 dtheta, and against the real network."""

import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.linearize import LinearizedModel


def _jacobian(model, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        f = model(x)
    jacobians = tape.jacobian(f, model.trainable_variables)
    n, k = f.shape
    return f.numpy(), np.concatenate([j.numpy().reshape(n, k, -1) for j in jacobians], axis=-1)


def test_linearized_model_equals_brute_force_taylor_expansion():
    keras.utils.set_random_seed(0)
    model = keras_ntk.models.cnn(4, 2, 3, input_shape=(5, 5, 2))
    x = np.random.default_rng(0).normal(size=(4, 5, 5, 2)).astype(np.float32)
    f0, jac = _jacobian(model, x)
    linear = LinearizedModel(model)
    np.testing.assert_allclose(linear(x).numpy(), f0, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(1)
    deltas = [0.05 * rng.normal(size=v.shape).astype(np.float32) for v in linear.theta]
    for v, d in zip(linear.theta, deltas):
        v.assign(v.numpy() + d)
    expected = f0 + jac @ np.concatenate([d.ravel() for d in deltas])
    np.testing.assert_allclose(linear(x).numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # the original model is untouched
    np.testing.assert_array_equal(model(x).numpy(), f0)


def _train_pair(width, steps=30):
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(2).normal(size=(16, 3)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True))
    model = keras_ntk.models.mlp(width, 2, 1, input_shape=(3,))
    linear = LinearizedModel(model)
    for m in (model, linear):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        m.fit(x, y, epochs=steps, batch_size=16, verbose=0)
    x_test = np.random.default_rng(3).normal(size=(32, 3)).astype(np.float32)
    real, lin = model(x_test).numpy(), linear(x_test).numpy()
    start = linear.model_at_init(x_test).numpy()
    return np.linalg.norm(real - lin) / np.linalg.norm(real - start)


@pytest.mark.slow  # 8 s; the linearization itself is checked exactly above
def test_linearized_training_tracks_the_wide_network():
    """Gap between network and linearization, relative to how far training moved
    the network; it shrinks with width (kernel regime) and is small when wide."""
    narrow, wide = _train_pair(32), _train_pair(2048)
    assert wide < 0.1, wide
    assert wide < 0.5 * narrow, (narrow, wide)


def test_linearized_ntk_is_the_ntk_at_theta_0_for_every_theta_and_skips_frozen_layers():
    """J_0 J_0^T from a loop of tape.gradient calls on the linearized model itself, after
    moving theta; a frozen layer of the original network contributes nothing."""
    from references import loop_jacobian

    keras.utils.set_random_seed(2)
    model = keras_ntk.models.mlp(6, 2, 2, input_shape=(3,))
    model.get_layer("dense_0").trainable = False
    x = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    linear = LinearizedModel(model)
    count = len(linear.trainable_variables)
    rng = np.random.default_rng(5)
    for v in linear.theta:
        v.assign(v.numpy() + 0.3 * rng.normal(size=v.shape).astype(np.float32))
    j = loop_jacobian(linear, x)
    expected = np.einsum("ikp,jlp->ijkl", j, j)
    np.testing.assert_allclose(linear.ntk(x, output="full").numpy(), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(linear.ntk(x, x[:2], output="trace").numpy(),
                               np.einsum("ijkk->ij", expected[:, :2]) / 2, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    assert len(linear.trainable_variables) == count
    assert count == len(model.trainable_variables) == 4
