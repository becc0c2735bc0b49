"""Which kernel maps a Keras layer stands for, read off its configuration and initializers."""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_ntk import activations as ntk_activations
from keras_ntk import layers as ntk_layers
from keras_ntk.ntk.limits import dual, maps
from keras_ntk.ntk.limits.initializers import moments

IDENTITY_LAYERS = (
    keras.layers.Dropout,  # SpatialDropout1D/2D/3D are subclasses
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)

SUPPORTED = (
    "keras_ntk.layers.Dense and Conv2D; keras.layers.Dense, Conv2D (channels_last, groups=1, "
    "any strides, padding and dilation), Activation, ReLU, LeakyReLU, Add, AveragePooling2D, "
    "GlobalAveragePooling2D, Flatten, LayerNormalization (over the last axis), Dropout and the "
    "other inference-time identities (GaussianNoise, GaussianDropout, AlphaDropout, "
    "ActivityRegularization, Identity), and nested Sequential / functional models of these"
)

_RELU = (keras.activations.relu, keras.ops.relu, tf.nn.relu)
_ERF = (ntk_activations.erf, keras.ops.erf, tf.math.erf)
_IDENTITY = (keras.activations.linear,)


def unsupported(layer, reason=None):
    """The ValueError for a layer without an infinite-width kernel map."""
    detail = f" ({reason})" if reason else ""
    return ValueError(
        f"No infinite-width kernel map for layer {layer.name!r} of type "
        f"{type(layer).__name__}{detail}. Supported: {SUPPORTED}."
    )


def _check_elementwise(fn, name):
    """fn on a (3, 4) array equals fn on its (12, 1) column and on its transpose."""
    x = np.linspace(-3.0, 3.0, 12).reshape(3, 4)
    with warnings.catch_warnings():  # Keras' softmax warns about the size-1 axis of the column probe
        warnings.simplefilter("ignore", UserWarning)
        y = np.asarray(fn(tf.constant(x)))
        column = np.asarray(fn(tf.constant(x.reshape(12, 1)))).reshape(3, 4)
        transposed = np.asarray(fn(tf.constant(x.T))).T
    if y.shape != x.shape or not (np.allclose(y, column) and np.allclose(y, transposed)):
        raise ValueError(
            f"Layer {name!r}: its activation {getattr(fn, '__name__', fn)!r} is not elementwise "
            "(e.g. softmax), so it has no infinite-width kernel map."
        )


def _relu_self_dual(k11, k12, k22, derivative=False):
    return dual.relu(k11, k12, k22, derivative=False)  # t relu'(t) = relu(t)


def activation_map(fn, name, hermite_terms):
    """The `maps.Activation` of the elementwise function `fn` (closed form when known)."""
    if any(fn is f for f in _IDENTITY):
        return maps.Activation(name, dual.identity, identity=True)
    if any(fn is f for f in _RELU):
        return maps.Activation(name, dual.relu, self_dual=_relu_self_dual)
    self_dual = dual.HermiteExpansion(dual.times_derivative(fn), hermite_terms)
    if any(fn is f for f in _ERF):
        return maps.Activation(name, dual.erf, self_dual=self_dual)
    _check_elementwise(fn, name)
    return maps.Activation(name, dual.HermiteExpansion(fn, hermite_terms), self_dual=self_dual, temporaries=10)


def _trainable(layer, variable):
    return layer.trainable and variable is not None and variable.trainable


def _zero_mean(layer, what, m):
    if m.mean != 0:
        raise unsupported(layer, f"its {what} initializer has mean {m.mean}; the limit needs zero-mean weights")
    return m


def _parametrized(layer):
    """(s_w, s_b, t_w, t_b) of a keras_ntk Dense / Conv2D (layers.py):
    NTK: W, b ~ N(0, 1) scaled by w_std / sqrt(n) and b_std; standard: W ~ N(0, w_std^2 / n),
    b ~ N(0, b_std^2), scales 1. Either way s_w = w_std^2 and s_b = b_std^2."""
    n = layer.fan_in
    t_w = n * layer.weight_scale**2 if _trainable(layer, layer.kernel) else 0.0
    has_bias = layer.bias is not None
    t_b = layer.bias_scale**2 if has_bias and _trainable(layer, layer.bias) else 0.0
    return layer.w_std**2, (layer.b_std**2 if has_bias else 0.0), t_w, t_b, True, True


def _keras_affine(layer):
    """(s_w, s_b, t_w, t_b, gaussian W, gaussian b) of a Keras Dense / Conv2D (scales 1)."""
    kernel = tuple(layer.kernel.shape)
    n = int(np.prod(kernel[:-1]))
    w = _zero_mean(layer, "kernel", moments(layer.kernel_initializer, kernel))
    t_w = float(n) if _trainable(layer, layer.kernel) else 0.0
    if layer.bias is None:
        return n * w.second, 0.0, t_w, 0.0, w.gaussian, True
    b = _zero_mean(layer, "bias", moments(layer.bias_initializer, tuple(layer.bias.shape)))
    t_b = 1.0 if _trainable(layer, layer.bias) else 0.0
    return n * w.second, b.second, t_w, t_b, w.gaussian, b.gaussian


