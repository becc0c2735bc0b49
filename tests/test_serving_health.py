"""The health service: open for the server, authenticated for models, bounded Watches.

A real server on 127.0.0.1 with bearer tokens, at most 4 Watches and a client
timeout of 3 s, queried with the standard grpc.health.v1 stubs and raw calls.
Memory is what this process (the server runs in it) holds on the Python heap,
measured with tracemalloc after garbage collection: where a service would keep
the names it was asked about. (The resident set moves by tens of MB with the
allocator's reuse of 2 MB receive buffers, so it cannot show a leak that small.)
"""

import gc
import threading
import time
import tracemalloc

import grpc
import keras
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import keras_ntk
from keras_ntk.predictive import Laplace
from keras_ntk.serving import export
from keras_ntk.serving.client import Client
from keras_ntk.serving.server import Server, is_loopback

TOKEN = "health-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MAX_WATCHES = 4
CLIENT_TIMEOUT = 3.0
Status = health_pb2.HealthCheckResponse


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    model = keras_ntk.models.mlp(4, 1, 1, input_shape=(2,))
    laplace = Laplace(model, "regression", structure="diag", prior_precision=1.0, noise_variance=0.1)
    base = tmp_path_factory.mktemp("models")
    export.export(laplace.fit((x, np.sin(x[:, :1]))), base, "m")
    server = Server(
        base, port=0, poll_interval=30.0, tokens=[TOKEN], max_watches=MAX_WATCHES, client_timeout=CLIENT_TIMEOUT
    ).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(1200):
        if health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == Status.SERVING:
            break
        time.sleep(0.05)
    yield server, base, channel, health
    channel.close()
    server.stop(grace=1)


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_server_health_is_open_and_model_health_needs_the_token(served):
    _, _, _, health = served
    request = health_pb2.HealthCheckRequest
    assert health.Check(request(service="")).status == Status.SERVING
    for name in ("m", "no-such-model"):  # a known and an unknown model look the same without a token
        assert _code(lambda: health.Check(request(service=name))) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: next(health.Watch(request(service=name), timeout=10))) == grpc.StatusCode.UNAUTHENTICATED
    assert health.Check(request(service="m"), metadata=AUTH).status == Status.SERVING
    assert _code(lambda: health.Check(request(service="no-such-model"), metadata=AUTH)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: health.Check(request(service="../m"), metadata=AUTH)) == grpc.StatusCode.INVALID_ARGUMENT
    watch = health.Watch(request(service=""), timeout=10)
    assert next(watch).status == Status.SERVING
    watch.cancel()


def test_watches_are_bounded_and_leave_nothing_behind(served):
    server, _, _, health = served
    request = health_pb2.HealthCheckRequest
    huge = "w" * (2 << 20)
    gc.collect()
    tracemalloc.start()
    try:
        held = []
        for _ in range(2):  # 15 Watches with 2 MB names, then cancelled, twice
            for _ in range(15):
                watch = health.Watch(request(service=huge), metadata=AUTH, timeout=10)
                assert _code(lambda: next(watch)) == grpc.StatusCode.INVALID_ARGUMENT
                watch.cancel()
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert max(held) < 8 << 20, [h >> 20 for h in held]  # not one of the 30 names (2 MB each) is kept
    for attempt in range(2):  # at most MAX_WATCHES at once; cancelled ones free their place
        watches = [health.Watch(request(service=f"later-{i}"), metadata=AUTH, timeout=30) for i in range(MAX_WATCHES)]
        assert [next(w).status for w in watches] == [Status.SERVICE_UNKNOWN] * MAX_WATCHES
        extra = health.Watch(request(service="one-too-many"), metadata=AUTH, timeout=10)
        assert _code(lambda: next(extra)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        for watch in watches:
            watch.cancel()
        for _ in range(200):
            if server.health.watches == 0:
                break
            time.sleep(0.05)
        assert server.health.watches == 0


def test_a_watch_that_never_sends_its_body_blocks_no_other_watch(served):
    _, _, channel, health = served
    release = threading.Event()

    def never():
        release.wait()
        yield from ()

    silent = channel.stream_stream("/grpc.health.v1.Health/Watch")(never(), timeout=60)
    try:
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CLIENT_TIMEOUT / 2)
        assert next(watch).status == Status.SERVING  # within half the client timeout
        watch.cancel()
        assert _code(lambda: next(silent)) == grpc.StatusCode.DEADLINE_EXCEEDED  # ended by the server
    finally:
        release.set()


def test_reflection_is_on_by_default_on_loopback_only(served):
    server, base, channel, _ = served
    assert "keras_ntk.serving.v1.KernelService" in ProtoReflectionDescriptorDatabase(channel).get_services()
    quiet = Server(base, port=0, poll_interval=30.0, reflection=False).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{quiet.port}") as other:
            assert _code(lambda: ProtoReflectionDescriptorDatabase(other).get_services()) == grpc.StatusCode.UNIMPLEMENTED
            with Client(f"127.0.0.1:{quiet.port}") as client:
                assert "m" in client.list_models()
    finally:
        quiet.stop(grace=1)
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com")] == [False] * 4
