"""The linearized Laplace posterior of a bandit's reward network, updated round by round.

At a retraining the network is at its MAP weights theta* over the n rounds so
far; `keras_ntk.predictive.Laplace` tunes the prior precision delta and the noise
variance s^2 by maximizing its log marginal likelihood (`evidence`). The
posterior over weights is then N(theta*, Sigma_0), Sigma_0 = (GGN / s^2 + delta I)^-1
in one of the Laplace structures (GGN = sum_i g_i g_i^T for a scalar Gaussian
likelihood, g the per-example gradients):

  "diag"        the diagonal of the GGN;
  "last_layer"  the full GGN of the readout layer's weights, the rest fixed;
  "kron"        K-FAC per Dense layer: GGN_l ~ (sum_i a~_i a~_i^T) (x) (sum_i d_i d_i^T) / n
                (a~, d the layer's augmented inputs and deltas, `network.factors`),
                in the eigenbases Q_A, Q_G of the two factors.

Each structure maps an arm input u to whitened features w(u) (R,) with
w(u) . w(u') = g(u)^T Sigma_0 g(u'): g / sqrt(diag precision) ("diag"),
L^-1 g_last with L L^T the readout precision ("last_layer"), and
((Q_A^T a~) (x) (Q_G^T d)) / sqrt(e_A e_G^T / (n s^2) + delta) per layer ("kron").
The predictive of the linearized network f_lin(u) = f(u; theta*) + g(u)^T (theta - theta*)
is N(f(u; theta*), |w(u)|^2), exactly what `Laplace.functional_covariance` gives.

Between retrainings every played round (u_j, r_j) is conditioned on exactly
(Gaussian prior, linear-Gaussian likelihood), so nothing is refitted: with W_n
(n', R) the whitened features of the n' rounds since the retraining, C = s^2 I +
W_n W_n^T and its Cholesky factor L_C extended by one row per round,

  mean(u) = f(u; theta*) + w(u)^T W_n^T C^-1 (r_n - f(U_n; theta*)),
  cov(u, u') = w(u) . w(u') - w(u)^T W_n^T C^-1 W_n w(u'),

the posterior of the weight-space precision Sigma_0^-1 + sum_j g_j g_j^T / s^2
(the rank-one updates) without forming it. The state is a dict of tf.Variables;
`features`, `predictive` and `condition` run inside tf.function.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import functools
import math

import numpy as np
import tensorflow as tf

from keras_ntk import traced
from keras_ntk.bandits import network
from keras_ntk.predictive import Laplace, factorize

STRUCTURES = ("last_layer", "diag", "kron")
F64 = tf.float64


def _variable(value, dtype=None):
    return tf.Variable(tf.convert_to_tensor(value, dtype), trainable=False)


def _layer_shapes(weights):
    """[(C_l + 1, O_l)] of every Dense layer."""
    return [(kernel.shape[0] + 1, kernel.shape[1]) for kernel in weights[0::2]]


def feature_dim(structure, weights):
    """R, the length of the whitened features: P, or the readout's parameter count."""
    shapes = _layer_shapes(weights)
    if structure == "last_layer":
        return math.prod(shapes[-1])
    return sum(math.prod(s) for s in shapes)


