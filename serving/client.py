"""Python client of the KernelService: numpy arrays in, numpy arrays out.

    from .client import Client
    with Client("127.0.0.1:8500") as client:
        p = client.predict("my_model", x)            # p.mean, p.variance: (N, K)
        theta = client.kernel("my_model", x1, x2)    # (N, M, K, K), assembled from streamed tiles

Failed calls raise grpc.RpcError; `.code()` is the status (NOT_FOUND, INVALID_ARGUMENT, ...).
"""

import dataclasses

import grpc
import numpy as np

from . import tensors
from .v1 import serving_pb2 as pb
from .v1 import serving_pb2_grpc

UNCERTAINTIES = {
    "none": pb.UNCERTAINTY_NONE,
    "variance": pb.UNCERTAINTY_VARIANCE,
    "joint": pb.UNCERTAINTY_JOINT_COVARIANCE,
}
LINKS = {"probit": pb.LINK_PROBIT, "mc": pb.LINK_MONTE_CARLO}
OUTPUTS = {"full": pb.KERNEL_OUTPUT_FULL, "trace": pb.KERNEL_OUTPUT_TRACE, "diagonal": pb.KERNEL_OUTPUT_DIAGONAL}
STATES = {
    pb.MODEL_STATE_LOADING: "LOADING",
    pb.MODEL_STATE_AVAILABLE: "AVAILABLE",
    pb.MODEL_STATE_FAILED: "FAILED",
    pb.MODEL_STATE_UNLOADED: "UNLOADED",
}


@dataclasses.dataclass
class Prediction:
    """A Predict answer. mean (N, K); variance (N, K) or None; covariance (N K, N K)
    or None; probabilities (N, K) or None (classification); the answering model's
    name and version; the Monte-Carlo seed; the posterior's factorization jitter."""

    mean: np.ndarray
    variance: np.ndarray | None
    covariance: np.ndarray | None
    probabilities: np.ndarray | None
    name: str
    version: int
    seed: int
    jitter: float


def model_spec(name, version=None, label=None):
    """A ModelSpec message; at most one of version (int) and label (str)."""
    if version is not None and label is not None:
        raise ValueError("Give a version or a label, not both.")
    spec = pb.ModelSpec(name=name)
    if version is not None:
        spec.version = int(version)
    elif label is not None:
        spec.version_label = label
    return spec


def _array(tensor):
    return tensors.from_proto(tensor) if tensor.ByteSize() else None


def _status(record):
    return {"version": record.version, "state": STATES.get(record.state, "UNSPECIFIED"), "error": record.error_message}


