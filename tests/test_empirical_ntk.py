"""The empirical NTK engine against brute-force tape.jacobian kernels."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import stats

import keras_ntk
from references import brute_force_ntk
from test_ntk_loop_reference import reduce_output

RTOL = 1e-5


def _assert_close(actual, expected, rtol=RTOL):
    actual = np.asarray(actual, np.float64)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def _brute_force_layer_ntk(model, name, x):
    """Brute-force NTK over one layer's variables: every other layer frozen meanwhile."""
    frozen = [other for other in model.layers if other is not model.get_layer(name)]
    for other in frozen:
        other.trainable = False
    try:
        return brute_force_ntk(model, x)
    finally:
        for other in frozen:
            other.trainable = True


def _model_zoo():
    keras.utils.set_random_seed(0)
    return {
        "mlp_ntk": keras_ntk.models.mlp(24, 2, 3, input_shape=(5,)),
        "mlp_standard": keras_ntk.models.mlp(24, 2, 3, parametrization="standard", input_shape=(2, 3)),
        "cnn_ntk": keras_ntk.models.cnn(4, 2, 3, input_shape=(6, 6, 2)),
        "cnn_standard_flatten": keras_ntk.models.cnn(
            3, 2, 2, parametrization="standard", pooling="flatten", input_shape=(5, 5, 1)
        ),
        "wide_resnet": keras_ntk.models.wide_resnet(10, 1, 2, input_shape=(4, 4, 1)),
    }


ZOO = _model_zoo()


# The WideResNet costs 5-14 s a case: `make test` keeps its structured full kernel,
# `make test-slow` runs the rest.
METHOD_CASES = [
    pytest.param(method, output, name, marks=pytest.mark.slow)
    if name == "wide_resnet" and (method, output) != ("structured", "full")
    else (method, output, name)
    for method in ("structured", "jacobian", "ntk_vp")
    for output in ("full", "trace", "diagonal")
    for name in ZOO
]


@pytest.mark.parametrize("method,output,name", METHOD_CASES)
def test_every_method_equals_brute_force(method, output, name):
    model = ZOO[name]
    x = np.random.default_rng(1).normal(size=(5, *model.input_shape[1:])).astype(np.float32)
    reference = reduce_output(brute_force_ntk(model, x), output)
    _assert_close(keras_ntk.empirical_ntk(model, x, output=output, method=method), reference)


def test_keras_layers_layernorm_pooling_residual_and_custom_layers():
    """Keras' own Dense/Conv2D get rules; LayerNorm and a custom layer go the Jacobian way."""

    @keras.saving.register_keras_serializable(package="tests")
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.gain = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.gain

    keras.utils.set_random_seed(2)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs)
    h = keras.layers.Conv2D(4, 3, strides=2, padding="valid")(h)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    h = keras.layers.Add()([h, Scale()(keras.layers.Dense(8)(h))])
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 2)).astype(np.float32)
    per_layer = keras_ntk.empirical_ntk(model, x, method="structured", per_layer=True)
    assert {"layer_normalization", "scale"} <= {k.split("/")[-1] for k in per_layer}
    total = sum(v.numpy() for v in per_layer.values())
    _assert_close(total, brute_force_ntk(model, x))


def test_per_layer_kernels_are_each_layers_share():
    model = ZOO["mlp_ntk"]
    x = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    per_layer = keras_ntk.empirical_ntk(model, x, per_layer=True)
    assert set(per_layer) == {"dense_0", "dense_1", "readout"}
    for name, kernel in per_layer.items():
        _assert_close(kernel, _brute_force_layer_ntk(model, name, x))
    _assert_close(sum(v.numpy() for v in per_layer.values()), brute_force_ntk(model, x))


def _functional(shape, build):
    inputs = keras.Input(shape)
    return keras.Model(inputs, build(inputs))


def _residual(x):
    h = keras.layers.Dense(6, activation="relu")(x)
    return keras.layers.Dense(2)(keras.layers.Add()([h, keras.layers.Dense(6, activation="relu")(h)]))


