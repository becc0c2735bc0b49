"""Every structure's covariance, eager and compiled, against dense numpy posteriors.

The reference posteriors are built in numpy from brute-force Jacobians
(references.loop_jacobian: one tape.gradient call per example and output, no
vectorization): P = c GGN + D over the covered parameters (its diagonal for
"diag"; for "kron" per dense layer c A (x) G + delta I with A and G from a numpy
forward and backward pass of the network, references.dense_chain_kfac_factors),
cov = J* P^-1 J*^T. The function-space structures must equal the weight-space
full posterior of the same weights (matrix determinant lemma).

The networks are built with float64 weights, so both sides compute in float64
throughout: they differ by rounding amplified by the posterior precision's
condition number (at most ~1e4 here, reported by the Laplace), i.e. by about
1e-12 relative; the tolerance 1e-9 keeps a wide margin and still fails on any
error in the math. The float32 case below has its tolerance from float32.
"""

import contextlib
import threading

import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.predictive import NTKGP, CompiledPredictive, Laplace, compile_predictive, selection
from references import dense_chain_kfac_factors, loop_jacobian, softmax_hessian

D, K, CLASSES = 3, 2, 3
TOL64 = dict(rtol=1e-9, atol=1e-12)
EPS32 = float(np.finfo(np.float32).eps)


@contextlib.contextmanager
def floatx(dtype):
    """Layers built inside take `dtype`. Keras caches its global dtype policy from floatx
    the first time any layer is built, so the policy is set as well as floatx."""
    previous, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)
        keras.config.set_dtype_policy(previous_policy)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, D))
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return x, y, labels, rng.normal(size=(4, D))


@pytest.fixture(scope="module")
def networks():
    """Float64 MLPs: a regressor (K = 2) and a classifier (3 classes)."""
    with floatx("float64"):
        keras.utils.set_random_seed(1)
        regressor = keras_ntk.models.mlp(6, 2, K, input_shape=(D,), b_std=0.5)
        classifier = keras_ntk.models.mlp(6, 1, CLASSES, input_shape=(D,), b_std=0.5)
    assert {v.dtype for m in (regressor, classifier) for v in m.weights} == {"float64"}
    return {"regression": regressor, "classification": classifier}


def _per_layer_delta(model):
    names = list(selection.parameter_groups(model))
    return {name: 0.4 + 0.3 * i for i, name in enumerate(names)}


def _layer_dicts(model):
    """The dense chain of a keras_ntk mlp for references.dense_chain_kfac_factors."""
    layers = [layer for layer in model.layers if layer.trainable_weights]
    return [
        dict(
            kernel=layer.kernel.numpy().astype(np.float64),
            bias=layer.bias.numpy().astype(np.float64),
            ws=layer.weight_scale,
            bs=layer.bias_scale,
            activation="linear" if layer is layers[-1] else "relu",
        )
        for layer in layers
    ]


def reference_posterior(model, likelihood, subset, hessian, x, targets, x_test, delta, s2):
    """Dense numpy Laplace: joint predictive covariance (n, K, n, K) and log evidence."""
    groups = selection.parameter_groups(model)
    covered = selection.select_groups(groups, subset)
    sizes = {name: sum(int(np.prod(v.shape)) for v in vs) for name, vs in groups.items()}
    starts = dict(zip(groups, np.cumsum([0] + list(sizes.values()))[:-1]))
    index = np.concatenate([np.arange(starts[name], starts[name] + sizes[name]) for name in covered])
    prior = np.concatenate([np.full(sizes[name], delta[name]) for name in covered])
    jac, jac_test = loop_jacobian(model, x)[:, :, index], loop_jacobian(model, x_test)[:, :, index]
    f = model(x).numpy().astype(np.float64)
    if likelihood == "regression":
        hessians, scale = np.broadcast_to(np.eye(f.shape[1]), (len(x), f.shape[1], f.shape[1])), 1.0 / s2
        log_lik = -0.5 * np.sum((targets - f) ** 2) / s2 - 0.5 * f.size * np.log(2 * np.pi * s2)
    else:
        hessians, scale = softmax_hessian(f), 1.0
        logp = f - f.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        log_lik = np.sum(logp[np.arange(len(targets)), targets])
    ggn = np.einsum("nkp,nkl,nlq->pq", jac, hessians, jac)
    if hessian in ("full", "function_space"):
        precision = scale * ggn + np.diag(prior)
    elif hessian == "diag":
        precision = np.diag(scale * np.diag(ggn) + prior)
    else:  # kron: one block c A (x) G + delta I per covered dense layer, in model order
        f_chain, factors = dense_chain_kfac_factors(_layer_dicts(model), x, likelihood)
        np.testing.assert_allclose(f_chain, f, rtol=1e-12, atol=1e-12)  # the numpy pass is the network's
        blocks = [
            scale * np.kron(a, g) + delta[name] * np.eye(a.shape[0] * g.shape[0])
            for name, (a, g, _, _) in zip(groups, factors)
            if name in covered
        ]
        precision = np.zeros((len(prior), len(prior)))
        start = 0
        for block in blocks:
            precision[start : start + len(block), start : start + len(block)] = block
            start += len(block)
    cov = np.einsum("ikp,pq,jlq->ikjl", jac_test, np.linalg.inv(precision), jac_test)
    theta = np.concatenate([v.numpy().ravel() for v in model.trainable_variables]).astype(np.float64)[index]
    evidence = log_lik - 0.5 * np.sum(prior * theta**2) - 0.5 * (
        np.linalg.slogdet(precision)[1] - np.sum(np.log(prior))
    )
    return cov, evidence


