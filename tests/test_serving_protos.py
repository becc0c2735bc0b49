"""The checked-in generated code and the Tensor encoding."""

import numpy as np
import pytest

from keras_ntk.serving import generate_protos, tensors
from keras_ntk.serving.errors import InvalidArgument
from keras_ntk.serving.v1 import serving_pb2 as pb


def test_regenerating_the_protos_reproduces_the_checked_in_files():
    assert generate_protos.stale_files() == []


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", ">f8"])
def test_tensors_round_trip_exactly(dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 1.5 - 7).astype(dtype)
    message = tensors.to_proto(array)
    assert list(message.shape) == [2, 3, 4] and len(message.content) == array.size * array.dtype.itemsize
    assert message.content == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()  # little-endian on the wire
    decoded = tensors.from_proto(pb.Tensor.FromString(message.SerializeToString()))
    assert decoded.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(decoded, array)
    scalar = tensors.from_proto(tensors.to_proto(np.float64(2.5)))
    assert scalar.shape == () and scalar == 2.5


@pytest.mark.parametrize(
    "message, text",
    [
        (pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 2], content=b"\0" * 12), "expected 16"),
        (pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[-1, 2], content=b""), "non-negative"),
        (pb.Tensor(dtype=pb.DATA_TYPE_UNSPECIFIED, shape=[1], content=b"\0" * 4), "not supported"),
        (pb.Tensor(dtype=pb.DATA_TYPE_INT32, shape=[1] * 9, content=b"\0" * 4), "at most 8"),
    ],
)
def test_malformed_tensors_are_invalid_arguments(message, text):
    with pytest.raises(InvalidArgument, match=text):
        tensors.from_proto(message)


def test_unsupported_numpy_dtypes_are_refused():
    with pytest.raises(ValueError, match="cannot be sent"):
        tensors.to_proto(np.zeros(3, np.complex64))
