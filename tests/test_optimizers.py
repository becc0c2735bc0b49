"""Natural gradient / damped Gauss-Newton: the step against dense numpy Gauss-Newton built
from brute-force Jacobians, the Levenberg-Marquardt rule, fit and custom loops, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk import diagnostics
from keras_ntk.optimizers import NaturalGradient, NaturalGradientModel

from test_diagnostics import loop_jacobian


def _tiny(architecture, outputs=3, seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if architecture == "mlp":
        model = keras_ntk.models.mlp(6, 2, outputs, input_shape=(4,))
        x = rng.normal(size=(5, 4)).astype(np.float32)
    else:
        model = keras_ntk.models.cnn(2, 1, outputs, input_shape=(4, 4, 1), pooling="flatten")
        x = rng.normal(size=(4, 4, 4, 1)).astype(np.float32)
    return model, x


def _dense_ggn_step(jac, g, hessian_blocks, damping, learning_rate):
    """-eta (J^T Lambda J + lambda I_P)^-1 J^T g in parameter space (P x P), float64."""
    lam = np.zeros((jac.shape[0],) * 2)
    k = hessian_blocks.shape[1]
    for i, block in enumerate(hessian_blocks):
        lam[i * k : (i + 1) * k, i * k : (i + 1) * k] = block
    p = jac.shape[1]
    return -learning_rate * np.linalg.solve(jac.T @ lam @ jac + damping * np.eye(p), jac.T @ g)


def _loss_derivatives(loss, f, y, w):
    """Output gradient (B K,) and Hessian blocks (B, K, K) of sum_i w_i l_i, in numpy."""
    if loss == "squared_error":
        return (w[:, None] * (f - y)).ravel(), w[:, None, None] * np.eye(f.shape[1])[None]
    p = np.exp(f - f.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    s = y.sum(1)
    blocks = np.stack([si * (np.diag(pi) - np.outer(pi, pi)) for si, pi in zip(s, p)])
    return (w[:, None] * (s[:, None] * p - y)).ravel(), w[:, None, None] * blocks


def _flat(tensors):
    return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])


def _targets(loss, shape, seed=1):
    y = np.random.default_rng(seed).normal(size=shape)
    if loss == "categorical_crossentropy":
        y = np.exp(y) / np.exp(y).sum(1, keepdims=True)
    return y.astype(np.float32)


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
@pytest.mark.parametrize("loss", ["squared_error", "categorical_crossentropy"])
def test_step_equals_dense_gauss_newton_from_brute_force_jacobians(loss, architecture):
    model, x = _tiny(architecture)
    y = _targets(loss, (len(x), 3))
    w = np.linspace(0.5, 1.5, len(x))
    f, jac = loop_jacobian(model, x)
    g, blocks = _loss_derivatives(loss, f, y.astype(np.float64), w)
    expected = _dense_ggn_step(jac, g, blocks, damping=0.3, learning_rate=0.7)

    ngd = NaturalGradient(model, loss, damping=0.3, learning_rate=0.7)
    step = _flat(ngd.direction(x, y, sample_weight=w))
    np.testing.assert_allclose(step, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    unweighted = _dense_ggn_step(jac, *_loss_derivatives(loss, f, y, np.ones(len(x))), 0.3, 0.7)
    np.testing.assert_allclose(_flat(ngd.direction(x, y)), unweighted, rtol=0,
                               atol=1e-5 * np.abs(unweighted).max())


def test_levenberg_marquardt_keeps_a_good_step_and_undoes_a_bad_one():
    """rho = actual / predicted decrease, the prediction from the dense GGN quadratic model."""
    model, x = _tiny("mlp")
    y = _targets("squared_error", (len(x), 3))
    theta_0 = [v.numpy() for v in model.trainable_variables]
    f, jac = loop_jacobian(model, x)
    g, blocks = _loss_derivatives("squared_error", f, y, np.ones(len(x)))
    loss_0 = 0.5 * np.sum((f - y) ** 2)

    ngd = NaturalGradient(model, damping=0.5, learning_rate=1.0, damping_factor=3.0)
    result = ngd.step(x, y)
    step = _dense_ggn_step(jac, g, blocks, 0.5, 1.0)
    predicted = g @ (jac @ step) + 0.5 * np.sum((jac @ step) ** 2)
    f_new = model(x).numpy().astype(np.float64)
    actual = 0.5 * np.sum((f_new - y) ** 2) - loss_0
    assert float(result["accepted"]) == 1.0
    assert float(result["loss"]) == pytest.approx(loss_0 / len(x), rel=1e-6)
    assert float(result["rho"]) == pytest.approx(actual / predicted, rel=1e-3)
    np.testing.assert_allclose(_flat(model.trainable_variables) - _flat(theta_0), step, atol=1e-5)
    rho = actual / predicted
    expected_damping = 0.5 * 3.0 if rho < 0.25 else 0.5 / 3.0 if rho > 0.75 else 0.5
    assert float(ngd.damping) == pytest.approx(expected_damping)

    before = [v.numpy() for v in model.trainable_variables]
    ngd.damping.assign(1e-4)
    ngd.learning_rate.assign(40.0)  # far past the minimum of the quadratic model: the loss rises
    result = ngd.step(x, y)
    assert float(result["accepted"]) == 0.0 and float(result["rho"]) < 0
    for variable, value in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert float(ngd.damping) == pytest.approx(3e-4)


def test_fixed_damping_keeps_every_step_and_its_lambda():
    model, x = _tiny("mlp")
    y = _targets("squared_error", (len(x), 3))
    ngd = NaturalGradient(model, damping=0.2, adaptive_damping=False, learning_rate=40.0)
    result = ngd.step(x, y)
    assert float(result["accepted"]) == 1.0 and np.isnan(float(result["rho"]))
    assert float(ngd.damping) == 0.2


def test_ngd_reaches_the_loss_threshold_in_far_fewer_steps_than_gradient_descent():
    """A wide one-hidden-layer net (P = 1025 >> N = 12) on a smooth 2-D target.

    GD on L = 1/(2N) sum ||r||^2 shrinks the residual along G's eigenvector i by
    |1 - eta s_i / N| per step, so its progress is limited by G's conditioning
    (kappa ~ 800 here) even at its best learning rate from a grid around the
    stability limit 2N / lambda_max; NGD with small damping shrinks every mode by
    lambda / (s_i + lambda) ~ 0 and needs a step or two of a near-linear model. We
    assert at most 3 NGD steps and at least 10 times as many GD steps (about 45x
    was observed: 2 vs 90)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 12
    x = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    y = (np.sin(2 * x[:, :1]) + x[:, 1:] ** 2).astype(np.float32)
    model = keras_ntk.models.mlp(256, 1, 1, input_shape=(2,))
    theta_0 = model.get_weights()
    spectrum = diagnostics.gram_spectrum(model, x)
    assert spectrum.condition_number > 100

    def loss():
        return 0.5 * np.mean(np.sum((model(x).numpy() - y) ** 2, axis=1))

    threshold = 1e-3 * loss()
    ngd = NaturalGradient(model, damping=1e-3 * spectrum.lambda_max / n)
    ngd_steps = next(t for t in range(1, 11) if (ngd.step(x, y), loss())[1] <= threshold)

    x_t, y_t = tf.constant(x), tf.constant(y)
    gd_steps = []
    for fraction in (0.5, 1.0, 1.9):
        model.set_weights(theta_0)
        optimizer = keras.optimizers.SGD(fraction * n / spectrum.lambda_max)

        @tf.function
        def run(count):
            for _ in tf.range(count):
                with tf.GradientTape() as tape:
                    value = 0.5 * tf.reduce_mean(tf.reduce_sum((model(x_t) - y_t) ** 2, axis=1))
                gradients = tape.gradient(value, model.trainable_variables)
                optimizer.apply_gradients(zip(gradients, model.trainable_variables))

        steps = 0
        while loss() > threshold and steps < 2000:
            run(tf.constant(5))
            steps += 5
        gd_steps.append(steps)
    assert ngd_steps <= 3
    assert min(gd_steps) >= 10 * ngd_steps, (ngd_steps, gd_steps)


