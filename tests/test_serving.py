"""The gRPC service end to end: a real server on 127.0.0.1 (port 0) and the real client.

Every answer is compared with an independent in-process computation: the
Laplace / NTKGP objects that were exported (their own predict), the NTK engine
(keras_ntk.empirical_ntk) and brute-force Jacobians (tests/references.py).
"""

import threading
import time

import grpc
import keras
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import keras_ntk
from keras_ntk.predictive import NTKGP, Laplace
from references import brute_force_ntk
from keras_ntk.serving import export, tensors, validation
from keras_ntk.serving.batching import MicroBatcher
from keras_ntk.serving.client import Client
from keras_ntk.serving.errors import DeadlineExceeded
from keras_ntk.serving.server import Server
from keras_ntk.serving.servicer import KernelServicer
from keras_ntk.serving.v1 import serving_pb2 as pb

LAPLACE_STRUCTURES = ["full", "diag", "last_layer", "kron", "function_space"]
TOL = dict(rtol=1e-6, atol=1e-9)
D, K = 3, 2


def wait_until_available(client, expected, timeout=120.0):
    """Poll ListModels until every (name, version) in `expected` is AVAILABLE."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        models = client.list_models()
        states = {(n, v["version"]): v["state"] for n, m in models.items() for v in m["versions"]}
        if all(states.get(key) == "AVAILABLE" for key in expected):
            return models
        time.sleep(0.05)
    raise AssertionError(f"models not available after {timeout} s: {client.list_models()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Exported regression Laplaces (every structure), a classification Laplace and
    two NTK-GPs, served by one server; yields (client, server, posteriors, data)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, D)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1])], axis=1).astype(np.float32)
    x_test = rng.normal(size=(6, D)).astype(np.float32)
    model = keras_ntk.models.mlp(8, 2, K, input_shape=(D,))  # the weights need no training to be served
    base = tmp_path_factory.mktemp("models")
    posteriors = {}
    for structure in LAPLACE_STRUCTURES:
        laplace = Laplace(model, "regression", structure=structure, prior_precision=0.7, noise_variance=0.05)
        posteriors[f"reg-{structure}"] = laplace.fit((x, y))
    labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    classifier = keras_ntk.models.mlp(8, 1, 3, input_shape=(D,))
    posteriors["cls-kron"] = Laplace(classifier, "classification", structure="kron", prior_precision=0.5).fit((x, labels))
    posteriors["gp-independent"] = NTKGP.empirical(model, x, y, 0.05, output="independent")
    posteriors["gp-full"] = NTKGP.empirical(model, x, y, 0.05, output="full")
    for name, posterior in posteriors.items():
        export.export(posterior, base, name)
    limits = validation.Limits(max_kernel_values=1_000_000)
    server = Server(base, port=0, poll_interval=0.2, max_workers=4, limits=limits).start()
    client = Client(f"127.0.0.1:{server.port}", timeout=60)
    wait_until_available(client, [(name, 1) for name in posteriors])
    yield client, server, posteriors, {"x": x, "y": y, "x_test": x_test, "base": base}
    client.close()
    server.stop(grace=1)


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _still_serving(client, x):
    assert client.predict("reg-kron", x[:2]).mean.shape == (2, K)


# -- predictions ------------------------------------------------------------------------
@pytest.mark.parametrize("structure", LAPLACE_STRUCTURES)
def test_laplace_predictions_equal_the_in_process_predictive(served, structure):
    client, _, posteriors, data = served
    laplace, x = posteriors[f"reg-{structure}"], data["x_test"]
    expected = laplace.predict(x)
    p = client.predict(f"reg-{structure}", x)
    assert (p.name, p.version) == (f"reg-{structure}", 1)
    np.testing.assert_allclose(p.mean, expected.mean().numpy(), **TOL)
    np.testing.assert_allclose(p.variance, expected.variance().numpy(), **TOL)
    joint = client.predict(f"reg-{structure}", x, uncertainty="joint")
    np.testing.assert_allclose(joint.covariance, laplace.functional_covariance(x, joint=True).numpy(), **TOL)
    noisy = client.predict(f"reg-{structure}", x, observation_noise=True)
    np.testing.assert_allclose(noisy.variance, laplace.predict(x, observation_noise=True).variance().numpy(), **TOL)
    assert p.covariance is None and p.probabilities is None


@pytest.mark.parametrize("output", ["independent", "full"])
def test_gp_predictions_equal_the_in_process_posterior(served, output):
    client, _, posteriors, data = served
    gp, x = posteriors[f"gp-{output}"], data["x_test"]
    p = client.predict(f"gp-{output}", x)
    np.testing.assert_allclose(p.mean, gp.predict(x).mean().numpy(), **TOL)
    np.testing.assert_allclose(p.variance, gp.predict(x).variance().numpy(), **TOL)
    joint = gp.predict(x, joint=True)  # its covariance() holds the jitter it needed
    expected = joint.covariance().numpy() - gp.predictive_jitter * np.eye(x.shape[0] * K)
    np.testing.assert_allclose(client.predict(f"gp-{output}", x, uncertainty="joint").covariance, expected, **TOL)
    assert p.jitter == gp.jitter


def test_classification_probit_and_monte_carlo(served):
    client, _, posteriors, data = served
    laplace, x = posteriors["cls-kron"], data["x_test"]
    probit = client.predict("cls-kron", x)
    np.testing.assert_allclose(probit.probabilities, laplace.predict(x, link="probit").probs_parameter().numpy(), **TOL)
    np.testing.assert_allclose(probit.mean, laplace.model(x).numpy(), rtol=1e-6, atol=1e-6)
    # Monte Carlo against a numpy Monte Carlo from the in-process mean and covariance.
    mean = laplace.model(x).numpy().astype(np.float64)
    cov = laplace.functional_covariance(x).numpy()
    rng = np.random.default_rng(1)
    draws = mean[None] + np.einsum("nkl,snl->snk", np.linalg.cholesky(cov + 1e-10 * np.eye(3)), rng.normal(size=(100_000, len(x), 3)))
    softmax = np.exp(draws - draws.max(-1, keepdims=True))
    reference = (softmax / softmax.sum(-1, keepdims=True)).mean(0)
    mc = client.predict("cls-kron", x, link="mc", samples=20_000, seed=7)
    np.testing.assert_allclose(mc.probabilities, reference, atol=0.02)  # about 5 standard errors
    np.testing.assert_allclose(mc.probabilities.sum(1), 1.0, rtol=1e-12)
    again = client.predict("cls-kron", x, link="mc", samples=20_000, seed=7)
    np.testing.assert_array_equal(again.probabilities, mc.probabilities)
    assert mc.seed == 7
    other = client.predict("cls-kron", x, link="mc", samples=20_000, seed=8)
    assert not np.array_equal(other.probabilities, mc.probabilities)
    chosen = client.predict("cls-kron", x, link="mc", samples=100)  # no seed: the server picks and echoes one
    repeated = client.predict("cls-kron", x, link="mc", samples=100, seed=chosen.seed)
    np.testing.assert_array_equal(repeated.probabilities, chosen.probabilities)


def test_concurrent_requests_each_get_their_own_answer(served):
    client, server, posteriors, data = served
    laplace = posteriors["reg-kron"]
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(1 + i % 3, D)).astype(np.float32) for i in range(24)]
    results = [None] * len(inputs)

    def ask(i):
        results[i] = client.predict("reg-kron", inputs[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, p in zip(inputs, results):
        np.testing.assert_allclose(p.variance, laplace.predict(x).variance().numpy(), **TOL)
        np.testing.assert_allclose(p.mean, laplace.predict(x).mean().numpy(), **TOL)


# -- kernels ----------------------------------------------------------------------------
@pytest.mark.parametrize("output", ["full", "trace", "diagonal"])
def test_streamed_tiles_assemble_to_the_engine_kernel(served, output):
    client, _, posteriors, data = served
    model = posteriors["reg-kron"].model
    x1, x2 = data["x_test"], data["x"]
    second = None if output == "diagonal" else x2
    tiles = list(client.kernel_tiles("reg-kron", x1, second, output=output, max_tile_bytes=16))
    assert len(tiles) >= len(x1) and tiles[0].tile_count == len(tiles)  # one row or less per tile
    assert all(t.model_spec.name == "reg-kron" and t.model_spec.version == 1 for t in tiles)
    from keras_ntk.serving.client import assemble

    kernel = assemble(tiles)
    expected = keras_ntk.empirical_ntk(model, x1, second, output=output).numpy()
    np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-6)
    brute = brute_force_ntk(model, np.concatenate([x1, x2]))
    reference = {
        "full": brute[: len(x1), len(x1) :],
        "trace": np.trace(brute[: len(x1), len(x1) :], axis1=2, axis2=3) / K,
        "diagonal": np.stack([brute[i, i] for i in range(len(x1))]),
    }[output]
    np.testing.assert_allclose(kernel, reference, rtol=1e-4, atol=1e-5)


def test_per_layer_kernels_and_float64(served):
    client, _, posteriors, data = served
    model = posteriors["reg-kron"].model
    x = data["x_test"]
    layers = client.kernel("reg-kron", x, per_layer=True, dtype="float64", max_tile_bytes=200)
    expected = keras_ntk.empirical_ntk(model, x, per_layer=True, dtype="float64")
    assert sorted(layers) == sorted(expected) and len(layers) == 3
    for name, value in layers.items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, expected[name].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sum(layers.values()), brute_force_ntk(model, x), rtol=1e-5, atol=1e-6)


def test_a_kernel_larger_than_one_message_streams(served):
    client, server, posteriors, data = served
    model = posteriors["reg-kron"].model
    x = np.random.default_rng(3).normal(size=(300, D)).astype(np.float32)
    # 300 x 300 x 2 x 2 float64 = 2.9 MB: more than the default tile limit of 1 MiB.
    tiles = list(client.kernel_tiles("reg-kron", x, dtype="float64"))
    assert len(tiles) >= 3
    assert max(t.ByteSize() for t in tiles) <= validation.Limits().max_tile_bytes + 1024
    from keras_ntk.serving.client import assemble

    np.testing.assert_allclose(
        assemble(tiles), keras_ntk.empirical_ntk(model, x, dtype="float64").numpy(), rtol=1e-10, atol=1e-12
    )


# -- metadata, status, versions ----------------------------------------------------------
def test_metadata_describes_the_model(served):
    client, _, posteriors, _ = served
    meta = client.metadata("cls-kron")
    model = posteriors["cls-kron"].model
    assert meta["input"] == {"dtype": "float32", "shape": [-1, D]}
    assert meta["output"] == {"dtype": "float32", "shape": [-1, 3]}
    assert meta["parameter_count"] == sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 8 * D + 8 + 8 * 3 + 3
    assert (meta["likelihood"], meta["posterior_type"], meta["structure"]) == ("classification", "laplace", "kron")
    assert meta["parametrization"] == "ntk"
    assert meta["available_versions"] == [1] and meta["version"] == 1
    gp = client.metadata("gp-full")
    assert (gp["posterior_type"], gp["structure"], gp["likelihood"]) == ("ntk_gp", "full", "regression")
    status = client.status("reg-full")
    assert status == [{"version": 1, "state": "AVAILABLE", "error": ""}]
    assert set(client.list_models()) == set(posteriors)


# -- errors -----------------------------------------------------------------------------
def _raw_predict(client, **fields):
    request = pb.PredictRequest(model_spec=pb.ModelSpec(name="reg-kron"), **fields)
    return lambda: client.stub.Predict(request, timeout=30)


def test_error_paths_return_their_status_and_the_server_goes_on(served):
    client, _, _, data = served
    x = data["x_test"]
    cases = [
        (lambda: client.predict("no-such-model", x), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (lambda: client.predict("reg-kron", x, version=9), grpc.StatusCode.NOT_FOUND, "available versions: 1"),
        (lambda: client.predict("reg-kron", x, label="stable"), grpc.StatusCode.NOT_FOUND, "label"),
        (lambda: client.predict("../reg-kron", x), grpc.StatusCode.NOT_FOUND, "not served"),
        (lambda: client.predict("reg-kron", x[:, :2]), grpc.StatusCode.INVALID_ARGUMENT, "expected (N, 3)"),
        (lambda: client.predict("reg-kron", x[0]), grpc.StatusCode.INVALID_ARGUMENT, "expected (N, 3)"),
        (lambda: client.predict("reg-kron", x[:0]), grpc.StatusCode.INVALID_ARGUMENT, "no examples"),
        (lambda: client.predict("reg-kron", np.where(np.eye(6, 3) > 0, np.nan, x)), grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
        (_raw_predict(client, inputs=tensors.to_proto(x.astype(np.float64))), grpc.StatusCode.INVALID_ARGUMENT, "expected float32"),
        (_raw_predict(client), grpc.StatusCode.INVALID_ARGUMENT, "inputs is missing"),
        (
            _raw_predict(client, inputs=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 3], content=b"\0" * 20)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected 24",
        ),
        (lambda: client.predict("reg-kron", np.zeros((5000, D))), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 4096"),
        (lambda: client.predict("reg-kron", np.zeros((2049, D)), uncertainty="joint"), grpc.StatusCode.RESOURCE_EXHAUSTED, "joint"),
        (lambda: client.predict("cls-kron", x, uncertainty="joint"), grpc.StatusCode.INVALID_ARGUMENT, "regression"),
        (lambda: client.predict("cls-kron", x, link="mc", samples=10**6), grpc.StatusCode.RESOURCE_EXHAUSTED, "samples"),
        (lambda: client.predict("reg-kron", x, link="mc"), grpc.StatusCode.INVALID_ARGUMENT, "classification"),
        (lambda: client.kernel("reg-kron", x, x, output="diagonal"), grpc.StatusCode.INVALID_ARGUMENT, "leave x2 unset"),
        (lambda: client.kernel("reg-kron", np.zeros((600, D)), np.zeros((500, D))), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 1000000"),
        (lambda: client.kernel("reg-kron", x, x[:, :1]), grpc.StatusCode.INVALID_ARGUMENT, "x2 has shape"),
        (lambda: client.metadata("reg-kron", version=3), grpc.StatusCode.NOT_FOUND, "Version 3"),
        (lambda: client.status("nothing"), grpc.StatusCode.NOT_FOUND, "not served"),
        (lambda: client.predict("", x), grpc.StatusCode.INVALID_ARGUMENT, "name is empty"),
    ]
    for call, code, text in cases:
        try:
            call()
        except grpc.RpcError as error:
            got, details = error.code(), error.details()
        else:
            raise AssertionError(f"no error for the case expecting {code.name}: {text!r}")
        assert got == code, (text, got, details)
        assert text in details, (text, details)
        _still_serving(client, x)


def test_a_passed_deadline_is_deadline_exceeded(served):
    client, server, _, data = served
    x = data["x_test"]
    many = np.random.default_rng(4).normal(size=(480, D)).astype(np.float32)  # 480 tiles
    code, _ = _code(lambda: list(client.kernel_tiles("reg-kron", many, max_tile_bytes=16, timeout=0.05)))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    _still_serving(client, x)

    class PassedDeadline:  # the server's own check, before any work
        def time_remaining(self):
            return 0.0

        def abort(self, code, details):
            self.code = code
            raise RuntimeError(details)

    context = PassedDeadline()
    servicer = KernelServicer(server.registry)
    request = pb.PredictRequest(model_spec=pb.ModelSpec(name="reg-kron"), inputs=tensors.to_proto(x))
    with pytest.raises(RuntimeError, match="deadline"):
        servicer.Predict(request, context)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED


# -- health and reflection ----------------------------------------------------------------
def test_health_and_reflection_through_the_standard_clients(served):
    client, server, posteriors, _ = served
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    for name in posteriors:
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == serving
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    database = ProtoReflectionDescriptorDatabase(channel)
    services = database.get_services()
    assert "keras_ntk.serving.v1.KernelService" in services and "grpc.health.v1.Health" in services
    service = descriptor_pool.DescriptorPool(database).FindServiceByName("keras_ntk.serving.v1.KernelService")
    assert sorted(m.name for m in service.methods) == sorted(
        ["Predict", "ComputeKernel", "GetModelMetadata", "GetModelStatus", "ListModels"]
    )
    channel.close()


# -- the micro-batcher ------------------------------------------------------------------
def test_micro_batcher_answers_queued_requests_in_one_pass():
    release, calls, threads = threading.Event(), [], {}

    def double(x):
        calls.append(len(x))
        threads.setdefault(len(calls), threading.current_thread().name)
        if len(calls) <= 2:
            release.wait(30)
        return (2 * x, x.sum(axis=1))

    def wait_for_calls(count):
        while len(calls) < count:
            time.sleep(0.001)

    batcher = MicroBatcher(double, max_examples=4, max_wait=0.0, name="worker")
    results = {}
    lone = threading.Thread(target=lambda: results.setdefault("lone", batcher.submit(np.ones((1, 3)))), name="caller")
    lone.start()  # the batcher is idle: this request runs in its caller's thread
    wait_for_calls(1)
    second = batcher.submit(np.zeros((2, 3)))  # busy: queued, the worker takes it alone
    wait_for_calls(2)
    inputs = [np.full((2, 3), float(i)) for i in range(1, 4)]
    futures = [batcher.submit(x) for x in inputs]  # queued while both passes run
    late = batcher.submit(np.ones((1, 3)), deadline=time.monotonic() - 1)
    release.set()
    lone.join()
    np.testing.assert_array_equal(results["lone"].result(30)[0], 2 * np.ones((1, 3)))
    np.testing.assert_array_equal(second.result(30)[0], np.zeros((2, 3)))
    for x, future in zip(inputs, futures):
        doubled, sums = future.result(30)
        np.testing.assert_array_equal(doubled, 2 * x)
        np.testing.assert_array_equal(sums, x.sum(axis=1))
    with pytest.raises(DeadlineExceeded):
        late.result(30)
    batcher.close()
    assert calls == [1, 2, 4, 2]  # two queued requests of 2 share one pass (max_examples=4)
    assert threads[1] == "caller" and threads[2] == threads[3] == "worker"


@pytest.mark.parametrize(
    "error, code",
    [(RuntimeError("boom"), grpc.StatusCode.INTERNAL), (keras_ntk.NTKMemoryError("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED)],
)
def test_unexpected_failures_map_to_status_codes(error, code):
    class FailingRegistry:
        def resolve(self, *args, **kwargs):
            raise error

    class Context:
        def time_remaining(self):
            return 10.0

        def abort(self, code, details):
            self.code, self.details = code, details
            raise RuntimeError("aborted")

    servicer = KernelServicer(FailingRegistry())
    for call, request in (
        (servicer.Predict, pb.PredictRequest(model_spec=pb.ModelSpec(name="m"))),
        (lambda r, c: list(servicer.ComputeKernel(r, c)), pb.ComputeKernelRequest(model_spec=pb.ModelSpec(name="m"))),
    ):
        context = Context()
        with pytest.raises(RuntimeError, match="aborted"):
            call(request, context)
        assert context.code == code and str(error) in context.details
