"""Activation functions by name, including those with analytic infinite-width kernels.

`get` accepts everything `keras.activations.get` accepts plus "erf" and
"identity" (an alias of Keras' "linear"). The names with closed-form Gaussian
expectations used by `keras_ntk.infinite_width_kernel` are `ANALYTIC`.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import keras
from keras import ops

ANALYTIC = ("relu", "erf", "identity")


@keras.saving.register_keras_serializable(package="keras_ntk")
def erf(x):
    """Elementwise error function, erf(x) = 2/sqrt(pi) * int_0^x exp(-t^2) dt."""
    return ops.erf(x)


def get(identifier):
    """Return the activation callable for a name, a callable or None (identity).

    Raises:
      ValueError: the identifier names no known activation.
    """
    if identifier == "erf":
        return erf
    if identifier is None or identifier == "identity":
        return keras.activations.linear
    try:
        return keras.activations.get(identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown activation {identifier!r}: expected a Keras activation name "
            f"(e.g. 'relu', 'tanh'), 'erf', 'identity' or a callable."
        ) from error
