"""Kernels of one model built and called from several threads at once."""

import threading

import keras
import numpy as np

import keras_ntk
from test_ntk_loop_reference import assert_close, loop_ntk, reduce_output


def test_threads_building_and_calling_kernels_of_one_model_get_correct_kernels():
    """Two threads build and call NTKs of one fresh model (the probe path, so both
    trace probed forward passes) while a third calls the model itself; the engine
    never modifies the model, so every kernel and every output stays right."""
    keras.utils.set_random_seed(10)
    model = keras_ntk.models.cnn(3, 1, 2, input_shape=(5, 5, 1))
    x = np.random.default_rng(10).normal(size=(3, 5, 5, 1)).astype(np.float32)
    reference = loop_ntk(model, x)
    expected_outputs = model(x, training=False).numpy()
    start = threading.Barrier(3)
    kernels, outputs, errors = [], [], []

    def build_and_call(output, per_layer):
        try:
            start.wait()
            for _ in range(2):
                value = keras_ntk.NTK(model, output=output, per_layer=per_layer)(x)
                kernels.append((output, sum(value.values()) if per_layer else value))
        except Exception as error:  # reported below with the thread's result
            errors.append(error)

    def predict():
        start.wait()
        for _ in range(20):
            outputs.append(model(x, training=False).numpy())

    threads = [
        threading.Thread(target=build_and_call, args=("full", False)),
        threading.Thread(target=build_and_call, args=("trace", True)),
        threading.Thread(target=predict),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(kernels) == 4
    for output, kernel in kernels:
        assert_close(kernel, reduce_output(reference, output), 1e-5)
    for out in outputs:
        np.testing.assert_array_equal(out, expected_outputs)


def test_one_ntk_called_from_two_threads_before_it_is_built():
    keras.utils.set_random_seed(11)
    model = keras_ntk.models.mlp(8, 2, 2, input_shape=(3,))
    x = np.random.default_rng(11).normal(size=(4, 3)).astype(np.float32)
    ntk = keras_ntk.NTK(model)
    start = threading.Barrier(2)
    results = []

    def call():
        start.wait()
        results.append(ntk(x).numpy())

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    for kernel in results:
        assert_close(kernel, loop_ntk(model, x), 1e-5)
