"""The NTK traced into a caller's tf.function, one-tile results on the device, and plans."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from references import brute_force_ntk
from test_ntk_loop_reference import reduce_output

RTOL = 1e-5


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL * np.abs(expected).max())


def _mlp():
    keras.utils.set_random_seed(3)
    return keras_ntk.models.mlp(24, 2, 3, input_shape=(5,))


def _cnn():
    keras.utils.set_random_seed(4)
    return keras_ntk.models.cnn(3, 2, 2, input_shape=(5, 5, 1))


def _data(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("output", ["full", "trace", "diagonal"])
@pytest.mark.parametrize("build", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_kernel_traced_into_a_callers_function_equals_brute_force(build, output):
    """The NTK is first called inside the caller's tf.function (so it probes the model
    and checks vectorization from within the trace), with x2 given and x2=None."""
    model = build()
    shape = model.input_shape[1:]
    x1, x2 = _data((4, *shape), 0), _data((3, *shape), 1)
    ntk = keras_ntk.NTK(model, output=output)

    @tf.function
    def kernels(a, b):
        same = ntk(a)
        return same, (None if output == "diagonal" else ntk(a, b))

    same, cross = kernels(tf.constant(x1), tf.constant(x2))
    both = brute_force_ntk(model, np.concatenate([x1, x2]))
    assert_close(same.numpy(), reduce_output(both[:4, :4], output))
    if output != "diagonal":
        assert_close(cross.numpy(), reduce_output(both[:4, 4:], output))


def test_training_loop_calls_the_kernel_each_step_in_one_graph():
    """A tf.function loop that changes the weights between kernel evaluations sees
    the current weights every time (variables are read inside the traced kernel)."""
    model = _mlp()
    x = _data((4, 5), 2)
    ntk = keras_ntk.NTK(model, output="trace")
    variable = model.trainable_variables[0]

    @tf.function
    def two_steps(a):
        first = ntk(a)
        variable.assign(variable * 1.5)
        return first, ntk(a)

    first, second = two_steps(tf.constant(x))
    after = reduce_output(brute_force_ntk(model, x), "trace")
    variable.assign(variable / 1.5)
    before = reduce_output(brute_force_ntk(model, x), "trace")
    assert_close(first.numpy(), before)
    assert_close(second.numpy(), after)


def test_several_tiles_inside_a_function_is_a_clear_error():
    model = _mlp()
    ntk = keras_ntk.NTK(model, memory_budget=400_000)
    x = _data((40, 5), 3)
    ntk(x[:2])
    assert ntk.plan(40).tiles > 1
    with pytest.raises(ValueError, match="one tile"):
        tf.function(lambda a: ntk(a))(tf.constant(x))


def test_unknown_batch_size_inside_a_function_is_a_clear_error():
    ntk = keras_ntk.NTK(_mlp())
    traced = tf.function(lambda a: ntk(a), input_signature=[tf.TensorSpec((None, 5), tf.float32)])
    with pytest.raises(ValueError, match="batch size"):
        traced.get_concrete_function()


def test_one_tile_result_stays_a_tensor_on_the_computing_device():
    model = _mlp()
    x1, x2 = _data((4, 5), 4), _data((3, 5), 5)
    kernel = keras_ntk.NTK(model)(x1, x2)
    assert isinstance(kernel, tf.Tensor) and kernel.shape == (4, 3, 3, 3)
    with tf.device("CPU:0"):
        expected_device = tf.constant(0.0).device
    assert kernel.device == expected_device


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiles_assembled_on_the_device_equal_brute_force(symmetric):
    model = _mlp()
    x1, x2 = _data((9, 5), 6), _data((7, 5), 7)
    ntk = keras_ntk.NTK(model, memory_budget=30_000, per_layer=True)
    kernels = ntk(x1) if symmetric else ntk(x1, x2)
    assert ntk.plan(9, None if symmetric else 7).tiles > 1
    reference = brute_force_ntk(model, x1 if symmetric else np.concatenate([x1, x2]))
    reference = reference if symmetric else reference[:9, 9:]
    assert all(isinstance(value, tf.Tensor) for value in kernels.values())
    assert_close(sum(kernels.values()).numpy(), reference)


def test_plan_counts_the_dense_chain_flops_by_hand():
    """MLP 5-24-24-3 (K = 3), 4 x 3 examples with x2 given, full kernel: one tile,
    7 examples encoded, 12 pairs, FLOPs from the formulas in FeatureMap.costs."""
    model = _mlp()
    ntk = keras_ntk.NTK(model)
    ntk(_data((2, 5), 8))
    plan = ntk.plan(4, 3)
    k = 3
    forward = {"dense_0": 2 * 5 * 24, "dense_1": 2 * 24 * 24, "readout": 2 * 24 * 3}
    recursion = {"dense_0": 2 * k * 24 * 24, "dense_1": 2 * k * 24 * 3, "readout": 0}
    pair = {"dense_0": 2 * (5 + k * k * 24), "dense_1": 2 * (24 + k * k * 24), "readout": 2 * (24 + k * k * 3)}
    assert (plan.tiles, plan.tile, plan.symmetric) == (1, 4, False)
    assert [layer.method for layer in plan.layers] == ["dense chain"] * 3
    for layer in plan.layers:
        name = layer.name.rsplit("/", 1)[-1]
        assert layer.flops == 7 * (forward[name] + recursion[name]) + 12 * pair[name]
        assert layer.factor_bytes == 4 * ({"dense_0": 5, "dense_1": 24, "readout": 24}[name] + k * {"readout": 3}.get(name, 24))
    assert plan.flops == sum(layer.flops for layer in plan.layers)
    assert "dense chain" in str(plan)


def test_plan_of_a_cnn_names_each_layers_method_and_counts_its_gradients():
    """Conv layers form per-example gradients; the Jacobian method uses Jacobians for
    every layer. Per-pair FLOPs of a gradient group are 2 K^2 (its parameter count)."""
    model = _cnn()
    x = _data((3, 5, 5, 1), 9)
    structured, jacobian = keras_ntk.NTK(model), keras_ntk.NTK(model, method="jacobian")
    structured(x), jacobian(x)
    plan = structured.plan(3, 2)
    methods = {layer.name.rsplit("/", 1)[-1]: layer.method for layer in plan.layers}
    assert methods == {"conv_0": "structured (gradients)", "conv_1": "structured (gradients)", "readout": "structured"}
    conv = [layer for layer in plan.layers if layer.name.endswith("conv_1")][0]
    size = sum(math.prod(v.shape) for v in model.get_layer("conv_1").trainable_variables)
    forward = 2 * 25 * 3 * 3 * 3 * 3  # 25 positions, 3x3 kernel, 3 -> 3 channels
    assert conv.flops == 5 * (forward * (1 + 2 * 2)) + 6 * 2 * 2 * 2 * size
    assert {layer.method for layer in jacobian.plan(3, 2).layers} == {"jacobian"}


@pytest.mark.parametrize("symmetric", [True, False])
def test_xla_compiled_kernel_equals_brute_force(symmetric):
    model = _cnn()
    x1, x2 = _data((4, 5, 5, 1), 10), _data((3, 5, 5, 1), 11)
    ntk = keras_ntk.NTK(model, jit_compile=True)
    kernel = ntk(x1) if symmetric else ntk(x1, x2)
    again = ntk(x1) if symmetric else ntk(x1, x2)
    reference = brute_force_ntk(model, np.concatenate([x1, x2]))
    reference = reference[:4, :4] if symmetric else reference[:4, 4:]
    assert_close(kernel.numpy(), reference)
    assert_close(again.numpy(), reference)
    assert ntk._one_tile is not ntk._plain_tiles


def test_xla_kernel_that_disagrees_with_the_plain_one_is_refused():
    model = _mlp()
    x = _data((4, 5), 12)
    ntk = keras_ntk.NTK(model, jit_compile=True)
    ntk(x[:2])  # builds and checks the XLA path
    ntk._xla_checked = False
    wrong = tuple(lambda *args, f=f: f(*args) * 1.01 for f in ntk._one_tile)
    ntk._one_tile = wrong
    with pytest.warns(RuntimeWarning, match="XLA"):
        kernel = ntk(x)
    assert_close(kernel.numpy(), reduce_output(brute_force_ntk(model, x), "full"))
    assert ntk._one_tile is ntk._plain_tiles


def test_auto_times_both_paths_for_convolutions_and_keeps_the_faster(monkeypatch):
    from keras_ntk.ntk import strategies

    monkeypatch.setattr(strategies, "AUTO_MEASURE_FLOPS", 0)
    model = _cnn()
    x1, x2 = _data((5, 5, 5, 1), 13), _data((3, 5, 5, 1), 14)
    ntk = keras_ntk.NTK(model)
    kernel = ntk(x1, x2)
    timings = ntk.strategy.timings
    assert set(timings) == {"structured", "structured_dense"} and all(t > 0 for t in timings.values())
    best = min(timings, key=timings.get)
    plan = ntk.plan(5, 3)
    assert plan.method.startswith(best + " (timed on 5 examples")
    conv_methods = {layer.method for layer in plan.layers if "conv" in layer.name}
    assert conv_methods == {"jacobian" if best == "structured_dense" else "structured (gradients)"}
    readout = [layer.method for layer in plan.layers if "readout" in layer.name]
    assert readout == ["dense chain" if best == "structured_dense" else "structured"]
    reference = brute_force_ntk(model, np.concatenate([x1, x2]))[:5, 5:]
    assert_close(kernel.numpy(), reference)


@pytest.mark.parametrize("output", ["full", "trace"])
def test_convolutions_on_the_jacobian_path_beside_dense_rules_equal_brute_force(output):
    """The candidate method="auto" may pick: dense layers structured, convolutions by Jacobians."""
    from keras_ntk.ntk import strategies

    model = _cnn()
    x = _data((4, 5, 5, 1), 15)
    strategy = strategies.FactorStrategy(model, "structured_dense", output, tf.float32, False, x[:2])
    strategy.prepare(x)
    assert [r.name.rsplit("/", 1)[-1] for r in strategy.feature_map.rules] == ["readout"]
    assert_close(strategy.tile(tf.constant(x)).numpy(), reduce_output(brute_force_ntk(model, x), output))


def test_auto_keeps_structured_without_timing_for_small_requests_and_mlps():
    cnn, mlp = keras_ntk.NTK(_cnn()), keras_ntk.NTK(_mlp())
    cnn(_data((3, 5, 5, 1), 16))
    mlp(_data((3, 5), 17))
    assert cnn.strategy.choice.startswith("structured (planned") and cnn.strategy.timings == {}
    assert mlp.strategy.choice == "structured (no convolution)"


def test_plan_before_the_first_call_probes_synthetic_inputs_and_the_call_agrees():
    model = _mlp()
    ntk = keras_ntk.NTK(model, memory_budget=30_000)
    plan = ntk.plan(9, 7)
    assert plan.tiles > 1 and plan.method == "structured (no convolution)"
    x1, x2 = _data((9, 5), 18), _data((7, 5), 19)
    assert_close(ntk(x1, x2).numpy(), brute_force_ntk(model, np.concatenate([x1, x2]))[:9, 9:])
    assert ntk.plan(9, 7) == plan
