"""Generalized Gauss-Newton (GGN) curvature of a Keras model, one class per Hessian structure.

GGN = sum_i J_i^T Lambda_i J_i, J_i = df(x_i)/dtheta (K x P), Lambda_i = L_i L_i^T the
Hessian of the negative log-likelihood in f_i: regression 1/s^2 I (stored for unit
noise, L = I, and multiplied by the curvature scale c = 1/s^2 when used);
classification diag(p) - p p^T with L = diag(sqrt p) - p sqrt(p)^T (c = 1).

Parameters form groups (the trainable variables of one layer), each with its prior
precision delta_g, so the posterior precision over the covered layers is
P = c GGN + D, D = diag(delta). Every structure (a `Curvature` subclass) provides

  accumulate(x, L), finalize()   the curvature from batches of training data
  log_det_ratio(delta, c)        log det(c GGN + D) - log det D (differentiable)
  factors(delta, c)              the tensors its covariance needs, with the jitter
                                 added and the condition number (cached)
  covariance(x, tensors, joint)  J(x) P^-1 J(x)^T: blocks (n, K, K) or joint
                                 (n K, n K), pure TensorFlow (eager and compiled
                                 predictions trace this one function)
  state(), restore(state)        the accumulated curvature for saving

  FullCurvature            dense P, Cholesky                      (hessian_structure "full")
  DiagonalCurvature        diagonal of the GGN                    ("diag")
  KronCurvature            K-FAC per Dense / Conv2D layer         ("kron")
  FunctionSpaceCurvature   the GP form of the full GGN            ("function_space")

`make_curvature(hessian_structure, model, groups, group_index, shared_prior)`
builds one. All arrays are float64.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
from keras_ntk.predictive.curvature.base import Curvature, Factors
from keras_ntk.predictive.curvature.diagonal import DiagonalCurvature
from keras_ntk.predictive.curvature.full import FullCurvature
from keras_ntk.predictive.curvature.function_space import FunctionSpaceCurvature
from keras_ntk.predictive.curvature.kron import KronCurvature, kron_layer_covariance

CURVATURES = {
    cls.hessian_structure: cls
    for cls in (FullCurvature, DiagonalCurvature, KronCurvature, FunctionSpaceCurvature)
}


def make_curvature(hessian_structure, model, groups, group_index, shared_prior=False):
    """The `Curvature` of a Hessian structure over the layers `groups`.

    Args:
      hessian_structure: a key of CURVATURES.
      model: the Keras model.
      groups: OrderedDict layer path -> trainable variables, the covered layers.
      group_index: dict layer path -> position in the prior-precision vectors.
      shared_prior: all layers share one prior precision (lets "full" use the
        GGN's eigenvalues for the evidence).
    Raises:
      ValueError: an unknown structure.
    """
    if hessian_structure not in CURVATURES:
        raise ValueError(f"hessian_structure must be one of {tuple(CURVATURES)}, got {hessian_structure!r}.")
    if hessian_structure == "full":
        return FullCurvature(model, groups, group_index, shared_prior=shared_prior)
    return CURVATURES[hessian_structure](model, groups, group_index)


__all__ = [
    "CURVATURES",
    "Curvature",
    "DiagonalCurvature",
    "Factors",
    "FullCurvature",
    "FunctionSpaceCurvature",
    "KronCurvature",
    "kron_layer_covariance",
    "make_curvature",
]