# name -> (builder, whether its dense layers form a chain for the recursion)
_L = keras.layers
_DENSE_MODELS = {
    "erf": (lambda: keras_ntk.models.mlp(16, 2, 3, activation="erf", b_std=0.2, input_shape=(4,)), True),
    "tanh_standard": (
        lambda: keras_ntk.models.mlp(16, 3, 2, activation="tanh", parametrization="standard", input_shape=(4,)),
        True,
    ),
    "identity_no_bias": (lambda: keras.Sequential([
        keras.Input((4,)),
        keras_ntk.layers.Dense(8, w_std=1.3, use_bias=False),
        keras_ntk.layers.Dense(3, w_std=1.3, b_std=0.5),
    ]), True),
    "keras_dense_dropout_tanh_readout": (lambda: keras.Sequential([
        keras.Input((4,)), _L.Dense(8, activation="relu"), _L.Dropout(0.5), _L.Dense(8),
        _L.Dense(3, activation="tanh"),
    ]), True),
    "layernorm_then_chain": (lambda: _functional((4,), lambda x: _L.Dense(3)(
        _L.Dense(8, activation="relu")(_L.LayerNormalization()(x)))), True),
    "single_layer": (lambda: keras.Sequential([keras.Input((4,)), _L.Dense(2)]), True),
    "residual": (lambda: _functional((4,), _residual), False),
    "softplus": (lambda: keras.Sequential([
        keras.Input((4,)), _L.Dense(8, activation="softplus"), _L.Dense(2)]), False),
    "activation_after_readout": (lambda: keras.Sequential([
        keras.Input((4,)), _L.Dense(8, activation="relu"), _L.Dense(2), _L.Activation("tanh")]), False),
    "dense_on_sequence": (lambda: keras.Sequential([
        keras.Input((3, 4)), _L.Dense(5, activation="relu"), _L.Flatten(), _L.Dense(2)]), False),
    "layernorm_inside": (lambda: _functional((4,), lambda x: _L.Dense(2)(
        _L.LayerNormalization()(_L.Dense(8, activation="relu")(x)))), False),
}


@pytest.mark.parametrize("name", list(_DENSE_MODELS))
def test_dense_chain_recursion_equals_brute_force(name):
    """Dense chains take the explicit backward recursion, everything else the probe
    path; both equal brute force in every output mode and per layer."""
    build, chain = _DENSE_MODELS[name]
    keras.utils.set_random_seed(13)
    model = build()
    x = np.random.default_rng(14).normal(size=(6, *model.input_shape[1:])).astype(np.float32)
    full = brute_force_ntk(model, x)
    ntk = keras_ntk.NTK(model, per_layer=True)
    per_layer = ntk(x)
    assert (ntk.strategy.feature_map.chain is not None) == chain
    _assert_close(sum(v.numpy() for v in per_layer.values()), full)
    for output in ("full", "trace", "diagonal"):
        _assert_close(keras_ntk.NTK(model, output=output)(x), reduce_output(full, output))
    x2 = x[:4] + 0.5
    _assert_close(keras_ntk.NTK(model)(x, x2), brute_force_ntk(model, np.concatenate([x, x2]))[:6, 6:])


def test_dense_chain_per_layer_kernels_are_each_layers_share():
    """The recursion's per-layer split, against brute force over one layer at a time."""
    keras.utils.set_random_seed(15)
    model = keras_ntk.models.mlp(12, 2, 2, activation="erf", parametrization="standard", input_shape=(3,))
    x = np.random.default_rng(15).normal(size=(5, 3)).astype(np.float32)
    ntk = keras_ntk.NTK(model, per_layer=True)
    per_layer = ntk(x)
    assert ntk.strategy.feature_map.chain is not None
    for name, kernel in per_layer.items():
        _assert_close(kernel, _brute_force_layer_ntk(model, name, x))


