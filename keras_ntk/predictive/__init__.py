"""Predictive uncertainty on the NTK: GP posteriors, gradient-descent dynamics, Laplace.

  NTKGP                            GP posterior with an empirical or infinite-width NTK / NNGP
  gradient_descent_mse(_ensemble)  closed-form gradient-flow dynamics of linearized networks
  Laplace, EvidenceCallback        linearized Laplace with evidence maximization, over
                                   subset_of_weights ("all", "last_layer", a list of layers) x
                                   hessian_structure ("full", "diag", "kron", "function_space");
                                   `structure` shorthands name common pairs (selection.STRUCTURES)
  Curvature, make_curvature        the curvature interface, one class per Hessian structure
                                   (FullCurvature, DiagonalCurvature, KronCurvature,
                                   FunctionSpaceCurvature)
  compile_predictive               a posterior's marginal / joint prediction as tf.functions,
                                   tracing the same covariance functions as `predict`
  mean_field_probit, monte_carlo   class probabilities for Gaussian logits (links)
  load_posterior                   a Laplace or NTKGP from a posterior directory
                                   (posterior_format: files, metadata schema, atomic save)
  factorize, FactorizationError    float64 Cholesky with reported adaptive jitter
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
from keras_ntk.predictive.compiled import CompiledPredictive, PredictiveFunctions, compile_predictive
from keras_ntk.predictive.curvature import (
    Curvature,
    DiagonalCurvature,
    FullCurvature,
    FunctionSpaceCurvature,
    KronCurvature,
    make_curvature,
)
from keras_ntk.predictive.dynamics import (
    GradientDescentMSE,
    GradientDescentMSEEnsemble,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
)
from keras_ntk.predictive.gp import NTKGP
from keras_ntk.predictive.laplace import EvidenceCallback, Laplace
from keras_ntk.predictive.links import mean_field_probit, monte_carlo
from keras_ntk.predictive.numerics import Factorization, FactorizationError, factorize
from keras_ntk.predictive.posterior_format import CorruptPosterior
from keras_ntk.predictive.saved import load_posterior
from keras_ntk.predictive.selection import HESSIAN_STRUCTURES, STRUCTURES, SUBSETS

__all__ = [
    "HESSIAN_STRUCTURES",
    "STRUCTURES",
    "SUBSETS",
    "CompiledPredictive",
    "CorruptPosterior",
    "Curvature",
    "DiagonalCurvature",
    "EvidenceCallback",
    "Factorization",
    "FactorizationError",
    "FullCurvature",
    "FunctionSpaceCurvature",
    "GradientDescentMSE",
    "GradientDescentMSEEnsemble",
    "KronCurvature",
    "Laplace",
    "NTKGP",
    "PredictiveFunctions",
    "compile_predictive",
    "factorize",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "load_posterior",
    "make_curvature",
    "mean_field_probit",
    "monte_carlo",
]
