"""Slow, stalled and unauthenticated callers stall nothing; health answers under overload.

A real server on 127.0.0.1 with bearer tokens and a client timeout of 4 s.
Callers that send headers and never a body, and kernel streams whose client
stops reading, are opened first; while they are open, authenticated calls of
every kind and health checks must answer within 2 s, less than the client
timeout after which the server ends the stalled callers (so they cannot simply
have waited for that). The stalled callers are then seen to end: the
unauthenticated ones at once with UNAUTHENTICATED, the others with
DEADLINE_EXCEEDED after the client timeout.
"""

import threading
import time

import grpc
import keras
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import keras_ntk
from keras_ntk.predictive import Laplace
from keras_ntk.serving import export
from keras_ntk.serving.client import Client
from keras_ntk.serving.server import Server

TOKEN = "slow-caller-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
CLIENT_TIMEOUT = 4.0
BOUND = 2.0  # seconds within which the concurrent calls must answer
ADMITTED = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    model = keras_ntk.models.mlp(8, 1, 2, input_shape=(3,))
    laplace = Laplace(model, "regression", structure="kron", prior_precision=0.5, noise_variance=0.1)
    laplace.fit((x, np.stack([np.sin(x[:, 0]), x[:, 1]], axis=1)))
    base = tmp_path_factory.mktemp("models")
    export.export(laplace, base, "m")
    server = Server(
        base, port=0, poll_interval=30.0, tokens=[TOKEN], client_timeout=CLIENT_TIMEOUT,
        max_concurrent_rpcs=ADMITTED,
    ).start()
    target = f"127.0.0.1:{server.port}"
    client = Client(target, token=TOKEN, timeout=120)
    for _ in range(1200):
        try:
            client.predict("m", x[:1])
            break
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
            time.sleep(0.05)
    big = rng.normal(size=(1000, 3)).astype(np.float32)  # a 32 MB float64 kernel: 32 tiles of 1 MB
    probe = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    expected = laplace.predict(probe).variance().numpy()
    client.kernel("m", big[:2], dtype="float64")  # both kernels are traced before the tests
    client.kernel("m", probe, output="trace")
    yield target, client, (probe, expected), big
    client.close()
    server.stop(grace=1)


def _answers_within_the_bound(target, client, reference):
    """Authenticated calls of every kind and health checks answer within BOUND seconds."""
    x, variance = reference
    p = client.predict("m", x, timeout=BOUND)
    np.testing.assert_allclose(p.variance, variance, rtol=1e-6, atol=1e-9)
    assert client.list_models(timeout=BOUND)["m"]["versions"][0]["state"] == "AVAILABLE"
    assert client.metadata("m", timeout=BOUND)["name"] == "m"
    assert client.kernel("m", x, output="trace", timeout=BOUND).shape == (2, 2)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=BOUND).status == serving
        check = health.Check(health_pb2.HealthCheckRequest(service="m"), timeout=BOUND, metadata=AUTH)
        assert check.status == serving


def _header_only(channel, method, metadata=None):
    """A raw call that sends its headers and never a body; (future, release)."""
    release = threading.Event()

    def never():
        release.wait()
        yield from ()

    call = channel.stream_unary(f"/keras_ntk.serving.v1.KernelService/{method}")
    return call.future(never(), metadata=metadata, timeout=120), release


def test_callers_that_never_send_a_body_stall_nothing(served):
    target, client, reference, _ = served
    channels = [grpc.insecure_channel(target) for _ in range(8)]
    unauthenticated = [_header_only(channels[i % 8], "Predict") for i in range(256)]
    authenticated = [_header_only(channels[i], method, AUTH) for i, method in enumerate(["Predict", "ListModels"] * 4)]
    try:
        _answers_within_the_bound(target, client, reference)
        for future, _ in unauthenticated:
            assert future.exception(timeout=60).code() == grpc.StatusCode.UNAUTHENTICATED
        for future, _ in authenticated:
            assert not future.done()  # still waiting for its body: the calls above did not wait for it
        for future, _ in authenticated:  # ended by the server's client timeout
            error = future.exception(timeout=60)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "client timeout" in error.details()
    finally:
        for _, release in unauthenticated + authenticated:
            release.set()
        for channel in channels:
            channel.close()


def _stalled_readers(target, big, count):
    """`count` kernel streams that read one tile and then stop; (threads, outcomes, go on)."""
    outcomes, resume, started = [None] * count, threading.Event(), threading.Barrier(count + 1)

    def read(i):
        with Client(target, token=TOKEN, timeout=120) as reader:
            tiles = reader.kernel_tiles("m", big, dtype="float64")
            first = next(tiles)
            started.wait()
            resume.wait()
            try:
                count_read = 1 + sum(1 for _ in tiles)
            except grpc.RpcError as error:
                outcomes[i] = (error.code(), error.details())
            else:
                outcomes[i] = ("complete", count_read, first.tile_count)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    started.wait(timeout=120)
    return threads, outcomes, resume


def test_kernel_streams_whose_client_stops_reading_stall_nothing(served):
    target, client, reference, big = served
    threads, outcomes, resume = _stalled_readers(target, big, ADMITTED - 2)
    try:
        _answers_within_the_bound(target, client, reference)
        time.sleep(CLIENT_TIMEOUT + 1.0)  # the server ends the streams it cannot write to
    finally:
        resume.set()
        for thread in threads:
            thread.join(timeout=120)
    for code, *rest in outcomes:
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "client timeout" in rest[0], (code, rest)


def test_health_answers_when_the_calls_are_at_their_limit(served):
    target, client, reference, big = served
    threads, outcomes, resume = _stalled_readers(target, big, ADMITTED)
    try:
        with pytest.raises(grpc.RpcError) as info:
            client.list_models(timeout=BOUND)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in info.value.details()
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(20):
                check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=BOUND)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        resume.set()
        for thread in threads:
            thread.join(timeout=120)
    assert client.list_models(timeout=30)["m"]["versions"][0]["state"] == "AVAILABLE"
