"""The curvature interface every Hessian structure implements (see the package docstring)."""

import abc
import dataclasses
import functools

import numpy as np
import tensorflow as tf

from keras_ntk.ntk import features as features_lib

F64 = tf.float64


@dataclasses.dataclass(frozen=True)
class Factors:
    """What a structure's covariance function needs for one (delta, c).

    Attributes:
      tensors: nested structure (dict, lists, tuples) of float64 tf.Tensors, the
        second argument of `Curvature.covariance`.
      jitter: absolute jitter added to the factorized matrix (0.0 when none was needed).
      condition_number: 2-norm condition number of the posterior precision (or of
        I + c B in function space).
    """

    tensors: dict
    jitter: float
    condition_number: float


def jacobians(model, variables, x):
    """Per-example Jacobians df(x_n)/dtheta of `variables`, (n, K, P) float64 (traceable)."""
    return tf.cast(tf.concat(features_lib.per_example_jacobians(model, variables, x), axis=-1), F64)


def joint_matrix(cov4):
    """(n, K, n, K) -> (n K, n K), row n * K + k."""
    shape = tf.shape(cov4)
    return tf.reshape(cov4, (shape[0] * shape[1], shape[0] * shape[1]))


def quadratic_form(left, right, joint):
    """sum_q left[i, k, q] right[j, l, q]: (n, K, n, K) joint, or only the
    per-example blocks (n, K, K) in O(n) work and memory."""
    if joint:
        return tf.einsum("ikq,jlq->ikjl", left, right)
    return tf.einsum("ikq,ilq->ikl", left, right)


class Curvature(abc.ABC):
    """The posterior precision P = c GGN + D over the parameters of some layers.

    Args:
      model: the Keras model (its weights are theta*).
      groups: OrderedDict layer path -> trainable variables, the covered layers.
      group_index: dict layer path -> position of that layer's prior precision in
        the delta vectors passed to the methods (one entry per layer of the model).

    Every method takes delta, the (G,) float64 prior precisions of all layers of
    the model, and c, the curvature scale (1/s^2 for regression, 1 for
    classification). Subclasses implement accumulate, log_det_ratio,
    build_factors, covariance_blocks, state and restore; finalize when the
    accumulated sums need a last step.
    """

    hessian_structure = None

    def __init__(self, model, groups, group_index):
        self.model = model
        self.groups = groups
        self.index = [group_index[name] for name in groups]
        self.variables = [v for vs in groups.values() for v in vs]
        self.sizes = [sum(int(np.prod(v.shape)) for v in vs) for vs in groups.values()]
        self._cached_key, self._cached = None, None
        self._compiled = {
            joint: tf.function(functools.partial(self.covariance, joint=joint), reduce_retracing=True)
            for joint in (False, True)
        }

    # -- fitting ------------------------------------------------------------------
    @abc.abstractmethod
    def accumulate(self, x, lam_sqrt):
        """Add a batch: inputs x (n, ...) and L (n, K, K) float64 with L L^T the
        Hessian of the negative log-likelihood in f (for unit noise in regression)."""

    def finalize(self):
        """Finish the accumulated sums (after the last batch, and after `restore`)."""
        self.changed()

    def changed(self):
        """Forget the cached factors: call when the accumulated curvature changes."""
        self._cached_key, self._cached = None, None

    # -- hyperparameters ----------------------------------------------------------
    def layer_deltas(self, delta):
        """The covered layers' prior precisions, (G_covered,)."""
        return tf.gather(delta, self.index)

    def prior_vector(self, delta):
        """Per-parameter prior precisions of the covered parameters, (P,)."""
        return tf.repeat(self.layer_deltas(delta), self.sizes)

    # -- evidence -----------------------------------------------------------------
    @abc.abstractmethod
    def log_det_ratio(self, delta, scale):
        """log det(c GGN + D) - log det D over the covered parameters (float64
        scalar, differentiable in delta and c)."""

    # -- prediction ---------------------------------------------------------------
    def factors(self, delta, scale):
        """`Factors` for (delta, c); the last ones asked for are reused while the
        hyperparameters and the curvature stay the same."""
        key = (np.asarray(delta, np.float64).tobytes(), float(scale))
        if key != self._cached_key:
            self._cached, self._cached_key = self.build_factors(delta, scale), key
        return self._cached

    @abc.abstractmethod
    def build_factors(self, delta, scale):
        """`Factors` for (delta, c), computed anew."""

    @abc.abstractmethod
    def covariance_blocks(self, x, tensors, joint):
        """J(x) P^-1 J(x)^T: (n, K, n, K) when joint, else the per-example blocks
        (n, K, K); pure TensorFlow in x (n, ...) and `tensors` (Factors.tensors)."""

    def covariance(self, x, tensors, joint):
        """Covariance of the linearized f at x (n, ...): blocks (n, K, K), or the
        joint (n K, n K) in [n, k] order. Pure TensorFlow: the eager path
        (`evaluate`) and compiled predictives trace this one function."""
        cov = self.covariance_blocks(x, tensors, joint)
        return joint_matrix(cov) if joint else cov

    def evaluate(self, x, factors, joint):
        """`covariance` for a batch x (n, ...), run as a tf.function."""
        return self._compiled[joint](tf.convert_to_tensor(x), factors.tensors)

    # -- persistence --------------------------------------------------------------
    @abc.abstractmethod
    def state(self):
        """The accumulated curvature as a dict name -> numpy array."""

    @abc.abstractmethod
    def restore(self, state):
        """Set the accumulated curvature from `state()`; call `finalize` after."""
