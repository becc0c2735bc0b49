"""Checks of request inputs against a model's signature and the server's limits, and
the estimates of every request's answer, working memory and cost made before any work.

Shape, dtype and NaN/Inf problems raise InvalidArgument naming what was
expected; requests above the limits raise ResourceExhausted naming the estimate
and the limit.

The estimates use what every served model tells: N (and M) examples, K outputs,
P trainable parameters. Values are float64 (8 bytes) unless a kernel dtype says
otherwise. Working memory counts the answer itself, its message, the serialized copy and
gRPC's send buffer, and the intermediates of one pass (Jacobian-sized, N K P,
and for a joint pass a few times the pass's covariance as it is summed);
cost counts multiply-adds and only decides the time class (small or large
request, see `Estimate.large`).
"""

import dataclasses
import threading

import numpy as np

from . import tensors
from .errors import InvalidArgument, ResourceExhausted

F64 = 8
MESSAGE_OVERHEAD = 1024  # bytes of a response beyond its tensors' values (spec, shapes, tags)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits of the server.

    Attributes:
      max_examples: examples in one Predict request, and in x1 or x2 of ComputeKernel.
      max_joint_size: N K of a joint covariance (the answer is (N K)^2 values; it
        must also fit one message, which at 64 MiB allows N K <= 2896).
      max_kernel_values: values of one whole ComputeKernel answer (N M K^2 for
        "full"), times the number of layers with per_layer.
      max_samples: Monte-Carlo draws of one classification Predict.
      max_tile_bytes: default and largest tile of a ComputeKernel stream.
      max_working_bytes: estimated working memory of one request.
      joint_pass_outputs: N K of one pass of a joint covariance. A larger joint
        covariance is assembled from passes over pairs of example blocks (the
        joint over a subset of inputs is the sub-matrix of the joint), so that
        each pass is small, the deadline is checked between passes, and a
        cancelled request stops; the passes cost about twice one whole pass.
      predict_chunk: examples of one marginal pass (deadline checks in between).
      large_cost: multiply-adds above which a request is large: it runs on the
        server's pool for large requests, so that small ones never wait behind it.
    """

    max_examples: int = 4096
    max_joint_size: int = 4096
    max_kernel_values: int = 1 << 27
    max_samples: int = 100_000
    max_tile_bytes: int = 1 << 20
    max_working_bytes: int = 1 << 30
    joint_pass_outputs: int = 1024
    predict_chunk: int = 256
    large_cost: int = 1 << 31

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{field.name} must be a positive int, got {value!r}.")
        if self.joint_pass_outputs < 2:
            raise ValueError(f"Limits.joint_pass_outputs must be >= 2, got {self.joint_pass_outputs}.")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What a request will take, known before any work.

    Attributes:
      what: the request in words ("a joint covariance over N K = 2048 outputs").
      answer_bytes: the largest message of its answer.
      working_bytes: server memory while it runs, answer included.
      cost: multiply-adds (order of magnitude).
      large: cost above Limits.large_cost.
    """

    what: str
    answer_bytes: int
    working_bytes: int
    cost: int
    large: bool


def mib(n_bytes):
    return f"{n_bytes / 2**20:,.1f} MiB"


def predict_estimate(n, k, parameters, *, joint, classification, samples, limits):
    """The Estimate of a Predict over n examples of a model with k outputs and
    `parameters` trainable parameters; `samples` Monte-Carlo draws (0: probit or
    regression)."""
    vectors = n * k * F64 * (2 + bool(classification))  # mean, variance, probabilities
    if joint:
        outputs = n * k
        answer = outputs * outputs * F64 + vectors + MESSAGE_OVERHEAD
        per_pass = min(outputs, limits.joint_pass_outputs)
        # one pass: its covariance as layers and chunks are summed into it (a K-FAC pass
        # measured at 4 to 6.5 times its covariance) and its Jacobian-sized features
        passing = 7 * per_pass * per_pass * F64 + 2 * per_pass * parameters * F64
        working = answer * 4 + passing  # the matrix, the message, its serialized copy, gRPC's send buffer
        chunked = outputs > limits.joint_pass_outputs
        cost = outputs * outputs * parameters * (2 if chunked else 1) + outputs * parameters
        what = f"a joint covariance over N K = {n} x {k} = {outputs} outputs"
    else:
        answer = vectors + MESSAGE_OVERHEAD
        chunk = min(n, limits.predict_chunk)
        passing = 2 * chunk * k * parameters * F64 + chunk * k * k * F64
        sampling = 3 * samples * n * k * F64
        working = answer * 3 + n * k * k * F64 + passing + sampling
        cost = n * k * (k + 1) * parameters + samples * n * k * k
        what = f"a prediction for {n} examples"
    return Estimate(what, answer, working, cost, cost > limits.large_cost)


