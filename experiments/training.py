"""Full-batch training loops shared by the experiments, compiled with tf.function."""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import keras
import numpy as np
import tensorflow as tf


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


def adam_to_convergence(learning_rate, steps):
    """Adam whose learning rate decays to zero over `steps` by a cosine schedule."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(int(steps), 1))
    return keras.optimizers.Adam(schedule)
