"""Compiled predictives: a posterior's marginal and joint prediction as two tf.functions.

`Laplace.predict` and `NTKGP.predict` are written for analysis: they check
their inputs in Python, refactorize the posterior (structure "full") or rebuild
kernels tile by tile on every call, and return TFP distributions. For many small
queries (a server, a bandit's rounds) `compile_predictive(posterior)` does every
factorization once and compiles the per-call work into tf.functions with a fixed
input signature (None, *input_shape): no retracing, no Python per example. They
compute the same quantities as `predict` (tests compare to 1e-6):

  marginal(x (n, ...)) -> mean (n, K) float64, covariance blocks (n, K, K) float64
  joint(x (n, ...))    -> mean (n, K) float64, covariance (n K, n K) float64, [n, k] order

Laplace: mean f(x; theta*) and the linearized covariance J P^-1 J^T for the
structures full / last_layer (Cholesky of P), diag, kron (eigenbases of the
Kronecker factors), function_space (Cholesky of I + c B, per-layer kernels over
the stored training inputs). NTKGP (empirical NTK): the GP posterior with the
stored Cholesky factor of the Gram matrix and representer weights.

Tracing the probed forward pass patches the model's layers, so every trace of
one model runs under that model's lock (`compile_predictive(posterior, lock)`,
shared with other computations that trace the model); after warm-up, calls run
concurrently.
"""

import math
import threading

import numpy as np
import tensorflow as tf

from keras_ntk.ntk import contract as contract_lib
from keras_ntk.ntk import features as features_lib
from keras_ntk.ntk import rules as rules_lib
from keras_ntk.predictive import curvature as curvature_lib
from keras_ntk.predictive import gp as gp_lib
from keras_ntk.predictive import laplace as laplace_lib

F64 = tf.float64


class CompiledPredictive:
    """Compiled marginal and joint predictive of one posterior (see `compile_predictive`).

    Attributes:
      likelihood: "regression" or "classification".
      num_outputs: K.
      noise_variance: s^2 (regression), added on request.
      jitter: the jitter the posterior factorization needed (reported, 0.0 when none).
      input_shape, input_dtype: of one example, without the batch axis.
    """

    def __init__(self, model, likelihood, noise_variance, jitter, marginal_fn, joint_fn):
        self.model = model
        self.likelihood = likelihood
        self.noise_variance = float(noise_variance)
        self.jitter = float(jitter)
        self.input_shape = tuple(model.input_shape[1:])
        self.input_dtype = np.dtype(model.inputs[0].dtype)
        self.num_outputs = int(math.prod(model.output_shape[1:]))
        spec = [tf.TensorSpec((None, *self.input_shape), self.input_dtype)]
        self._marginal = tf.function(marginal_fn, input_signature=spec)
        self._joint = tf.function(joint_fn, input_signature=spec)
        k = self.num_outputs
        self._probit = tf.function(
            laplace_lib._mean_field_probit,
            input_signature=[tf.TensorSpec((None, k), F64), tf.TensorSpec((None, k, k), F64)],
        )
        self._monte_carlo = tf.function(
            _monte_carlo_probs,
            input_signature=[
                tf.TensorSpec((None, k), F64),
                tf.TensorSpec((None, k, k), F64),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((2,), tf.int64),
            ],
        )

    def warm_up(self):
        """Trace every compiled function once, so requests never trace (call under the model's lock)."""
        x = np.zeros((2, *self.input_shape), self.input_dtype)
        mean, cov = self.marginal(x)
        self.joint(x)
        if self.likelihood == "classification":
            self.probit(mean, cov)
            self.monte_carlo(mean, cov, 2, 0)

    def marginal(self, x):
        """(mean (n, K), covariance blocks (n, K, K)) as float64 numpy arrays."""
        mean, cov = self._marginal(x)
        return mean.numpy(), cov.numpy()

    def joint(self, x):
        """(mean (n, K), joint covariance (n K, n K)) as float64 numpy arrays."""
        mean, cov = self._joint(x)
        return mean.numpy(), cov.numpy()

    def probit(self, mean, cov):
        """Class probabilities (n, K) by the mean-field probit approximation."""
        return self._probit(mean, cov).numpy()

    def monte_carlo(self, mean, cov, samples, seed):
        """Class probabilities (n, K): softmax averaged over `samples` logit draws
        from N(mean_i, cov_i + 1e-10 I), stateless in `seed`."""
        return self._monte_carlo(mean, cov, samples, tf.constant([seed, 0], tf.int64)).numpy()


def _monte_carlo_probs(mean, cov, samples, seed):
    k = tf.shape(mean)[1]
    chol = tf.linalg.cholesky(cov + 1e-10 * tf.eye(k, dtype=F64))
    eps = tf.random.stateless_normal(tf.stack([samples, tf.shape(mean)[0], k]), seed=seed, dtype=F64)
    logits = mean[None] + tf.einsum("nkl,snl->snk", chol, eps)
    return tf.reduce_mean(tf.nn.softmax(logits), axis=0)