class Client:
    """Args:
    target: "host:port" of the server.
    token: bearer token sent with every call (None: none).
    root_certificates: PEM bytes of the CA that signed the server's certificate;
      given (or tls=True with the system CAs) the channel uses TLS.
    server_name: expected name in the server's certificate, when it differs from the host.
    timeout: default deadline of every call, seconds.
    input_dtype: dtype floating inputs are sent as (the model's input dtype).
    """

    def __init__(
        self,
        target="127.0.0.1:8500",
        *,
        token=None,
        root_certificates=None,
        tls=False,
        server_name=None,
        timeout=60.0,
        input_dtype="float32",
        max_message_bytes=64 << 20,
    ):
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates is not None or tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = serving_pb2_grpc.KernelServiceStub(self.channel)
        self.timeout = timeout
        self.input_dtype = np.dtype(input_dtype)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _inputs(self, x):
        x = np.asarray(x)
        return tensors.to_proto(x, self.input_dtype if np.issubdtype(x.dtype, np.floating) else None)

    def _call(self, method, request, timeout):
        return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)

    def predict(
        self,
        name,
        x,
        *,
        version=None,
        label=None,
        uncertainty="variance",
        observation_noise=False,
        link=None,
        samples=0,
        seed=None,
        timeout=None,
    ):
        """Predictive at x (N, ...): uncertainty "none" | "variance" | "joint";
        classification link "probit" | "mc" (with samples and seed). Returns a Prediction."""
        if uncertainty not in UNCERTAINTIES:
            raise ValueError(f"uncertainty must be one of {list(UNCERTAINTIES)}, got {uncertainty!r}.")
        if link is not None and link not in LINKS:
            raise ValueError(f"link must be one of {list(LINKS)}, got {link!r}.")
        request = pb.PredictRequest(
            model_spec=model_spec(name, version, label),
            inputs=self._inputs(x),
            uncertainty=UNCERTAINTIES[uncertainty],
            observation_noise=observation_noise,
            link=LINKS[link] if link else pb.LINK_UNSPECIFIED,
            samples=samples,
        )
        if seed is not None:
            request.seed = seed
        response = self._call(self.stub.Predict, request, timeout)
        return Prediction(
            mean=_array(response.mean),
            variance=_array(response.variance),
            covariance=_array(response.covariance),
            probabilities=_array(response.probabilities),
            name=response.model_spec.name,
            version=response.model_spec.version,
            seed=response.seed,
            jitter=response.jitter,
        )

    def kernel_tiles(
        self, name, x1, x2=None, *, output="full", per_layer=False, dtype="float32",
        max_tile_bytes=0, version=None, label=None, timeout=None,
    ):
        """The raw KernelTile stream of an empirical-NTK request (see `kernel`)."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}.")
        request = pb.ComputeKernelRequest(
            model_spec=model_spec(name, version, label),
            x1=self._inputs(x1),
            output=OUTPUTS[output],
            per_layer=per_layer,
            dtype=tensors.dtype_enum(dtype),
            max_tile_bytes=max_tile_bytes,
        )
        if x2 is not None:
            request.x2.CopyFrom(self._inputs(x2))
        return self._call(self.stub.ComputeKernel, request, timeout)

    def kernel(self, name, x1, x2=None, **kwargs):
        """Empirical NTK of the served model, assembled from the streamed tiles.

        x1 (N, ...), x2 (M, ...) or None (x1). output "full" (N, M, K, K), "trace"
        (N, M) or "diagonal" (N, K, K); per_layer=True gives {layer path: kernel}.
        Keyword arguments as `kernel_tiles`.
        """
        per_layer = kwargs.get("per_layer", False)
        return assemble(self.kernel_tiles(name, x1, x2, **kwargs), per_layer)

    def metadata(self, name, version=None, label=None, timeout=None):
        """Model metadata as a dict (shapes with -1 for the batch axis)."""
        r = self._call(self.stub.GetModelMetadata, pb.GetModelMetadataRequest(model_spec=model_spec(name, version, label)), timeout)
        return {
            "name": r.model_spec.name,
            "version": r.model_spec.version,
            "input": {"dtype": tensors.dtype_name(r.input.dtype), "shape": list(r.input.shape)},
            "output": {"dtype": tensors.dtype_name(r.output.dtype), "shape": list(r.output.shape)},
            "likelihood": r.likelihood,
            "parametrization": r.parametrization,
            "parameter_count": r.parameter_count,
            "posterior_type": r.posterior_type,
            "structure": r.structure,
            "available_versions": list(r.available_versions),
            "version_labels": dict(r.version_labels),
            "metadata_json": r.metadata_json,
        }

    def status(self, name, version=None, label=None, timeout=None):
        """[{"version", "state", "error"}] of a model's versions."""
        r = self._call(self.stub.GetModelStatus, pb.GetModelStatusRequest(model_spec=model_spec(name, version, label)), timeout)
        return [_status(v) for v in r.versions]

    def list_models(self, timeout=None):
        """{name: {"versions": [status dicts], "labels": {label: version}}}."""
        r = self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)
        return {m.name: {"versions": [_status(v) for v in m.versions], "labels": dict(m.version_labels)} for m in r.models}

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def assemble(tiles, per_layer=False):
    """Kernel (or {layer: kernel}) from a KernelTile stream, checking that the tiles
    cover every entry exactly once."""
    out, covered = {}, {}
    for tile in tiles:
        values = tensors.from_proto(tile.values)
        shape = tuple(tile.kernel_shape)
        if tile.layer not in out:
            out[tile.layer] = np.zeros(shape, values.dtype)
            covered[tile.layer] = np.zeros(shape[:2] if len(shape) == 4 or len(shape) == 2 else shape[:1], np.int32)
        index = (slice(tile.row_start, tile.row_start + values.shape[0]),)
        if covered[tile.layer].ndim == 2:
            index += (slice(tile.col_start, tile.col_start + values.shape[1]),)
        out[tile.layer][index] = values
        covered[tile.layer][index] += 1
    if not out:
        raise RuntimeError("The kernel stream ended without tiles.")
    for layer, count in covered.items():
        if not np.all(count == 1):
            raise RuntimeError(f"The kernel stream covered {np.count_nonzero(count)} of {count.size} entries of {layer or 'the kernel'} (some not exactly once).")
    return out if per_layer else out[""]
