"""Z = lambda I + sum_i phi_i phi_i^T of NeuralUCB / NeuralTS, kept as its inverse or its diagonal.

phi = g / sqrt(m) are the scaled gradients of the played arms. Both forms hold
log(det Z / det lambda I) for the theory's exploration scales.

  "diag"   Z ~ diag(z), z = lambda + sum_i phi_i^2: the approximation of the
           NeuralUCB / NeuralTS reference code (O(P) memory and work);
  "exact"  Z^-1 (P, P) float64 by Sherman-Morrison rank-one updates
           Z^-1 <- Z^-1 - (Z^-1 phi)(Z^-1 phi)^T / (1 + phi^T Z^-1 phi), and
           log det Z grows by log(1 + phi^T Z^-1 phi) (matrix determinant lemma);
           only for small P (memory 8 P^2 bytes, work P^2 per round).
The state is a dict of tf.Variables; `quadratic_form` and `update` run inside
tf.function.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import tensorflow as tf

INVERSES = ("diag", "exact")


def initial_state(inverse, parameters, lam):
    """Z_0 = lambda I for P = `parameters`: {"z" (P,) | "z_inverse" (P, P), "log_det_ratio" ()}."""
    if inverse not in INVERSES:
        raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}.")
    state = {"log_det_ratio": tf.Variable(tf.zeros((), tf.float64), trainable=False)}
    if inverse == "diag":
        state["z"] = tf.Variable(tf.fill([parameters], tf.cast(lam, tf.float32)), trainable=False)
    else:
        state["z_inverse"] = tf.Variable(tf.eye(parameters, dtype=tf.float64) / lam, trainable=False)
    return state


def quadratic_form(state, phi):
    """phi_a^T Z^-1 phi_a for phi (A, P): (A,) float64."""
    if "z" in state:
        return tf.cast(tf.reduce_sum(phi**2 / state["z"], axis=1), tf.float64)
    phi = tf.cast(phi, tf.float64)
    return tf.reduce_sum(tf.matmul(phi, state["z_inverse"]) * phi, axis=1)


def update(state, phi):
    """Z <- Z + phi phi^T for the played arm's phi (P,), in place."""
    if "z" in state:
        z = state["z"]
        state["log_det_ratio"].assign_add(tf.reduce_sum(tf.math.log1p(tf.cast(phi**2 / z, tf.float64))))
        z.assign_add(phi**2)
        return
    phi = tf.cast(phi, tf.float64)
    u = tf.linalg.matvec(state["z_inverse"], phi)
    q = tf.tensordot(phi, u, 1)
    state["z_inverse"].assign_sub(u[:, None] * u[None, :] / (1 + q))
    state["log_det_ratio"].assign_add(tf.math.log1p(q))
