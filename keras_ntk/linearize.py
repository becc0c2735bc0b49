"""The linearized network as a trainable Keras model.

f_lin(x; theta) = f(x; theta_0) + J_0(x) (theta - theta_0), J_0 = df/dtheta at theta_0,
evaluated with one forward-mode Jacobian-vector product (tf.autodiff.ForwardAccumulator),
so no Jacobian is formed. Gradients with respect to theta flow through the JVP,
so `fit` trains the linearized network step for step like the real one.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import keras
import tensorflow as tf


class LinearizedModel(keras.Model):
    """First-order Taylor expansion of `model` around its current weights theta_0.

    The original model is cloned and frozen at theta_0 (the caller's model is not
    modified); this model's trainable variables are theta, one per trainable
    variable of `model`, initialized to theta_0. Inputs and outputs have the
    shapes of `model`; the model runs in inference mode inside.

    Args:
      model: a built functional or sequential Keras model.
      **kwargs: keras.Model arguments (name).
    """

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        if not model.built:
            raise ValueError("LinearizedModel needs a built model; call it on a batch first.")
        self._at_init = keras.models.clone_model(model)
        self._at_init.set_weights(model.get_weights())
        self._theta_0 = list(self._at_init.trainable_variables)
        self._at_init.trainable = False
        self.theta = [
            self.add_weight(
                shape=v.shape,
                initializer=keras.initializers.Constant(v.numpy()),
                name=v.path.replace("/", "_"),
                dtype=v.dtype,
            )
            for v in self._theta_0
        ]

    @property
    def model_at_init(self):
        """The frozen copy of the original model at theta_0."""
        return self._at_init

    def call(self, inputs):
        primals = [v.value for v in self._theta_0]
        tangents = [theta - theta_0 for theta, theta_0 in zip(self.theta, primals)]
        with tf.autodiff.ForwardAccumulator(primals, tangents) as accumulator:
            f_0 = self._at_init(inputs, training=False)
        return f_0 + accumulator.jvp(f_0, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def compute_output_shape(self, input_shape):
        return self._at_init.compute_output_shape(input_shape)
