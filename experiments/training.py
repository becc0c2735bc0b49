"""Full-batch training shared by the experiments, compiled with tf.function.

train_full_batch     a Keras optimizer for a fixed number of steps (E5's gradient descent)
trust_region_newton  trust-region Newton-CG on the anchored squared loss, until its
                     gradient is small (E1's nets and linearized nets)
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import math

import keras
import numpy as np
import tensorflow as tf

from keras_ntk import traced


def train_full_batch(
    model,
    x,
    y,
    *,
    steps,
    optimizer,
    example_weight=1.0,
    anchor_penalty=0.0,
    chunk=100,
):
    """Minimize example_weight/2 sum_i ||f(x_i) - y_i||^2 + anchor_penalty/2 ||theta - theta_0||^2.

    theta_0 are the trainable weights when the call starts; example_weight = 1/N
    gives the mean squared error of gradient-descent theory, 1 the summed loss.
    Steps run in compiled chunks of `chunk` (a tf.while_loop), so Python only
    loops over chunks.

    Args:
      model: a built Keras model, (N, ...) -> (N, K).
      x: (N, ...) float32 inputs; y: (N, K) float32 targets.
      steps: number of full-batch optimizer steps.
      optimizer: a keras optimizer (its learning rate may be a schedule).
    Returns:
      dict with the final "loss" and the 2-norm of the final gradient "gradient_norm".
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.convert_to_tensor(y, tf.float32)
    variables = model.trainable_variables
    anchors = [tf.constant(v.numpy()) for v in variables]
    optimizer.build(variables)

    def loss_and_gradients():
        with tf.GradientTape() as tape:
            residual = model(x, training=True) - y
            loss = 0.5 * example_weight * tf.reduce_sum(residual**2)
            if anchor_penalty:
                loss += 0.5 * anchor_penalty * tf.add_n(
                    [tf.reduce_sum((v - a) ** 2) for v, a in zip(variables, anchors)]
                )
        return loss, tape.gradient(loss, variables)

    @tf.function
    def run(count):
        for _ in tf.range(count):
            _, gradients = loss_and_gradients()
            optimizer.apply_gradients(zip(gradients, variables))

    @tf.function
    def measure():
        loss, gradients = loss_and_gradients()
        return loss, tf.linalg.global_norm(gradients)

    remaining = int(steps)
    while remaining > 0:
        count = min(chunk, remaining)
        run(tf.constant(count))
        remaining -= count
    loss, gradient_norm = measure()
    if not np.isfinite(float(loss)):
        raise FloatingPointError(
            f"Training diverged (loss {float(loss)}); lower the learning rate or the step fraction."
        )
    return {"loss": float(loss), "gradient_norm": float(gradient_norm)}


def sgd(learning_rate):
    return keras.optimizers.SGD(learning_rate)


def _dot(a, b):
    return tf.reduce_sum(tf.cast(a, tf.float64) * tf.cast(b, tf.float64))