def _check_against_reference(laplace, cov, evidence, x_test):
    n, k = cov.shape[:2]
    blocks = np.einsum("ikil->ikl", cov)
    np.testing.assert_allclose(laplace.functional_covariance(x_test).numpy(), blocks, **TOL64)
    np.testing.assert_allclose(
        laplace.functional_covariance(x_test, joint=True).numpy(), cov.reshape(n * k, n * k), **TOL64
    )
    assert float(laplace.log_marginal_likelihood()) == pytest.approx(evidence, rel=1e-10)
    compiled = compile_predictive(laplace)
    assert isinstance(compiled, CompiledPredictive)
    mean, compiled_blocks = compiled.marginal(x_test)
    np.testing.assert_allclose(mean, laplace.model(x_test).numpy(), **TOL64)
    np.testing.assert_allclose(compiled_blocks, blocks, **TOL64)
    joint_mean, joint = compiled.joint(x_test)
    np.testing.assert_allclose(joint_mean, mean, **TOL64)
    np.testing.assert_allclose(joint, cov.reshape(n * k, n * k), **TOL64)
    single = np.concatenate([compiled.marginal(x_test[i : i + 1])[1] for i in range(len(x_test))])
    np.testing.assert_allclose(single, blocks, **TOL64)  # no coupling across the examples of a batch
    return compiled


@pytest.mark.parametrize("structure", list(selection.STRUCTURES))
def test_regression_covariances_equal_the_dense_numpy_posterior(networks, data, structure):
    model, (x, y, _, x_test) = networks["regression"], data
    delta, s2 = _per_layer_delta(model), 0.04
    laplace = Laplace(model, "regression", structure=structure, prior_precision=delta, noise_variance=s2).fit((x, y))
    subset, hessian = selection.STRUCTURES[structure]
    cov, evidence = reference_posterior(model, "regression", subset, hessian, x, y, x_test, delta, s2)
    compiled = _check_against_reference(laplace, cov, evidence, x_test)
    assert compiled.noise_variance == pytest.approx(s2)
    assert laplace.condition_number < 1e5  # the premise of the tolerance


@pytest.mark.parametrize("structure", ["full", "diag", "kron", "last_layer_kron", "function_space"])
def test_classification_covariances_equal_the_dense_numpy_posterior(networks, data, structure):
    model, (x, _, labels, x_test) = networks["classification"], data
    delta = _per_layer_delta(model)
    laplace = Laplace(model, "classification", structure=structure, prior_precision=delta).fit((x, labels))
    subset, hessian = selection.STRUCTURES[structure]
    cov, evidence = reference_posterior(model, "classification", subset, hessian, x, labels, x_test, delta, 1.0)
    compiled = _check_against_reference(laplace, cov, evidence, x_test)
    # the mean-field probit approximation, written out in numpy from the reference
    mean, blocks = model(x_test).numpy(), np.einsum("ikil->ikl", cov)
    variance = np.einsum("ikk->ik", blocks)
    difference_variance = variance[:, :, None] + variance[:, None, :] - 2 * blocks
    scaled = (mean[:, :, None] - mean[:, None, :]) / np.sqrt(1 + np.pi / 8 * difference_variance)
    probit = 1 / np.exp(-scaled).sum(axis=2)
    probit /= probit.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(compiled.probit(*compiled.marginal(x_test)), probit, **TOL64)
    np.testing.assert_allclose(laplace.predict(x_test).probs_parameter().numpy(), probit, **TOL64)


