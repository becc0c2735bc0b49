"""E1 and its optimizer: trust-region Newton against closed forms and finite differences,
the run's predictions and distances against numpy recomputations, the report's finding."""

import numpy as np
import pytest
import scipy.special

import keras_ntk
from keras_ntk.experiments import configs, e1_finite_vs_infinite, training
from references import loop_jacobian

NOISE = 0.01


def _data(n=12, outputs=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    y = np.sin(2 * x @ rng.normal(size=(2, outputs))).astype(np.float32)
    return x, y


def _mlp(width, depth, outputs, seed, **options):
    import keras

    keras.utils.set_random_seed(seed)
    return keras_ntk.models.mlp(width, depth, outputs, input_shape=(2,), **options)


def _numpy_mlp(model, weights, x):
    """float64 forward pass of a keras_ntk.models.mlp from its layers' scales and `weights`."""
    h = np.asarray(x, np.float64)
    dense = [layer for layer in model.layers if hasattr(layer, "weight_scale")]
    for i, layer in enumerate(dense):
        kernel, bias = weights[2 * i], weights[2 * i + 1]
        h = layer.weight_scale * h @ kernel + layer.bias_scale * bias
        if i < len(dense) - 1:
            h = scipy.special.erf(h)
    return h


def _numpy_loss(model, flat, x, y, flat_0):
    shapes = [w.shape for w in model.get_weights()]
    weights, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        weights.append(flat[start:start + size].reshape(shape))
        start += size
    residual = _numpy_mlp(model, weights, x) - y
    return 0.5 * np.sum(residual**2) + 0.5 * NOISE * np.sum((flat - flat_0) ** 2)


def _flat(model):
    return np.concatenate([w.ravel() for w in model.get_weights()]).astype(np.float64)


def _finite_difference_gradient(model, x, y, flat_0, step=1e-5):
    flat = _flat(model)
    gradient = np.empty_like(flat)
    for p in range(flat.size):
        e = np.zeros_like(flat)
        e[p] = step
        gradient[p] = (_numpy_loss(model, flat + e, x, y, flat_0) - _numpy_loss(model, flat - e, x, y, flat_0)) / (2 * step)
    return gradient


def test_newton_on_the_linearized_net_lands_on_the_closed_form_minimizer():
    """The quadratic's minimizer theta_0 + J_0^T (J_0 J_0^T + s^2 I)^-1 (y - f_0), J_0 from a
    loop of tape.gradient calls; two outputs, so the Gram has cross-output blocks."""
    x, y = _data(outputs=2)
    x_test, _ = _data(n=7, outputs=2, seed=1)
    model = _mlp(16, 2, 2, seed=0)
    linearized = keras_ntk.LinearizedModel(model)
    j = loop_jacobian(model, x).reshape(2 * len(x), -1)
    f_0 = model(x).numpy().astype(np.float64)
    delta = j.T @ np.linalg.solve(j @ j.T + NOISE * np.eye(len(j)), (y - f_0).ravel())
    fit = training.trust_region_newton(linearized, x, y, anchor_penalty=NOISE, tolerance=1e-5, max_steps=50)

    assert fit["converged"] and fit["stopped"] == "tolerance"
    theta = np.concatenate([v.numpy().ravel() for v in linearized.trainable_variables])
    np.testing.assert_allclose(theta - _flat(model), delta, atol=1e-4 * np.abs(delta).max())
    expected = model(x_test).numpy() + (loop_jacobian(model, x_test).reshape(14, -1) @ delta).reshape(7, 2)
    np.testing.assert_allclose(linearized(x_test).numpy(), expected, atol=1e-4 * np.abs(expected).max())
    # For the quadratic, ||grad|| bounds the distance to the minimizer on the training inputs.
    on_train = np.linalg.norm(linearized(x).numpy() - (f_0 + (j @ delta).reshape(f_0.shape)))
    assert on_train <= fit["gradient_norm"] / (2 * np.sqrt(NOISE)) + 1e-5


def test_newton_on_the_network_reports_the_loss_and_gradient_finite_differences_give():
    x, y = _data()
    model = _mlp(4, 1, 1, seed=3, activation="erf")
    flat_0 = _flat(model)
    initial_gradient = np.linalg.norm(_finite_difference_gradient(model, x, y, flat_0))

    early = training.trust_region_newton(model, x, y, anchor_penalty=NOISE, tolerance=1e-5, max_steps=2)
    assert not early["converged"] and early["stopped"] == "max_steps" and early["steps"] == 2
    assert early["initial_gradient_norm"] == pytest.approx(initial_gradient, rel=1e-4)
    assert early["loss"] == pytest.approx(_numpy_loss(model, _flat(model), x, y, flat_0), rel=1e-5)
    assert early["gradient_norm"] == pytest.approx(
        np.linalg.norm(_finite_difference_gradient(model, x, y, flat_0)), rel=1e-3
    )

    model = _mlp(4, 1, 1, seed=3, activation="erf")
    fit = training.trust_region_newton(model, x, y, anchor_penalty=NOISE, tolerance=1e-5, max_steps=300)
    assert fit["converged"] and fit["stopped"] == "tolerance"
    assert fit["gradient_norms"][-1] == fit["gradient_norm"] <= 1e-5 * fit["gradient_norms"][0]
    assert np.linalg.norm(_finite_difference_gradient(model, x, y, flat_0)) < 1e-4 * initial_gradient


def test_convergence_flag_follows_the_recorded_gradient_norms():
    x, y = _data()
    for max_steps in (1, 3, 300):
        model = _mlp(8, 1, 1, seed=5, activation="erf")
        fit = training.trust_region_newton(model, x, y, anchor_penalty=NOISE, tolerance=1e-4, max_steps=max_steps)
        history = fit["gradient_norms"]
        assert fit["converged"] == (history[-1] <= 1e-4 * history[0])
        assert fit["converged"] == (fit["stopped"] == "tolerance")
        assert len(history) - 1 <= fit["steps"] <= max_steps
    assert fit["converged"]


def test_newton_rejects_bad_arguments():
    x, y = _data()
    model = _mlp(4, 1, 1, seed=0)
    with pytest.raises(ValueError, match="anchor_penalty"):
        training.trust_region_newton(model, x, y, anchor_penalty=-1.0, tolerance=1e-5, max_steps=3)
    with pytest.raises(ValueError, match="tolerance"):
        training.trust_region_newton(model, x, y, anchor_penalty=NOISE, tolerance=0.0, max_steps=3)


def test_settings_hold_the_shared_fields_and_not_the_sweep_axes():
    config = configs.preset("E1", "quick")
    settings = configs.settings(config)
    assert "widths" not in settings and "seeds" not in settings
    assert settings["max_steps"] == config.max_steps and settings["gap"] == list(config.gap)
    assert settings["gradient_tolerance"] == config.gradient_tolerance
    paper = configs.preset("E1", "paper")
    assert max(paper.widths) > max(config.widths)
    with pytest.raises(ValueError, match="preset"):
        configs.preset("E1", "huge")


@pytest.fixture(scope="module")
def e1_run():
    config = configs.override(
        configs.preset("E1", "quick"),
        {"widths": "16", "parametrizations": "ntk", "seeds": "0", "train_points": "30", "grid_points": "25"},
    )
    data = e1_finite_vs_infinite.load_data(config)
    params = dict(parametrization="ntk", depth=2, width=16, seed=0)
    return config, data, e1_finite_vs_infinite.compute(config, data, params)


def test_e1_data_leave_the_gap_empty(e1_run):
    config, (x, y, grid), _ = e1_run
    assert x.shape == y.shape == (30, 1) and grid.shape == (25, 1)
    low, high = config.gap
    assert not np.any((x > low) & (x < high))


def test_e1_run_predictions_match_closed_forms(e1_run):
    """m_inf from the analytic kernel by numpy, the linearized net's minimizer m_0 from a
    tape.gradient-loop Jacobian of the same initial network."""
    config, (x, y, grid), result = e1_run
    kernel = dict(depth=2, parametrization="ntk", activation="erf", w_std=config.w_std, b_std=config.b_std)
    both = np.concatenate([grid, x])
    k_xx = keras_ntk.infinite_width_kernel(x, **kernel).numpy()
    k_bx = keras_ntk.infinite_width_kernel(both, x, **kernel).numpy()
    initial = np.concatenate([result["grid"]["initial"], result["train"]["initial"]])
    f0_x = np.array(result["train"]["initial"])
    s2 = config.noise_std**2
    m_inf = initial + k_bx @ np.linalg.solve(k_xx + s2 * np.eye(30), y[:, 0] - f0_x)

    import keras

    keras.utils.set_random_seed(0)
    model = keras_ntk.models.mlp(16, 2, 1, activation="erf", w_std=config.w_std, b_std=config.b_std,
                                 input_shape=(1,))
    np.testing.assert_allclose(model(both).numpy()[:, 0], initial, rtol=1e-6, atol=1e-6)
    j_x, j_b = loop_jacobian(model, x)[:, 0], loop_jacobian(model, both)[:, 0]
    m_0 = initial + j_b @ j_x.T @ np.linalg.solve(j_x @ j_x.T + s2 * np.eye(30), y[:, 0] - f0_x)

    for domain, rows in (("grid", slice(0, 25)), ("train", slice(25, None))):
        curves = result[domain]
        np.testing.assert_allclose(curves["kernel_regime"], m_inf[rows], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(curves["linearized_minimizer"], m_0[rows], rtol=1e-4, atol=1e-4)
        scale = np.linalg.norm(m_0[rows])
        assert np.linalg.norm(np.array(curves["linearized"]) - m_0[rows]) < 2e-2 * scale
    assert result["train_rmse"] == pytest.approx(
        np.sqrt(np.mean((np.array(result["train"]["net"]) - y[:, 0]) ** 2)), rel=1e-6
    )
    assert np.all(np.array(result["laplace_std"]) > 0)


def test_e1_distances_are_the_numpy_distances_of_the_stored_predictions(e1_run):
    _, _, result = e1_run
    for domain in ("grid", "train"):
        c = {k: np.array(v, np.float64) for k, v in result[domain].items()}
        scale = np.linalg.norm(c["kernel_regime"])
        expected = {
            "net_vs_kernel_regime": np.linalg.norm(c["net"] - c["kernel_regime"]) / scale,
            "linearized_vs_kernel_regime": np.linalg.norm(c["linearized"] - c["kernel_regime"]) / scale,
            "net_vs_linearized": np.linalg.norm(c["net"] - c["linearized"]) / scale,
            "linearized_vs_minimizer": np.linalg.norm(c["linearized"] - c["linearized_minimizer"]) / scale,
        }
        assert result["distances"][domain] == pytest.approx(expected, rel=1e-6)


def test_e1_convergence_is_reported_for_the_net_and_the_linearized_net(e1_run):
    config, _, result = e1_run
    for fit in result["training"].values():
        history = fit["gradient_norms"]
        assert fit["converged"] == (history[-1] <= config.gradient_tolerance * history[0])
        assert fit["relative_gradient_norm"] == pytest.approx(history[-1] / history[0])
    assert result["training"]["linearized"]["converged"] and result["training"]["net"]["converged"]


def _record(parametrization, width, seed, distances, converged):
    fit = {"converged": converged, "steps": 7, "relative_gradient_norm": 1e-6 if converged else 3e-3}
    return {
        "params": dict(parametrization=parametrization, depth=2, width=width, seed=seed),
        "result": {
            "distances": {"grid": distances, "train": {k: v / 2 for k, v in distances.items()}},
            "training": {"net": fit, "linearized": {**fit, "converged": True}},
            "train_rmse": 0.1,
        },
    }


def test_e1_finding_states_the_numbers_of_the_records():
    config = configs.override(configs.preset("E1", "quick"), {"widths": "16,64", "parametrizations": "ntk",
                                                              "seeds": "0,1"})
    records = []
    for w, (net, lin) in zip((16, 64), ((0.8, 0.2), (0.6, 0.1))):
        for seed in (0, 1):
            d = dict(net_vs_kernel_regime=net + 0.01 * seed, linearized_vs_kernel_regime=lin,
                     net_vs_linearized=net - lin, linearized_vs_minimizer=0.001)
            records.append(_record("ntk", w, seed, d, converged=not (w == 64 and seed == 1)))
    summary = e1_finite_vs_infinite.distance_summary(config, records)
    widths, means, stds = summary[("ntk", 2, "grid", "net_vs_kernel_regime")]
    assert widths == [16, 64] and means == pytest.approx([0.805, 0.605]) and stds == pytest.approx([0.005] * 2)
    assert summary[("ntk", 2, "train", "net_vs_linearized")][1] == pytest.approx([0.3, 0.25])

    text = e1_finite_vs_infinite.finding(config, records, summary)
    slope = np.polyfit(np.log([16, 64]), np.log([0.2, 0.1]), 1)[0]
    assert "end 0.1% from their exact minimizer and 10-20% from the kernel-regime prediction" in text
    assert f"{slope:.2f}" in text
    assert "stay 60-81% from it and 50-60% from their own linearization" in text
    assert "At every width the network's non-linearity" in text
    assert "3 of 4 nets and 4 of 4 linearized nets reached" in text and "0.003" in text
