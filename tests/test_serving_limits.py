"""Work per call is bounded before it starts: answer size, working memory, kernel values.

A real server on 127.0.0.1 with small limits (4 MiB messages, 16 MiB of working
memory per request, 10,000 kernel values) refuses what does not fit with
RESOURCE_EXHAUSTED naming the estimate and the limit; a second server with the
default limits answers a joint covariance of 2048 outputs, and the peak memory
of this process (server and client both run in it; /proc/self/status VmHWM,
reset through /proc/self/clear_refs) stays within the server's own estimate plus
the client's three copies of the answer. The estimates themselves are compared
with sizes computed by hand.
"""

import re
import time

import grpc
import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.predictive import Laplace
from keras_ntk.serving import export, validation
from keras_ntk.serving.client import Client
from keras_ntk.serving.server import Server
from keras_ntk.serving.servicer import parameter_count

MiB = 1 << 20
LIMITS = validation.Limits(max_working_bytes=16 * MiB, max_kernel_values=10_000, max_tile_bytes=MiB)


def _wait_available(client, x):
    for _ in range(2400):
        try:
            return client.predict("m", x[:1])
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
            time.sleep(0.05)
    raise AssertionError("model not available")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    model = keras_ntk.models.mlp(16, 1, 2, input_shape=(3,))  # two Dense layers, 98 parameters
    laplace = Laplace(model, "regression", structure="diag", prior_precision=1.0, noise_variance=0.1)
    laplace.fit((x, np.stack([np.sin(x[:, 0]), x[:, 1]], axis=1)))
    base = tmp_path_factory.mktemp("models")
    export.export(laplace, base, "m")
    return base, laplace


@pytest.fixture(scope="module")
def limited(exported):
    base, laplace = exported
    server = Server(base, port=0, poll_interval=30.0, limits=LIMITS, max_message_bytes=4 * MiB).start()
    client = Client(f"127.0.0.1:{server.port}", timeout=120)
    _wait_available(client, np.zeros((1, 3), np.float32))
    yield client, laplace
    client.close()
    server.stop(grace=1)


def _refused(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    return info.value.details()


def _mib_values(text):
    return [float(v.replace(",", "")) for v in re.findall(r"([\d,.]+) MiB", text)]


def test_an_answer_that_cannot_be_sent_is_refused_before_work(limited):
    client, _ = limited
    x = np.zeros((400, 3), np.float32)  # N K = 800: an (800, 800) float64 covariance, 4.9 MiB
    details = _refused(lambda: client.predict("m", x, uncertainty="joint"))
    assert "message limit" in details
    estimate, limit = _mib_values(details)
    assert limit == 4.0 and estimate == pytest.approx((800 * 800 * 8 + 3 * 800 * 8) / MiB, abs=0.05)


def test_working_memory_above_the_limit_is_refused(limited):
    client, laplace = limited
    x = np.zeros((350, 3), np.float32)  # N K = 700: 3.7 MiB answer, under the 4 MiB message limit
    details = _refused(lambda: client.predict("m", x, uncertainty="joint"))
    assert "working memory" in details
    estimate, limit = _mib_values(details)
    expected = validation.predict_estimate(
        350, 2, parameter_count(laplace.model), joint=True, classification=False, samples=0, limits=LIMITS
    )
    assert limit == 16.0 and estimate == pytest.approx(expected.working_bytes / MiB, abs=0.05) and estimate > 16
    p = client.predict("m", x[:200], uncertainty="joint")  # N K = 400 fits both limits
    np.testing.assert_allclose(p.covariance, laplace.functional_covariance(x[:200], joint=True).numpy(), rtol=1e-6, atol=1e-9)


def test_per_layer_kernels_count_every_layer(limited):
    client, _ = limited
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)  # 40 x 40 x 2 x 2 = 6,400 values
    assert client.kernel("m", x).shape == (40, 40, 2, 2)
    details = _refused(lambda: client.kernel("m", x, per_layer=True))
    assert "12800 values (2 layers x 6400)" in details and "10000" in details
    assert len(client.kernel("m", x[:20], per_layer=True)) == 2  # 2 x 1,600 values fit


def test_the_estimates_count_the_answer_and_its_copies():
    limits = validation.Limits()
    joint = validation.predict_estimate(100, 3, 50, joint=True, classification=False, samples=0, limits=limits)
    answer = 300 * 300 * 8 + 2 * 300 * 8 + validation.MESSAGE_OVERHEAD
    assert joint.answer_bytes == answer
    assert joint.working_bytes == 4 * answer + 7 * 300 * 300 * 8 + 2 * 300 * 50 * 8
    assert joint.cost == 300 * 300 * 50 + 300 * 50 and not joint.large
    mc = validation.predict_estimate(10, 4, 50, joint=False, classification=True, samples=1000, limits=limits)
    assert mc.answer_bytes == 3 * 10 * 4 * 8 + validation.MESSAGE_OVERHEAD
    draws, blocks, jacobians = 3 * 1000 * 10 * 4 * 8, 10 * 4 * 4 * 8, 2 * 10 * 4 * 50 * 8
    assert mc.working_bytes == 3 * mc.answer_bytes + 2 * blocks + jacobians + draws
    kernel = validation.kernel_estimate(2048, 2048, 10, "full", 1, 4, 5000, 1, 2048 * 400, limits)
    assert kernel.large and kernel.cost >= 2048 * 2048 * 100 * 5000
    budget = validation.MemoryBudget(2 * joint.working_bytes)
    release = budget.reserve(joint)
    budget.reserve(joint)
    with pytest.raises(validation.ResourceExhausted, match="in use by other requests"):
        budget.reserve(joint)
    release()
    release()  # idempotent
    assert budget.in_use == joint.working_bytes


def _peak_bytes():
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024


def test_the_memory_of_a_joint_request_stays_within_its_estimate(exported):
    base, laplace = exported
    server = Server(base, port=0, poll_interval=30.0).start()
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=300) as client:
            x = np.random.default_rng(2).normal(size=(1024, 3)).astype(np.float32)  # N K = 2048: a 32 MiB answer
            _wait_available(client, x)
            client.predict("m", x[:600], uncertainty="joint")  # the passes' shapes are traced once
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset the peak resident set to the current one
            _, before = _peak_bytes()
            p = client.predict("m", x, uncertainty="joint")
            peak, _ = _peak_bytes()
    finally:
        server.stop(grace=1)
    estimate = validation.predict_estimate(
        1024, 2, parameter_count(laplace.model), joint=True, classification=False, samples=0,
        limits=validation.Limits(),
    )
    client_copies = 3 * estimate.answer_bytes  # gRPC's receive buffer, the bytes, the decoded message
    assert peak - before <= estimate.working_bytes + client_copies, ((peak - before) / MiB, estimate.working_bytes / MiB)
    np.testing.assert_allclose(p.covariance[:200, :200], laplace.functional_covariance(x[:100], joint=True).numpy(), rtol=1e-6, atol=1e-9)
