"""Clean failures: undecodable bodies, unbounded fields, overflowing inputs, labels, logs.

A real server on 127.0.0.1 with bearer tokens, queried with raw gRPC calls and
the real client; the server's log is what pytest's caplog captures from every
logger (the server runs in this process).
"""

import json
import logging
import os
import time

import grpc
import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.predictive import Laplace
from keras_ntk.serving import export
from keras_ntk.serving.client import Client
from keras_ntk.serving.errors import MAX_DETAILS
from keras_ntk.serving.registry import parse_labels
from keras_ntk.serving.server import Server
from keras_ntk.serving.v1 import serving_pb2 as pb

TOKEN = "failure-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SERVICE = "/keras_ntk.serving.v1.KernelService/"


def _posterior():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    model = keras_ntk.models.mlp(8, 1, 2, input_shape=(3,))
    laplace = Laplace(model, "regression", structure="kron", prior_precision=0.5, noise_variance=0.1)
    return laplace.fit((x, np.stack([np.sin(x[:, 0]), x[:, 1]], axis=1)))


def _wait_available(client, name):
    for _ in range(2400):
        try:
            if client.status(name)[-1]["state"] == "AVAILABLE":
                return
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{name} not available")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    laplace = _posterior()
    export.export(laplace, base, "m")
    server = Server(base, port=0, poll_interval=30.0, tokens=[TOKEN]).start()
    target = f"127.0.0.1:{server.port}"
    client = Client(target, token=TOKEN, timeout=60)
    _wait_available(client, "m")
    channel = grpc.insecure_channel(target)
    yield client, channel, laplace
    channel.close()
    client.close()
    server.stop(grace=1)


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_undecodable_bodies_are_invalid_argument_and_log_nothing(served, caplog):
    _, channel, _ = served
    garbage = b"\xff\xff\xff\xff\x0f" * 20
    caplog.set_level(logging.DEBUG)
    for method in ("Predict", "GetModelMetadata", "GetModelStatus", "ListModels"):
        call = channel.unary_unary(SERVICE + method)
        code, details = _code(lambda: call(garbage, metadata=AUTH, timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in details, (method, details)
        assert _code(lambda: call(garbage, timeout=30))[0] == grpc.StatusCode.UNAUTHENTICATED
    stream = channel.unary_stream(SERVICE + "ComputeKernel")
    assert _code(lambda: list(stream(garbage, metadata=AUTH, timeout=30)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(50):  # an unauthenticated caller cannot write to the log
        assert _code(lambda: list(stream(garbage, timeout=30)))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO or r.exc_info] == []


def test_error_details_never_echo_an_unbounded_field(served):
    client, _, _ = served
    x = np.zeros((2, 3), np.float32)
    cases = [
        (lambda: client.predict("x" * 100_000, x), grpc.StatusCode.NOT_FOUND),
        (lambda: client.predict("m", x, label="l" * 100_000), grpc.StatusCode.NOT_FOUND),
        (lambda: client.status("s" * 100_000), grpc.StatusCode.INVALID_ARGUMENT),  # larger than any status request
        (
            lambda: client.stub.Predict(
                pb.PredictRequest(
                    model_spec=pb.ModelSpec(name="m"), inputs=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1] * 100_000)
                ),
                metadata=AUTH,
                timeout=30,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, expected in cases:
        code, details = _code(call)
        assert code == expected and len(details) <= MAX_DETAILS, (code, len(details), details[:200])
        assert any(word in details for word in ("characters", "rank", "at most")), details


def test_inputs_so_large_the_model_overflows_are_invalid_argument(served):
    client, _, laplace = served
    huge = np.full((3, 3), 3e38, np.float32)
    assert not np.all(np.isfinite(laplace.model(huge).numpy()))  # the network itself overflows here
    calls = [
        lambda: client.kernel("m", huge, output="diagonal", dtype="float64"),  # the engine's first call of this kind
        lambda: client.predict("m", huge),
        lambda: client.predict("m", huge, uncertainty="joint"),
        lambda: client.kernel("m", huge, output="trace"),
        lambda: client.kernel("m", np.concatenate([np.zeros((2, 3), np.float32), huge[:1]])),  # a later row
    ]
    for call in calls:
        code, details = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "overflows" in details, (code, details)
    p = client.predict("m", np.full((2, 3), 1e3, np.float32))  # large but fine: finite answers
    assert np.all(np.isfinite(p.variance)) and np.all(np.isfinite(p.mean))


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"stable": 9223372036854775808}', "version 9223372036854775808"),
        ('{"stable": 1.9}', "version 1.9"),
        ('{"stable": true}', "version True"),
        ('{"stable": 0}', "version 0"),
        ('{"stable": "3"}', "version '3'"),
        ('{"latest": 2}', "reserved"),
        ('{"bad label!": 2}', "not a name"),
        ("[1, 2]", "expected an object"),
        ("{", "not valid JSON"),
    ],
)
def test_labels_are_validated_strictly(text, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_labels(text)
    assert parse_labels('{"stable": 3, "canary.v2": 999999999999999999}') == {"stable": 3, "canary.v2": 10**18 - 1}


def test_bad_labels_stay_with_their_model_and_conditions_are_logged_once(tmp_path, caplog):
    base, outside = tmp_path / "models", tmp_path / "outside"
    laplace = _posterior()
    for name in ("good", "other"):
        export.export(laplace, base, name)
    export.export(laplace, outside, "escape")
    os.symlink(outside / "escape", base / "escape")  # a model directory leaving the base directory
    (base / "good" / "labels.json").write_text(json.dumps({"stable": 2**63}))
    (base / "other" / "labels.json").write_text(json.dumps({"stable": 1}))
    caplog.set_level(logging.WARNING, logger="keras_ntk.serving")
    server = Server(base, port=0, poll_interval=0.02).start()
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            for name in ("good", "other"):
                _wait_available(client, name)
            polls = server.registry.polls
            while server.registry.polls < polls + 25:  # 25 scans meet the same two conditions
                time.sleep(0.02)
            models = client.list_models()
            assert models["good"]["labels"] == {} and models["other"]["labels"] == {"stable": 1}
            assert client.metadata("good")["version_labels"] == {}
            assert client.predict("other", np.zeros((1, 3)), label="stable").version == 1
            (base / "good" / "labels.json").write_text(json.dumps({"stable": 1}))
            for _ in range(1000):
                if client.metadata("good")["version_labels"] == {"stable": 1}:
                    break
                time.sleep(0.02)
            assert client.metadata("good")["version_labels"] == {"stable": 1}
            (base / "good" / "labels.json").write_text('{"stable": 1.9}')  # a bad file keeps the labels read before
            polls = server.registry.polls
            while server.registry.polls < polls + 5:
                time.sleep(0.02)
            assert client.metadata("good")["version_labels"] == {"stable": 1}
    finally:
        server.stop(grace=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "keras_ntk.serving"]
    assert sum("leaves the base directory" in m for m in messages) == 1, messages
    assert sum("good/labels.json" in m and "9223372036854775808" in m for m in messages) == 1, messages
    assert sum("good/labels.json" in m and "1.9" in m for m in messages) == 1, messages
