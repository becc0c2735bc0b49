"""Compiled predictives: a posterior's marginal and joint prediction as two tf.functions.

`Laplace.predict` and `NTKGP.predict` are written for analysis: they check their
inputs in Python and return TFP distributions. For many small queries (a
server, a bandit's rounds) `compile_predictive(posterior)` takes the posterior's
`predictive_functions()` (pure TensorFlow functions of x over the posterior's
current factors, the same covariance functions its own predict runs) and traces
them once with the fixed input signature (None, *input_shape): no retracing, no
Python per example, factorizations done once.

  marginal(x (n, ...)) -> mean (n, K) float64, covariance blocks (n, K, K) float64
  joint(x (n, ...))    -> mean (n, K) float64, covariance (n K, n K) float64, [n, k] order

Tracing the probed forward pass patches the model's layers, so every trace of
one model runs under that model's lock (`compile_predictive(posterior, lock)`,
shared with other computations that trace the model); after warm-up, calls run
concurrently.
"""

import dataclasses
import math
import threading
import typing

import numpy as np
import tensorflow as tf

from keras_ntk.predictive import links

F64 = tf.float64


@dataclasses.dataclass(frozen=True)
class PredictiveFunctions:
    """A posterior's prediction at its current hyperparameters, as pure TensorFlow.

    Attributes:
      model: the Keras model the functions run (its input signature is theirs).
      likelihood: "regression" or "classification".
      noise_variance: s^2 (regression; 0.0 for classification).
      jitter: the jitter the posterior's factorization needed (0.0 when none).
      marginal: x (n, ...) -> (mean (n, K), covariance blocks (n, K, K)), float64.
      joint: x (n, ...) -> (mean (n, K), covariance (n K, n K)), float64.
    """

    model: object
    likelihood: str
    noise_variance: float
    jitter: float
    marginal: typing.Callable
    joint: typing.Callable


class CompiledPredictive:
    """Compiled marginal and joint predictive of one posterior (see `compile_predictive`).

    Attributes:
      likelihood: "regression" or "classification".
      num_outputs: K.
      noise_variance: s^2 (regression), added on request.
      jitter: the jitter the posterior factorization needed (reported, 0.0 when none).
      input_shape, input_dtype: of one example, without the batch axis.
    """

    def __init__(self, functions):
        model = functions.model
        self.model = model
        self.likelihood = functions.likelihood
        self.noise_variance = float(functions.noise_variance)
        self.jitter = float(functions.jitter)
        self.input_shape = tuple(model.input_shape[1:])
        self.input_dtype = np.dtype(model.inputs[0].dtype)
        self.num_outputs = int(math.prod(model.output_shape[1:]))
        spec = [tf.TensorSpec((None, *self.input_shape), self.input_dtype)]
        self._marginal = tf.function(functions.marginal, input_signature=spec)
        self._joint = tf.function(functions.joint, input_signature=spec)
        k = self.num_outputs
        moments = [tf.TensorSpec((None, k), F64), tf.TensorSpec((None, k, k), F64)]
        self._probit = tf.function(links.mean_field_probit, input_signature=moments)
        self._monte_carlo = tf.function(
            links.monte_carlo, input_signature=moments + [tf.TensorSpec((), tf.int32), tf.TensorSpec((2,), tf.int64)]
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


def compile_predictive(posterior, lock=None):
    """The `CompiledPredictive` of a fitted Laplace or an NTKGP.empirical, traced
    once under `lock` (the lock of everything that traces the posterior's model;
    default a new one).

    Raises:
      ValueError: an object without `predictive_functions`, an unfitted Laplace, or
        an NTK-GP without a network.
    """
    if not callable(getattr(posterior, "predictive_functions", None)):
        raise ValueError(
            f"Cannot compile a {type(posterior).__name__}; expected a fitted Laplace or an NTKGP.empirical."
        )
    with lock or threading.RLock():
        predictive = CompiledPredictive(posterior.predictive_functions())
        predictive.warm_up()
    return predictive