def kernel_estimate(n, m, k, output, layers, itemsize, parameters, rows, tile_bytes, limits):
    """The Estimate of a ComputeKernel of x1 (n, ...) and x2 (m, ...), computed in
    row blocks of `rows` examples of x1 and streamed in tiles of `tile_bytes`.

    `layers` is the number of kernels streamed (per_layer: one per layer with
    parameters; else 1).
    """
    columns = 1 if output == "diagonal" else m
    per_pair = 1 if output == "trace" else k * k
    block = rows * columns * per_pair * itemsize * (layers + 1)  # the row block and its parts
    features = (rows + columns) * k * parameters * 4
    working = 2 * block + features + 2 * (tile_bytes + MESSAGE_OVERHEAD)
    row_blocks = -(-n // rows)
    contraction = n * columns * k * (1 if output == "trace" else k) * parameters  # J(x1) J(x2)^T
    cost = contraction + row_blocks * columns * k * parameters  # x2's features, once per row block
    kernel = f"{output} kernel of {n} x {m} examples" if output != "diagonal" else f"diagonal kernel of {n} examples"
    what = f"the {kernel}" + (f" for each of {layers} layers" if layers > 1 else "")
    return Estimate(what, tile_bytes + MESSAGE_OVERHEAD, working, cost, cost > limits.large_cost)


def check(estimate, limits, max_message_bytes):
    """ResourceExhausted, naming the estimate and the limit, when the answer cannot be
    sent in one message or the working memory is above the per-request limit."""
    if estimate.answer_bytes > max_message_bytes:
        raise ResourceExhausted(
            f"The answer for {estimate.what} takes {mib(estimate.answer_bytes)} in one message, above this "
            f"server's message limit of {mib(max_message_bytes)}; ask for fewer examples or less uncertainty "
            "(UNCERTAINTY_VARIANCE instead of the joint covariance)."
        )
    if estimate.working_bytes > limits.max_working_bytes:
        raise ResourceExhausted(
            f"This request ({estimate.what}) needs an estimated {mib(estimate.working_bytes)} of "
            f"working memory, above this server's limit of {mib(limits.max_working_bytes)} per request; "
            "split the request into smaller ones."
        )


class MemoryBudget:
    """Working memory shared by the requests in flight: each reserves its estimate
    before it starts and releases it when it ends.

    Args:
      total: bytes (None: no shared budget, only the per-request limit).
    """

    def __init__(self, total=None):
        if total is not None and not total > 0:
            raise ValueError(f"The memory budget must be a positive number of bytes, got {total!r}.")
        self.total = total
        self.in_use = 0
        self._lock = threading.Lock()

    def reserve(self, estimate):
        """A callable that releases the reservation (idempotent), or ResourceExhausted."""
        amount = estimate.working_bytes
        with self._lock:
            if self.total is not None and self.in_use + amount > self.total:
                raise ResourceExhausted(
                    f"This request ({estimate.what}) needs an estimated {mib(amount)} of working "
                    f"memory; {mib(self.in_use)} of this server's {mib(self.total)} are in use by other requests. "
                    "Retry later or split the request."
                )
            self.in_use += amount
        released = []

        def release():
            with self._lock:
                if not released:
                    released.append(True)
                    self.in_use -= amount

        return release


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
        raise InvalidArgument(f"{what} has shape {_shape(shape)}, expected (N, {_dims(input_shape)}).")
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


def finite_outputs(arrays, what):
    """InvalidArgument unless every array is finite: finite inputs so large that the
    model overflows (float32 ends near 3.4e38) have no meaningful answer."""
    for array in arrays:
        if not np.all(np.isfinite(array)):
            raise InvalidArgument(
                f"The {what} is not finite for these inputs: they are so large that the model's computation "
                "overflows. Send inputs on the scale the model was trained on."
            )


def _shape(shape):
    text = str(list(shape))
    return text if len(text) <= 80 else f"{text[:80]}... (rank {len(shape)})"


def _dims(shape):
    return ", ".join(str(d) for d in shape)