@pytest.mark.parametrize("n", [1, 3, 9])
@pytest.mark.parametrize("output", ["full", "trace"])
def test_symmetric_block_equals_general_block(n, output, monkeypatch):
    """x2 = None computes the Gram pairs of example parts on and above the
    diagonal and mirrors them (forced here for any size)."""
    monkeypatch.setattr(keras_ntk.ntk.contract, "_MIN_PART_ROWS", 1)
    for model in (ZOO["mlp_ntk"], ZOO["cnn_standard_flatten"]):
        x = np.random.default_rng(n).normal(size=(n, *model.input_shape[1:])).astype(np.float32)
        ntk = keras_ntk.NTK(model, output=output)
        _assert_close(ntk(x), ntk(x, x.copy()).numpy(), rtol=1e-6)


@pytest.mark.parametrize("method", ["structured", "jacobian", "ntk_vp"])
def test_frozen_layers_are_excluded(method):
    keras.utils.set_random_seed(4)
    model = keras_ntk.models.mlp(16, 2, 2, input_shape=(3,))
    x = np.random.default_rng(4).normal(size=(4, 3)).astype(np.float32)
    unfrozen = brute_force_ntk(model, x)
    model.get_layer("dense_0").trainable = False
    frozen = brute_force_ntk(model, x)
    assert np.abs(unfrozen - frozen).max() > 0.1 * np.abs(frozen).max()
    _assert_close(keras_ntk.NTK(model, method=method)(x), frozen)


def test_shared_layer_called_twice_is_handled():
    keras.utils.set_random_seed(5)
    shared = keras_ntk.layers.Dense(4, activation="relu", b_std=0.1)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(shared(shared(inputs)))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    _assert_close(keras_ntk.empirical_ntk(model, x), brute_force_ntk(model, x))


