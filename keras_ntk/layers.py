"""Dense and Conv2D layers in NTK or standard parametrization.

NTK parametrization (Jacot et al. 2018), fan-in n:
    z = (w_std / sqrt(n)) W a + b_std b,   W_ij, b_i ~ N(0, 1).
Standard parametrization:
    z = W a + b,   W_ij ~ N(0, w_std^2 / n),   b_i ~ N(0, b_std^2).
Both define the same distribution of functions at initialization; their NTKs
differ. What the NTK engine needs is exposed on every layer:
    fan_in        n (Conv2D: in_channels * kernel_height * kernel_width),
    weight_scale  the factor multiplying `kernel` in `call`: w_std / sqrt(n) | 1,
    bias_scale    the factor multiplying `bias` in `call`:   b_std | 1,
    linear(a)     the pre-activation z; `call(a)` is activation(linear(a)).
A dense layer's share of the NTK is then
    (weight_scale^2 <a, a'> + bias_scale^2) <dz f, dz' f>.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import math

import keras
from keras import ops

from keras_ntk import activations

PARAMETRIZATIONS = ("ntk", "standard")


def check_stds(w_std, b_std):
    """Raise ValueError unless sigma_w > 0 and sigma_b >= 0 are finite numbers."""
    if not (math.isfinite(w_std) and w_std > 0):
        raise ValueError(f"w_std must be a positive number, got {w_std!r}.")
    if not (math.isfinite(b_std) and b_std >= 0):
        raise ValueError(f"b_std must be a non-negative number, got {b_std!r}.")


class _ParametrizedLayer(keras.layers.Layer):
    """Shared parametrization logic of `Dense` and `Conv2D` (not public)."""

    def __init__(
        self,
        *,
        parametrization,
        w_std,
        b_std,
        use_bias,
        activation,
        kernel_regularizer,
        bias_regularizer,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"Unknown parametrization {parametrization!r}: expected one of "
                f"{PARAMETRIZATIONS}."
            )
        check_stds(w_std, b_std)
        self.parametrization = parametrization
        self.w_std = float(w_std)
        self.b_std = float(b_std)
        self.use_bias = bool(use_bias)
        self.activation = activations.get(activation)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.fan_in = None

    def _add_parameters(self, kernel_shape, fan_in, bias_shape):
        self.fan_in = int(fan_in)
        if self.parametrization == "ntk":
            kernel_init = keras.initializers.RandomNormal(0.0, 1.0)
            bias_init = keras.initializers.RandomNormal(0.0, 1.0)
        else:
            kernel_init = keras.initializers.RandomNormal(
                0.0, self.w_std / math.sqrt(self.fan_in)
            )
            bias_init = (
                keras.initializers.RandomNormal(0.0, self.b_std)
                if self.b_std > 0
                else keras.initializers.Zeros()
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=kernel_init,
            regularizer=self.kernel_regularizer,
        )
        self.bias = (
            self.add_weight(
                name="bias",
                shape=bias_shape,
                initializer=bias_init,
                regularizer=self.bias_regularizer,
            )
            if self.use_bias
            else None
        )

    @property
    def weight_scale(self):
        """Factor applied to `kernel` in `call`: w_std/sqrt(fan_in) (ntk) or 1."""
        if self.fan_in is None:
            raise ValueError(f"Layer {self.name!r} is not built yet; call it first.")
        if self.parametrization == "ntk":
            return self.w_std / math.sqrt(self.fan_in)
        return 1.0

    @property
    def bias_scale(self):
        """Factor applied to `bias` in `call`: b_std (ntk) or 1 (standard)."""
        return self.b_std if self.parametrization == "ntk" else 1.0

    def _add_bias(self, z):
        if self.bias is None:
            return z
        bias = self.bias if self.bias_scale == 1.0 else self.bias * self.bias_scale
        return z + bias

    def _scaled_kernel(self):
        scale = self.weight_scale
        return self.kernel if scale == 1.0 else self.kernel * scale

    def call(self, inputs):
        return self.activation(self.linear(inputs))

    def get_config(self):
        config = super().get_config()
        config.update(
            parametrization=self.parametrization,
            w_std=self.w_std,
            b_std=self.b_std,
            use_bias=self.use_bias,
            activation=keras.activations.serialize(self.activation),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        return config


def _positive_pair(value, what):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}.")
    return pair


@keras.saving.register_keras_serializable(package="keras_ntk")
class Dense(_ParametrizedLayer):
    """Fully connected layer, inputs (batch, features) -> outputs (batch, units).

    Args:
      units: output width.
      parametrization: "ntk" (default) or "standard", see the module docstring.
      w_std, b_std: sigma_w and sigma_b of the parametrization.
      use_bias: whether the layer has a bias.
      activation: Keras activation, "erf", "identity" or None.
      kernel_regularizer, bias_regularizer: Keras regularizers.
      **kwargs: keras.layers.Layer arguments (name, dtype, trainable).
    """

    def __init__(
        self,
        units,
        *,
        parametrization="ntk",
        w_std=1.0,
        b_std=0.0,
        use_bias=True,
        activation=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            parametrization=parametrization,
            w_std=w_std,
            b_std=b_std,
            use_bias=use_bias,
            activation=activation,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            **kwargs,
        )
        if not (isinstance(units, int) and units > 0):
            raise ValueError(f"units must be a positive int, got {units!r}.")
        self.units = units

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} expects inputs of shape "
                f"(batch, features) with known features, got {tuple(input_shape)}; "
                "add keras.layers.Flatten() before it."
            )
        self._add_parameters((input_shape[-1], self.units), input_shape[-1], (self.units,))
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: input_shape[-1]})

    def linear(self, inputs):
        """Pre-activation z, shape (batch, units)."""
        return self._add_bias(ops.matmul(inputs, self._scaled_kernel()))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="keras_ntk")
class Conv2D(_ParametrizedLayer):
    """2-D convolution, channels last: (batch, H, W, C) -> (batch, H', W', filters).

    Args:
      filters: output channels.
      kernel_size: int or (height, width).
      strides: int or (height, width).
      padding: "valid" or "same".
      parametrization, w_std, b_std, use_bias, activation, kernel_regularizer,
      bias_regularizer, **kwargs: as for `Dense`; fan_in = C * height * width.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        *,
        strides=1,
        padding="valid",
        parametrization="ntk",
        w_std=1.0,
        b_std=0.0,
        use_bias=True,
        activation=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            parametrization=parametrization,
            w_std=w_std,
            b_std=b_std,
            use_bias=use_bias,
            activation=activation,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            **kwargs,
        )
        if not (isinstance(filters, int) and filters > 0):
            raise ValueError(f"filters must be a positive int, got {filters!r}.")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}.")
        self.filters = filters
        self.kernel_size = _positive_pair(kernel_size, "kernel_size")
        self.strides = _positive_pair(strides, "strides")
        self.padding = padding

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} expects inputs of shape "
                f"(batch, height, width, channels) with known channels, got "
                f"{tuple(input_shape)}."
            )
        channels = input_shape[-1]
        self._add_parameters(
            (*self.kernel_size, channels, self.filters),
            channels * self.kernel_size[0] * self.kernel_size[1],
            (self.filters,),
        )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def linear(self, inputs):
        """Pre-activation z, shape (batch, H', W', filters)."""
        z = ops.conv(inputs, self._scaled_kernel(), strides=self.strides, padding=self.padding)
        return self._add_bias(z)

    def compute_output_shape(self, input_shape):
        def out_len(length, k, s):
            if length is None:
                return None
            return -(-length // s) if self.padding == "same" else -(-(length - k + 1) // s)

        return (
            input_shape[0],
            out_len(input_shape[1], self.kernel_size[0], self.strides[0]),
            out_len(input_shape[2], self.kernel_size[1], self.strides[1]),
            self.filters,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
        }
