"""Full GGN over the covered parameters, from per-example Jacobians."""

import functools

import tensorflow as tf

from keras_ntk.predictive import numerics
from keras_ntk.predictive.curvature import base


class FullCurvature(base.Curvature):
    """P = c GGN + D as a dense (P, P) matrix; predictions by its Cholesky factor R:
    J P^-1 J^T = W^T W with W = R^-1 J^T. Exact: the reference the other structures
    approximate.

    Args:
      model, groups, group_index: as `Curvature`.
      shared_prior: one prior precision for all layers, so that
        log det(c GGN + delta I) / delta^P = sum_i log(1 + c lambda_i / delta) over the
        GGN's eigenvalues lambda_i (computed once in `finalize`).
    """

    hessian_structure = "full"

    def __init__(self, model, groups, group_index, shared_prior=False):
        super().__init__(model, groups, group_index)
        self.shared_prior = shared_prior
        size = sum(self.sizes)
        self.ggn = tf.zeros((size, size), base.F64)
        self.eigenvalues = None
        self._jacobians = tf.function(functools.partial(base.jacobians, model, self.variables), reduce_retracing=True)

    def accumulate(self, x, lam_sqrt):
        jt = tf.einsum("nkc,nkp->ncp", lam_sqrt, self._jacobians(x))
        jt = tf.reshape(jt, (-1, jt.shape[-1]))
        self.ggn += tf.matmul(jt, jt, transpose_a=True)
        self.changed()

    def finalize(self):
        super().finalize()
        self.eigenvalues = tf.maximum(tf.linalg.eigvalsh(self.ggn), 0.0)

    def log_det_ratio(self, delta, scale):
        prior = self.prior_vector(delta)
        if self.shared_prior:
            return tf.reduce_sum(tf.math.log1p(scale * self.eigenvalues / prior[0]))
        chol = tf.linalg.cholesky(scale * self.ggn + tf.linalg.diag(prior))
        return 2 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol))) - tf.reduce_sum(tf.math.log(prior))

    def build_factors(self, delta, scale):
        precision = scale * self.ggn + tf.linalg.diag(self.prior_vector(delta))
        factor = numerics.factorize(precision, "posterior precision")
        return base.Factors({"chol": factor.chol}, factor.jitter, factor.condition_number)

    def covariance_blocks(self, x, tensors, joint):
        jac = base.jacobians(self.model, self.variables, x)  # (n, K, P)
        n, k = tf.shape(jac)[0], tf.shape(jac)[1]
        w = tf.linalg.triangular_solve(tensors["chol"], tf.transpose(tf.reshape(jac, (n * k, -1))), lower=True)
        w = tf.transpose(tf.reshape(w, (-1, n, k)), (1, 2, 0))  # R^-1 J^T as (n, K, P)
        return base.quadratic_form(w, w, joint)

    def state(self):
        return {"ggn": self.ggn.numpy()}

    def restore(self, state):
        self.ggn = tf.constant(state["ggn"], base.F64)
