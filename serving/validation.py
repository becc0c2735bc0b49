"""Checks of request inputs against a model's signature and the server's limits.

Shape, dtype and NaN/Inf problems raise InvalidArgument naming what was
expected; requests above the limits raise ResourceExhausted.
"""

import dataclasses

import numpy as np

from . import tensors
from .errors import InvalidArgument, ResourceExhausted


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits of the server.

    Attributes:
      max_examples: examples in one Predict request, and in x1 or x2 of ComputeKernel.
      max_joint_size: N K of a joint covariance (the answer is (N K)^2 values).
      max_kernel_values: values of one whole ComputeKernel answer (N M K^2 for "full").
      max_samples: Monte-Carlo draws of one classification Predict.
      max_tile_bytes: default and largest tile of a ComputeKernel stream.
    """

    max_examples: int = 4096
    max_joint_size: int = 4096
    max_kernel_values: int = 1 << 27
    max_samples: int = 100_000
    max_tile_bytes: int = 1 << 20


def inputs(tensor, input_shape, input_dtype, limits, what="inputs"):
    """A (N, *input_shape) array of the model's dtype with 1 <= N <= max_examples, finite.

    Args:
      tensor: the `Tensor` message.
      input_shape: the model's input shape without the batch axis (tuple of ints).
      input_dtype: the model's input numpy dtype.
    """
    if not tensor.ByteSize():
        raise InvalidArgument(f"{what} is missing: expected a tensor of shape (N, {_dims(input_shape)}).")
    expected_dtype = np.dtype(input_dtype)
    if tensor.dtype in tensors.DTYPES and tensors.DTYPES[tensor.dtype].newbyteorder("=") != expected_dtype:
        raise InvalidArgument(
            f"{what} has dtype {tensors.dtype_name(tensor.dtype)}, expected {expected_dtype.name} "
            "(the model's input dtype)."
        )
    shape = tuple(tensor.shape)
    if len(shape) != 1 + len(input_shape) or shape[1:] != tuple(input_shape):
        raise InvalidArgument(f"{what} has shape {list(shape)}, expected (N, {_dims(input_shape)}).")
    if shape[0] < 1:
        raise InvalidArgument(f"{what} has no examples; expected (N, {_dims(input_shape)}) with N >= 1.")
    if shape[0] > limits.max_examples:
        raise ResourceExhausted(
            f"{what} has {shape[0]} examples; this server answers at most {limits.max_examples} "
            "per request. Split the request."
        )
    array = tensors.from_proto(tensor, what)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidArgument(f"{what} contains {bad} NaN or Inf values; expected finite numbers.")
    return array


def _dims(shape):
    return ", ".join(str(d) for d in shape)
