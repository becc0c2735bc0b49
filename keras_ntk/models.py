"""Model builders: `mlp`, `cnn` and `wide_resnet` made of keras_ntk layers.

All builders return functional `keras.Model`s that work with `fit`, `save` and
`keras.models.load_model(..., safe_mode=True)`. One `w_std`, `b_std` serves every
layer, matching the recursion of `keras_ntk.infinite_width_kernel`; the default
w_std = sqrt(2) keeps the forward variance of ReLU networks constant with depth.

Why no BatchNorm: in training mode BatchNorm normalizes each example with its
batch's statistics, so f(x_i) depends on the other examples of the batch and the
per-example Jacobian df(x_i)/dtheta, hence the per-example NTK, is not defined
(it changes with the batch it is computed in). `wide_resnet` therefore offers
LayerNorm (statistics of one example over its channels) or no normalization.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import math

import keras

from keras_ntk import activations
from keras_ntk.layers import Conv2D, Dense

DEFAULT_W_STD = math.sqrt(2.0)
DEFAULT_B_STD = 0.1


def _check_positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}.")


def _check_input_shape(input_shape, rank, what):
    shape = tuple(input_shape)
    if rank is not None and len(shape) != rank:
        raise ValueError(
            f"{what} expects input_shape of rank {rank} (without the batch axis), "
            f"got {shape}."
        )
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"{what} expects a non-empty input_shape of positive ints, got {shape}.")
    return shape


def _check_activation(activation):
    activations.get(activation)
    return activation


def mlp(
    width,
    depth,
    output_dim,
    *,
    activation="relu",
    parametrization="ntk",
    w_std=DEFAULT_W_STD,
    b_std=DEFAULT_B_STD,
    input_shape,
    name="mlp",
):
    """Multilayer perceptron: `depth` hidden layers of `width` units and a linear readout.

    Inputs (batch, *input_shape), flattened when input_shape has more than one
    axis; outputs (batch, output_dim). Its infinite-width limit is
    `infinite_width_kernel(..., depth=depth)` with the same activation, w_std, b_std.
    """
    for value, what in ((width, "width"), (depth, "depth"), (output_dim, "output_dim")):
        _check_positive_int(value, what)
    shape = _check_input_shape(input_shape, None, "mlp")
    _check_activation(activation)
    common = dict(parametrization=parametrization, w_std=w_std, b_std=b_std)
    inputs = keras.Input(shape)
    h = keras.layers.Flatten()(inputs) if len(shape) > 1 else inputs
    for i in range(depth):
        h = Dense(width, activation=activation, name=f"dense_{i}", **common)(h)
    outputs = Dense(output_dim, name="readout", **common)(h)
    return keras.Model(inputs, outputs, name=name)


def cnn(
    width,
    depth,
    output_dim,
    *,
    activation="relu",
    parametrization="ntk",
    w_std=DEFAULT_W_STD,
    b_std=DEFAULT_B_STD,
    input_shape,
    kernel_size=3,
    pooling="global_average",
    name="cnn",
):
    """Convolutional net: `depth` 'same'-padded convolutions with `width` channels,
    then global average pooling (or flatten) and a linear readout.

    Inputs (batch, height, width, channels); outputs (batch, output_dim).
    """
    for value, what in ((width, "width"), (depth, "depth"), (output_dim, "output_dim")):
        _check_positive_int(value, what)
    shape = _check_input_shape(input_shape, 3, "cnn")
    _check_activation(activation)
    if pooling not in ("global_average", "flatten"):
        raise ValueError(f"pooling must be 'global_average' or 'flatten', got {pooling!r}.")
    common = dict(parametrization=parametrization, w_std=w_std, b_std=b_std)
    inputs = keras.Input(shape)
    h = inputs
    for i in range(depth):
        h = Conv2D(
            width, kernel_size, padding="same", activation=activation, name=f"conv_{i}", **common
        )(h)
    if pooling == "global_average":
        h = keras.layers.GlobalAveragePooling2D()(h)
    else:
        h = keras.layers.Flatten()(h)
    outputs = Dense(output_dim, name="readout", **common)(h)
    return keras.Model(inputs, outputs, name=name)


def wide_resnet(
    depth,
    width_multiplier,
    num_classes,
    *,
    parametrization="ntk",
    activation="relu",
    normalization="layer",
    w_std=DEFAULT_W_STD,
    b_std=DEFAULT_B_STD,
    input_shape=(32, 32, 3),
    name=None,
):
    """Wide residual network WRN-depth-k (Zagoruyko & Komodakis, 2016).

    depth = 6 n + 4: a 3x3 stem convolution with 16 channels, three groups of n
    pre-activation residual blocks with 16k, 32k, 64k channels (strides 1, 2, 2),
    then normalization, activation, global average pooling and a linear readout.
    A block is x + conv(act(norm(conv(act(norm(x)))))), with a 1x1 convolution on
    the shortcut where the shape changes.

    Args:
      normalization: "layer" (LayerNorm over channels, per example) or "none";
        see the module docstring for why BatchNorm is not offered.
    Inputs (batch, height, width, channels); outputs (batch, num_classes).
    """
    _check_positive_int(depth, "depth")
    _check_positive_int(width_multiplier, "width_multiplier")
    _check_positive_int(num_classes, "num_classes")
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wide_resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}.")
    if normalization not in ("layer", "none"):
        raise ValueError(f"normalization must be 'layer' or 'none', got {normalization!r}.")
    shape = _check_input_shape(input_shape, 3, "wide_resnet")
    act = activations.get(activation)
    common = dict(parametrization=parametrization, w_std=w_std, b_std=b_std)
    blocks_per_group = (depth - 4) // 6

    def norm_act(h, label):
        if normalization == "layer":
            h = keras.layers.LayerNormalization(axis=-1, name=f"{label}_norm")(h)
        return keras.layers.Activation(act, name=f"{label}_act")(h)

    def block(x, channels, stride, label):
        h = norm_act(x, f"{label}_a")
        shortcut = x
        if stride != 1 or x.shape[-1] != channels:
            shortcut = Conv2D(
                channels, 1, strides=stride, name=f"{label}_shortcut", **common
            )(h)
        h = Conv2D(channels, 3, strides=stride, padding="same", name=f"{label}_conv_a", **common)(h)
        h = norm_act(h, f"{label}_b")
        h = Conv2D(channels, 3, padding="same", name=f"{label}_conv_b", **common)(h)
        return keras.layers.Add(name=f"{label}_add")([shortcut, h])

    inputs = keras.Input(shape)
    h = Conv2D(16, 3, padding="same", name="stem", **common)(inputs)
    for g, (channels, stride) in enumerate(
        ((16 * width_multiplier, 1), (32 * width_multiplier, 2), (64 * width_multiplier, 2))
    ):
        for b in range(blocks_per_group):
            h = block(h, channels, stride if b == 0 else 1, f"group{g}_block{b}")
    h = norm_act(h, "final")
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = Dense(num_classes, name="readout", **common)(h)
    return keras.Model(inputs, outputs, name=name or f"wrn_{depth}_{width_multiplier}")