def _joint_matrix(cov4):
    shape = tf.shape(cov4)
    return tf.reshape(cov4, (shape[0] * shape[1], shape[0] * shape[1]))


def _flatten_blocks(kernel):
    """(n, m, K, K) -> (n K, m K), row n * K + k (gp.flatten_blocks with dynamic n, m)."""
    shape = tf.shape(kernel)
    return tf.reshape(tf.transpose(kernel, (0, 2, 1, 3)), (shape[0] * shape[2], shape[1] * shape[3]))


def _outputs(model, x):
    return tf.cast(rules_lib.flat_outputs(model, x), F64)


# -- Laplace ---------------------------------------------------------------------------
def _for_laplace(laplace):
    """The `CompiledPredictive` of a fitted `keras_ntk.predictive.Laplace`."""
    laplace._require_fit()
    model = laplace.model
    delta, scale = laplace._delta(), laplace._scale()
    structure = laplace.structure
    if structure in ("full", "last_layer", "diag"):
        cov4, jitter = _jacobian_covariance(model, laplace.curvature, delta, scale)
    elif structure == "kron":
        cov4, jitter = _kron_covariance(model, laplace.curvature, delta, scale)
    else:
        cov4, jitter = _function_space_covariance(model, laplace.curvature, delta, scale)

    def marginal(x):
        return _outputs(model, x), cov4(x, joint=False)

    def joint(x):
        return _outputs(model, x), _joint_matrix(cov4(x, joint=True))

    noise = laplace.noise_variance if laplace.likelihood == "regression" else 0.0
    return CompiledPredictive(model, laplace.likelihood, noise, jitter, marginal, joint)


def _diagonal_term(model, curvature, delta, scale):
    """Covariance term of a diagonal GGN (structure "diag", or K-FAC's other layers)."""
    precision = scale * curvature.ggn + curvature._prior_vector(delta)
    inverse = 1.0 / precision
    variables = curvature.variables

    def term(x, joint):
        jac = tf.cast(tf.concat(features_lib.per_example_jacobians(model, variables, x), axis=-1), F64)
        if joint:
            return tf.einsum("ikp,jlp,p->ikjl", jac, jac, inverse)
        return tf.einsum("ikp,ilp,p->ikl", jac, jac, inverse)

    return term


def _jacobian_covariance(model, curvature, delta, scale):
    if curvature.diagonal:
        return _diagonal_term(model, curvature, delta, scale), 0.0
    factor = curvature.posterior_factor(delta, scale)
    chol, variables = factor.chol, curvature.variables

    def cov4(x, joint):
        jac = tf.cast(tf.concat(features_lib.per_example_jacobians(model, variables, x), axis=-1), F64)
        n, k = tf.shape(jac)[0], tf.shape(jac)[1]
        flat = tf.reshape(jac, (n * k, -1))
        w = tf.linalg.triangular_solve(chol, tf.transpose(flat), lower=True)  # L^-1 J^T: (P, n K)
        if joint:
            return tf.reshape(tf.matmul(w, w, transpose_a=True), (n, k, n, k))
        w = tf.reshape(w, (-1, n, k))
        return tf.einsum("pik,pil->ikl", w, w)

    return cov4, factor.jitter


def _kron_covariance(model, curvature, delta, scale):
    layers = []
    for rule in curvature.rules:
        ea, qa, eg, qg = curvature.eigen[rule.name]
        precision = scale * ea[:, None] * eg[None, :] + delta[curvature.group_index[rule.name]]
        layers.append((rule, qa, qg, 1.0 / precision))
    rest = None if curvature.rest is None else _diagonal_term(model, curvature.rest, delta, scale)
    rules = [rule for rule, *_ in layers]

    def cov4(x, joint):
        _, probes = rules_lib.probe_layers(model, rules, x)
        by_name = {rule.name: (patches, d) for rule, patches, d in probes}
        total = 0.0
        for rule, qa, qg, inverse in layers:
            patches, d = by_name[rule.name]
            a = tf.einsum("npc,cd->npd", curvature._augmented(rule, patches), qa)  # (n, P, C) in A's eigenbasis
            g = tf.einsum("nkpo,oq->nkpq", tf.cast(d, F64), qg)  # (n, K, P, O) in G's eigenbasis
            total += curvature_lib.kron_layer_covariance(a, g, inverse, joint)
        if rest is not None:
            total += rest(x, joint)
        return total

    return cov4, 0.0


def _features(model, x_train, chunk=256):
    """A FeatureMap of `model` (the engine's structured path) and the factors of
    x_train (N, ...), computed in chunks."""
    feature_map = features_lib.FeatureMap(model, "structured", x_train[:1])
    parts = [feature_map(tf.constant(x_train[i : i + chunk])) for i in range(0, len(x_train), chunk)]
    factors = [tuple(tf.concat(pieces, axis=0) for pieces in zip(*group)) for group in zip(*parts)]
    return feature_map, factors


