"""Consistent answers while versions load: UNAVAILABLE, then the newest version.

The registry is driven with a loader whose versions finish only when the test
says so (any order), over real version directories; then a real server on
127.0.0.1 is started on a base directory holding three exported versions, as
after a restart, and queried without pause while it loads.
"""

import shutil
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
from keras_ntk.serving.errors import NotFound, Unavailable
from keras_ntk.serving.registry import Registry
from keras_ntk.serving.server import Server


def _wait(predicate, what, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class GatedLoader:
    """load(name, version, path) that returns (name, version) once `release(version)`."""

    def __init__(self):
        self.gates, self.order = {}, []
        self._lock = threading.Lock()

    def gate(self, version):
        with self._lock:
            return self.gates.setdefault(version, threading.Event())

    def __call__(self, name, version, path):
        with self._lock:
            self.order.append(version)
        assert self.gate(version).wait(60)
        return Loaded(name, version)

    def release(self, *versions):
        for version in versions:
            self.gate(version).set()


class Loaded:
    def __init__(self, name, version):
        self.name, self.version = name, version

    def close(self):
        pass


def _latest(registry):
    try:
        return registry.resolve("m").version
    except (Unavailable, NotFound) as error:
        return type(error).__name__


def test_the_registry_announces_the_newest_version_only_and_unavailable_meanwhile(tmp_path):
    for version in (1, 2, 3):
        (tmp_path / "m" / str(version)).mkdir(parents=True)
    loader, health = GatedLoader(), {}
    registry = Registry(tmp_path, loader, poll_interval=0.02, on_health=health.__setitem__, load_workers=3)
    registry.start()
    try:
        assert [r.state for r in registry.status("m")] == ["LOADING"] * 3  # known at once
        assert _latest(registry) == "Unavailable" and health == {"": False, "m": False}
        with pytest.raises(Unavailable, match="loading"):
            registry.resolve("m", version=2)
        loader.release(1)  # an older version finishes first: it is no latest
        _wait(lambda: registry.available_versions("m") == [1], "version 1")
        assert _latest(registry) == "Unavailable" and registry.resolve("m", version=1).version == 1
        loader.release(2)
        _wait(lambda: registry.available_versions("m") == [1, 2], "version 2")
        assert _latest(registry) == "Unavailable" and health == {"": False, "m": False}
        loader.release(3)
        _wait(lambda: _latest(registry) == 3, "version 3 as latest")
        assert health == {"": True, "m": True}

        (tmp_path / "m" / "4").mkdir()  # a hot reload: version 3 answers until 4 is loaded
        _wait(lambda: len(registry.status("m")) == 4, "version 4 seen")
        assert registry.status("m")[-1].state == "LOADING" and _latest(registry) == 3
        loader.release(4)
        _wait(lambda: _latest(registry) == 4, "version 4 as latest")

        shutil.rmtree(tmp_path / "m")  # the directory is rebuilt with new versions 5, 6
        _wait(lambda: _latest(registry) == "NotFound", "every version unloaded")
        assert health["m"] is False and health[""] is True
        for version in (5, 6):
            (tmp_path / "m" / str(version)).mkdir(parents=True)
        _wait(lambda: registry.status("m")[-1].state == "LOADING", "version 6 seen")
        loader.release(5)
        _wait(lambda: registry.available_versions("m") == [5], "version 5")
        assert _latest(registry) == "Unavailable"
        loader.release(6)
        _wait(lambda: _latest(registry) == 6, "version 6 as latest")
    finally:
        loader.release(*range(1, 7))
        registry.stop()


def test_versions_load_newest_first(tmp_path):
    for name in ("a", "b"):
        for version in (1, 2, 3):
            (tmp_path / name / str(version)).mkdir(parents=True)
    loader = GatedLoader()
    loader.release(1, 2, 3)
    registry = Registry(tmp_path, loader, poll_interval=30.0, load_workers=1)
    registry.start()
    try:
        _wait(lambda: len(loader.order) == 6 and registry.available_versions("b") == [1, 2, 3], "every load")
        assert loader.order == [3, 3, 2, 2, 1, 1]  # the newest of every model first
    finally:
        registry.stop()


def test_a_restarted_server_answers_unavailable_then_the_newest_version(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    model = keras_ntk.models.mlp(4, 1, 1, input_shape=(2,))
    expected = {}
    for version, prior in ((1, 1.0), (2, 0.5), (3, 0.2)):
        laplace = Laplace(model, "regression", structure="diag", prior_precision=prior, noise_variance=0.1)
        export.export(laplace.fit((x, np.sin(x[:, :1]))), tmp_path, "m")
        expected[version] = laplace.predict(x).variance().numpy()
    server = Server(tmp_path, port=0, poll_interval=0.05, load_workers=1).start()
    serving = health_pb2.HealthCheckResponse.SERVING
    seen, health_states = [], []
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=30) as client, grpc.insecure_channel(
            f"127.0.0.1:{server.port}"
        ) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            end = time.monotonic() + 300
            while time.monotonic() < end and not (seen.count(3) >= 3 and health_states[-1] == serving):
                health_states.append(health.Check(health_pb2.HealthCheckRequest(service="")).status)
                try:
                    p = client.predict("m", x)
                except grpc.RpcError as error:
                    seen.append(error.code())
                    time.sleep(0.01)
                    continue
                seen.append(p.version)
                np.testing.assert_allclose(p.variance, expected[p.version], rtol=1e-6, atol=1e-9)
            states = {v["version"]: v["state"] for v in client.list_models()["m"]["versions"]}
    finally:
        server.stop(grace=1)
    assert set(seen) == {grpc.StatusCode.UNAVAILABLE, 3}, set(seen)  # never NOT_FOUND, never 1 or 2
    assert grpc.StatusCode.UNAVAILABLE not in seen[seen.index(3) :]
    assert health_states[0] != serving and health_states[-1] == serving
    assert states == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}  # "" SERVING: every version loaded
