"""The linearized Laplace posterior of a bandit's reward network, updated round by round.

At a retraining the network is at its MAP weights theta* over the n rounds so
far; the prior precision delta and the noise variance s^2 are tuned by Adam steps
on the Laplace log marginal likelihood (`evidence`: the statistics, evidence and
steps of `keras_ntk.predictive.Laplace(model, "regression", structure)`'s `fit`
and `optimize_hyperparameters`, computed in one compiled call from the network's
factors, so that a retraining traces nothing; the tests check it against
Laplace). The posterior over weights is then N(theta*, Sigma_0), Sigma_0 =
(GGN / s^2 + delta I)^-1 in one of the Laplace structures (GGN = sum_i g_i g_i^T
for a scalar Gaussian likelihood, g the per-example gradients):

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
(the rank-one updates) without forming it. A round's cost is that of L_C^-1 W_n w^T
over the n' rounds held (`conditioning_terms`, computed once by the scoring and
reused by `condition` for the played arm). The state is a dict of tf.Variables;
`features`, `predictive` and `condition` run inside tf.function.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import functools
import math

import numpy as np
import tensorflow as tf

from keras_ntk import traced
from keras_ntk.bandits import network
from keras_ntk.predictive import factorize

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
        "w": _variable(tf.zeros((capacity, feature_dim(structure, weights)), F64)),  # float64: no cast per round
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


def conditioning_terms(state, w):
    """L_C^-1 W_n w^T (n', n) and L_C^-1 (r_n - f_n) (n', 1) float64 over the n' rounds
    held since the retraining, for whitened features w (n, R)."""
    held = state["count"]
    chol = state["chol_c"][:held, :held]
    # (w W_n^T)^T: in this order Eigen's float64 product is ~1.5x faster than W_n w^T.
    cross = tf.transpose(tf.matmul(tf.cast(w, F64), state["w"][:held], transpose_b=True))
    v = tf.linalg.triangular_solve(chol, cross, lower=True)
    alpha = tf.linalg.triangular_solve(chol, state["residual"][:held, None], lower=True)
    return v, alpha


def predictive(state, f, w, terms=None):
    """Posterior mean (n,) and covariance (n, n) float64 of the linearized f at
    inputs with outputs f (n,) and whitened features w (n, R); `terms` are their
    `conditioning_terms` when already computed."""
    v, alpha = conditioning_terms(state, w) if terms is None else terms
    w = tf.cast(w, F64)
    mean = tf.cast(f, F64) + tf.matmul(v, alpha, transpose_a=True)[:, 0]
    cov = tf.matmul(w, w, transpose_b=True) - tf.matmul(v, v, transpose_a=True)
    return mean, cov


def predictive_variance(state, f, w, terms=None):
    """Posterior mean (n,) and variance (n,) float64 (the diagonal of `predictive`)."""
    v, alpha = conditioning_terms(state, w) if terms is None else terms
    mean = tf.cast(f, F64) + tf.matmul(v, alpha, transpose_a=True)[:, 0]
    variance = tf.reduce_sum(tf.cast(w, F64) ** 2, axis=1) - tf.reduce_sum(v**2, axis=0)
    return mean, tf.maximum(variance, 0.0)


def condition(state, w, residual, l=None):
    """Condition on one observed round: whitened features w (R,), residual r - f(u; theta*).

    Appends a row to W_n and extends the Cholesky factor of C = s^2 I + W_n W_n^T
    by it: l = L_C^-1 W_n w (n',), new diagonal sqrt(s^2 + |w|^2 - |l|^2). `l` is
    the played arm's column of the scoring's `conditioning_terms` when given.
    """
    n = state["count"]
    capacity = tf.shape(state["residual"])[0]
    tf.debugging.assert_less(n, capacity, "More rounds since the last retraining than the posterior holds.")
    if l is None:
        l = conditioning_terms(state, w[None, :])[0][:, 0]
    w64 = tf.cast(w, F64)
    diagonal = tf.sqrt(tf.maximum(state["noise_variance"] + tf.reduce_sum(w64**2) - tf.reduce_sum(l**2),
                                  1e-12 * state["noise_variance"]))
    row = tf.concat([l, diagonal[None], tf.zeros([capacity - n - 1], F64)], axis=0)
    state["chol_c"].scatter_nd_update([[n]], row[None, :])
    state["w"].scatter_nd_update([[n]], w64[None, :])
    state["residual"].scatter_nd_update([[n]], tf.cast(residual, F64)[None])
    state["count"].assign_add(1)


_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7  # Adam's defaults, as Laplace.optimize_hyperparameters uses them


def _curvature(structure, spec, weights, inputs, mask):
    """The GGN statistics of the masked rows, float64: [G_last] (last_layer), the
    GGN diagonals per layer (diag), or per layer (A = sum a~ a~^T, G = sum d d^T) (kron)."""
    _, per_layer = network.factors(spec, weights, inputs)
    per_layer = [(a * mask[:, None], d) for a, d in per_layer]
    if structure == "last_layer":
        g = tf.cast(network.layer_gradients(*per_layer[-1]), F64)
        return [tf.matmul(g, g, transpose_a=True)]
    if structure == "diag":
        return [tf.matmul(tf.cast(a**2, F64), tf.cast(d**2, F64), transpose_a=True) for a, d in per_layer]
    return [
        (tf.matmul(tf.cast(a, F64), tf.cast(a, F64), transpose_a=True),
         tf.matmul(tf.cast(d * mask[:, None], F64), tf.cast(d * mask[:, None], F64), transpose_a=True))
        for a, d in per_layer
    ]


def _spectra(structure, statistics, count):
    """What the evidence and the posterior need of the statistics: the readout GGN and
    its eigenvalues (last_layer), the GGN diagonals (diag), or per layer the
    eigenvalues and eigenvectors of A and G / n (kron; eigenvalues clipped at 0)."""
    if structure == "last_layer":
        return {"ggn": statistics[0], "eigenvalues": tf.maximum(tf.linalg.eigvalsh(statistics[0]), 0.0)}
    if structure == "diag":
        return {"ggn": statistics}
    layers = []
    for a, g in statistics:
        e_a, q_a = tf.linalg.eigh(a)
        e_g, q_g = tf.linalg.eigh(g / tf.cast(count, F64))
        layers.append((tf.maximum(e_a, 0.0), q_a, tf.maximum(e_g, 0.0), q_g))
    return {"kron": layers}


def _log_det_ratio(structure, spectra, delta, scale):
    """log det(c GGN + delta I) - log det(delta I) over the structure's parameters, c = 1 / s^2."""
    if structure == "last_layer":
        return tf.reduce_sum(tf.math.log1p(scale * spectra["eigenvalues"] / delta))
    if structure == "diag":
        return tf.add_n([tf.reduce_sum(tf.math.log(scale * ggn + delta) - tf.math.log(delta))
                         for ggn in spectra["ggn"]])
    return tf.add_n([tf.reduce_sum(tf.math.log(scale * e_a[:, None] * e_g[None, :] + delta) - tf.math.log(delta))
                     for e_a, _, e_g, _ in spectra["kron"]])


def log_evidence(structure, spectra, sse, theta_sq, count, delta, noise_variance):
    """The Laplace log marginal likelihood of a scalar Gaussian likelihood (float64):

        -sse / (2 s^2) - n / 2 log(2 pi s^2) - delta / 2 |theta|^2 - 1/2 log(det(GGN / s^2 + delta I) / delta^P),

    sse the residual sum of squares at theta*, |theta|^2 over the structure's parameters."""
    n = tf.cast(count, F64)
    scale = 1.0 / noise_variance
    fit = -0.5 * scale * sse - 0.5 * n * tf.math.log(2 * math.pi * noise_variance)
    return fit - 0.5 * delta * theta_sq - 0.5 * _log_det_ratio(structure, spectra, delta, scale)


@functools.lru_cache(maxsize=None)
def _compiled_evidence(structure, spec):
    """Statistics, spectra and the evidence maximization of the first `count` history rows."""

    def tune(weights, inputs, rewards, count, prior_precision, noise_variance, steps, learning_rate):
        mask = tf.cast(tf.range(tf.shape(inputs)[0]) < count, tf.float32)
        residual = tf.cast(network.forward(spec, weights, inputs) - rewards, F64)
        sse = tf.reduce_sum(tf.cast(mask, F64) * residual**2)
        covered = weights[-2:] if structure == "last_layer" else weights
        theta_sq = tf.add_n([tf.reduce_sum(tf.cast(w, F64) ** 2) for w in covered])
        spectra = _spectra(structure, _curvature(structure, spec, weights, inputs, mask), count)
        log_delta, log_noise = tf.math.log(prior_precision), tf.math.log(noise_variance)
        first, second = tf.zeros(2, F64), tf.zeros(2, F64)
        for step in tf.range(1, steps + 1):
            with tf.GradientTape() as tape:
                tape.watch([log_delta, log_noise])
                loss = -log_evidence(structure, spectra, sse, theta_sq, count, tf.exp(log_delta), tf.exp(log_noise))
            grad = tf.stack(tape.gradient(loss, [log_delta, log_noise]))
            first += (grad - first) * (1 - _BETA_1)
            second += (grad**2 - second) * (1 - _BETA_2)
            t = tf.cast(step, F64)
            rate = learning_rate * tf.sqrt(1 - _BETA_2**t) / (1 - _BETA_1**t)
            change = rate * first / (tf.sqrt(second) + _EPSILON)
            log_delta, log_noise = log_delta - change[0], log_noise - change[1]
        delta, noise = tf.exp(log_delta), tf.exp(log_noise)
        return delta, noise, log_evidence(structure, spectra, sse, theta_sq, count, delta, noise), spectra

    return traced.per_object(tune)


def evidence(structure, spec, weights, inputs, rewards, count, prior_precision, noise_variance, steps,
             learning_rate):
    """Tune delta and s^2 by the Laplace evidence at the current weights, in one compiled call.

    The statistics of the first `count` rows of the history (inputs (capacity,
    input_dim), rewards (capacity,)) are those of `keras_ntk.predictive.Laplace(model,
    "regression", structure).fit` (K-FAC's G divided by n), and the `steps` Adam
    steps on (log delta, log s^2) at `learning_rate` those of its
    `optimize_hyperparameters`, which the tests check this against.
    Returns ({"prior_precision", "noise_variance", "log_marginal_likelihood"}, spectra for `refit`).
    """
    delta, noise, log_z, spectra = _compiled_evidence(structure, spec)(
        weights, inputs, rewards, tf.constant(count, tf.int32), tf.constant(prior_precision, F64),
        tf.constant(noise_variance, F64), tf.constant(steps, tf.int32), tf.constant(learning_rate, F64))
    tuned = {"prior_precision": float(delta), "noise_variance": float(noise), "log_marginal_likelihood": float(log_z)}
    return tuned, spectra


def refit(structure, state, spectra, prior_precision, noise_variance):
    """Rebuild Sigma_0 from the `spectra` of `evidence` at (delta, s^2) and forget the conditioned rounds.

    Returns {"jitter": the jitter the readout precision's Cholesky needed (last_layer), else 0}.
    """
    delta, s2 = float(prior_precision), float(noise_variance)
    jitter = 0.0
    if structure == "last_layer":
        ggn = spectra["ggn"]
        factor = factorize(ggn / s2 + delta * tf.eye(ggn.shape[0], dtype=F64), "readout posterior precision")
        state["chol"].assign(factor.chol)
        jitter = factor.jitter
    elif structure == "diag":
        for inv_sqrt, ggn in zip(state["inv_sqrt"], spectra["ggn"]):
            inv_sqrt.assign(tf.cast(tf.math.rsqrt(ggn / s2 + delta), tf.float32))
    else:
        for i, (e_a, q_a, e_g, q_g) in enumerate(spectra["kron"]):
            precision = e_a[:, None] * e_g[None, :] / s2 + delta
            state["q_a"][i].assign(tf.cast(q_a, tf.float32))
            state["q_g"][i].assign(tf.cast(q_g, tf.float32))
            state["inv_sqrt"][i].assign(tf.cast(tf.math.rsqrt(precision), tf.float32))
    state["noise_variance"].assign(s2)
    state["count"].assign(0)
    state["chol_c"].assign(tf.eye(state["chol_c"].shape[0], dtype=F64))
    return {"jitter": jitter}
