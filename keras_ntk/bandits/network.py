"""The reward network of a bandit agent, and its per-example gradients as pure functions.

A reward network maps one arm input u (an arm's encoding of the context, see
`keras_ntk.bandits.environment`) to a scalar reward estimate f(u). It is an MLP
of `keras_ntk.layers.Dense` layers,

    z_l = s_l a_{l-1} W_l + t_l b_l,   a_l = phi(z_l) (hidden), f = z_L (disjoint)
                                                     or f = <z_L, e_a> (arm_head),

s_l, t_l the layers' weight and bias scales (1 in the standard parametrization,
sigma_w / sqrt(fan_in) and sigma_b in the NTK one). With the augmented input
a~_l = [s_l a_{l-1}, t_l] (C_l + 1) and the delta d_l = df / dz_l (O_l), the
gradient of f with respect to layer l's weights [W_l; b_l] is the outer product
a~_l d_l^T, a (C_l + 1, O_l) matrix whose row-major flattening is the layer's
kernel followed by its bias. `factors` returns (a~_l, d_l) for a batch from one
forward and one backward pass (no Jacobian is formed), `gradients` the
flattened per-example gradients g(u) (n, P) over all trainable parameters.

The functions take the weights as arguments (the tf.Variables of the Keras
model), so one trace serves every network of the same shapes.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import dataclasses
import math

import keras
import tensorflow as tf

import keras_ntk
from keras_ntk import activations
from keras_ntk import layers as ntk_layers

ENCODINGS = ("disjoint", "arm_head")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the compiled functions need to know about a reward network (hashable).

    Attributes:
      encoding: "disjoint" (input A d, one output) or "arm_head" (input d + A:
        the context and the arm's one-hot code; A outputs, f the chosen one).
      context_dim: d.
      arms: A.
      scales: ((s_l, t_l), ...) per Dense layer, input to output.
      activation: name of the hidden layers' activation.
    """

    encoding: str
    context_dim: int
    arms: int
    scales: tuple
    activation: str

    @property
    def input_dim(self):
        """Length of one arm input: A d (disjoint) or d + A (arm_head)."""
        if self.encoding == "disjoint":
            return self.arms * self.context_dim
        return self.context_dim + self.arms


@keras.saving.register_keras_serializable(package="keras_ntk")
class Columns(keras.layers.Layer):
    """Columns start..stop-1 of (batch, features) inputs: (batch, stop - start)."""

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, inputs):
        return inputs[:, self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="keras_ntk")
class SelectedOutput(keras.layers.Layer):
    """<heads, one_hot(a)>: the output of the arm coded in [heads (batch, A), code (batch, A)], (batch, 1)."""

    def call(self, inputs):
        heads, code = inputs
        return keras.ops.sum(heads * code, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)


def build_model(encoding, context_dim, arms, width, depth, *, parametrization="standard",
                activation="relu", w_std=math.sqrt(2.0), b_std=0.1, seed=0):
    """The Keras reward network, (n, input_dim) -> (n, 1), initialized by `seed`.

    Args:
      encoding: "disjoint" (an MLP on the A d arm input, as in NeuralUCB) or
        "arm_head" (an MLP on the context with one output per arm; the arm input
        is [x, one_hot(a)] and the model returns the output of arm a).
      context_dim: d; arms: A; width: hidden units m; depth: hidden layers.
      parametrization, activation, w_std, b_std: as in `keras_ntk.models.mlp`.
    Returns:
      (keras.Model, Spec).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}.")
    for value, what in ((context_dim, "context_dim"), (arms, "arms"), (width, "width"), (depth, "depth")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}.")
    if arms < 2:
        raise ValueError(f"A bandit needs at least 2 arms, got {arms}.")
    keras.utils.set_random_seed(seed)
    common = dict(parametrization=parametrization, w_std=w_std, b_std=b_std)
    if encoding == "disjoint":
        model = keras_ntk.models.mlp(width, depth, 1, activation=activation, input_shape=(arms * context_dim,),
                                     name="reward_network", **common)
    else:
        inputs = keras.Input((context_dim + arms,))
        h = Columns(0, context_dim, name="context")(inputs)
        select = Columns(context_dim, context_dim + arms, name="arm")(inputs)
        for i in range(depth):
            h = ntk_layers.Dense(width, activation=activation, name=f"dense_{i}", **common)(h)
        heads = ntk_layers.Dense(arms, name="readout", **common)(h)
        outputs = SelectedOutput(name="selected_output")([heads, select])
        model = keras.Model(inputs, outputs, name="reward_network")
    dense = [layer for layer in model.layers if isinstance(layer, ntk_layers.Dense)]
    spec = Spec(encoding, context_dim, arms, tuple((l.weight_scale, l.bias_scale) for l in dense), activation)
    return model, spec


def weights_of(model):
    """The model's trainable tf.Variables [W_1, b_1, ..., W_L, b_L], the compiled functions' weights."""
    return [v.value for v in model.trainable_variables]


def _pairs(weights):
    return list(zip(weights[0::2], weights[1::2]))


def _split(spec, inputs):
    if spec.encoding == "disjoint":
        return inputs, None
    return inputs[:, : spec.context_dim], inputs[:, spec.context_dim :]


def forward(spec, weights, inputs):
    """f(u) for arm inputs u (n, input_dim): (n,) float32."""
    h, select = _split(spec, inputs)
    phi = activations.get(spec.activation)
    pairs = _pairs(weights)
    for l, ((kernel, bias), (s, t)) in enumerate(zip(pairs, spec.scales)):
        h = s * tf.matmul(h, kernel) + t * bias
        if l < len(pairs) - 1:
            h = phi(h)
    return h[:, 0] if select is None else tf.reduce_sum(h * select, axis=-1)


def factors(spec, weights, inputs):
    """f (n,) and per layer (augmented inputs a~ (n, C_l + 1), deltas d (n, O_l)).

    The per-example gradient of f for layer l is a~[i, :, None] * d[i, None, :].
    """
    h, select = _split(spec, inputs)
    phi = activations.get(spec.activation)
    pairs = _pairs(weights)
    augmented, pre_activations = [], []
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for l, ((kernel, bias), (s, t)) in enumerate(zip(pairs, spec.scales)):
            a = tf.concat([s * h, tf.fill([tf.shape(h)[0], 1], tf.cast(t, h.dtype))], axis=1)
            z = tf.matmul(a, tf.concat([kernel, bias[None, :]], axis=0))
            tape.watch(z)
            augmented.append(a)
            pre_activations.append(z)
            h = phi(z) if l < len(pairs) - 1 else z
        f = h[:, 0] if select is None else tf.reduce_sum(h * select, axis=-1)
    deltas = tape.gradient(f, pre_activations)  # f_i depends on example i only
    return f, list(zip(augmented, deltas))


def layer_gradients(a, d):
    """Flattened per-example gradients (n, (C + 1) O) of one layer from its factors."""
    return tf.reshape(a[:, :, None] * d[:, None, :], (tf.shape(a)[0], -1))


def gradients(spec, weights, inputs):
    """f (n,) and the per-example gradients g (n, P) over all trainable parameters,
    in the order of model.trainable_variables (each kernel row-major, then its bias)."""
    f, per_layer = factors(spec, weights, inputs)
    return f, tf.concat([layer_gradients(a, d) for a, d in per_layer], axis=1)


def parameter_count(model):
    """P, the number of trainable parameters."""
    return sum(math.prod(v.shape) for v in model.trainable_variables)
