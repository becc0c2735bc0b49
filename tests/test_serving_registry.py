"""Export format, hot reload, corrupt and half-written versions, labels, unsafe names.

A real server polls a base directory that starts empty; versions are exported,
corrupted, completed and removed while it serves, and every answer is compared
with the in-process posterior it came from.
"""

import json
import os
import shutil
import time

import grpc
import keras
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import keras_ntk
from keras_ntk.predictive import NTKGP, Laplace
from keras_ntk.serving import export
from keras_ntk.serving.client import Client
from keras_ntk.serving.server import Server

TOL = dict(rtol=1e-6, atol=1e-9)


def _wait(predicate, what, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _states(client, name):
    try:
        return {s["version"]: s for s in client.status(name)}
    except grpc.RpcError:
        return {}


def _posterior(seed, prior_precision):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 2)).astype(np.float32)
    model = keras_ntk.models.mlp(4, 1, 1, input_shape=(2,))
    return Laplace(model, "regression", structure="diag", prior_precision=prior_precision, noise_variance=0.1).fit(
        (x, np.sin(x[:, :1]))
    )


def test_export_writes_one_complete_version_directory(tmp_path):
    laplace = _posterior(0, 1.0)
    first = export.export(laplace, tmp_path, "model")
    second = export.export(laplace, tmp_path, "model")
    assert (first.name, second.name) == ("1", "2")
    assert sorted(p.name for p in first.iterdir()) == sorted(export.FILES)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["1", "2"]  # no staging left behind
    meta = json.loads((first / "metadata.json").read_text())
    assert meta["parameters"] == 2 * 4 + 4 + 4 + 1
    assert (meta["posterior"], meta["structure"], meta["parametrization"]) == ("laplace", "diag", "ntk")
    assert (meta["input_shape"], meta["output_shape"], meta["input_dtype"]) == ([2], [1], "float32")
    with pytest.raises(FileExistsError):
        export.export(laplace, tmp_path, "model", version=2)
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(ValueError, match="not allowed"):
            export.export(laplace, tmp_path, bad)
    with pytest.raises(ValueError, match="positive int"):
        export.export(laplace, tmp_path, "model", version=0)
    assert not (tmp_path.parent / "evil").exists()


def test_gp_save_and_load_reproduce_the_posterior(tmp_path):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x, x_test = rng.normal(size=(7, 2)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] ** 2], axis=1)
    model = keras_ntk.models.mlp(6, 1, 2, input_shape=(2,))
    for gp in (
        NTKGP.empirical(model, x, y, 0.1, output="full"),
        NTKGP.infinite_width(x, y, 0.1, depth=2),
    ):
        path = gp.save(tmp_path / gp.output / "saved")
        loaded = NTKGP.load(path)
        before, after = gp.predict(x_test, joint=True), loaded.predict(x_test, joint=True)
        np.testing.assert_allclose(after.mean().numpy(), before.mean().numpy(), **TOL)
        np.testing.assert_allclose(after.covariance().numpy(), before.covariance().numpy(), **TOL)
        np.testing.assert_allclose(loaded.log_marginal_likelihood().numpy(), gp.log_marginal_likelihood().numpy(), **TOL)
    with pytest.raises(ValueError, match="only GPs built by"):
        NTKGP(lambda a, b: a @ b.T, x, y, 0.1).save(tmp_path / "generic")


