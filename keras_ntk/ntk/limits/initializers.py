"""What an infinite-width kernel needs to know about a Keras initializer.

The limit depends on a parameter's initial distribution only through its mean
(which must be 0 for weights and biases: the kernels are of zero-mean Gaussian
processes), its second moment E[w^2], and whether it is Gaussian (a finite sum
of non-Gaussian weights, as in a layer that reads the model input, is not).
"""

import dataclasses
import math

import keras

# Variance of a standard normal truncated to [-2, 2], as Keras' truncated normals are.
TRUNCATED_NORMAL_VARIANCE = 1.0 - 4.0 * math.exp(-2.0) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2.0))

SUPPORTED = (
    "Zeros, Ones, Constant, RandomNormal, TruncatedNormal, RandomUniform and the "
    "VarianceScaling family (GlorotNormal/Uniform, HeNormal/Uniform, LecunNormal/Uniform)"
)


@dataclasses.dataclass(frozen=True)
class Moments:
    """mean, second moment E[w^2], and whether w is Gaussian (constants count as Gaussian)."""

    mean: float
    second: float
    gaussian: bool


def _fans(shape, initializer):
    input_axes = getattr(initializer, "input_axes", None)
    output_axes = getattr(initializer, "output_axes", None)
    if input_axes is not None and output_axes is not None:
        return math.prod(shape[a] for a in input_axes), math.prod(shape[a] for a in output_axes)
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def moments(initializer, shape):
    """`Moments` of the values `initializer` draws for a variable of `shape`.

    Raises:
      ValueError: an initializer whose distribution is not known here.
    """
    if isinstance(initializer, keras.initializers.Zeros):
        return Moments(0.0, 0.0, True)
    if isinstance(initializer, keras.initializers.Ones):
        return Moments(1.0, 1.0, True)
    if isinstance(initializer, keras.initializers.Constant):
        value = float(initializer.value)
        return Moments(value, value**2, True)
    if isinstance(initializer, keras.initializers.RandomNormal):
        return Moments(initializer.mean, initializer.mean**2 + initializer.stddev**2, True)
    if isinstance(initializer, keras.initializers.TruncatedNormal):
        variance = initializer.stddev**2 * TRUNCATED_NORMAL_VARIANCE
        return Moments(initializer.mean, initializer.mean**2 + variance, False)
    if isinstance(initializer, keras.initializers.RandomUniform):
        low, high = initializer.minval, initializer.maxval
        mean = (low + high) / 2
        return Moments(mean, mean**2 + (high - low) ** 2 / 12, False)
    if isinstance(initializer, keras.initializers.VarianceScaling):
        fan_in, fan_out = _fans(tuple(shape), initializer)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[initializer.mode]
        return Moments(0.0, initializer.scale / max(1.0, fan), initializer.distribution == "untruncated_normal")
    raise ValueError(
        f"The infinite-width kernel does not know the distribution of the initializer "
        f"{type(initializer).__name__}; supported: {SUPPORTED}."
    )
