"""Deadlines and cancellation stop the server's work; large joint covariances in passes.

A real server on 127.0.0.1 runs in this process, so the server's work shows as
this process's CPU time (time.process_time; nothing else runs meanwhile). Each
test first measures one pass of the computation it then interrupts, and checks
that after DEADLINE_EXCEEDED (or a cancel) at most about the pass in flight is
still computed, where the whole request would take a hundred passes. The
pass-wise joint covariance itself is compared with the in-process Laplace's
joint covariance (one computation over all inputs).
"""

import time

import grpc
import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.predictive import Laplace
from keras_ntk.serving import export, tensors, validation
from keras_ntk.serving.client import Client
from keras_ntk.serving.server import Server
from keras_ntk.serving.v1 import serving_pb2 as pb

PASS_OUTPUTS = 256  # N K of one joint pass: 128 examples of 2 outputs
SETTLE = 2.0  # seconds of wall time over which the CPU after a deadline is measured
TOL = dict(rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    model = keras_ntk.models.mlp(64, 2, 2, input_shape=(3,))  # 4,546 parameters
    laplace = Laplace(model, "regression", structure="diag", prior_precision=1.0, noise_variance=0.1)
    laplace.fit((x, np.stack([np.sin(x[:, 0]), x[:, 1]], axis=1)))
    base = tmp_path_factory.mktemp("models")
    export.export(laplace, base, "m")
    limits = validation.Limits(joint_pass_outputs=PASS_OUTPUTS, predict_chunk=64)
    server = Server(base, port=0, poll_interval=30.0, limits=limits).start()
    client = Client(f"127.0.0.1:{server.port}", timeout=120)
    for _ in range(1200):
        try:
            client.predict("m", x[:1])
            break
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
            time.sleep(0.05)
    yield client, laplace, rng
    client.close()
    server.stop(grace=1)


def _cpu(call):
    start = time.process_time()
    call()
    return time.process_time() - start


def _cpu_after_failure(call, code):
    """Run `call`, which must fail with `code`; the CPU seconds of the SETTLE seconds after."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    start = time.process_time()
    time.sleep(SETTLE)
    return time.process_time() - start


def test_a_joint_covariance_in_passes_equals_the_in_process_joint(served):
    client, laplace, rng = served
    x = rng.normal(size=(150, 3)).astype(np.float32)  # N K = 300 outputs: 6 passes over 3 blocks
    p = client.predict("m", x, uncertainty="joint")
    reference = laplace.functional_covariance(x, joint=True).numpy()
    np.testing.assert_allclose(p.covariance, reference, **TOL)
    np.testing.assert_allclose(p.mean, laplace.predict(x).mean().numpy(), **TOL)
    np.testing.assert_allclose(p.variance, np.diagonal(reference).reshape(150, 2), **TOL)
    noisy = client.predict("m", x, uncertainty="joint", observation_noise=True)
    np.testing.assert_allclose(noisy.covariance, reference + 0.1 * np.eye(300), **TOL)
    marginal = client.predict("m", x)  # 3 chunks of at most 64 examples
    np.testing.assert_allclose(marginal.variance, laplace.predict(x).variance().numpy(), **TOL)


def test_a_deadline_stops_the_joint_covariance(served):
    client, _, rng = served
    one = rng.normal(size=(PASS_OUTPUTS // 2, 3)).astype(np.float32)
    one_pass = min(_cpu(lambda: client.predict("m", one, uncertainty="joint")) for _ in range(2))
    x = rng.normal(size=(1024, 3)).astype(np.float32)  # 16 blocks of 64 examples: 120 passes
    for timeout in (0.3, 0.001):
        after = _cpu_after_failure(
            lambda: client.predict("m", x, uncertainty="joint", timeout=timeout), grpc.StatusCode.DEADLINE_EXCEEDED
        )
        assert after < 2 * one_pass + 0.1, (timeout, after, one_pass)
    assert client.predict("m", x[:2]).mean.shape == (2, 2)


def test_a_cancelled_call_stops_its_work(served):
    client, _, rng = served
    one = rng.normal(size=(PASS_OUTPUTS // 2, 3)).astype(np.float32)
    one_pass = min(_cpu(lambda: client.predict("m", one, uncertainty="joint")) for _ in range(2))
    x = rng.normal(size=(1024, 3)).astype(np.float32)
    request = pb.PredictRequest(
        model_spec=pb.ModelSpec(name="m"), inputs=tensors.to_proto(x), uncertainty=pb.UNCERTAINTY_JOINT_COVARIANCE
    )
    future = client.stub.Predict.future(request, timeout=120)
    time.sleep(0.3)
    assert future.cancel()
    start = time.process_time()
    time.sleep(SETTLE)
    after = time.process_time() - start
    assert after < 2 * one_pass + 0.1, (after, one_pass)


def test_a_deadline_stops_a_kernel_stream(served):
    client, _, rng = served
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    row = 16 * len(x)  # bytes of one row of the full kernel (K = 2, float32): one row per block
    one_block = min(_cpu(lambda: list(client.kernel_tiles("m", x[:1], x, max_tile_bytes=row))) for _ in range(2))
    after = _cpu_after_failure(
        lambda: list(client.kernel_tiles("m", x, x, max_tile_bytes=row, timeout=0.5)),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    assert after < 2 * one_block + 0.1, (after, one_block)