def test_fit_takes_the_same_steps_as_the_custom_loop_and_reports_validation():
    model_a, x = _tiny("mlp", seed=3)
    model_b, _ = _tiny("mlp", seed=3)
    y = _targets("squared_error", (len(x), 3))
    x_val, y_val = x[:3] + 0.1, y[:3]

    loop = NaturalGradient(model_a, damping=0.5)
    losses = [float(loop.step(x, y)["loss"]) for _ in range(3)]

    wrapped = NaturalGradientModel(model_b, damping=0.5)
    wrapped.compile(metrics=["mae"])
    history = wrapped.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0,
                          validation_data=(x_val, y_val))
    np.testing.assert_allclose(_flat(model_b.trainable_variables), _flat(model_a.trainable_variables),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)
    assert history.history["damping"][-1] == pytest.approx(float(loop.damping))
    f_val = model_b(x_val).numpy().astype(np.float64)
    assert history.history["val_loss"][-1] == pytest.approx(
        0.5 * np.mean(np.sum((f_val - y_val) ** 2, axis=1)), rel=1e-5)
    assert history.history["val_mae"][-1] == pytest.approx(np.mean(np.abs(f_val - y_val)), rel=1e-5)


def test_step_runs_inside_a_user_tf_function_and_saved_wrappers_reload(tmp_path):
    model, x = _tiny("mlp", seed=4)
    twin, _ = _tiny("mlp", seed=4)
    y = _targets("squared_error", (len(x), 3))
    ngd, reference = NaturalGradient(model, damping=0.5), NaturalGradient(twin, damping=0.5)

    @tf.function
    def user_loop():
        for _ in tf.range(2):
            ngd.apply(x, y)

    user_loop()
    reference.step(x, y)
    reference.step(x, y)
    np.testing.assert_allclose(_flat(model.trainable_variables), _flat(twin.trainable_variables), atol=1e-6)

    wrapped = NaturalGradientModel(model, loss="squared_error", damping=0.25)
    wrapped.compile()
    wrapped.save(tmp_path / "ngd.keras")
    loaded = keras.models.load_model(tmp_path / "ngd.keras")
    assert isinstance(loaded, NaturalGradientModel) and float(loaded.natural_gradient.damping) == 0.25
    np.testing.assert_allclose(loaded.predict(x, verbose=0), wrapped.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(damping=0.0), "damping must be a positive number.*lambda > 0"),
        (dict(damping=-1.0), "damping must be a positive number"),
        (dict(learning_rate=0.0), "learning_rate must be a positive number"),
        (dict(loss="mse"), "loss must be one of.*squared_error.*Hessian"),
        (dict(loss="hinge"), "loss must be one of"),
        (dict(damping_factor=1.0), "damping_factor must be > 1"),
        (dict(damping=1e9), r"must lie in \[min_damping, max_damping\]"),
        (dict(gram_dtype="float16"), "gram_dtype must be"),
    ],
)
def test_bad_arguments_raise_value_errors_that_say_what_to_do(arguments, message):
    model, _ = _tiny("mlp")
    with pytest.raises(ValueError, match=message):
        NaturalGradient(model, **arguments)


