"""Retraining a reward network: a fixed number of full-batch steps on all data so far.

The objective over the first n rounds (inputs u_i of the played arms, rewards r_i)

    L(theta) = 1/2 sum_{i <= n} (f(u_i; theta) - r_i)^2 + 1/2 sum_l c_l ||theta_l - theta_l^0||^2

(theta_l a layer's kernel and bias) is minimized by `steps` full-batch steps of
gradient descent (Zhou et al. 2020, Algorithm 2 TrainNN, with c_l = m lambda and
theta^0 the initial weights) or Adam, starting from the current weights. Laplace
agents use theta^0 = 0 and c_l = s^2 delta_l, which makes the minimizer the MAP
estimate of their Gaussian prior and likelihood. The history is a fixed-size
buffer with a mask, so one compiled function serves every round count.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import functools

import tensorflow as tf

from keras_ntk import traced
from keras_ntk.bandits import network

OPTIMIZERS = ("adam", "gd")
_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7


def _objective(spec, weights, anchors, decay, inputs, rewards, mask):
    residual = network.forward(spec, weights, inputs) - rewards
    fit = 0.5 * tf.reduce_sum(mask * residual**2)
    penalty = tf.add_n([decay[i // 2] * tf.reduce_sum((w - a) ** 2) for i, (w, a) in enumerate(zip(weights, anchors))])
    return fit + 0.5 * penalty


@functools.lru_cache(maxsize=None)
def _compiled_train(spec, optimizer):
    def train(weights, anchors, decay, inputs, rewards, count, steps, learning_rate):
        mask = tf.cast(tf.range(tf.shape(inputs)[0]) < count, tf.float32)
        first = [tf.zeros_like(w) for w in weights]
        second = [tf.zeros_like(w) for w in weights]
        for step in tf.range(1, steps + 1):
            with tf.GradientTape() as tape:
                loss = _objective(spec, weights, anchors, decay, inputs, rewards, mask)
            grads = tape.gradient(loss, weights)
            if optimizer == "gd":
                for w, g in zip(weights, grads):
                    w.assign_sub(learning_rate * g)
            else:
                first = [_BETA_1 * m + (1 - _BETA_1) * g for m, g in zip(first, grads)]
                second = [_BETA_2 * v + (1 - _BETA_2) * g**2 for v, g in zip(second, grads)]
                t = tf.cast(step, tf.float32)
                rate = learning_rate * tf.sqrt(1 - _BETA_2**t) / (1 - _BETA_1**t)
                for w, m, v in zip(weights, first, second):
                    w.assign_sub(rate * m / (tf.sqrt(v) + _EPSILON))
        return _objective(spec, weights, anchors, decay, inputs, rewards, mask)

    return traced.per_object(train)


def train(spec, weights, anchors, decay, inputs, rewards, count, *, steps, learning_rate, optimizer="adam"):
    """Run `steps` optimizer steps on the first `count` rows of the history, in place.

    Args:
      spec: the network's `Spec`; weights: its tf.Variables (changed in place).
      anchors: tensors like weights, theta^0 of the penalty.
      decay: (L,) float32, c_l per Dense layer.
      inputs: (capacity, input_dim) float32 history buffer; rewards: (capacity,).
      count: rows in use.
      optimizer: "adam" or "gd" (plain gradient descent, the theory's TrainNN).
    Returns:
      the final objective L(theta) (float).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
    loss = _compiled_train(spec, optimizer)(
        weights, anchors, tf.convert_to_tensor(decay, tf.float32), inputs, rewards,
        tf.constant(count, tf.int32), tf.constant(steps, tf.int32), tf.constant(learning_rate, tf.float32),
    )
    loss = float(loss)
    if not tf.math.is_finite(loss):
        raise FloatingPointError(
            f"Retraining diverged (objective {loss}); lower the learning rate or use optimizer='adam'."
        )
    return loss