def initial_state(structure, weights, capacity, prior_precision, noise_variance):
    """The prior N(theta_0, I / delta) before any data, with room for `capacity`
    conditioned rounds; a dict of tf.Variables."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}.")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}.")
    shapes = _layer_shapes(weights)
    scale = 1.0 / math.sqrt(prior_precision)
    state = {
        "noise_variance": _variable(noise_variance, F64),
        "w": _variable(tf.zeros((capacity, feature_dim(structure, weights)), tf.float32)),
        "residual": _variable(tf.zeros(capacity, F64)),
        "chol_c": _variable(tf.eye(capacity, dtype=F64)),
        "count": _variable(0, tf.int32),
    }
    if structure == "last_layer":
        state["chol"] = _variable(tf.eye(math.prod(shapes[-1]), dtype=F64) / scale)
    else:
        state["inv_sqrt"] = [_variable(tf.fill(s, np.float32(scale))) for s in shapes]
    if structure == "kron":
        state["q_a"] = [_variable(tf.eye(c, dtype=tf.float32)) for c, _ in shapes]
        state["q_g"] = [_variable(tf.eye(o, dtype=tf.float32)) for _, o in shapes]
    return state


def features(structure, spec, weights, state, inputs):
    """f(u; theta*) (n,) float32 and whitened features w(u) (n, R) float32 of arm inputs (n, input_dim)."""
    f, per_layer = network.factors(spec, weights, inputs)
    if structure == "last_layer":
        g = tf.cast(network.layer_gradients(*per_layer[-1]), F64)
        w = tf.transpose(tf.linalg.triangular_solve(state["chol"], tf.transpose(g), lower=True))
        return f, tf.cast(w, tf.float32)
    parts = []
    for i, (a, d) in enumerate(per_layer):
        if structure == "kron":
            a, d = tf.matmul(a, state["q_a"][i]), tf.matmul(d, state["q_g"][i])
        parts.append(network.layer_gradients(a, d) * tf.reshape(state["inv_sqrt"][i], (1, -1)))
    return f, tf.concat(parts, axis=1)


def _conditioning_terms(state, w):
    """L_C^-1 W_n w^T (capacity, n) and L_C^-1 (r_n - f_n) (capacity, 1), zero beyond the rounds held."""
    capacity = tf.shape(state["residual"])[0]
    held = tf.cast(tf.range(capacity) < state["count"], F64)
    cross = tf.matmul(tf.cast(state["w"], F64), tf.cast(w, F64), transpose_b=True) * held[:, None]
    v = tf.linalg.triangular_solve(state["chol_c"], cross, lower=True)
    alpha = tf.linalg.triangular_solve(state["chol_c"], (state["residual"] * held)[:, None], lower=True)
    return v, alpha


def predictive(state, f, w):
    """Posterior mean (n,) and covariance (n, n) float64 of the linearized f at
    inputs with outputs f (n,) and whitened features w (n, R)."""
    v, alpha = _conditioning_terms(state, w)
    w = tf.cast(w, F64)
    mean = tf.cast(f, F64) + tf.matmul(v, alpha, transpose_a=True)[:, 0]
    cov = tf.matmul(w, w, transpose_b=True) - tf.matmul(v, v, transpose_a=True)
    return mean, cov


def predictive_variance(state, f, w):
    """Posterior mean (n,) and variance (n,) float64 (the diagonal of `predictive`)."""
    v, alpha = _conditioning_terms(state, w)
    mean = tf.cast(f, F64) + tf.matmul(v, alpha, transpose_a=True)[:, 0]
    variance = tf.reduce_sum(tf.cast(w, F64) ** 2, axis=1) - tf.reduce_sum(v**2, axis=0)
    return mean, tf.maximum(variance, 0.0)


def condition(state, w, residual):
    """Condition on one observed round: whitened features w (R,), residual r - f(u; theta*).

    Appends a row to W_n and extends the Cholesky factor of C = s^2 I + W_n W_n^T
    by it: l = L_C^-1 W_n w, new diagonal sqrt(s^2 + |w|^2 - |l|^2).
    """
    n = state["count"]
    capacity = tf.shape(state["residual"])[0]
    tf.debugging.assert_less(n, capacity, "More rounds since the last retraining than the posterior holds.")
    v, _ = _conditioning_terms(state, w[None, :])
    l = v[:, 0]
    w64 = tf.cast(w, F64)
    diagonal = tf.sqrt(tf.maximum(state["noise_variance"] + tf.reduce_sum(w64**2) - tf.reduce_sum(l**2),
                                  1e-12 * state["noise_variance"]))
    row = l + tf.one_hot(n, capacity, dtype=F64) * diagonal
    state["chol_c"].scatter_nd_update([[n]], row[None, :])
    state["w"].scatter_nd_update([[n]], w[None, :])
    state["residual"].scatter_nd_update([[n]], tf.cast(residual, F64)[None])
    state["count"].assign_add(1)


@functools.lru_cache(maxsize=None)
def _compiled_curvature(structure, spec):
    """The GGN statistics of the first `count` history rows, in float64."""

    def curvature(weights, inputs, count):
        mask = tf.cast(tf.range(tf.shape(inputs)[0]) < count, tf.float32)[:, None]
        _, per_layer = network.factors(spec, weights, inputs)
        per_layer = [(a * mask, d) for a, d in per_layer]
        if structure == "last_layer":
            g = tf.cast(network.layer_gradients(*per_layer[-1]), F64)
            return [tf.matmul(g, g, transpose_a=True)]
        if structure == "diag":
            return [tf.matmul(tf.cast(a**2, F64), tf.cast(d**2, F64), transpose_a=True) for a, d in per_layer]
        return [
            (tf.matmul(tf.cast(a, F64), tf.cast(a, F64), transpose_a=True),
             tf.matmul(tf.cast(d * mask, F64), tf.cast(d * mask, F64), transpose_a=True))
            for a, d in per_layer
        ]

    return traced.per_object(curvature)


def refit(structure, spec, weights, state, inputs, count, prior_precision, noise_variance):
    """Rebuild Sigma_0 at the current weights from the first `count` history rows
    (inputs (capacity, input_dim)) and forget the conditioned rounds.

    Returns {"jitter": the jitter the readout precision's Cholesky needed (last_layer), else 0}.
    """
    delta, s2 = float(prior_precision), float(noise_variance)
    statistics = _compiled_curvature(structure, spec)(weights, inputs, tf.constant(count, tf.int32))
    jitter = 0.0
    if structure == "last_layer":
        precision = statistics[0] / s2 + delta * tf.eye(statistics[0].shape[0], dtype=F64)
        factor = factorize(precision, "readout posterior precision")
        state["chol"].assign(factor.chol)
        jitter = factor.jitter
    elif structure == "diag":
        for inv_sqrt, ggn in zip(state["inv_sqrt"], statistics):
            inv_sqrt.assign(tf.cast(tf.math.rsqrt(ggn / s2 + delta), tf.float32))
    else:
        for i, (a, g) in enumerate(statistics):
            e_a, q_a = tf.linalg.eigh(a)
            e_g, q_g = tf.linalg.eigh(g / count)
            precision = tf.maximum(e_a, 0.0)[:, None] * tf.maximum(e_g, 0.0)[None, :] / s2 + delta
            state["q_a"][i].assign(tf.cast(q_a, tf.float32))
            state["q_g"][i].assign(tf.cast(q_g, tf.float32))
            state["inv_sqrt"][i].assign(tf.cast(tf.math.rsqrt(precision), tf.float32))
    state["noise_variance"].assign(s2)
    state["count"].assign(0)
    state["chol_c"].assign(tf.eye(state["chol_c"].shape[0], dtype=F64))
    return {"jitter": jitter}


def evidence(model, structure, inputs, rewards, prior_precision, noise_variance, steps, learning_rate,
             batch_size=None):
    """Tune delta and s^2 by the Laplace evidence at the model's current weights.

    Fits `keras_ntk.predictive.Laplace(model, "regression", structure)` from the
    given starting values on (inputs (n, input_dim), rewards (n,)) and runs
    `steps` Adam steps of `optimize_hyperparameters`.
    Returns {"prior_precision", "noise_variance", "log_marginal_likelihood"}.
    """
    laplace = Laplace(model, "regression", structure=structure, prior_precision=prior_precision,
                      noise_variance=noise_variance)
    laplace.fit((inputs, rewards[:, None]), batch_size=batch_size or len(inputs))
    return laplace.optimize_hyperparameters(steps=steps, learning_rate=learning_rate)
