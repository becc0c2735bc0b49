"""NTK-parametrized layers and model builders: formulas, init, save/load, fit, errors."""

import math

import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.layers import Conv2D, Dense
from references import conv2d_numpy

rng = np.random.default_rng(0)


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_dense_computes_the_parametrization_formula(parametrization):
    layer = Dense(7, parametrization=parametrization, w_std=1.5, b_std=0.3, activation="erf")
    x = rng.normal(size=(4, 5)).astype(np.float32)
    out = layer(x).numpy()
    w, b = layer.kernel.numpy(), layer.bias.numpy()
    if parametrization == "ntk":
        z = 1.5 / math.sqrt(5) * x @ w + 0.3 * b
        assert (layer.weight_scale, layer.bias_scale) == pytest.approx((1.5 / math.sqrt(5), 0.3))
    else:
        z = x @ w + b
        assert (layer.weight_scale, layer.bias_scale) == (1.0, 1.0)
    from scipy.special import erf

    np.testing.assert_allclose(out, erf(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.linear(x).numpy(), z, rtol=1e-5, atol=1e-6)
    assert layer.fan_in == 5


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("padding,strides", [("same", 1), ("valid", 2), ("same", 2)])
def test_conv2d_computes_the_parametrization_formula(parametrization, padding, strides):
    layer = Conv2D(
        4, (3, 2), strides=strides, padding=padding, parametrization=parametrization, w_std=1.2, b_std=0.5
    )
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    out = layer(x).numpy()
    w, b = layer.kernel.numpy().astype(np.float64), layer.bias.numpy()
    scale, bias_scale = (1.2 / math.sqrt(18), 0.5) if parametrization == "ntk" else (1.0, 1.0)
    expected = conv2d_numpy(x.astype(np.float64), w * scale, strides, padding) + bias_scale * b
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert layer.fan_in == 18
    assert layer.compute_output_shape(x.shape) == out.shape


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_initializers_have_the_parametrization_variances(parametrization):
    keras.utils.set_random_seed(0)
    layer = Dense(400, parametrization=parametrization, w_std=2.0, b_std=0.5)
    layer.build((None, 1000))
    kernel_std, bias_std = layer.kernel.numpy().std(), layer.bias.numpy().std()
    if parametrization == "ntk":
        expected_kernel, expected_bias = 1.0, 1.0
    else:
        expected_kernel, expected_bias = 2.0 / math.sqrt(1000), 0.5
    # 400k and 400 samples: relative standard errors 0.1% and 3.5%.
    assert kernel_std == pytest.approx(expected_kernel, rel=0.005)
    assert bias_std == pytest.approx(expected_bias, rel=0.15)


def _small_models():
    return {
        "mlp_ntk_erf": keras_ntk.models.mlp(16, 2, 3, activation="erf", input_shape=(4, 2)),
        "mlp_standard": keras_ntk.models.mlp(16, 2, 3, parametrization="standard", input_shape=(8,)),
        "cnn": keras_ntk.models.cnn(8, 2, 3, input_shape=(8, 8, 2)),
        "wide_resnet": keras_ntk.models.wide_resnet(10, 1, 3, input_shape=(8, 8, 2)),
    }


def test_save_and_safe_load_round_trip_gives_identical_outputs(tmp_path):
    for name, model in _small_models().items():
        x = rng.normal(size=(3, *model.input_shape[1:])).astype(np.float32)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path, safe_mode=True)
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy(), err_msg=name)
        assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])  # XLA compile: 9 s
def test_fit_lowers_the_loss(jit_compile):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(64, 4, 4, 2)).astype(np.float32)
    y = np.tanh(x.mean(axis=(1, 2)) @ np.array([[2.0], [-1.0]]))
    for model in (
        keras_ntk.models.mlp(64, 2, 1, input_shape=(4, 4, 2)),
        keras_ntk.models.cnn(16, 2, 1, input_shape=(4, 4, 2)),
    ):
        model.compile(optimizer=keras.optimizers.SGD(0.2), loss="mse", jit_compile=jit_compile)
        before = model.evaluate(x, y, verbose=0)
        model.fit(x, y, epochs=40, batch_size=16, verbose=0)
        assert model.evaluate(x, y, verbose=0) < 0.5 * before


def test_wide_resnet_has_the_zagoruyko_komodakis_structure():
    model = keras_ntk.models.wide_resnet(16, 2, 10, input_shape=(16, 16, 3))
    convs = [layer for layer in model.layers if isinstance(layer, Conv2D)]
    # stem + 3 groups x 2 blocks x 2 convs + 3 shortcut projections; 16k, 32k, 64k channels
    assert len(convs) == 1 + 12 + 3
    assert model.output_shape == (None, 10)
    assert {layer.filters for layer in convs} == {16, 32, 64, 128}
    assert model.get_layer("group2_block0_conv_a").strides == (2, 2)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Dense(3, parametrization="mup"), "parametrization"),
        (lambda: Conv2D(3, 3, parametrization="NTK"), "parametrization"),
        (lambda: keras_ntk.models.mlp(16, 2, 1, activation="swishy", input_shape=(3,)), "activation"),
        (lambda: keras_ntk.models.mlp(0, 2, 1, input_shape=(3,)), "width"),
        (lambda: keras_ntk.models.mlp(8, -1, 1, input_shape=(3,)), "depth"),
        (lambda: keras_ntk.models.cnn(8, 0, 1, input_shape=(8, 8, 1)), "depth"),
        (lambda: keras_ntk.models.cnn(8, 2, 1, input_shape=(8, 8)), "rank 3"),
        (lambda: keras_ntk.models.wide_resnet(12, 1, 10), "6n"),
        (lambda: keras_ntk.models.wide_resnet(10, 0, 10), "width_multiplier"),
        (lambda: Dense(3)(np.ones((2, 3, 4), np.float32)), "batch, features"),
        (lambda: Conv2D(3, 3)(np.ones((2, 3, 4), np.float32)), "height, width, channels"),
        (lambda: Dense(3, w_std=-1.0), "w_std"),
    ],
)
def test_bad_input_raises_value_error_saying_what_was_expected(build, message):
    with pytest.raises(ValueError, match=message):
        build()
