"""Predictive uncertainty on the NTK: GP posteriors, gradient-descent dynamics, Laplace.

  NTKGP                            GP posterior with an empirical or infinite-width NTK / NNGP
  gradient_descent_mse(_ensemble)  closed-form gradient-flow dynamics of linearized networks
  Laplace, EvidenceCallback        linearized Laplace with evidence maximization
  compile_predictive               a posterior's marginal / joint prediction as tf.functions
  factorize, FactorizationError    float64 Cholesky with reported adaptive jitter
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
from keras_ntk.predictive.compiled import CompiledPredictive, compile_predictive
from keras_ntk.predictive.dynamics import (
    GradientDescentMSE,
    GradientDescentMSEEnsemble,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
)
from keras_ntk.predictive.gp import NTKGP
from keras_ntk.predictive.laplace import EvidenceCallback, Laplace
from keras_ntk.predictive.numerics import Factorization, FactorizationError, factorize

__all__ = [
    "CompiledPredictive",
    "EvidenceCallback",
    "Factorization",
    "FactorizationError",
    "GradientDescentMSE",
    "GradientDescentMSEEnsemble",
    "Laplace",
    "NTKGP",
    "compile_predictive",
    "factorize",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
]
