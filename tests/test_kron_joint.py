"""The K-FAC joint covariance: equal to a dense reference, memory linear in its answer.

kron_layer_covariance's joint term is checked against numpy: per-example
gradients m[i, k] = sum_p a[i, p] (x) g[i, k, p] flattened to (C O,), then
M diag(inverse) M^T, for dense (P = 1) and convolutional (P > 1) layers, with
C O spanning several chunks and a partial last one.

Memory is TensorFlow's own count of the bytes its CPU allocator handed out
(tf.config.experimental.get_memory_info), measured around one compiled joint
prediction of a kron Laplace: its peak is a small multiple of the answer
(n K)^2 * 8 bytes (the answer, the sum being formed, one chunk's product) for a
narrow and a 16x wider network alike, where pairwise (n, n, C) and (n, n, K, O)
intermediates made it grow with the width (17 and 291 answers).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk.predictive import Laplace, compile_predictive
from keras_ntk.predictive.curvature import kron_layer_covariance
from keras_ntk.predictive.curvature.kron import JOINT_CHUNK_COLUMNS


@pytest.mark.parametrize("positions", [1, 3])
def test_joint_and_blocks_equal_the_dense_reference(positions):
    rng = np.random.default_rng(positions)
    n, k, c, o = 5, 3, 50, 24
    rows = JOINT_CHUNK_COLUMNS // o  # of C per chunk
    assert c > 2 * rows and c % rows  # three chunks, the last partial
    a, g = rng.normal(size=(n, positions, c)), rng.normal(size=(n, k, positions, o))
    inverse = rng.uniform(0.1, 2.0, size=(c, o))
    m = np.zeros((n, k, c * o))
    for i in range(n):
        for j in range(k):
            m[i, j] = sum(np.kron(a[i, p], g[i, j, p]) for p in range(positions))
    expected = np.einsum("ikq,jlq->ikjl", m * inverse.reshape(-1), m)
    joint = kron_layer_covariance(tf.constant(a), tf.constant(g), tf.constant(inverse), True)
    np.testing.assert_allclose(joint.numpy(), expected, rtol=1e-12, atol=1e-12)
    blocks = kron_layer_covariance(tf.constant(a), tf.constant(g), tf.constant(inverse), False)
    np.testing.assert_allclose(blocks.numpy(), np.einsum("ikil->ikl", expected), rtol=1e-12, atol=1e-12)
    shifted = kron_layer_covariance(tf.constant(a), tf.constant(g), tf.constant(inverse), True, tf.ones_like(joint))
    np.testing.assert_allclose(shifted.numpy(), expected + 1.0, rtol=1e-12, atol=1e-12)


def _peak_over_answer(width, n, k=4):
    """Peak CPU allocation of one compiled joint prediction / (n K)^2 * 8 bytes."""
    rng = np.random.default_rng(0)
    model = keras_ntk.models.mlp(width, 2, k, input_shape=(6,))
    x = rng.normal(size=(32, 6)).astype(np.float32)
    predictive = compile_predictive(Laplace(model, "regression", structure="kron").fit((x, rng.normal(size=(32, k)))))
    x_test = rng.normal(size=(n, 6)).astype(np.float32)
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    _, cov = predictive.joint(x_test)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    assert cov.shape == (n * k, n * k)
    return peak / cov.nbytes


@pytest.mark.slow  # 9 s; the joint values are checked in make test
def test_joint_memory_is_a_small_multiple_of_the_answer_whatever_the_width():
    # Measured: 4.1-6.4 answers at both widths (N = 256 and 512); before, 17 and 291.
    ratios = {width: _peak_over_answer(width, 256) for width in (16, 256)}
    print(f"joint peak / answer, N K = 1024, by width: {ratios}")
    assert all(ratio < 8 for ratio in ratios.values()), ratios
