"""The linearized network as a trainable Keras model.

f_lin(x; theta) = f(x; theta_0) + J_0(x) (theta - theta_0), J_0 = df/dtheta at theta_0,
evaluated with one forward-mode Jacobian-vector product (tf.autodiff.ForwardAccumulator),
so no Jacobian is formed. Gradients with respect to theta flow through the JVP,
so `fit` trains the linearized network step for step like the real one. Its
empirical NTK J_0 J_0^T is the original network's at theta_0, the same for every theta.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import types

import keras
import tensorflow as tf

from keras_ntk.ntk import empirical_ntk


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
        self._trainable_flags = [v.trainable for v in self._at_init.variables]
        self._at_init.trainable = False
        # Holds the trainable copy `ntk` differentiates, out of Keras' layer tracking
        # (a tracked copy would add its variables to this model's).
        self._kernel_source = types.SimpleNamespace(model=None)
        self.theta = [
            self.add_weight(
                shape=v.shape,
                initializer=keras.initializers.Constant(v.numpy()),
                name=v.path.replace("/", "_"),
                dtype=v.dtype,
            )
            for v in self._theta_0
        ]
        self.built = True  # every variable exists already (stateless_call needs this)

    @property
    def model_at_init(self):
        """The frozen copy of the original model at theta_0."""
        return self._at_init

    def ntk(self, x1, x2=None, **options):
        """Empirical NTK of the linearized network, J_0(x1) J_0(x2)^T.

        df_lin/dtheta = J_0 for every theta, so this is the NTK of the original
        network at theta_0, whatever training did to theta. `options` are those of
        `keras_ntk.empirical_ntk` (output, method, dtype, ...); shapes as there,
        e.g. (N, M, K, K) for output="full".
        """
        if self._kernel_source.model is None:
            copy = keras.models.clone_model(self._at_init)
            copy.set_weights(self._at_init.get_weights())
            copy.trainable = True
            for variable, trainable in zip(copy.variables, self._trainable_flags):
                variable.trainable = trainable
            self._kernel_source.model = copy
        return empirical_ntk(self._kernel_source.model, x1, x2, **options)

    def call(self, inputs):
        primals = [v.value for v in self._theta_0]
        tangents = [theta - theta_0 for theta, theta_0 in zip(self.theta, primals)]
        with tf.autodiff.ForwardAccumulator(primals, tangents) as accumulator:
            f_0 = self._at_init(inputs, training=False)
        return f_0 + accumulator.jvp(f_0, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def compute_output_shape(self, input_shape):
        return self._at_init.compute_output_shape(input_shape)