def _affine_maps(layer, conv, hermite_terms):
    if isinstance(layer, (ntk_layers.Dense, ntk_layers.Conv2D)):
        s_w, s_b, t_w, t_b, gw, gb = _parametrized(layer)
    else:
        s_w, s_b, t_w, t_b, gw, gb = _keras_affine(layer)
    affine = maps.Affine(layer.name, s_w, s_b, t_w, t_b, conv, gw, gb)
    return [affine, activation_map(layer.activation, layer.name, hermite_terms)]


def _conv_config(layer):
    dilation = tuple(getattr(layer, "dilation_rate", (1, 1)))
    return tuple(layer.kernel_size), tuple(layer.strides), dilation, layer.padding


def _layer_norm(layer, rank):
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    if [a % rank for a in axes] != [rank - 1]:
        raise unsupported(layer, f"axis={layer.axis}; only the last (channel) axis has a limit here")
    if getattr(layer, "rms_scaling", False):
        raise unsupported(layer, "rms_scaling=True")
    gamma2, t_gamma, beta2, t_beta, gaussian_beta = 1.0, 0.0, 0.0, 0.0, True
    if layer.scale:
        g = moments(layer.gamma_initializer, tuple(layer.gamma.shape))
        if g.second != g.mean**2:
            raise unsupported(layer, "a random gamma initializer; the limit needs a constant gamma")
        gamma2, t_gamma = g.second, (1.0 if _trainable(layer, layer.gamma) else 0.0)
    if layer.center:
        b = _zero_mean(layer, "beta", moments(layer.beta_initializer, tuple(layer.beta.shape)))
        beta2, t_beta, gaussian_beta = b.second, (1.0 if _trainable(layer, layer.beta) else 0.0), b.gaussian
    return maps.LayerNorm(layer.name, float(layer.epsilon), gamma2, beta2, t_gamma, t_beta, gaussian_beta)


def _check_channels_last(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise unsupported(layer, f"data_format={layer.data_format!r}; expected 'channels_last'")


def kernel_maps(layer, input_rank, hermite_terms):
    """The kernel maps `layer` applies, in order (e.g. [affine, fused activation]).

    `input_rank` is the rank of the layer's input (batch axis included) and
    `hermite_terms` the length of the Hermite expansion of activations without a
    closed form (dual.HermiteExpansion).

    Raises:
      ValueError: the layer has no infinite-width kernel map (named, with the supported set).
    """
    if isinstance(layer, ntk_layers.Dense):
        return _affine_maps(layer, None, hermite_terms)
    if isinstance(layer, ntk_layers.Conv2D):
        return _affine_maps(layer, _conv_config(layer), hermite_terms)
    if type(layer) is keras.layers.Dense:
        if layer.lora_enabled or layer.quantization_mode:
            raise unsupported(layer, "LoRA or quantized dense layers")
        return _affine_maps(layer, None, hermite_terms)
    if type(layer) is keras.layers.Conv2D:
        _check_channels_last(layer)
        if layer.groups != 1:
            raise unsupported(layer, f"groups={layer.groups}")
        return _affine_maps(layer, _conv_config(layer), hermite_terms)
    if type(layer) is keras.layers.Activation:
        return [activation_map(layer.activation, layer.name, hermite_terms)]
    if type(layer) in (keras.layers.ReLU, keras.layers.LeakyReLU):
        if type(layer) is keras.layers.ReLU and (
            layer.max_value is None and layer.negative_slope == 0 and layer.threshold == 0
        ):
            return [maps.Activation(layer.name, dual.relu, self_dual=_relu_self_dual)]
        return [activation_map(layer.call, layer.name, hermite_terms)]
    if type(layer) is keras.layers.Add:
        return [maps.Add(layer.name)]
    if type(layer) is keras.layers.AveragePooling2D:
        _check_channels_last(layer)
        return [maps.AveragePool(layer.name, tuple(layer.pool_size), tuple(layer.strides), layer.padding)]
    if type(layer) is keras.layers.GlobalAveragePooling2D:
        _check_channels_last(layer)
        if layer.keepdims:
            raise unsupported(layer, "keepdims=True")
        return [maps.GlobalAveragePool(layer.name)]
    if type(layer) is keras.layers.Flatten:
        return [maps.Flatten(layer.name)]
    if type(layer) is keras.layers.LayerNormalization:
        return [_layer_norm(layer, input_rank)]
    if isinstance(layer, IDENTITY_LAYERS):
        return [maps.Identity(layer.name)]
    raise unsupported(layer)