class _AnchoredSquaredLoss:
    """L(theta) = 1/2 sum_i ||f(x_i; theta) - y_i||^2 + penalty/2 ||theta - theta_0||^2.

    theta is the model's trainable variables flattened into one float32 vector
    (order of model.trainable_variables), theta_0 its value when the object is made;
    the model is evaluated with `stateless_call`, so trial points leave it untouched.
    Loss and inner products are accumulated in float64. The methods are compiled
    once per object (as methods, TF's tracing notes about them name keras_ntk).
    """

    def __init__(self, model, x, y, penalty):
        self.model = model
        self.x = tf.convert_to_tensor(x, tf.float32)
        self.y = tf.convert_to_tensor(y, tf.float32)
        self.penalty = float(penalty)
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.non_trainable = [tf.constant(v.numpy()) for v in model.non_trainable_variables]
        self.theta_0 = tf.constant(np.concatenate([v.numpy().ravel() for v in model.trainable_variables]))
        self.value_and_gradient = traced.per_object(self._value_and_gradient)
        self.newton_step = traced.per_object(self._newton_step)

    def unflatten(self, theta):
        return [tf.reshape(part, shape) for part, shape in zip(tf.split(theta, self.sizes), self.shapes)]

    def write_to_model(self, theta):
        for variable, value in zip(self.model.trainable_variables, self.unflatten(theta)):
            variable.assign(value)

    def _value(self, theta):
        outputs, _ = self.model.stateless_call(self.unflatten(theta), self.non_trainable, self.x)
        residual = tf.cast(outputs - self.y, tf.float64)
        delta = tf.cast(theta - self.theta_0, tf.float64)
        return 0.5 * tf.reduce_sum(residual**2) + 0.5 * self.penalty * tf.reduce_sum(delta**2)

    def _value_and_gradient(self, theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = self._value(theta)
        return loss, tape.gradient(loss, theta)

    def _hessian_vector_product(self, theta, vector):
        with tf.autodiff.ForwardAccumulator(theta, vector) as accumulator:
            _, gradient = self._value_and_gradient(theta)
        return accumulator.jvp(gradient)

    def _newton_step(self, theta, gradient, radius, residual_tolerance, max_iterations):
        """Steihaug-Toint CG on H p = -g inside ||p||_2 <= radius (H the exact Hessian).

        Returns (p, m(p) = g^T p + 1/2 p^T H p (float64), CG iterations, hit: the
        step ended on the boundary or along negative curvature).
        """
        p = tf.zeros_like(theta)
        r = gradient
        d = -gradient
        rr = _dot(r, r)
        model_value = tf.constant(0.0, tf.float64)
        iterations = tf.constant(0)
        hit = tf.constant(False)
        done = tf.sqrt(rr) <= residual_tolerance
        while not done and iterations < max_iterations:
            iterations += 1
            hd = self._hessian_vector_product(theta, d)
            curvature = _dot(d, hd)
            alpha = rr / curvature
            p_next = p + tf.cast(alpha, tf.float32) * d
            if curvature <= 0.0 or _dot(p_next, p_next) >= radius**2:
                dd, pd, pp = _dot(d, d), _dot(p, d), _dot(p, p)
                tau = (-pd + tf.sqrt(pd**2 + dd * (radius**2 - pp))) / dd
                model_value += tau * _dot(d, r) + 0.5 * tau**2 * curvature
                p += tf.cast(tau, tf.float32) * d
                hit = tf.constant(True)
                done = tf.constant(True)
            else:
                p = p_next
                model_value -= 0.5 * alpha * rr
                r += tf.cast(alpha, tf.float32) * hd
                rr_next = _dot(r, r)
                d = -r + tf.cast(rr_next / rr, tf.float32) * d
                rr = rr_next
                done = tf.sqrt(rr) <= residual_tolerance
        return p, model_value, iterations, hit


def trust_region_newton(model, x, y, *, anchor_penalty, tolerance, max_steps, max_cg_iterations=100):
    """Minimize L(theta) = 1/2 sum_i ||f(x_i) - y_i||^2 + s^2/2 ||theta - theta_0||^2, s^2 = anchor_penalty.

    theta_0 are the trainable weights when the call starts; the model ends at the
    last accepted iterate. Trust-region Newton with the exact Hessian H (Nocedal &
    Wright, Algorithms 4.1 and 7.2): each step p approximately minimizes
    m(p) = g^T p + 1/2 p^T H p inside ||p||_2 <= radius by Steihaug-Toint
    conjugate gradients (Hessian-vector products by forward-over-reverse
    differentiation, never H itself), stopping when the CG residual is below
    min(1/2, sqrt(||g|| / ||g_0||)) ||g|| (superlinear convergence), leaves the
    region, meets negative curvature, or after max_cg_iterations. The step is
    taken when rho = (L(theta) - L(theta + p)) / -m(p) > 1e-4; the radius shrinks to
    ||p|| / 4 when rho < 1/4 and doubles when rho > 3/4 with p on the boundary; it
    starts at ||theta_0||_2 / 10. For a linearized network L is the quadratic
    with H = J_0^T J_0 + s^2 I, whose minimizer theta_0 + J_0^T (J_0 J_0^T + s^2 I)^-1
    (y - f_0(X)) gives the NTK-GP posterior mean; H has at most N K + 1 distinct
    eigenvalues, so CG needs at most that many iterations per step in exact arithmetic.

    Args:
      model: a built Keras model, (N, ...) -> (N, K); evaluated by model.call.
      x: (N, ...) float32 inputs; y: (N, K) float32 targets.
      anchor_penalty: s^2 >= 0.
      tolerance: stop once ||grad L(theta)||_2 <= tolerance * ||grad L(theta_0)||_2.
      max_steps: at most this many Newton steps (accepted or not); the search also
        stops when the trust radius falls below 1e-6 ||theta||.
      max_cg_iterations: at most this many Hessian-vector products per step.
    Returns:
      dict: "loss", "gradient_norm" (final L, ||grad L||_2), "initial_gradient_norm",
      "converged" (the tolerance was reached), "stopped" ("tolerance", "max_steps" or
      "stalled": the radius fell below 1e-6 ||theta||, steps float32 cannot resolve),
      "steps" (Newton steps tried),
      "hessian_vector_products", "gradient_norms" (||grad L||_2 after each
      accepted step, starting at theta_0).
    """
    if not anchor_penalty >= 0:
        raise ValueError(f"anchor_penalty must be >= 0 (the s^2 of the objective), got {anchor_penalty!r}.")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance!r}.")
    problem = _AnchoredSquaredLoss(model, x, y, anchor_penalty)
    theta = problem.theta_0
    loss, gradient = problem.value_and_gradient(theta)
    initial_norm = gradient_norm = float(tf.norm(gradient))
    history = [gradient_norm]
    theta_norm = float(tf.norm(theta)) or 1.0
    radius = 0.1 * theta_norm
    steps = products = 0
    stopped = "max_steps"
    while steps < max_steps:
        if gradient_norm <= tolerance * initial_norm:
            stopped = "tolerance"
            break
        if radius < 1e-6 * theta_norm:
            stopped = "stalled"
            break
        steps += 1
        forcing = min(0.5, math.sqrt(gradient_norm / initial_norm)) * gradient_norm
        step, predicted, iterations, hit = problem.newton_step(
            theta, gradient, tf.constant(radius, tf.float64), tf.constant(forcing, tf.float64),
            tf.constant(max_cg_iterations),
        )
        products += int(iterations)
        trial = theta + step
        trial_loss, trial_gradient = problem.value_and_gradient(trial)
        predicted = float(predicted)
        rho = float(loss - trial_loss) / -predicted if predicted < 0 else -1.0
        if rho < 0.25:
            radius = 0.25 * float(tf.norm(step))
        elif rho > 0.75 and bool(hit):
            radius *= 2.0
        if rho > 1e-4:
            theta, loss, gradient = trial, trial_loss, trial_gradient
            gradient_norm = float(tf.norm(gradient))
            history.append(gradient_norm)
            theta_norm = float(tf.norm(theta))
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"Trust-region Newton diverged (loss {float(loss)}).")
    problem.write_to_model(theta)
    return {
        "loss": float(loss),
        "gradient_norm": gradient_norm,
        "initial_gradient_norm": initial_norm,
        "converged": gradient_norm <= tolerance * initial_norm,
        "stopped": stopped,
        "steps": steps,
        "hessian_vector_products": products,
        "gradient_norms": history,
    }