def test_models_without_trainable_parameters_and_bad_targets_or_compiles_are_refused():
    model, x = _tiny("mlp")
    model.trainable = False
    with pytest.raises(ValueError, match="no trainable variables.*trainable = True"):
        NaturalGradient(model)
    model.trainable = True
    with pytest.raises(ValueError, match="built model"):
        NaturalGradient(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="y must have 3 values per example"):
        NaturalGradient(model).direction(x, np.zeros((len(x), 2), np.float32))
    wrapped = NaturalGradientModel(model)
    with pytest.raises(ValueError, match="without an optimizer"):
        wrapped.compile(optimizer="adam")
    with pytest.raises(ValueError, match="without `loss`"):
        wrapped.compile(loss="mse")
    with pytest.raises(ValueError, match="XLA.*jit_compile=False"):
        wrapped.compile(jit_compile=True)


def test_the_package_docstring_lists_the_optimization_bandit_and_continual_modules():
    """`help(keras_ntk)` is where users find the modules issues 11-13 added."""
    import importlib

    for name in ("optimizers", "diagnostics", "bandits", "continual"):
        assert f"keras_ntk.{name}" in keras_ntk.__doc__ and name in keras_ntk._SUBMODULES
        assert importlib.import_module(f"keras_ntk.{name}") is getattr(keras_ntk, name)
