"""Predictive uncertainty on the NTK: GP posteriors, gradient-descent dynamics, Laplace.

  NTKGP                            GP posterior with an empirical or infinite-width NTK / NNGP
  gradient_descent_mse(_ensemble)  closed-form gradient-flow dynamics of linearized networks
  Laplace, EvidenceCallback        linearized Laplace with evidence maximization
  factorize, FactorizationError    float64 Cholesky with reported adaptive jitter
"""

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
    "EvidenceCallback",
    "Factorization",
    "FactorizationError",
    "GradientDescentMSE",
    "GradientDescentMSEEnsemble",
    "Laplace",
    "NTKGP",
    "factorize",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
]
