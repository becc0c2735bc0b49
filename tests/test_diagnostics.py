"""The Gram's spectrum, ||J - J_0||_2, the stability constant C' and the callback, each
against dense numpy computations on Jacobians built by a plain loop of tape.gradient."""

import glob
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk import diagnostics


def loop_jacobian(model, x):
    """f (N, K) and J (N K, P) float64, one tape.gradient per (example, output).

    Rows are ordered (example, output), columns follow model.trainable_variables.
    """
    rows, outputs = [], []
    for i in range(len(x)):
        for k in range(int(np.prod(model.output_shape[1:]))):
            with tf.GradientTape() as tape:
                f = tf.reshape(model(x[i : i + 1], training=False), (-1,))
                f_k = f[k]
            gradients = tape.gradient(f_k, model.trainable_variables,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
            rows.append(np.concatenate([g.numpy().ravel() for g in gradients]).astype(np.float64))
        outputs.append(f.numpy().astype(np.float64))
    return np.array(outputs), np.array(rows)


def _tiny(architecture="mlp", seed=0, width=6, outputs=2, examples=5):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if architecture == "mlp":
        model = keras_ntk.models.mlp(width, 2, outputs, input_shape=(3,))
        x = rng.normal(size=(examples, 3)).astype(np.float32)
    else:
        model = keras_ntk.models.cnn(width, 1, outputs, input_shape=(3, 3, 2), pooling="flatten")
        x = rng.normal(size=(examples, 3, 3, 2)).astype(np.float32)
    return model, x


def _perturb(model, scale, seed):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(v.numpy() + scale * rng.normal(size=v.shape).astype(np.float32))


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_gram_spectrum_equals_numpy_eigenvalues_of_the_brute_force_gram(architecture):
    model, x = _tiny(architecture)
    _, jac = loop_jacobian(model, x)
    eigenvalues = np.linalg.eigvalsh(jac @ jac.T)
    np.testing.assert_allclose(diagnostics.gram_matrix(model, x).numpy(), jac @ jac.T,
                               rtol=1e-5, atol=1e-6 * eigenvalues[-1])
    spectrum = diagnostics.gram_spectrum(model, x)
    assert spectrum.size == jac.shape[0]
    assert spectrum.lambda_min == pytest.approx(eigenvalues[0], rel=1e-4)
    assert spectrum.lambda_max == pytest.approx(eigenvalues[-1], rel=1e-6)
    assert spectrum.condition_number == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-4)
    assert spectrum.positive_definite


def test_a_gram_with_more_rows_than_parameters_is_not_positive_definite():
    keras.utils.set_random_seed(0)
    model = keras_ntk.models.mlp(1, 1, 1, input_shape=(2,))  # P = 2 + 1 + 1 + 1 = 5
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    spectrum = diagnostics.gram_spectrum(model, x)
    assert abs(spectrum.lambda_min) < 1e-12 * spectrum.lambda_max
    assert not spectrum.positive_definite
    with pytest.raises(ValueError, match="square"):
        diagnostics.spectrum(np.zeros((2, 3)))


def test_lanczos_finds_the_largest_eigenvalue_of_a_dense_matrix():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 25))
    matrix = a @ a.T
    largest = np.linalg.eigvalsh(matrix)[-1]
    assert diagnostics.largest_eigenvalue(lambda v: matrix @ v, 40) == pytest.approx(largest, rel=1e-6)
    assert diagnostics.largest_eigenvalue(lambda v: matrix @ v, 40, max_iterations=40) == pytest.approx(
        largest, rel=1e-10)
    assert diagnostics.largest_eigenvalue(lambda v: 0 * v, 5) == 0.0


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_jacobian_distance_equals_the_spectral_norm_of_brute_force_jacobians(architecture):
    model, x = _tiny(architecture, seed=1)
    theta_0 = [v.numpy() for v in model.trainable_variables]
    _, jac_0 = loop_jacobian(model, x)
    assert diagnostics.jacobian_distance(model, theta_0, x) == pytest.approx(0.0, abs=1e-5)
    _perturb(model, 0.3, seed=2)
    _, jac = loop_jacobian(model, x)
    expected = np.linalg.norm(jac - jac_0, 2)
    assert diagnostics.jacobian_distance(model, theta_0, x) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="one array per trainable variable"):
        diagnostics.jacobian_distance(model, theta_0[:-1], x)


