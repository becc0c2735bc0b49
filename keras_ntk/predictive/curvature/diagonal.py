"""Diagonal GGN over the covered parameters, from per-example Jacobians."""

import functools

import tensorflow as tf

from keras_ntk.predictive.curvature import base


class DiagonalCurvature(base.Curvature):
    """P = diag(c diag(GGN) + delta): the GGN's diagonal only, so
    J P^-1 J^T = sum_p J[:, p] J[:, p]^T / P_pp and log det P = sum_p log P_pp."""

    hessian_structure = "diag"

    def __init__(self, model, groups, group_index):
        super().__init__(model, groups, group_index)
        self.ggn = tf.zeros((sum(self.sizes),), base.F64)
        self._jacobians = tf.function(functools.partial(base.jacobians, model, self.variables), reduce_retracing=True)

    def accumulate(self, x, lam_sqrt):
        jt = tf.einsum("nkc,nkp->ncp", lam_sqrt, self._jacobians(x))
        self.ggn += tf.reduce_sum(jt**2, axis=(0, 1))
        self.changed()

    def precision(self, delta, scale):
        """The diagonal of P, (P,)."""
        return scale * self.ggn + self.prior_vector(delta)

    def log_det_ratio(self, delta, scale):
        prior = self.prior_vector(delta)
        return tf.reduce_sum(tf.math.log(scale * self.ggn + prior) - tf.math.log(prior))

    def build_factors(self, delta, scale):
        precision = self.precision(delta, scale)
        condition = float(tf.reduce_max(precision) / tf.reduce_min(precision))
        return base.Factors({"inverse": 1.0 / precision}, 0.0, condition)

    def covariance_blocks(self, x, tensors, joint):
        jac = base.jacobians(self.model, self.variables, x)
        return base.quadratic_form(jac, jac * tensors["inverse"], joint)

    def state(self):
        return {"ggn": self.ggn.numpy()}

    def restore(self, state):
        self.ggn = tf.constant(state["ggn"], base.F64)
