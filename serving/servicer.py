"""The KernelService implementation: requests -> registry -> compiled predictive / NTK.

Every handler checks the deadline first, resolves the ModelSpec (NOT_FOUND;
UNAVAILABLE while the model loads), validates its inputs (INVALID_ARGUMENT
naming what was expected), estimates the answer, working memory and cost before
any work (validation.py: RESOURCE_EXHAUSTED naming the estimate and the limit
when the answer cannot be sent in one message or does not fit in memory),
checks the deadline and the client between chunks of work, so that work stops
soon after DEADLINE_EXCEEDED or a client that went away, and echoes the
effective spec (name and version) in every response. Outputs that are not
finite (inputs so large that the model overflows) are INVALID_ARGUMENT, never
an OK full of NaN. Unexpected failures are logged and answered INTERNAL; the
server goes on serving.

Predict and ComputeKernel come in two steps, so that a server can run the second
on a pool chosen by the request's size: `prepare_predict` / `prepare_kernel`
validate and estimate, returning a `Work`; `Work.run()` computes. The
handlers `Predict` and `ComputeKernel` do both.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import contextlib
import dataclasses
import functools
import inspect
import logging
import math
import secrets
import time
from typing import Callable

import grpc
import numpy as np

from keras_ntk.ntk.memory import NTKMemoryError
from . import tensors, validation
from .errors import Cancelled, DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, ServingError, details
from .registry import AVAILABLE, FAILED, LOADING, UNLOADED
from .v1 import serving_pb2 as pb
from .v1 import serving_pb2_grpc

log = logging.getLogger("keras_ntk.serving")

STATES = {
    LOADING: pb.MODEL_STATE_LOADING,
    AVAILABLE: pb.MODEL_STATE_AVAILABLE,
    FAILED: pb.MODEL_STATE_FAILED,
    UNLOADED: pb.MODEL_STATE_UNLOADED,
}
KERNEL_OUTPUTS = {
    pb.KERNEL_OUTPUT_UNSPECIFIED: "full",
    pb.KERNEL_OUTPUT_FULL: "full",
    pb.KERNEL_OUTPUT_TRACE: "trace",
    pb.KERNEL_OUTPUT_DIAGONAL: "diagonal",
}
KERNEL_DTYPES = {
    pb.DATA_TYPE_UNSPECIFIED: np.float32,
    pb.DATA_TYPE_FLOAT32: np.float32,
    pb.DATA_TYPE_FLOAT64: np.float64,
}
MAX_MC_VALUES = 1 << 26  # samples * N * K logits held at once


def status_of(error):
    """(grpc.StatusCode, message) of an error; INTERNAL for unexpected ones."""
    if isinstance(error, ServingError):
        return error.code, details(error)
    if isinstance(error, NTKMemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, details(error)
    return grpc.StatusCode.INTERNAL, details(f"{type(error).__name__}: {error}")


@contextlib.contextmanager
def answering(context, method):
    """Abort the call with the status of any error raised inside (unexpected ones logged)."""
    try:
        yield
    except Exception as error:
        if not isinstance(error, (ServingError, NTKMemoryError)):
            log.exception("%s failed", method)
        context.abort(*status_of(error))


def _errors(method):
    """Handlers answer errors with their status (see `answering`)."""

    @functools.wraps(method)
    def unary(self, request, context):
        with answering(context, method.__name__):
            return method(self, request, context)

    @functools.wraps(method)
    def streaming(self, request, context):
        with answering(context, method.__name__):
            yield from method(self, request, context)

    return streaming if inspect.isgeneratorfunction(method) else unary


def deadline_of(context):
    """The call's deadline in time.monotonic() seconds (None without one);
    DeadlineExceeded when it has passed."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise DeadlineExceeded("The deadline passed before the server started the work.")
    return time.monotonic() + remaining


def check_deadline(deadline, what="the work"):
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"The deadline passed during {what}.")


def check_call(context, deadline, what):
    """DeadlineExceeded after the deadline, Cancelled once the client has gone."""
    check_deadline(deadline, what)
    if not context.is_active():
        raise Cancelled(f"The client cancelled the call during {what}.")


@dataclasses.dataclass
class Work:
    """A validated request: its estimate, `run()` computing the answer (a response,
    or an iterator of tiles) and `release()` returning its reserved memory
    (idempotent; call it once the work has ended or will never run)."""

    estimate: validation.Estimate
    run: Callable
    release: Callable


def parameter_count(model):
    """P, the number of trainable parameters of a Keras model."""
    return sum(math.prod(v.shape) for v in model.trainable_variables)


def layer_count(model):
    """Layers (owners of trainable variables) that per_layer kernels stream."""
    return len({v.path.rsplit("/", 1)[0] for v in model.trainable_variables})