@pytest.mark.parametrize("output", ["full", "trace", "diagonal"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name, budget", [("cnn_ntk", 300_000), ("mlp_ntk", 30_000)])
def test_tiled_equals_untiled(output, symmetric, name, budget):
    model = ZOO[name]
    rng = np.random.default_rng(6)
    x1 = rng.normal(size=(11, *model.input_shape[1:])).astype(np.float32)
    x2 = None if symmetric or output == "diagonal" else rng.normal(size=(7, *model.input_shape[1:])).astype(np.float32)
    whole = keras_ntk.NTK(model, output=output)(x1, x2).numpy()
    tiled_ntk = keras_ntk.NTK(model, output=output, memory_budget=budget)
    _assert_close(tiled_ntk(x1, x2), whole, rtol=1e-6)
    chunk = tiled_ntk.plan(11, None if x2 is None else 7).tile
    assert 1 < chunk < 7  # several tiles, the last padded


def test_x2_none_equals_x2_x1():
    model = ZOO["mlp_ntk"]
    x = np.random.default_rng(7).normal(size=(6, 5)).astype(np.float32)
    _assert_close(keras_ntk.empirical_ntk(model, x), keras_ntk.empirical_ntk(model, x, x).numpy(), 1e-7)


def test_empirical_ntk_approaches_the_infinite_width_ntk():
    x = np.random.default_rng(8).normal(size=(8, 4)).astype(np.float32)
    analytic = keras_ntk.infinite_width_kernel(x, depth=2).numpy()
    distances = []
    for width in (32, 128, 512, 2048):
        per_seed = []
        for seed in range(3):
            keras.utils.set_random_seed(seed)
            model = keras_ntk.models.mlp(width, 2, 2, input_shape=(4,))
            kernel = keras_ntk.empirical_ntk(model, x, output="trace").numpy()
            per_seed.append(np.linalg.norm(kernel - analytic) / np.linalg.norm(analytic))
        distances.append(np.mean(per_seed))
    assert all(b < a for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.1, distances


def test_float64_kernel():
    model = ZOO["mlp_ntk"]
    x = np.random.default_rng(9).normal(size=(3, 5)).astype(np.float32)
    kernel = keras_ntk.empirical_ntk(model, x, dtype="float64")
    assert kernel.dtype == tf.float64
    _assert_close(kernel, brute_force_ntk(model, x))


def test_impossible_request_raises_memory_error_with_the_estimate():
    model = ZOO["mlp_ntk"]
    ntk = keras_ntk.NTK(model, memory_budget=2**30)
    ntk(np.ones((2, 5), np.float32))
    with pytest.raises(keras_ntk.NTKMemoryError, match=r"needs at least .* GiB.*memory_budget"):
        ntk.plan(10**6, 10**6)


def test_ntk_vector_product_equals_kernel_times_vector():
    model = ZOO["cnn_ntk"]
    rng = np.random.default_rng(10)
    x = rng.normal(size=(4, 6, 6, 2)).astype(np.float32)
    full = brute_force_ntk(model, x)
    v = rng.normal(size=(4, 3)).astype(np.float32)
    _assert_close(keras_ntk.ntk_vector_product(model, x, v), np.einsum("ijkl,jl->ik", full, v))
    vs = rng.normal(size=(4, 3, 2)).astype(np.float32)
    _assert_close(keras_ntk.ntk_vector_product(model, x, vs), np.einsum("ijkl,jlr->ikr", full, vs))


def test_tfp_empirical_kernel_drives_a_gaussian_process():
    model = ZOO["mlp_ntk"]
    rng = np.random.default_rng(11)
    x = rng.normal(size=(6, 5))
    y = rng.normal(size=6)
    kernel = keras_ntk.EmpiricalNTKKernel(model, scale=0.5)
    reference = 0.5 * reduce_output(brute_force_ntk(model, x.astype(np.float32)), "trace")
    _assert_close(kernel.matrix(x, x), reference)
    _assert_close(kernel.apply(x, x), np.diag(reference))
    gp = tfp.distributions.GaussianProcess(kernel, index_points=x, observation_noise_variance=0.2, jitter=0.0)
    expected = stats.multivariate_normal(np.zeros(6), reference + 0.2 * np.eye(6)).logpdf(y)
    assert gp.log_prob(y).numpy() == pytest.approx(expected, rel=1e-5)


def test_batch_mixing_model_is_refused():
    """A layer normalizing with batch statistics, as BatchNorm does in training mode."""

    class BatchStatistics(keras.layers.Layer):
        def call(self, x):
            return (x - keras.ops.mean(x, axis=0)) / (keras.ops.std(x, axis=0) + 1e-3)

    inputs = keras.Input((3,))
    h = keras_ntk.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras_ntk.layers.Dense(1)(BatchStatistics()(h)))
    with pytest.raises(ValueError, match="depends on the other examples"):
        keras_ntk.empirical_ntk(model, np.random.default_rng(12).normal(size=(4, 3)))


@pytest.mark.parametrize(
    "kwargs, x, message",
    [
        (dict(output="rows"), np.zeros((2, 5)), "output"),
        (dict(method="fast"), np.zeros((2, 5)), "method"),
        (dict(), np.zeros((2, 4)), r"shape \(examples, 5\)"),
        (dict(), np.full((2, 5), np.nan), "NaN"),
        (dict(per_layer=True, method="ntk_vp"), np.zeros((2, 5)), "per_layer"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, x, message):
    with pytest.raises(ValueError, match=message):
        keras_ntk.empirical_ntk(ZOO["mlp_ntk"], x, **kwargs)


def test_diagonal_with_x2_is_refused():
    with pytest.raises(ValueError, match="x2=None"):
        keras_ntk.empirical_ntk(ZOO["mlp_ntk"], np.zeros((2, 5)), np.zeros((2, 5)), output="diagonal")


def test_tiles_shared_by_several_logical_devices():
    """Two logical CPUs (configured before TF starts, so in a fresh process) share
    the tiles through a MirroredStrategy."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, "tests")
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, numpy as np, keras_ntk
        from keras_ntk.ntk.empirical import _devices
        from references import brute_force_ntk
        assert len(_devices()) == 2, _devices()
        keras.utils.set_random_seed(0)
        model = keras_ntk.models.mlp(16, 2, 2, input_shape=(3,))
        x = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
        ntk = keras_ntk.NTK(model, memory_budget=20_000)
        kernel = ntk(x).numpy()
        assert ntk.plan(9).tile < 9 and ntk._devices[0].num_replicas_in_sync == 2
        ref = brute_force_ntk(model, x)
        print(np.abs(kernel - ref).max() / np.abs(ref).max())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=_repo_root()
    )
    assert float(out.stdout.strip().splitlines()[-1]) < RTOL


def _repo_root():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1]