def test_an_explicit_subset_of_layers(networks, data):
    model, (x, y, _, x_test) = networks["regression"], data
    names = list(selection.parameter_groups(model))
    subset = [names[0], names[-1]]  # first hidden layer and readout
    delta, s2 = _per_layer_delta(model), 0.04
    for hessian in ("full", "kron"):
        laplace = Laplace(
            model, prior_precision=delta, noise_variance=s2, subset_of_weights=subset, hessian_structure=hessian
        ).fit((x, y))
        assert laplace.structure == f"subset_{hessian}"
        cov, evidence = reference_posterior(model, "regression", subset, hessian, x, y, x_test, delta, s2)
        _check_against_reference(laplace, cov, evidence, x_test)


def test_last_layer_kfac_is_exact_for_regression_and_not_for_classification(networks, data):
    """The readout's dz = I, so with H = I every example's GGN block is a~ a~^T (x) I and
    K-FAC's product of sums is exact for any K; the softmax Hessian varies per example."""
    (x, y, labels, x_test) = data
    regressor, classifier = networks["regression"], networks["classification"]
    kron = Laplace(regressor, structure="last_layer_kron", prior_precision=0.5, noise_variance=0.1).fit((x, y))
    full = Laplace(regressor, structure="last_layer", prior_precision=0.5, noise_variance=0.1).fit((x, y))
    np.testing.assert_allclose(
        kron.functional_covariance(x_test, joint=True).numpy(),
        full.functional_covariance(x_test, joint=True).numpy(),
        **TOL64,
    )
    assert float(kron.log_marginal_likelihood()) == pytest.approx(float(full.log_marginal_likelihood()), rel=1e-10)
    kron = Laplace(classifier, "classification", structure="last_layer_kron", prior_precision=0.5).fit((x, labels))
    full = Laplace(classifier, "classification", structure="last_layer", prior_precision=0.5).fit((x, labels))
    kron_cov = kron.functional_covariance(x_test, joint=True).numpy()
    full_cov = full.functional_covariance(x_test, joint=True).numpy()
    assert np.abs(kron_cov - full_cov).max() > 1e-3 * np.abs(full_cov).max()


def test_float32_network_within_float32_rounding(data):
    """A float32 network: its Jacobians carry float32 rounding (relative eps32 per
    entry, from a different route than the reference's unvectorized gradients),
    which the posterior amplifies by at most the condition number kappa of P to
    first order; the tolerance is 10 eps32 kappa relative to the largest entry."""
    x, y, _, x_test = (a.astype(np.float32) if a.dtype.kind == "f" else a for a in data)
    keras.utils.set_random_seed(2)
    with floatx("float32"):
        model = keras_ntk.models.mlp(6, 2, K, input_shape=(D,), b_std=0.5)
    assert {v.dtype for v in model.weights} == {"float32"}
    delta, s2 = _per_layer_delta(model), 0.04
    laplace = Laplace(model, structure="full", prior_precision=delta, noise_variance=s2).fit((x, y))
    cov, _ = reference_posterior(model, "regression", "all", "full", x, y, x_test, delta, s2)
    blocks = np.einsum("ikil->ikl", cov)
    eager = laplace.functional_covariance(x_test).numpy()
    compiled = compile_predictive(laplace).marginal(x_test)[1]
    tolerance = 10 * EPS32 * laplace.condition_number * np.abs(blocks).max()
    assert tolerance < 1e-2 * np.abs(blocks).max()  # the check stays meaningful
    np.testing.assert_allclose(eager, blocks, rtol=0, atol=tolerance)
    np.testing.assert_allclose(compiled, blocks, rtol=0, atol=tolerance)