def test_hot_reload_corrupt_and_half_written_versions(tmp_path):
    base = tmp_path / "models"  # does not exist yet: the server still comes up healthy
    server = Server(base, port=0, poll_interval=0.1).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    client = Client(f"127.0.0.1:{server.port}")
    x = np.random.default_rng(2).normal(size=(5, 2)).astype(np.float32)
    try:
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        assert client.list_models() == {}
        old, new = _posterior(0, 1.0), _posterior(3, 0.2)

        export.export(old, base, "m")
        _wait(lambda: _states(client, "m").get(1, {}).get("state") == "AVAILABLE", "version 1")
        assert health.Check(health_pb2.HealthCheckRequest(service="m")).status == serving
        np.testing.assert_allclose(client.predict("m", x).variance, old.predict(x).variance().numpy(), **TOL)

        export.export(new, base, "m")  # hot-load version 2; it becomes the latest
        _wait(lambda: _states(client, "m").get(2, {}).get("state") == "AVAILABLE", "version 2")
        latest = client.predict("m", x)
        assert latest.version == 2
        np.testing.assert_allclose(latest.variance, new.predict(x).variance().numpy(), **TOL)
        np.testing.assert_allclose(client.predict("m", x, version=1).variance, old.predict(x).variance().numpy(), **TOL)

        # A corrupt version: failed and logged, while version 2 keeps serving.
        staging = base / "m" / ".staging"  # renamed into place so no poll sees the good copy
        shutil.copytree(base / "m" / "2", staging)
        (staging / "model.keras").write_bytes(b"not a keras archive")
        os.rename(staging, base / "m" / "3")
        failed = _wait(lambda: _states(client, "m").get(3, {}).get("state") == "FAILED" and _states(client, "m")[3], "v3")
        assert "model.keras" in failed["error"]
        assert client.predict("m", x).version == 2
        with pytest.raises(grpc.RpcError) as info:
            client.predict("m", x, version=3)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "FAILED" in info.value.details()

        # A half-written version (not exported atomically) is skipped, then loaded once complete.
        partial = base / "m" / "4"
        partial.mkdir()
        shutil.copyfile(base / "m" / "2" / "metadata.json", partial / "metadata.json")
        _wait(lambda: _states(client, "m").get(4, {}).get("state") == "FAILED", "v4 failed")
        assert "missing" in _states(client, "m")[4]["error"]
        assert client.predict("m", x).version == 2
        for name in ("posterior.npz", "model.keras"):
            shutil.copyfile(base / "m" / "2" / name, partial / name)
        _wait(lambda: _states(client, "m").get(4, {}).get("state") == "AVAILABLE", "v4 completed")
        completed = client.predict("m", x)
        assert completed.version == 4
        np.testing.assert_allclose(completed.variance, new.predict(x).variance().numpy(), **TOL)

        # Labels, then removal of a version.
        (base / "m" / "labels.json").write_text(json.dumps({"stable": 1}))
        _wait(lambda: client.metadata("m")["version_labels"] == {"stable": 1}, "labels")
        assert client.predict("m", x, label="stable").version == 1
        shutil.rmtree(base / "m" / "1")
        _wait(lambda: _states(client, "m").get(1, {}).get("state") == "UNLOADED", "v1 unloaded")
        for kwargs in ({"version": 1}, {"label": "stable"}):
            with pytest.raises(grpc.RpcError) as info:
                client.predict("m", x, **kwargs)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.predict("m", x, label="latest").version == 4
    finally:
        client.close()
        channel.close()
        server.stop(grace=1)


def test_unsafe_models_and_names_are_not_loaded(tmp_path):
    base, outside = tmp_path / "models", tmp_path / "outside"
    laplace = _posterior(0, 1.0)
    good = export.export(laplace, base, "good")
    export.export(laplace, outside, "escape")
    os.symlink(outside / "escape", base / "escape")  # a model directory leaving the base dir
    shutil.copytree(base / "good", base / "bad name!")
    lam = base / "lam" / "1"  # a model with Python code in it: refused by safe mode
    shutil.copytree(good, lam)
    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(1)(inputs))).save(lam / "model.keras")
    server = Server(base, port=0, poll_interval=0.1).start()
    client = Client(f"127.0.0.1:{server.port}")
    try:
        _wait(lambda: _states(client, "lam").get(1, {}).get("state") == "FAILED", "lam refused")
        _wait(lambda: _states(client, "good").get(1, {}).get("state") == "AVAILABLE", "good loaded")
        assert "Lambda" in _states(client, "lam")[1]["error"] and "safe" in _states(client, "lam")[1]["error"]
        assert set(client.list_models()) == {"good", "lam"}
        for name in ("escape", "bad name!", "../outside/escape", "good/../lam"):
            with pytest.raises(grpc.RpcError) as info:
                client.predict(name, np.zeros((1, 2)))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        client.close()
        server.stop(grace=1)
