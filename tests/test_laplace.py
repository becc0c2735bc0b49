"""Linearized Laplace against dense numpy references built from brute-force Jacobians
(references.loop_jacobian: one tape.gradient call per example and output)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk.predictive import FactorizationError, factorize, numerics
from keras_ntk.predictive.laplace import EvidenceCallback, Laplace
from references import loop_jacobian

STRUCTURES = ["full", "diag", "last_layer", "kron", "function_space"]
SAVED_STRUCTURES = STRUCTURES + ["last_layer_kron"]


def _jacobian(model, x):
    """f (n, K) and J (n, K, P) float64, J by a loop of tape.gradient calls."""
    return model(x).numpy().astype(np.float64), loop_jacobian(model, x)


def _train(model, x, y, steps, learning_rate=0.01, loss="mse"):
    """Full-batch Adam in one tf.function (fast, unlike per-epoch fit overhead)."""
    optimizer = keras.optimizers.Adam(learning_rate)
    x, y = tf.constant(x), tf.constant(y)

    @tf.function
    def run():
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                f = model(x)
                if loss == "mse":
                    value = tf.reduce_mean(tf.square(f - tf.cast(y, f.dtype)))
                else:
                    value = tf.reduce_mean(
                        tf.keras.losses.sparse_categorical_crossentropy(y, f, from_logits=True)
                    )
            optimizer.apply_gradients(zip(tape.gradient(value, model.trainable_variables), model.trainable_variables))

    run()
    return model


def _regression_problem(seed=0, n=12, k=2):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1])][:k], axis=1)
    model = keras_ntk.models.mlp(8, 2, k, input_shape=(3,))
    _train(model, x, y.astype(np.float32), 200)
    return model, x, y, rng.normal(size=(5, 3)).astype(np.float32)


def _classification_problem(seed=1, n=16, k=3):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])).astype(np.int64)
    model = keras_ntk.models.mlp(8, 1, k, input_shape=(2,))
    _train(model, x, y, 200, loss="ce")
    return model, x, y, rng.normal(size=(5, 2)).astype(np.float32)


def _numpy_precision(model, x, y, delta, s2, likelihood):
    return _numpy_posterior(model, x, y, x[:1], delta, s2, likelihood, precision_only=True)


def _numpy_posterior(model, x, y, x_test, delta, s2, likelihood, precision_only=False):
    """Weight-space GGN Laplace in numpy: predictive cov (n*, K, n*, K) and evidence,
    or the posterior precision (P, P) with precision_only."""
    f, jac = _jacobian(model, x)
    if likelihood == "regression":
        lam = np.broadcast_to(np.eye(f.shape[1]) / s2, (len(x), f.shape[1], f.shape[1]))
        log_lik = -0.5 * np.sum((y.reshape(f.shape) - f) ** 2) / s2 - 0.5 * f.size * np.log(2 * np.pi * s2)
    else:
        p = np.exp(f - f.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        lam = np.einsum("nk,kl->nkl", p, np.eye(f.shape[1])) - np.einsum("nk,nl->nkl", p, p)
        log_lik = np.sum(np.log(p[np.arange(len(y)), y]))
    ggn = np.einsum("nkp,nkl,nlq->pq", jac, lam, jac)
    precision = ggn + delta * np.eye(ggn.shape[0])
    if precision_only:
        return precision
    _, jac_test = _jacobian(model, x_test)
    cov = np.einsum("ikp,pq,jlq->ikjl", jac_test, np.linalg.inv(precision), jac_test)
    theta = np.concatenate([v.numpy().ravel() for v in model.trainable_variables]).astype(np.float64)
    evidence = log_lik - 0.5 * delta * theta @ theta - 0.5 * (
        np.linalg.slogdet(precision)[1] - ggn.shape[0] * np.log(delta)
    )
    return cov, evidence


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_full_weight_space_and_function_space_equal_the_numpy_posterior(likelihood):
    problem = _regression_problem if likelihood == "regression" else _classification_problem
    model, x, y, x_test = problem()
    cov, evidence = _numpy_posterior(model, x, y, x_test, 0.7, 0.05, likelihood)
    n, k = cov.shape[:2]
    for structure in ("full", "function_space"):
        laplace = Laplace(model, likelihood, structure, prior_precision=0.7, noise_variance=0.05).fit((x, y))
        joint = laplace.functional_covariance(x_test, joint=True).numpy()
        np.testing.assert_allclose(joint, cov.reshape(n * k, n * k), rtol=1e-5, atol=1e-5 * np.abs(cov).max())
        marginal = laplace.functional_covariance(x_test).numpy()
        np.testing.assert_allclose(marginal, np.einsum("ikil->ikl", cov), rtol=1e-5, atol=1e-5 * np.abs(cov).max())
        assert float(laplace.log_marginal_likelihood()) == pytest.approx(evidence, rel=1e-6)
        if structure == "full":
            precision_eigenvalues = np.linalg.eigvalsh(_numpy_precision(model, x, y, 0.7, 0.05, likelihood))
            expected = precision_eigenvalues[-1] / precision_eigenvalues[0]
            assert laplace.condition_number == pytest.approx(expected, rel=1e-6)


def test_kron_and_diag_equal_full_where_exact_and_differ_elsewhere():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    single = keras.Model(inputs, keras_ntk.layers.Dense(2, w_std=1.3, b_std=0.4)(inputs))
    x = np.random.default_rng(2).normal(size=(9, 4)).astype(np.float32)
    y = np.random.default_rng(3).normal(size=(9, 2))
    x_test = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)

    def cov(model, structure, x, y):
        laplace = Laplace(model, structure=structure, prior_precision=0.5, noise_variance=0.2).fit((x, y))
        return laplace.functional_covariance(x_test, joint=True).numpy(), float(laplace.log_marginal_likelihood())

    full, full_evidence = cov(single, "full", x, y)
    kron, kron_evidence = cov(single, "kron", x, y)
    np.testing.assert_allclose(kron, full, atol=1e-10)  # single dense layer, regression: K-FAC is exact
    assert kron_evidence == pytest.approx(full_evidence, rel=1e-10)
    blocks = Laplace(single, structure="kron", prior_precision=0.5, noise_variance=0.2).fit((x, y))
    blocks = blocks.functional_covariance(x_test).numpy()
    np.testing.assert_allclose(blocks, np.einsum("ikil->ikl", full.reshape(3, 2, 3, 2)), atol=1e-10)

    # one output, no bias, orthogonal inputs: the GGN is diagonal, so diag is exact
    no_bias = keras.Model(inputs, keras_ntk.layers.Dense(1, use_bias=False)(inputs))
    orthogonal = (np.eye(4) * [1.0, 2.0, 0.5, 3.0]).astype(np.float32)
    full_d, _ = cov(no_bias, "full", orthogonal, np.ones((4, 1)))
    diag_d, _ = cov(no_bias, "diag", orthogonal, np.ones((4, 1)))
    np.testing.assert_allclose(diag_d, full_d, atol=1e-10)

    model, x, y, x_test = _regression_problem()
    full, _ = cov(model, "full", x, y)
    for structure in ("diag", "kron", "last_layer"):
        approx, _ = cov(model, structure, x, y)
        assert np.abs(approx - full).max() > 1e-3 * np.abs(full).max(), structure


def test_kron_of_one_dense_classifier_is_the_kfac_product_not_the_full_ggn():
    """One dense layer, softmax likelihood: the per-example GGN block is
    a~ a~^T (x) H_n with H_n = diag(p_n) - p_n p_n^T varying over examples, so K-FAC's
    (sum a~ a~^T) (x) (sum H_n / N) differs from the full GGN: kron matches that
    numpy product (over [W; b] with bias_scale appended to the inputs) and not "full"."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((4,))
    layer = keras_ntk.layers.Dense(3, w_std=1.3, b_std=0.4)
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=12)
    x_test = rng.normal(size=(3, 4)).astype(np.float32)
    delta = 0.5
    kron = Laplace(model, "classification", "kron", prior_precision=delta).fit((x, labels))
    full = Laplace(model, "classification", "full", prior_precision=delta).fit((x, labels))
    f = model(x).numpy().astype(np.float64)
    p = np.exp(f - f.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    hessian = np.einsum("nk,kl->nkl", p, np.eye(3)) - np.einsum("nk,nl->nkl", p, p)
    a = np.concatenate([layer.weight_scale * x, np.full((12, 1), layer.bias_scale)], axis=1).astype(np.float64)
    precision = np.kron(a.T @ a, hessian.mean(0)) + delta * np.eye(a.shape[1] * 3)
    _, jac_test = _jacobian(model, x_test)  # columns: vec(W) row-major, then b: vec([W; b])
    expected = np.einsum("ikp,pq,jlq->ikjl", jac_test, np.linalg.inv(precision), jac_test).reshape(9, 9)
    kron_cov = kron.functional_covariance(x_test, joint=True).numpy()
    full_cov = full.functional_covariance(x_test, joint=True).numpy()
    np.testing.assert_allclose(kron_cov, expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())
    assert np.abs(kron_cov - full_cov).max() > 1e-3 * np.abs(full_cov).max()
    assert abs(float(kron.log_marginal_likelihood()) - float(full.log_marginal_likelihood())) > 1e-4


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_kron_on_a_cnn_equals_a_numpy_kfac_expand_posterior(likelihood):
    """K-FAC on conv + dense layers against numpy: per layer P = c kron(A, G / (n P)) + delta I
    with A = sum over examples and positions of a~ a~^T (a~ = [weight_scale patch, bias_scale]),
    G = sum of dz f^T H dz f (H: the likelihood's Hessian in f, I for regression with c = 1/s^2,
    the softmax Hessian for classification with c = 1); patches by tf.image.extract_patches,
    dz f and the test Jacobians by tape."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((4, 4, 2))
    conv = keras_ntk.layers.Conv2D(3, 3, padding="same", w_std=1.3, b_std=0.3)
    dense = keras_ntk.layers.Dense(2, w_std=1.1, b_std=0.2)
    hidden = keras.layers.Activation("tanh")(conv(inputs))
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(hidden)))
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 4, 4, 2)).astype(np.float32)
    y = rng.normal(size=(7, 2)) if likelihood == "regression" else np.array([0, 1, 1, 0, 1, 0, 0])
    x_test = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    delta, s2 = 0.9, 0.3
    laplace = Laplace(model, likelihood, "kron", prior_precision=delta, noise_variance=s2).fit((x, y))

    with tf.GradientTape() as tape:
        z = conv.weight_scale * tf.nn.conv2d(x, conv.kernel, 1, "SAME") + conv.bias_scale * conv.bias
        tape.watch(z)
        pooled = tf.reduce_mean(tf.tanh(z), axis=(1, 2))
        f = dense.weight_scale * tf.matmul(pooled, dense.kernel) + dense.bias_scale * dense.bias
    np.testing.assert_allclose(f.numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)  # the forward pass is the model's
    dz = np.einsum("nkn...->nk...", tape.jacobian(f, z).numpy().astype(np.float64))  # (n, K, 4, 4, O)
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME").numpy()
    n, positions = len(x), 16
    a_conv = np.concatenate(
        [conv.weight_scale * patches.reshape(n * positions, -1), np.full((n * positions, 1), conv.bias_scale)], axis=1
    ).astype(np.float64)
    f = f.numpy().astype(np.float64)
    if likelihood == "regression":
        hessian, scale = np.broadcast_to(np.eye(2), (n, 2, 2)), 1 / s2
    else:
        p = np.exp(f - f.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        hessian, scale = np.einsum("nk,kl->nkl", p, np.eye(2)) - np.einsum("nk,nl->nkl", p, p), 1.0
    dz = dz.reshape(n, 2, positions, 3)
    g_conv = np.einsum("nkpo,nkl,nlpq->oq", dz, hessian, dz) / (n * positions)
    a_dense = np.concatenate([dense.weight_scale * pooled.numpy(), np.full((n, 1), dense.bias_scale)], axis=1)
    a_dense = a_dense.astype(np.float64)
    g_dense = hessian.sum(0) / n  # dz f_k = e_k for the readout

    def test_jacobian(layer):
        with tf.GradientTape() as tape:
            out = model(x_test)
        jac_w, jac_b = tape.jacobian(out, [layer.kernel, layer.bias])
        m, k = out.shape
        outputs = layer.kernel.shape[-1]
        stacked = np.concatenate(
            [jac_w.numpy().reshape(m, k, -1, outputs), jac_b.numpy().reshape(m, k, 1, outputs)], axis=2
        )
        return stacked.reshape(m, k, -1).astype(np.float64)  # vec of [W; b] in (c, o) row-major order

    cov, log_det_ratio = 0.0, 0.0
    for layer, a, g in ((conv, a_conv, g_conv), (dense, a_dense, g_dense)):
        precision = scale * np.kron(a.T @ a, g) + delta * np.eye(a.shape[1] * g.shape[0])
        jac = test_jacobian(layer)
        cov = cov + np.einsum("ikp,pq,jlq->ikjl", jac, np.linalg.inv(precision), jac)
        log_det_ratio += np.linalg.slogdet(precision)[1] - precision.shape[0] * np.log(delta)
    got = laplace.functional_covariance(x_test, joint=True).numpy().reshape(cov.shape)
    np.testing.assert_allclose(got, cov, rtol=1e-5, atol=1e-7 * np.abs(cov).max())
    theta = np.concatenate([v.numpy().ravel() for v in model.trainable_variables]).astype(np.float64)
    if likelihood == "regression":
        log_lik = -0.5 * np.sum((y - f) ** 2) / s2 - 0.5 * y.size * np.log(2 * np.pi * s2)
    else:
        log_lik = np.sum(np.log(p[np.arange(n), y]))
    evidence = log_lik - 0.5 * delta * theta @ theta - 0.5 * log_det_ratio
    assert float(laplace.log_marginal_likelihood()) == pytest.approx(evidence, rel=1e-6)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_marginal_blocks_are_the_diagonal_blocks_of_the_joint_covariance(structure):
    """The per-example blocks come from their own O(n) contraction, not from the joint."""
    keras.utils.set_random_seed(5)
    model = keras_ntk.models.cnn(4, 2, 3, input_shape=(5, 5, 2), pooling="global_average")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 5, 5, 2)).astype(np.float32)
    y = rng.normal(size=(8, 3))
    x_test = rng.normal(size=(4, 5, 5, 2)).astype(np.float32)
    laplace = Laplace(model, structure=structure, prior_precision=0.8, noise_variance=0.1).fit((x, y))
    joint = laplace.functional_covariance(x_test, joint=True).numpy().reshape(4, 3, 4, 3)
    blocks = laplace.functional_covariance(x_test).numpy()
    # function_space takes the prior's blocks from the engine's "diagonal" mode and the
    # joint prior from its "full" mode: float32 features, so they agree to float32 rounding.
    rtol = 1e-5 if structure == "function_space" else 1e-9
    np.testing.assert_allclose(blocks, np.einsum("ikil->ikl", joint), rtol=rtol, atol=rtol * 1e-3 * np.abs(joint).max())


@pytest.mark.parametrize("structure", ["full", "last_layer", "function_space"])
def test_predictions_reuse_the_factorization_until_the_hyperparameters_change(structure, monkeypatch):
    model, x, y, x_test = _regression_problem()
    laplace = Laplace(model, structure=structure, prior_precision=0.7, noise_variance=0.05).fit((x, y))
    factorizations = []
    factorize_once = numerics.factorize
    monkeypatch.setattr(numerics, "factorize", lambda *args: factorizations.append(args) or factorize_once(*args))
    first = laplace.functional_covariance(x_test).numpy()
    np.testing.assert_allclose(laplace.predict(x_test).variance().numpy(), np.einsum("ikk->ik", first), rtol=1e-12)
    assert len(factorizations) == 1
    laplace.optimize_hyperparameters(steps=5)
    fresh = Laplace(
        model, structure=structure, prior_precision=laplace.prior_precision, noise_variance=laplace.noise_variance
    ).fit((x, y))
    changed = laplace.functional_covariance(x_test).numpy()
    np.testing.assert_allclose(changed, fresh.functional_covariance(x_test).numpy(), rtol=1e-9, atol=1e-15)
    assert np.abs(changed - first).max() > 1e-3 * np.abs(first).max()


@pytest.mark.parametrize("structure", STRUCTURES)
def test_log_marginal_likelihood_gradient_matches_finite_differences(structure):
    model, x, y, _ = _regression_problem()
    groups = list(model.trainable_variables)
    laplace = Laplace(model, structure=structure, prior_precision={g.path.rsplit("/", 1)[0]: 1.0 for g in groups}).fit((x, y))
    params = tf.Variable(np.log([0.5, 1.5, 2.0, 0.1]))  # log delta per layer (3), log s^2

    def evidence(p):
        return laplace.log_marginal_likelihood(tf.exp(p[:3]), tf.exp(p[3]))

    with tf.GradientTape() as tape:
        value = evidence(params)
    gradient = tape.gradient(value, params).numpy()
    eps = 1e-5
    numeric = [
        (float(evidence(params + eps * e)) - float(evidence(params - eps * e))) / (2 * eps)
        for e in np.eye(4)
    ]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # 10 s of evidence steps
def test_evidence_maximization_recovers_the_noise_level():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(300, 1)).astype(np.float32)
    y = (np.sin(2 * x) + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    keras.utils.set_random_seed(1)
    model = _train(keras_ntk.models.mlp(32, 2, 1, input_shape=(1,)), x, y, 3000)
    laplace = Laplace(model, structure="full").fit((x, y))
    before = float(laplace.log_marginal_likelihood())
    result = laplace.optimize_hyperparameters(steps=300)
    assert result["noise_variance"] == pytest.approx(0.01, rel=0.2)
    assert result["log_marginal_likelihood"] > before
    # One shared precision stays shared: the reported values reproduce the evidence.
    fresh = Laplace(
        model, structure="full", prior_precision=result["prior_precision"], noise_variance=result["noise_variance"]
    ).fit((x, y))
    assert float(fresh.log_marginal_likelihood()) == pytest.approx(result["log_marginal_likelihood"], rel=1e-9)


def test_probit_and_monte_carlo_links_agree():
    model, x, y, x_test = _classification_problem()
    laplace = Laplace(model, "classification", "full", prior_precision=50.0).fit((x, y))
    # the probit approximation holds for moderate logit variances (here up to ~0.3)
    assert np.einsum("ikk->ik", laplace.functional_covariance(x_test).numpy()).max() < 0.5
    probit = laplace.predict(x_test, link="probit").probs_parameter().numpy()
    mc = laplace.predict(x_test, link="mc", samples=200_000, seed=0).probs_parameter().numpy()
    np.testing.assert_allclose(probit, mc, atol=1e-2)
    np.testing.assert_allclose(probit.sum(axis=1), 1.0, rtol=1e-12)


def test_regression_predictive_is_the_function_variance_plus_noise_on_request():
    model, x, y, x_test = _regression_problem()
    laplace = Laplace(model, structure="kron", noise_variance=0.3).fit((x, y))
    f = laplace.predict(x_test)
    np.testing.assert_allclose(f.mean().numpy(), model(x_test).numpy(), rtol=1e-6)
    variance = np.einsum("ikk->ik", laplace.functional_covariance(x_test).numpy())
    np.testing.assert_allclose(f.variance().numpy(), variance, rtol=1e-10)
    np.testing.assert_allclose(laplace.predict(x_test, observation_noise=True).variance().numpy(), variance + 0.3, rtol=1e-10)
    joint = laplace.predict(x_test, joint=True)
    assert joint.event_shape == (x_test.shape[0] * 2,)


@pytest.mark.parametrize("structure", SAVED_STRUCTURES)
def test_save_load_round_trip_gives_identical_predictions(tmp_path, structure):
    model, x, y, x_test = _regression_problem()
    laplace = Laplace(model, structure=structure, prior_precision=0.8, noise_variance=0.1).fit((x, y))
    laplace.optimize_hyperparameters(steps=5)
    laplace.save(tmp_path / "export")
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"model.keras", "posterior.npz", "metadata.json"}
    loaded = Laplace.load(tmp_path / "export")
    a, b = laplace.predict(x_test), loaded.predict(x_test)
    np.testing.assert_array_equal(a.mean().numpy(), b.mean().numpy())
    np.testing.assert_allclose(a.variance().numpy(), b.variance().numpy(), rtol=1e-12)
    assert float(loaded.log_marginal_likelihood()) == pytest.approx(float(laplace.log_marginal_likelihood()), rel=1e-12)


def test_evidence_callback_tunes_hyperparameters_during_fit():
    model, x, y, _ = _regression_problem()
    laplace = Laplace(model, structure="kron")
    callback = EvidenceCallback(laplace, (x, y), every=2, steps=20)
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[callback])
    assert [h["epoch"] for h in callback.history] == [2, 4]
    assert "log_marginal_likelihood" in history.history
    assert laplace.noise_variance != 1.0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda m, x, y: Laplace(m, likelihood="poisson"), "likelihood"),
        (lambda m, x, y: Laplace(m, structure="block"), "structure must be one of"),
        (lambda m, x, y: Laplace(m, structure="kron", hessian_structure="diag"), "either structure"),
        (lambda m, x, y: Laplace(m, hessian_structure="block"), "hessian_structure must be one of"),
        (lambda m, x, y: Laplace(m, subset_of_weights="first_layer"), "subset_of_weights must be one of"),
        (lambda m, x, y: Laplace(m, subset_of_weights=["nope"]), "distinct layer paths"),
        (lambda m, x, y: Laplace(m, subset_of_weights=[]), "distinct layer paths"),
        (lambda m, x, y: Laplace(m, structure="kron", subset_size=3), "subset_size"),
        (lambda m, x, y: Laplace(m, prior_precision=-1.0), "prior_precision"),
        (lambda m, x, y: Laplace(m).fit((x, y[:5])), "same number of examples"),
        (lambda m, x, y: Laplace(m).fit((x, y[:, :1] * np.nan)), "NaN"),
        (lambda m, x, y: Laplace(m).fit((x[:, :2], y)), "shape"),
        (lambda m, x, y: Laplace(m, "classification").fit((x, np.full(len(x), 7))), "labels"),
        (lambda m, x, y: Laplace(m).predict(x), "fit"),
    ],
)
def test_bad_input_raises_value_error(build, message):
    model, x, y, _ = _regression_problem()
    with pytest.raises(ValueError, match=message):
        build(model, x, y)


def test_singular_systems_name_the_jitter_tried():
    with pytest.raises(FactorizationError, match="1.0e-02"):
        factorize(-np.eye(3))
    model, x, y, x_test = _regression_problem()
    laplace = Laplace(model, structure="full").fit((x, y))
    laplace.predict(np.repeat(x_test[:1], 3, axis=0), joint=True)  # rank-deficient joint covariance
    assert laplace.jitter > 0
