"""The KernelService implementation: requests -> registry -> compiled predictive / NTK.

Every handler resolves the ModelSpec (NOT_FOUND), validates its inputs
(INVALID_ARGUMENT naming what was expected, RESOURCE_EXHAUSTED above the
limits), honours the deadline (DEADLINE_EXCEEDED when it has passed before or
during the work) and echoes the effective spec (name and version) in every
response. Unexpected failures are logged and answered INTERNAL; the server
goes on serving.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import functools
import inspect
import logging
import math
import secrets
import time

import grpc
import numpy as np

from keras_ntk.ntk.memory import NTKMemoryError
from . import tensors, validation
from .errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, ServingError
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
MAX_MC_VALUES = 1 << 26  # samples * N * K logits held at once


def _errors(method):
    """Answer ServingError with its code, NTKMemoryError with RESOURCE_EXHAUSTED and
    anything else with INTERNAL (logged)."""

    def answer(error, context):
        if isinstance(error, ServingError):
            context.abort(error.code, str(error))
        if isinstance(error, NTKMemoryError):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        log.exception("%s failed", method.__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except Exception as error:
            answer(error, context)

    @functools.wraps(method)
    def streaming(self, request, context):
        try:
            yield from method(self, request, context)
        except Exception as error:
            answer(error, context)

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


class KernelServicer(serving_pb2_grpc.KernelServiceServicer):
    """Args: registry (registry.Registry), limits (validation.Limits)."""

    def __init__(self, registry, limits=None):
        self.registry = registry
        self.limits = limits or validation.Limits()

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

    # -- Predict ----------------------------------------------------------------------
    @_errors
    def Predict(self, request, context):
        deadline = deadline_of(context)
        servable, spec = self._resolve(request.model_spec)
        x = validation.inputs(request.inputs, servable.input_shape, servable.input_dtype, self.limits)
        uncertainty = request.uncertainty or pb.UNCERTAINTY_VARIANCE
        if uncertainty not in pb.Uncertainty.values():
            raise InvalidArgument(f"uncertainty {uncertainty} is not one of {list(pb.Uncertainty.keys())}.")
        classification = servable.likelihood == "classification"
        n, k = x.shape[0], servable.num_outputs
        if classification:
            if uncertainty == pb.UNCERTAINTY_JOINT_COVARIANCE:
                raise InvalidArgument("UNCERTAINTY_JOINT_COVARIANCE is for regression models; this one classifies.")
            if request.observation_noise:
                raise InvalidArgument("observation_noise is for regression models; this one classifies.")
        elif request.link != pb.LINK_UNSPECIFIED:
            raise InvalidArgument("link is for classification models; this one is a regression.")
        response = pb.PredictResponse(model_spec=spec, jitter=servable.predictive.jitter)
        noise = servable.predictive.noise_variance if request.observation_noise else 0.0
        if uncertainty == pb.UNCERTAINTY_JOINT_COVARIANCE:
            if n * k > self.limits.max_joint_size:
                raise ResourceExhausted(
                    f"A joint covariance over N K = {n} x {k} = {n * k} outputs exceeds this server's "
                    f"limit of {self.limits.max_joint_size}; ask for fewer examples or UNCERTAINTY_VARIANCE."
                )
            mean, cov = servable.joint(x)
            cov = cov + noise * np.eye(n * k)
            response.covariance.CopyFrom(tensors.to_proto(cov))
            response.variance.CopyFrom(tensors.to_proto(np.diagonal(cov).reshape(n, k)))
        else:
            mean, blocks = servable.marginal(x, deadline)
            if uncertainty == pb.UNCERTAINTY_VARIANCE:
                response.variance.CopyFrom(tensors.to_proto(np.diagonal(blocks, axis1=1, axis2=2) + noise))
            if classification:
                response.probabilities.CopyFrom(tensors.to_proto(self._probabilities(servable, request, mean, blocks, response)))
        check_deadline(deadline, "the prediction")
        response.mean.CopyFrom(tensors.to_proto(mean))
        return response

    def _probabilities(self, servable, request, mean, blocks, response):
        if request.link in (pb.LINK_UNSPECIFIED, pb.LINK_PROBIT):
            return servable.predictive.probit(mean, blocks)
        if request.link != pb.LINK_MONTE_CARLO:
            raise InvalidArgument(f"link {request.link} is not one of {list(pb.Link.keys())}.")
        samples = request.samples or 1000
        if samples < 0:
            raise InvalidArgument(f"samples must be positive, got {samples}.")
        if samples > self.limits.max_samples or samples * mean.size > MAX_MC_VALUES:
            raise ResourceExhausted(
                f"{samples} Monte-Carlo samples for {mean.shape[0]} examples exceed this server's limits "
                f"(at most {self.limits.max_samples} samples and {MAX_MC_VALUES} sampled logits)."
            )
        seed = request.seed if request.HasField("seed") else secrets.randbits(62)
        response.seed = seed
        return servable.predictive.monte_carlo(mean, blocks, samples, seed)

    # -- ComputeKernel ------------------------------------------------------------------
    @_errors
    def ComputeKernel(self, request, context):
        deadline = deadline_of(context)
        servable, spec = self._resolve(request.model_spec)
        output = KERNEL_OUTPUTS.get(request.output)
        if output is None:
            raise InvalidArgument(f"output {request.output} is not one of {list(pb.KernelOutput.keys())}.")
        dtype = {
            pb.DATA_TYPE_UNSPECIFIED: np.float32,
            pb.DATA_TYPE_FLOAT32: np.float32,
            pb.DATA_TYPE_FLOAT64: np.float64,
        }.get(request.dtype)
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
        if math.prod(shape) > self.limits.max_kernel_values:
            raise ResourceExhausted(
                f"The kernel {list(shape)} has {math.prod(shape)} values; this server answers at most "
                f"{self.limits.max_kernel_values} per request. Ask for fewer examples or output trace."
            )
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
        layers = None
        tile_count = None
        for r0, r1 in row_blocks:
            check_deadline(deadline, "the kernel")
            if not context.is_active():
                return
            block = servable.kernel(x1[r0:r1], None if output == "diagonal" else x2, output, request.per_layer, dtype)
            parts = block if request.per_layer else {"": block}
            if tile_count is None:
                layers = sorted(parts)
                tile_count = len(row_blocks) * len(col_blocks) * len(layers)
            for c0, c1 in col_blocks:
                for layer in layers:
                    values = parts[layer] if output == "diagonal" else parts[layer][:, c0:c1]
                    yield pb.KernelTile(
                        model_spec=spec,
                        layer=layer,
                        row_start=r0,
                        col_start=c0 if output != "diagonal" else 0,
                        values=tensors.to_proto(values),
                        kernel_shape=list(shape),
                        tile_count=tile_count,
                    )

    # -- metadata and status ------------------------------------------------------------
    @_errors
    def GetModelMetadata(self, request, context):
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