def test_stability_tracker_equals_dense_numpy_along_a_trajectory():
    model, x = _tiny(seed=3)
    y = np.random.default_rng(4).normal(size=(len(x), 2))
    f_0, jac_0 = loop_jacobian(model, x)
    gram_0 = jac_0 @ jac_0.T
    lambda_0 = np.linalg.eigvalsh(gram_0)[0]
    radius = 3 * np.linalg.norm(y - f_0) / math.sqrt(lambda_0)
    theta_0 = [v.numpy() for v in model.trainable_variables]
    tracker = diagnostics.JacobianStability(model, x, y)
    assert tracker.radius == pytest.approx(radius, rel=1e-4)
    assert tracker.initial.lambda_min == pytest.approx(lambda_0, rel=1e-4)

    # two iterates inside the ball, then one far outside it: it must not count in C'
    largest_inside = 0.0
    for scale, seed in ((0.05, 5), (0.1, 6), (50.0, 7)):
        _perturb(model, scale, seed)
        f_t, jac_t = loop_jacobian(model, x)
        distance = math.sqrt(sum(np.sum((v.numpy() - t) ** 2) for v, t in zip(model.trainable_variables, theta_0)))
        jacobian_distance = np.linalg.norm(jac_t - jac_0, 2)
        if distance <= radius:
            largest_inside = max(largest_inside, jacobian_distance)
        record = tracker.measure()
        assert record.inside_ball == (distance <= radius)
        assert record.parameter_distance == pytest.approx(distance, rel=1e-5)
        assert record.jacobian_distance == pytest.approx(jacobian_distance, rel=1e-4)
        assert record.stability_constant == pytest.approx(3 * largest_inside / math.sqrt(lambda_0), rel=1e-4)
        assert record.lambda_min == pytest.approx(np.linalg.eigvalsh(jac_t @ jac_t.T)[0], rel=1e-3, abs=1e-9)
        gram_t = jac_t @ jac_t.T
        assert record.ntk_change == pytest.approx(np.linalg.norm(gram_t - gram_0) / np.linalg.norm(gram_0), rel=1e-4)
        assert record.loss == pytest.approx(0.5 * np.sum((f_t - y) ** 2) / len(x), rel=1e-5)
    assert not record.inside_ball
    assert tracker.stability_constant == pytest.approx(3 * largest_inside / math.sqrt(lambda_0), rel=1e-4)
    assert tracker.conditions() == {
        "lambda_min_positive": True,
        "jacobian_stable": 3 * largest_inside / math.sqrt(lambda_0) <= 0.5,
    }


class _WeightsAtEpochEnd(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([v.numpy() for v in self.model.trainable_variables])


def test_callback_records_equal_direct_computations_in_history_and_tensorboard(tmp_path):
    model, x = _tiny(seed=8, examples=6)
    y = np.random.default_rng(9).normal(size=(len(x), 2)).astype(np.float32)
    f_0, jac_0 = loop_jacobian(model, x[:4])
    lambda_0 = np.linalg.eigvalsh(jac_0 @ jac_0.T)[0]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = diagnostics.StabilityCallback(x[:4], y[:4], log_dir=tmp_path / "tb")
    weights = _WeightsAtEpochEnd()
    history = model.fit(x, y, epochs=3, batch_size=3, verbose=0, callbacks=[callback, weights])

    largest = 0.0
    for epoch, values in enumerate(weights.weights):
        model.set_weights(values)
        f_t, jac_t = loop_jacobian(model, x[:4])
        distance = np.linalg.norm(jac_t - jac_0, 2)
        largest = max(largest, distance)  # small SGD steps stay inside the ball (checked below)
        assert history.history["inside_ball"][epoch] == 1.0
        assert history.history["jacobian_distance"][epoch] == pytest.approx(distance, rel=1e-4)
        assert history.history["stability_constant"][epoch] == pytest.approx(
            3 * largest / math.sqrt(lambda_0), rel=1e-4)
        assert history.history["gram_lambda_min"][epoch] == pytest.approx(
            np.linalg.eigvalsh(jac_t @ jac_t.T)[0], rel=1e-3)
        gram_0, gram_t = jac_0 @ jac_0.T, jac_t @ jac_t.T
        assert history.history["ntk_change"][epoch] == pytest.approx(
            np.linalg.norm(gram_t - gram_0) / np.linalg.norm(gram_0), rel=1e-4)
        assert history.history["diagnostic_loss"][epoch] == pytest.approx(
            0.5 * np.sum((f_t - y[:4]) ** 2) / 4, rel=1e-5)
    assert len(history.history["loss"]) == 3

    written = {}
    for path in glob.glob(str(tmp_path / "tb" / "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                written.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
                assert value.metadata.plugin_data.plugin_name == "scalars"
    assert sorted(written["jacobian_distance"]) == [0, 1, 2]
    np.testing.assert_allclose([written["stability_constant"][e] for e in range(3)],
                               history.history["stability_constant"], rtol=1e-6)
    with pytest.raises(ValueError, match="every must be a positive int"):
        diagnostics.StabilityCallback(x, y, every=0)
