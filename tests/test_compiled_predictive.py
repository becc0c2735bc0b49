"""compile_predictive against the posteriors' own (eager, uncompiled) predict paths.

The reference for every number is the posterior object it was compiled from:
Laplace.predict / functional_covariance and NTKGP.predict, which build their
covariances by a different route (the curvature classes and the NTK engine, per call).
"""

import threading

import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.predictive import NTKGP, CompiledPredictive, Laplace, compile_predictive

TOL = dict(rtol=1e-6, atol=1e-9)
D, K = 3, 2


@pytest.fixture(scope="module")
def data():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, D)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype(np.float32)
    model = keras_ntk.models.mlp(8, 2, K, input_shape=(D,))
    return model, x, y, rng.normal(size=(5, D)).astype(np.float32)


@pytest.mark.parametrize("structure", ["full", "diag", "last_layer", "kron", "function_space"])
def test_laplace_marginal_and_joint_equal_predict(data, structure):
    model, x, y, x_test = data
    laplace = Laplace(model, "regression", structure=structure, prior_precision=0.6, noise_variance=0.04).fit((x, y))
    compiled = compile_predictive(laplace)
    assert isinstance(compiled, CompiledPredictive)
    mean, blocks = compiled.marginal(x_test)
    expected = laplace.predict(x_test)
    np.testing.assert_allclose(mean, expected.mean().numpy(), **TOL)
    np.testing.assert_allclose(blocks, laplace.functional_covariance(x_test).numpy(), **TOL)
    np.testing.assert_allclose(np.diagonal(blocks, axis1=1, axis2=2), expected.variance().numpy(), **TOL)
    joint_mean, joint = compiled.joint(x_test)
    np.testing.assert_allclose(joint_mean, mean, **TOL)
    np.testing.assert_allclose(joint, laplace.functional_covariance(x_test, joint=True).numpy(), **TOL)
    assert compiled.noise_variance == pytest.approx(0.04)
    # One example at a time gives the same marginal as the batch (no coupling across examples).
    single = np.concatenate([compiled.marginal(x_test[i : i + 1])[1] for i in range(len(x_test))])
    np.testing.assert_allclose(single, blocks, **TOL)


@pytest.mark.parametrize("output", ["independent", "full"])
def test_gp_marginal_and_joint_equal_predict(data, output):
    model, x, y, x_test = data
    gp = NTKGP.empirical(model, x, y, 0.05, output=output)
    compiled = compile_predictive(gp)
    mean, blocks = compiled.marginal(x_test)
    np.testing.assert_allclose(mean, gp.predict(x_test).mean().numpy(), **TOL)
    np.testing.assert_allclose(np.diagonal(blocks, axis1=1, axis2=2), gp.predict(x_test).variance().numpy(), **TOL)
    joint = gp.predict(x_test, joint=True)
    expected = joint.covariance().numpy() - gp.predictive_jitter * np.eye(len(x_test) * K)
    np.testing.assert_allclose(compiled.joint(x_test)[1], expected, **TOL)


def test_classification_probit_equals_predict(data):
    model, x, _, x_test = data
    labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    classifier = keras_ntk.models.mlp(8, 1, 3, input_shape=(D,))
    laplace = Laplace(classifier, "classification", structure="kron", prior_precision=0.5).fit((x, labels))
    compiled = compile_predictive(laplace)
    mean, blocks = compiled.marginal(x_test)
    np.testing.assert_allclose(
        compiled.probit(mean, blocks), laplace.predict(x_test, link="probit").probs_parameter().numpy(), **TOL
    )
    probs = compiled.monte_carlo(mean, blocks, 20_000, seed=3)
    logits = mean[None] + np.einsum(
        "nkl,snl->snk", np.linalg.cholesky(blocks + 1e-10 * np.eye(3)), np.random.default_rng(0).normal(size=(100_000, len(mean), 3))
    )
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, (softmax / softmax.sum(-1, keepdims=True)).mean(0), atol=0.02)
    np.testing.assert_array_equal(probs, compiled.monte_carlo(mean, blocks, 20_000, seed=3))


def test_concurrent_calls_after_compiling(data):
    model, x, y, x_test = data
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
    _, x, y, _ = data
    with pytest.raises(ValueError, match="infinite-width GP has no model"):
        compile_predictive(NTKGP.infinite_width(x, y, 0.05, depth=2))
    with pytest.raises(ValueError, match="expected a fitted Laplace"):
        compile_predictive(object())