def _function_space_covariance(model, curvature, delta, scale):
    feature_map, train = _features(model, curvature.x_train)
    groups, names = feature_map.groups, curvature.groups
    inverse_delta = 1.0 / delta
    factor = curvature.factor(delta, scale)
    chol, lam = factor.chol, curvature.lam

    def weighted(blocks, pattern):
        return tf.einsum(pattern, tf.stack([blocks[name] for name in names]), inverse_delta)

    def cov4(x, joint):
        fx = feature_map(x)  # the FeatureMap's own tf.function, traced into this one
        cross = contract_lib.contract(groups, fx, train, "full", F64, True)
        k_star = weighted(cross, "gijkl,g->ijkl")  # (n, N, K, K)
        k_star_l = tf.einsum("ijkl,jlc->ikjc", k_star, lam)  # K_*X L: (n, K, N, K)
        n, k = tf.shape(k_star_l)[0], tf.shape(k_star_l)[1]
        w = tf.linalg.triangular_solve(chol, tf.transpose(tf.reshape(k_star_l, (n * k, -1))), lower=True)
        if joint:
            prior = weighted(contract_lib.contract(groups, fx, fx, "full", F64, True), "gijkl,g->ikjl")
            return prior - scale * tf.reshape(tf.matmul(w, w, transpose_a=True), (n, k, n, k))
        prior = weighted(contract_lib.contract(groups, fx, None, "diagonal", F64, True), "gikl,g->ikl")
        w = tf.reshape(w, (-1, n, k))
        return prior - scale * tf.einsum("pik,pil->ikl", w, w)

    return cov4, factor.jitter


# -- NTK-GP -----------------------------------------------------------------------------
def _for_gp(gp):
    """The `CompiledPredictive` of an `NTKGP.empirical` posterior (loaded or in memory)."""
    model = gp.model
    if model is None:
        raise ValueError(
            "Only NTK-GPs with an empirical NTK (a network) can be compiled; an infinite-width GP has no model to run."
        )
    feature_map, train = _features(model, gp.x_train)
    groups, output, k = feature_map.groups, gp.output, gp.num_outputs
    chol, alpha = gp.factorization.chol, gp._alpha
    center = gp.mean_fn is not None

    def prior_mean(x):
        if center:
            return _outputs(model, x)
        return tf.zeros((tf.shape(x)[0], k), F64)

    def parts(x):
        fx = feature_map(x)  # the FeatureMap's own tf.function, traced into this one
        n = tf.shape(x)[0]
        if output == "independent":
            cross = contract_lib.contract(groups, fx, train, "trace", F64, False)  # (n, N)
        else:
            cross = _flatten_blocks(contract_lib.contract(groups, fx, train, "full", F64, False))
        mean = prior_mean(x) + tf.reshape(tf.matmul(cross, alpha), (n, k))
        w = tf.linalg.triangular_solve(chol, tf.transpose(cross), lower=True)
        return fx, n, mean, w

    def marginal(x):
        fx, n, mean, w = parts(x)
        diagonal = contract_lib.contract(groups, fx, None, "diagonal", F64, False)  # (n, K, K)
        if output == "independent":
            prior = tf.reduce_mean(tf.linalg.diag_part(diagonal), axis=1)
            variance = prior - tf.reduce_sum(w**2, axis=0)
            return mean, variance[:, None, None] * tf.eye(k, dtype=F64)
        w = tf.reshape(w, (-1, n, k))
        return mean, diagonal - tf.einsum("pik,pil->ikl", w, w)

    def joint(x):
        fx, n, mean, w = parts(x)
        if output == "independent":
            prior = contract_lib.contract(groups, fx, fx, "trace", F64, False)
            cov = prior - tf.matmul(w, w, transpose_a=True)  # (n, n), shared by the K outputs
            cov4 = tf.einsum("ij,kl->ikjl", cov, tf.eye(k, dtype=F64))
            return mean, _joint_matrix(cov4)
        prior = _flatten_blocks(contract_lib.contract(groups, fx, fx, "full", F64, False))
        return mean, prior - tf.matmul(w, w, transpose_a=True)

    return CompiledPredictive(model, "regression", gp.noise_variance, gp.jitter, marginal, joint)


def compile_predictive(posterior, lock=None):
    """The `CompiledPredictive` of a fitted Laplace or an empirical NTKGP, traced
    once under `lock` (the lock of everything that traces the posterior's model;
    default a new one)."""
    with lock or threading.RLock():
        if isinstance(posterior, laplace_lib.Laplace):
            predictive = _for_laplace(posterior)
        elif isinstance(posterior, gp_lib.NTKGP):
            predictive = _for_gp(posterior)
        else:
            raise ValueError(
                f"Cannot compile a {type(posterior).__name__}; expected a fitted Laplace or an NTKGP.empirical."
            )
        predictive.warm_up()
    return predictive
