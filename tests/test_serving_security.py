"""TLS, bearer-token authentication (on and off) and graceful shutdown of the real server."""

import subprocess
import threading

import grpc
import keras
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import keras_ntk
from keras_ntk.predictive import Laplace
from keras_ntk.serving import export
from keras_ntk.serving.client import Client, assemble
from keras_ntk.serving.server import Server

TOKEN = "s3cret-token"
TOL = dict(rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    model = keras_ntk.models.mlp(8, 1, 2, input_shape=(3,))
    laplace = Laplace(model, "regression", structure="kron", prior_precision=0.5, noise_variance=0.1)
    laplace.fit((x, np.stack([np.sin(x[:, 0]), x[:, 1]], axis=1)))
    base = tmp_path_factory.mktemp("models")
    export.export(laplace, base, "m")
    return base, laplace, rng.normal(size=(4, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 made by the openssl command."""
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=keras-ntk-test",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return (directory / "cert.pem").read_bytes(), (directory / "key.pem").read_bytes()


def _available(client):
    import time

    for _ in range(1200):
        try:
            if client.status("m")[0]["state"] == "AVAILABLE":
                return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        time.sleep(0.05)
    raise AssertionError("model not available")


def test_tls_with_bearer_tokens(exported, certificate):
    base, laplace, x = exported
    cert, key = certificate
    server = Server(base, port=0, poll_interval=0.1, tokens=[TOKEN, "second-token"], tls_cert=cert, tls_key=key).start()
    target = f"127.0.0.1:{server.port}"
    try:
        with Client(target, token=TOKEN, root_certificates=cert) as client:
            _available(client)
            p = client.predict("m", x)
            np.testing.assert_allclose(p.variance, laplace.predict(x).variance().numpy(), **TOL)
            np.testing.assert_allclose(p.mean, laplace.predict(x).mean().numpy(), **TOL)
            np.testing.assert_allclose(
                client.kernel("m", x, output="trace"),
                keras_ntk.empirical_ntk(laplace.model, x, output="trace").numpy(),
                rtol=1e-5,
            )
        with Client(target, token="second-token", root_certificates=cert) as client:
            assert client.metadata("m")["name"] == "m"
        for token in (None, "wrong-token", TOKEN + "x"):
            with Client(target, token=token, root_certificates=cert) as client:
                calls = (
                    lambda: client.predict("m", x),
                    lambda: client.kernel("m", x),  # a server-streaming call
                    lambda: client.metadata("m"),
                    lambda: client.status("m"),
                    client.list_models,
                )
                for call in calls:
                    with pytest.raises(grpc.RpcError) as info:
                        call()
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "bearer token" in info.value.details()
        # The server's health and reflection stay open without a token; a model's health
        # needs one, and without it a known and an unknown model look the same.
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=cert))
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        for service in ("m", "no-such-model"):
            with pytest.raises(grpc.RpcError) as info:
                health.Check(health_pb2.HealthCheckRequest(service=service))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        authorized = (("authorization", f"Bearer {TOKEN}"),)
        assert health.Check(health_pb2.HealthCheckRequest(service="m"), metadata=authorized).status == serving
        assert "keras_ntk.serving.v1.KernelService" in ProtoReflectionDescriptorDatabase(channel).get_services()
        channel.close()
        # A plaintext client cannot talk to the TLS port.
        with Client(target, token=TOKEN, timeout=5) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.list_models()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=1)


def test_without_auth_tokens_are_not_needed_and_shutdown_drains_in_flight_calls(exported):
    base, laplace, _ = exported
    server = Server(base, port=0, poll_interval=0.1).start()
    target = f"127.0.0.1:{server.port}"
    client = Client(target)
    _available(client)
    x = np.random.default_rng(1).normal(size=(60, 3)).astype(np.float32)
    stream = client.kernel_tiles("m", x, max_tile_bytes=16)  # 60 x 60 tiles of one entry
    first = next(stream)  # the call is in flight
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 60})
    stopper.start()
    tiles = [first, *stream]  # the server finishes it before it stops
    stopper.join()
    assert len(tiles) == first.tile_count == 60 * 60
    np.testing.assert_allclose(assemble(tiles), keras_ntk.empirical_ntk(laplace.model, x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(grpc.RpcError) as info:
        client.list_models()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()