class KernelServicer(serving_pb2_grpc.KernelServiceServicer):
    """Args: registry (registry.Registry), limits (validation.Limits), the largest
    message the server sends (bytes), and the validation.MemoryBudget shared by the
    requests in flight (None: only the per-request limit)."""

    def __init__(self, registry, limits=None, max_message_bytes=64 << 20, memory=None):
        self.registry = registry
        self.limits = limits or validation.Limits()
        self.max_message_bytes = max_message_bytes
        self.memory = memory or validation.MemoryBudget()

    def _resolve(self, spec):
        if not spec.name:
            raise InvalidArgument("model_spec.name is empty; name the model to query.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version" and spec.version < 1:
            raise InvalidArgument(f"model_spec.version must be a positive integer, got {spec.version}.")
        servable = self.registry.resolve(
            spec.name,
            version=spec.version if choice == "version" else None,
            label=spec.version_label if choice == "version_label" else None,
        )
        return servable, pb.ModelSpec(name=servable.name, version=servable.version)

    def _work(self, estimate, run):
        validation.check(estimate, self.limits, self.max_message_bytes)
        return Work(estimate, run, self.memory.reserve(estimate))

    # -- Predict ----------------------------------------------------------------------
    @_errors
    def Predict(self, request, context):
        work = self.prepare_predict(request, context)
        try:
            return work.run()
        finally:
            work.release()

    def prepare_predict(self, request, context):
        """The `Work` of a PredictRequest, or a ServingError."""
        deadline = deadline_of(context)
        servable, spec = self._resolve(request.model_spec)
        x = validation.inputs(request.inputs, servable.input_shape, servable.input_dtype, self.limits)
        uncertainty = request.uncertainty or pb.UNCERTAINTY_VARIANCE
        if uncertainty not in pb.Uncertainty.values():
            raise InvalidArgument(f"uncertainty {uncertainty} is not one of {list(pb.Uncertainty.keys())}.")
        classification = servable.likelihood == "classification"
        joint = uncertainty == pb.UNCERTAINTY_JOINT_COVARIANCE
        n, k = x.shape[0], servable.num_outputs
        samples = 0
        if classification:
            if joint:
                raise InvalidArgument("UNCERTAINTY_JOINT_COVARIANCE is for regression models; this one classifies.")
            if request.observation_noise:
                raise InvalidArgument("observation_noise is for regression models; this one classifies.")
            if request.link not in (pb.LINK_UNSPECIFIED, pb.LINK_PROBIT, pb.LINK_MONTE_CARLO):
                raise InvalidArgument(f"link {request.link} is not one of {list(pb.Link.keys())}.")
            if request.link == pb.LINK_MONTE_CARLO:
                samples = request.samples or 1000
                if samples < 0:
                    raise InvalidArgument(f"samples must be positive, got {samples}.")
                if samples > self.limits.max_samples or samples * n * k > MAX_MC_VALUES:
                    raise ResourceExhausted(
                        f"{samples} Monte-Carlo samples for {n} examples exceed this server's limits "
                        f"(at most {self.limits.max_samples} samples and {MAX_MC_VALUES} sampled logits)."
                    )
        elif request.link != pb.LINK_UNSPECIFIED:
            raise InvalidArgument("link is for classification models; this one is a regression.")
        if joint and n * k > self.limits.max_joint_size:
            raise ResourceExhausted(
                f"A joint covariance over N K = {n} x {k} = {n * k} outputs exceeds this server's "
                f"limit of {self.limits.max_joint_size}; ask for fewer examples or UNCERTAINTY_VARIANCE."
            )
        estimate = validation.predict_estimate(
            n, k, parameter_count(servable.model), joint=joint, classification=classification,
            samples=samples, limits=self.limits,
        )
        seed = request.seed if request.HasField("seed") else secrets.randbits(62)
        noise = servable.predictive.noise_variance if request.observation_noise else 0.0

        def run():
            check_call(context, deadline, "the wait for a worker")
            response = pb.PredictResponse(model_spec=spec, jitter=servable.predictive.jitter)
            if joint:
                mean, cov = self._joint(servable, x, context, deadline)
                cov[np.diag_indices_from(cov)] += noise
                validation.finite_outputs((mean, cov), "prediction")
                tensors.fill(response.variance, np.diagonal(cov).reshape(n, k))
                tensors.fill(response.covariance, cov)
                del cov
            else:
                mean, blocks = self._marginal(servable, x, context, deadline)
                validation.finite_outputs((mean, blocks), "prediction")
                if uncertainty == pb.UNCERTAINTY_VARIANCE:
                    tensors.fill(response.variance, np.diagonal(blocks, axis1=1, axis2=2) + noise)
                if classification:
                    if samples:
                        response.seed = seed
                        probabilities = servable.predictive.monte_carlo(mean, blocks, samples, seed)
                    else:
                        probabilities = servable.predictive.probit(mean, blocks)
                    tensors.fill(response.probabilities, probabilities)
            check_call(context, deadline, "the prediction")
            tensors.fill(response.mean, mean)
            return response

        return self._work(estimate, run)

    def _marginal(self, servable, x, context, deadline):
        """(mean (n, K), blocks (n, K, K)) in passes of limits.predict_chunk examples."""
        chunk = self.limits.predict_chunk
        parts = []
        for start in range(0, len(x), chunk):
            check_call(context, deadline, "the prediction")
            parts.append(servable.marginal(x[start : start + chunk], deadline))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(values) for values in zip(*parts))

    def _joint(self, servable, x, context, deadline):
        """(mean (n, K), joint covariance (n K, n K), [n, k] order) in passes of at most
        limits.joint_pass_outputs outputs: blocks of examples, each pair of blocks in
        one pass, whose off-diagonal part is the cross-covariance of the pair."""
        n, k = len(x), servable.num_outputs
        per_pass = max(1, self.limits.joint_pass_outputs // k)
        if n <= per_pass:
            check_call(context, deadline, "the joint covariance")
            return servable.joint(x)
        size = max(1, per_pass // 2)
        blocks = [(start, min(start + size, n)) for start in range(0, n, size)]
        mean = np.empty((n, k))
        cov = np.empty((n * k, n * k))
        filled = set()
        for i, (a0, a1) in enumerate(blocks):
            for b0, b1 in blocks[i + 1 :]:
                check_call(context, deadline, "the joint covariance")
                pair_mean, pair_cov = servable.joint(np.concatenate([x[a0:a1], x[b0:b1]]))
                split = (a1 - a0) * k
                rows_a, rows_b = slice(a0 * k, a1 * k), slice(b0 * k, b1 * k)
                cov[rows_a, rows_b] = pair_cov[:split, split:]
                cov[rows_b, rows_a] = pair_cov[split:, :split]
                for (start, stop), part, means in (
                    ((a0, a1), pair_cov[:split, :split], pair_mean[: a1 - a0]),
                    ((b0, b1), pair_cov[split:, split:], pair_mean[a1 - a0 :]),
                ):
                    if start not in filled:
                        cov[start * k : stop * k, start * k : stop * k] = part
                        mean[start:stop] = means
                        filled.add(start)
        return mean, cov

    # -- ComputeKernel ------------------------------------------------------------------
    @_errors
    def ComputeKernel(self, request, context):
        work = self.prepare_kernel(request, context)
        try:
            yield from work.run()
        finally:
            work.release()

    def prepare_kernel(self, request, context):
        """The `Work` of a ComputeKernelRequest (`run()` yields KernelTile messages)."""
        deadline = deadline_of(context)
        servable, spec = self._resolve(request.model_spec)
        output = KERNEL_OUTPUTS.get(request.output)
        if output is None:
            raise InvalidArgument(f"output {request.output} is not one of {list(pb.KernelOutput.keys())}.")
        dtype = KERNEL_DTYPES.get(request.dtype)
        if dtype is None:
            raise InvalidArgument("dtype of a kernel must be DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT64.")
        x1 = validation.inputs(request.x1, servable.input_shape, servable.input_dtype, self.limits, "x1")
        symmetric = not request.HasField("x2")
        if output == "diagonal" and not symmetric:
            raise InvalidArgument("KERNEL_OUTPUT_DIAGONAL pairs each x1 with itself; leave x2 unset.")
        x2 = x1 if symmetric else validation.inputs(
            request.x2, servable.input_shape, servable.input_dtype, self.limits, "x2"
        )
        n, m, k = x1.shape[0], x2.shape[0], servable.num_outputs
        shape = {"full": (n, m, k, k), "trace": (n, m), "diagonal": (n, k, k)}[output]
        layers = layer_count(servable.model) if request.per_layer else 1
        self._check_kernel_values(shape, layers, request.per_layer)
        if request.max_tile_bytes < 0:
            raise InvalidArgument(f"max_tile_bytes must be >= 0, got {request.max_tile_bytes}.")
        budget = min(request.max_tile_bytes or self.limits.max_tile_bytes, self.limits.max_tile_bytes)
        entry = np.dtype(dtype).itemsize * math.prod(shape[2:] if output != "diagonal" else shape[1:])
        if output == "diagonal":
            rows, cols = max(1, min(n, budget // entry)), 1
            col_blocks = [(0, 1)]
        else:
            cols = max(1, min(m, budget // entry))
            rows = max(1, min(n, budget // (cols * entry)))
            col_blocks = [(c, min(c + cols, m)) for c in range(0, m, cols)]
        row_blocks = [(r, min(r + rows, n)) for r in range(0, n, rows)]
        estimate = validation.kernel_estimate(
            n, m, k, output, layers, np.dtype(dtype).itemsize, parameter_count(servable.model),
            rows, rows * cols * entry, self.limits,
        )

        def run():
            check_call(context, deadline, "the wait for a worker")
            # The kernel engine's first call compares the model's outputs at the first two
            # inputs; when they overflow, say so instead of letting it guess at the model.
            validation.finite_outputs((servable.marginal(x1[:2])[0],), "model output")
            tile_count = None
            for r0, r1 in row_blocks:
                check_call(context, deadline, "the kernel")
                parts = self._kernel_block(servable, x1, x2, r0, r1, output, request.per_layer, dtype)
                if tile_count is None:
                    names = sorted(parts)
                    self._check_kernel_values(shape, len(names), request.per_layer)
                    tile_count = len(row_blocks) * len(col_blocks) * len(names)
                for c0, c1 in col_blocks:
                    for name in names:
                        values = parts[name] if output == "diagonal" else parts[name][:, c0:c1]
                        tile = pb.KernelTile(
                            model_spec=spec,
                            layer=name,
                            row_start=r0,
                            col_start=c0 if output != "diagonal" else 0,
                            kernel_shape=list(shape),
                            tile_count=tile_count,
                        )
                        tensors.fill(tile.values, values)
                        yield tile

        return self._work(estimate, run)

    def _check_kernel_values(self, shape, layers, per_layer):
        values = math.prod(shape) * layers
        if values > self.limits.max_kernel_values:
            streamed = f" ({layers} layers x {math.prod(shape)})" if per_layer else ""
            raise ResourceExhausted(
                f"The kernel {list(shape)} has {values} values{streamed}; this server answers at most "
                f"{self.limits.max_kernel_values} per request. Ask for fewer examples, output trace"
                f"{' or the total instead of per_layer' if per_layer else ''}."
            )

    @staticmethod
    def _kernel_block(servable, x1, x2, r0, r1, output, per_layer, dtype):
        """{layer ("" for the total): kernel rows r0:r1}, checked to be finite."""
        block = servable.kernel(x1[r0:r1], None if output == "diagonal" else x2, output, per_layer, dtype)
        parts = block if per_layer else {"": block}
        validation.finite_outputs(parts.values(), "kernel")
        return parts

    # -- metadata and status ------------------------------------------------------------
    @_errors
    def GetModelMetadata(self, request, context):
        deadline_of(context)
        servable, spec = self._resolve(request.model_spec)
        meta = servable.metadata
        return pb.GetModelMetadataResponse(
            model_spec=spec,
            input=pb.TensorInfo(
                dtype=tensors.dtype_enum(servable.input_dtype), shape=[-1, *servable.input_shape]
            ),
            output=pb.TensorInfo(
                dtype=tensors.dtype_enum(servable.output_dtype), shape=[-1, *servable.output_shape]
            ),
            likelihood=servable.likelihood,
            parametrization=meta.get("parametrization", ""),
            parameter_count=int(meta.get("parameters", 0)),
            posterior_type=meta["posterior"],
            structure=str(meta.get("structure", "")),
            available_versions=self.registry.available_versions(servable.name),
            version_labels=self.registry.labels(servable.name),
            metadata_json=servable.metadata_json,
        )

    @_errors
    def GetModelStatus(self, request, context):
        deadline_of(context)
        spec = request.model_spec
        if not spec.name:
            raise InvalidArgument("model_spec.name is empty; name the model to query.")
        records = self.registry.status(spec.name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self.registry.resolve(spec.name, label=spec.version_label).version
            records = [r for r in records if r.version == version]
        elif choice == "version":
            records = [r for r in records if r.version == spec.version]
            if not records:
                raise NotFound(f"Model {spec.name!r} has no version {spec.version}.")
        return pb.GetModelStatusResponse(model_spec=pb.ModelSpec(name=spec.name), versions=_statuses(records))

    @_errors
    def ListModels(self, request, context):
        deadline_of(context)
        models = []
        for name in self.registry.names():
            try:
                records = self.registry.status(name)
            except ServingError:
                continue
            models.append(
                pb.ModelSummary(name=name, versions=_statuses(records), version_labels=self.registry.labels(name))
            )
        return pb.ListModelsResponse(models=models)


def _statuses(records):
    return [pb.ModelVersionStatus(version=r.version, state=STATES[r.state], error_message=r.error) for r in records]
