"""numpy arrays <-> `Tensor` messages (dtype + shape + little-endian packed values)."""

import math

import numpy as np

from .errors import InvalidArgument
from .v1 import serving_pb2 as pb

DTYPES = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
}
_ENUMS = {dtype.newbyteorder("="): enum for enum, dtype in DTYPES.items()}
MAX_RANK = 8


def dtype_enum(dtype):
    """The DataType enum value of a numpy dtype; ValueError for unsupported ones."""
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype not in _ENUMS:
        raise ValueError(f"dtype {dtype} cannot be sent; use float32, float64, int32 or int64.")
    return _ENUMS[dtype]


def dtype_name(enum):
    return pb.DataType.Name(enum).removeprefix("DATA_TYPE_").lower()


def to_proto(array, dtype=None):
    """A numpy array (any shape) as a `Tensor`; `dtype` converts first."""
    return fill(pb.Tensor(), array, dtype)


def fill(tensor, array, dtype=None):
    """Write a numpy array into the `Tensor` message `tensor` (a field of a response,
    so that a large answer is not copied once more by CopyFrom); returns `tensor`."""
    array = np.asarray(array, dtype=dtype)
    enum = dtype_enum(array.dtype)
    tensor.dtype = enum
    tensor.shape[:] = array.shape
    tensor.content = np.ascontiguousarray(array, dtype=DTYPES[enum]).tobytes()
    return tensor


def from_proto(tensor, what="tensor"):
    """A `Tensor` as a read-only numpy array in native byte order.

    Raises InvalidArgument when the dtype is unknown, the shape negative or too
    long, or the content does not hold exactly prod(shape) values.
    """
    if tensor.dtype not in DTYPES:
        raise InvalidArgument(
            f"{what}: dtype {tensor.dtype} is not supported; expected one of "
            f"{', '.join(dtype_name(e) for e in DTYPES)}."
        )
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        shown = list(shape[: MAX_RANK + 1]) + (["..."] if len(shape) > MAX_RANK + 1 else [])
        raise InvalidArgument(f"{what}: shape {shown} must have at most {MAX_RANK} non-negative axes.")
    dtype = DTYPES[tensor.dtype]
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.content) != expected:
        raise InvalidArgument(
            f"{what}: content has {len(tensor.content)} bytes, expected {expected} "
            f"(shape {list(shape)} of {dtype_name(tensor.dtype)})."
        )
    return np.frombuffer(tensor.content, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
