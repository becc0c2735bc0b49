"""TensorFloat-32 is off while the engine computes, and the user's setting survives."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk.ntk import precision


@pytest.fixture
def tf32_on():
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(True)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(before)


def _recording_ntk(**options):
    """An NTK whose compiled one-tile functions record the TF32 setting they run under."""
    keras.utils.set_random_seed(0)
    ntk = keras_ntk.NTK(keras_ntk.models.mlp(8, 1, 2, input_shape=(3,)), **options)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    ntk(x)
    seen = []

    def recorded(function):
        def call(*args):
            seen.append(tf.config.experimental.tensor_float_32_execution_enabled())
            return function(*args)

        return call

    ntk._one_tile = tuple(recorded(f) for f in ntk._one_tile)
    return ntk, x, seen


def test_tf32_is_off_during_the_call_and_restored_after(tf32_on):
    ntk, x, seen = _recording_ntk()
    ntk(x)
    ntk(x, x[:2])
    assert seen == [False, False]
    assert tf.config.experimental.tensor_float_32_execution_enabled()


def test_precision_default_leaves_the_setting_alone(tf32_on):
    ntk, x, seen = _recording_ntk(precision="default")
    ntk(x)
    assert seen == [True]


def test_setting_is_restored_when_the_call_fails(tf32_on):
    ntk, x, _ = _recording_ntk()

    def failing(*args):
        raise RuntimeError("tile failed")

    ntk._one_tile = (failing, failing)
    with pytest.raises(RuntimeError, match="tile failed"):
        ntk(x)
    assert tf.config.experimental.tensor_float_32_execution_enabled()


@pytest.mark.parametrize("initial", [True, False])
def test_overlapping_calls_from_threads_restore_the_users_setting(initial):
    """Thread a enters, thread b enters, a leaves while b is inside (TF32 must stay
    off for b), b leaves: the setting returns to the user's value."""
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(initial)
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with precision.full_float32():
            a_inside.set()
            b_inside.wait(10)
        a_left.set()

    def second():
        a_inside.wait(10)
        with precision.full_float32():
            b_inside.set()
            a_left.wait(10)
            seen["b after a left"] = tf.config.experimental.tensor_float_32_execution_enabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert seen == {"b after a left": False}
        assert tf.config.experimental.tensor_float_32_execution_enabled() is initial
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        keras_ntk.NTK(keras_ntk.models.mlp(4, 1, 1, input_shape=(2,)), precision="tf32")


@pytest.mark.gpu
def test_gpu_float32_kernel_matches_float64_with_tf32_enabled(tf32_on):
    """On a GPU with TF32 on globally, the float32 kernel agrees with float64 to 1e-5."""
    keras.utils.set_random_seed(1)
    model = keras_ntk.models.mlp(512, 3, 10, input_shape=(784,))
    x = np.random.default_rng(1).normal(size=(32, 784)).astype(np.float32)
    single = keras_ntk.NTK(model)(x, x[:16]).numpy()
    double = keras_ntk.NTK(model, dtype="float64")(x, x[:16]).numpy()
    assert np.abs(single - double).max() <= 1e-5 * np.abs(double).max()
