"""The function-space (GP) form of the full-GGN Laplace approximation."""

import numpy as np
import tensorflow as tf

from keras_ntk.ntk import contract as contract_lib
from keras_ntk.predictive import features, numerics
from keras_ntk.predictive.curvature import base


class FunctionSpaceCurvature(base.Curvature):
    """The GP view of the full GGN: with the per-layer NTKs Theta_g at theta*, the
    prior kernel K = sum_g Theta_g / delta_g over the covered layers and the
    training inputs X (all of them, or the subset the Laplace keeps),

        B = L^T K_XX L   (N K, N K),
        log det ratio = log det(I + c B),
        cov(x, x')    = K(x, x') - c K(x, X) L (I + c B)^-1 L^T K(X, x'),

    which equal the weight-space full GGN's log det(c GGN + D) / det D and
    J P^-1 J^T by the matrix determinant lemma and the Woodbury identity. The
    kernels come from the structured NTK engine's per-example factors,
    contracted in float64; the training inputs' factors are computed once.
    """

    hessian_structure = "function_space"

    def __init__(self, model, groups, group_index):
        super().__init__(model, groups, group_index)
        self.names = list(groups)
        self.x, self.lam_sqrt = [], []
        self.feature_map = self.x_train = self.lam = self.train_factors = self.kernels = None

    def accumulate(self, x, lam_sqrt):
        self.x.append(np.asarray(x))
        self.lam_sqrt.append(lam_sqrt)
        self.changed()

    def _weighted(self, blocks, pattern, inverse_delta):
        return tf.einsum(pattern, tf.stack([blocks[name] for name in self.names]), inverse_delta)

    def finalize(self):
        """Per-example factors of the training inputs and their per-layer kernels (G, N, N, K, K)."""
        super().finalize()
        self.x_train = np.concatenate(self.x)
        self.lam = tf.concat(self.lam_sqrt, axis=0)
        self.feature_map = features.feature_map(self.model, self.x_train)
        available = {group.name for group in self.feature_map.groups}
        missing = [name for name in self.names if name not in available]
        if missing:
            raise ValueError(
                f"Layers {missing} are not used by the forward pass of {self.model.name!r}, so they have "
                "no NTK: leave them out of subset_of_weights."
            )
        self.train_factors = features.factors_of(self.feature_map, self.x_train)
        blocks = contract_lib.contract(
            self.feature_map.groups, self.train_factors, None, "full", base.F64, True, symmetric=True
        )
        self.kernels = tf.stack([blocks[name] for name in self.names])

    def _b(self, delta):
        prior = tf.einsum("gijkl,g->ijkl", self.kernels, 1.0 / self.layer_deltas(delta))
        b = tf.einsum("ikc,ijkl,jld->icjd", self.lam, prior, self.lam)
        n, k = b.shape[0], b.shape[1]
        return tf.reshape(b, (n * k, n * k))

    def log_det_ratio(self, delta, scale):
        b = self._b(delta)
        chol = tf.linalg.cholesky(tf.eye(b.shape[0], dtype=base.F64) + scale * b)
        return 2 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))

    def build_factors(self, delta, scale):
        b = self._b(delta)
        factor = numerics.factorize(tf.eye(b.shape[0], dtype=base.F64) + scale * b, "I + c B")
        tensors = {
            "chol": factor.chol,
            "inverse_delta": 1.0 / self.layer_deltas(delta),
            "scale": tf.constant(float(scale), base.F64),
        }
        return base.Factors(tensors, factor.jitter, factor.condition_number)

    def covariance_blocks(self, x, tensors, joint):
        groups, inverse_delta = self.feature_map.groups, tensors["inverse_delta"]
        fx = self.feature_map.factors(x)
        cross = contract_lib.contract(groups, fx, self.train_factors, "full", base.F64, True)
        k_star_l = tf.einsum("ijkl,jlc->ikjc", self._weighted(cross, "gijkl,g->ijkl", inverse_delta), self.lam)
        n, k = tf.shape(k_star_l)[0], tf.shape(k_star_l)[1]
        w = tf.linalg.triangular_solve(tensors["chol"], tf.transpose(tf.reshape(k_star_l, (n * k, -1))), lower=True)
        w = tf.transpose(tf.reshape(w, (-1, n, k)), (1, 2, 0))  # R^-1 L^T K(X, x) as (n, K, N K)
        reduction = tensors["scale"] * base.quadratic_form(w, w, joint)
        if joint:
            prior = contract_lib.contract(groups, fx, fx, "full", base.F64, True)
            return self._weighted(prior, "gijkl,g->ikjl", inverse_delta) - reduction
        prior = contract_lib.contract(groups, fx, None, "diagonal", base.F64, True)
        return self._weighted(prior, "gikl,g->ikl", inverse_delta) - reduction

    def state(self):
        return {"x": np.concatenate(self.x), "lam_sqrt": tf.concat(self.lam_sqrt, axis=0).numpy()}

    def restore(self, state):
        self.x, self.lam_sqrt = [state["x"]], [tf.constant(state["lam_sqrt"], base.F64)]
