"""Class probabilities E[softmax(f)] for Gaussian logits f ~ N(mean, cov), per example.

Both take mean (n, K) and cov (n, K, K) float64 and return probabilities (n, K),
in pure TensorFlow (the eager Laplace.predict and compiled predictives call them).
"""

import math

import tensorflow as tf

LINKS = ("probit", "mc")
MC_JITTER = 1e-10


def mean_field_probit(mean, cov):
    """Mean-field probit approximation (Lu, Ie & Sha 2020), from the variances of the
    logit differences:

        p_k ~ 1 / (1 + sum_{j != k} exp(-(mu_k - mu_j) / sqrt(1 + pi/8 Var(f_k - f_j)))),

    normalized to sum to one.
    """
    variance = tf.linalg.diag_part(cov)
    difference_variance = variance[:, :, None] + variance[:, None, :] - 2 * cov
    scaled = (mean[:, :, None] - mean[:, None, :]) / tf.sqrt(1 + math.pi / 8 * difference_variance)
    probs = 1.0 / tf.reduce_sum(tf.exp(-scaled), axis=2)  # the j = k term is exp(0) = 1
    return probs / tf.reduce_sum(probs, axis=1, keepdims=True)


def monte_carlo(mean, cov, samples, seed):
    """softmax averaged over `samples` logit draws from N(mean_i, cov_i + MC_JITTER I),
    stateless in `seed` ((2,) int64: the same seed gives the same probabilities)."""
    k = tf.shape(mean)[1]
    chol = tf.linalg.cholesky(cov + MC_JITTER * tf.eye(k, dtype=mean.dtype))
    eps = tf.random.stateless_normal(tf.stack([samples, tf.shape(mean)[0], k]), seed=seed, dtype=mean.dtype)
    logits = mean[None] + tf.einsum("nkl,snl->snk", chol, eps)
    return tf.reduce_mean(tf.nn.softmax(logits), axis=0)