def _dense_gp(model, x, y, x_test, noise, output):
    """NTK-GP posterior (mean (n, K), joint covariance (n K, n K)) from loop Jacobians."""
    jac = loop_jacobian(model, np.concatenate([x, x_test]))
    theta = np.einsum("ikp,jlp->ijkl", jac, jac)
    f = model(np.concatenate([x, x_test])).numpy().astype(np.float64)
    n, m, k = len(x), len(x_test), y.shape[1]
    if output == "independent":
        kernel = np.einsum("ijkk->ij", theta) / k
        a = kernel[:n, :n] + noise * np.eye(n)
        mean = f[n:] + kernel[n:, :n] @ np.linalg.solve(a, y - f[:n])
        cov = kernel[n:, n:] - kernel[n:, :n] @ np.linalg.solve(a, kernel[:n, n:])
        return mean, np.kron(cov, np.eye(k))
    flat = theta.transpose(0, 2, 1, 3).reshape((n + m) * k, (n + m) * k)
    a = flat[: n * k, : n * k] + noise * np.eye(n * k)
    mean = f[n:].ravel() + flat[n * k :, : n * k] @ np.linalg.solve(a, (y - f[:n]).ravel())
    cov = flat[n * k :, n * k :] - flat[n * k :, : n * k] @ np.linalg.solve(a, flat[: n * k, n * k :])
    return mean.reshape(m, k), cov


@pytest.mark.parametrize("output", ["independent", "full"])
def test_gp_eager_and_compiled_equal_the_dense_numpy_posterior(networks, data, output):
    model, (x, y, _, x_test) = networks["regression"], data
    gp = NTKGP.empirical(model, x, y, 0.05, output=output)
    mean, cov = _dense_gp(model, x, y, x_test, 0.05, output)
    variance = np.diag(cov).reshape(mean.shape)
    marginal = gp.predict(x_test)
    np.testing.assert_allclose(marginal.mean().numpy(), mean, **TOL64)
    np.testing.assert_allclose(marginal.variance().numpy(), variance, **TOL64)
    joint = gp.predict(x_test, joint=True)
    expected = joint.covariance().numpy() - gp.predictive_jitter * np.eye(cov.shape[0])
    np.testing.assert_allclose(expected, cov, **TOL64)
    compiled = compile_predictive(gp)
    compiled_mean, blocks = compiled.marginal(x_test)
    np.testing.assert_allclose(compiled_mean, mean, **TOL64)
    n, k = mean.shape
    np.testing.assert_allclose(blocks, np.einsum("ikil->ikl", cov.reshape(n, k, n, k)), **TOL64)
    np.testing.assert_allclose(compiled.joint(x_test)[1], cov, **TOL64)


def test_monte_carlo_link_is_reproducible_and_matches_numpy_sampling(networks, data):
    model, (x, _, labels, x_test) = networks["classification"], data
    laplace = Laplace(model, "classification", structure="kron", prior_precision=0.5).fit((x, labels))
    compiled = compile_predictive(laplace)
    mean, blocks = compiled.marginal(x_test)
    probs = compiled.monte_carlo(mean, blocks, 20_000, seed=3)
    logits = mean[None] + np.einsum(
        "nkl,snl->snk",
        np.linalg.cholesky(blocks + 1e-10 * np.eye(CLASSES)),
        np.random.default_rng(0).normal(size=(100_000, len(mean), CLASSES)),
    )
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, (softmax / softmax.sum(-1, keepdims=True)).mean(0), atol=0.02)
    np.testing.assert_array_equal(probs, compiled.monte_carlo(mean, blocks, 20_000, seed=3))
    eager = laplace.predict(x_test, link="mc", samples=20_000, seed=3).probs_parameter().numpy()
    np.testing.assert_allclose(eager, probs, **TOL64)  # the same stateless draws


def test_concurrent_calls_after_compiling(networks, data):
    model, (x, y, _, x_test) = networks["regression"], data
    compiled = compile_predictive(Laplace(model, "regression", structure="kron").fit((x, y)))
    expected = compiled.marginal(x_test)[1]
    results = [None] * 4

    def call(i):
        results[i] = compiled.marginal(x_test)[1]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=0, atol=0)


def test_what_cannot_be_compiled(data):
    x, y, _, _ = data
    with pytest.raises(ValueError, match="infinite-width GP has no model"):
        compile_predictive(NTKGP.infinite_width(x, y, 0.05, depth=2))
    with pytest.raises(ValueError, match="expected a fitted Laplace"):
        compile_predictive(object())
    with pytest.raises(ValueError, match="fit"):
        compile_predictive(Laplace(keras_ntk.models.mlp(4, 1, 1, input_shape=(D,))))
