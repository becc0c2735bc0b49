"""infinite_width_kernel_fn against closed forms, brute-force Jacobians and quadrature.

Width-free references: the closed-form MLP / CNN kernels; for networks that are
linear in their parameters (one convolution, pooling, sums), the NTK is J J^T at
any width and the NNGP sum_theta Var(theta) J_theta J_theta^T, with J from a
plain loop of tape.gradient calls; adaptive 2-D quadrature for the Hermite
expansion of activations. Convergence with width: test_kernel_fn_convergence.py.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import integrate, special, stats

import keras_ntk
from keras_ntk import layers as ntk_layers
from keras_ntk.ntk.limits import dual
from keras_ntk.ntk.limits import kernel_fn as kernel_fn_module
from references import gaussian_expectation

W, B = math.sqrt(2.0), 0.1


def _loop_jacobians(model, x):
    """{variable name: (N, K, size)} float64 by one tape.gradient call per example and output."""
    out = {v.path: [] for v in model.trainable_variables}
    for i in range(len(x)):
        with tf.GradientTape(persistent=True) as tape:
            outputs = tf.unstack(tf.reshape(model(x[i : i + 1]), [-1]))
        per_output = {v.path: [] for v in model.trainable_variables}
        for f_k in outputs:
            grads = tape.gradient(f_k, model.trainable_variables)
            for v, g in zip(model.trainable_variables, grads):
                g = np.zeros(v.shape) if g is None else g.numpy()
                per_output[v.path].append(np.ravel(g).astype(np.float64))
        for name, rows in per_output.items():
            out[name].append(rows)
    return {name: np.array(rows) for name, rows in out.items()}


def _gram(j1, j2):
    """mean over outputs k of J1[:, k] J2[:, k]^T: (N, M)."""
    return np.einsum("nkp,mkp->nm", j1, j2) / j1.shape[1]


def _linear_references(model, x1, x2, variances):
    """(NNGP, NTK) of a model linear in its parameters, from brute-force Jacobians.

    variances: variable path -> Var(theta) at init (zero mean)."""
    j1, j2 = _loop_jacobians(model, x1), _loop_jacobians(model, x2)
    ntk = sum(_gram(j1[v], j2[v]) for v in j1)
    nngp = sum(variances[v] * _gram(j1[v], j2[v]) for v in j1)
    return nngp, ntk


def _kernels(model, x1, x2=None, **kwargs):
    result = keras_ntk.infinite_width_kernel_fn(model, **kwargs)(x1, x2, get=("nngp", "ntk"))
    return result.nngp.numpy(), result.ntk.numpy()


# -- exact agreement with the closed-form MLP and CNN kernels ---------------------------------
@pytest.mark.parametrize(
    "parametrization, activation", [("ntk", "relu"), ("standard", "erf"), ("ntk", "identity")]
)
def test_mlp_model_gives_the_closed_form_mlp_kernel(parametrization, activation):
    x1 = np.random.default_rng(0).normal(size=(5, 2, 3))
    x2 = np.random.default_rng(1).normal(size=(3, 2, 3))
    model = keras_ntk.models.mlp(
        24, 3, 2, activation=activation, parametrization=parametrization, input_shape=(2, 3)
    )
    nngp, ntk = _kernels(model, x1, x2)
    kw = dict(depth=3, activation=activation, parametrization=parametrization, width=24)
    np.testing.assert_allclose(nngp, keras_ntk.infinite_width_kernel(x1, x2, kind="nngp", **kw), rtol=1e-12)
    np.testing.assert_allclose(ntk, keras_ntk.infinite_width_kernel(x1, x2, kind="ntk", **kw), rtol=1e-12)


@pytest.mark.parametrize("pooling, parametrization", [("flatten", "standard"), ("global_average", "ntk")])
def test_cnn_model_gives_the_closed_form_cnn_kernel(pooling, parametrization):
    x = np.random.default_rng(2).normal(size=(3, 5, 4, 2))
    model = keras_ntk.models.cnn(6, 2, 1, pooling=pooling, parametrization=parametrization, input_shape=(5, 4, 2))
    nngp, ntk = _kernels(model, x)
    kw = dict(depth=2, pooling=pooling, parametrization=parametrization, width=6)
    np.testing.assert_allclose(nngp, keras_ntk.infinite_width_cnn_kernel(x, kind="nngp", **kw), rtol=1e-12)
    np.testing.assert_allclose(ntk, keras_ntk.infinite_width_cnn_kernel(x, kind="ntk", **kw), rtol=1e-12)


# -- width-free geometry: networks linear in their parameters ----------------------------------
def _keras_conv(filters, kernel_size, **kwargs):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.7),
        bias_initializer=keras.initializers.RandomNormal(0.0, 0.3),
        **kwargs,
    )


def _keras_variances(model):
    return {
        v.path: (0.49 if v.path.endswith("kernel") else 0.09) for v in model.trainable_variables
    }


@pytest.mark.parametrize(
    "kernel_size, strides, padding, dilation, head",
    [
        (3, 2, "same", 1, "none"),
        ((3, 2), (1, 2), "valid", 1, "global_average"),
        (3, 1, "same", 2, "global_average"),
        (2, 1, "valid", (2, 1), "none"),
    ],
)
def test_one_convolution_matches_brute_force_jacobians(kernel_size, strides, padding, dilation, head):
    """Any stride, padding and dilation: exact at one filter, 'diag' (head none: the
    mean over output positions) and 'pairs' (global average pooling) position modes."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(2, 7, 6, 2)).astype(np.float32), rng.normal(size=(2, 7, 6, 2)).astype(np.float32)
    inputs = keras.Input((7, 6, 2))
    h = _keras_conv(1, kernel_size, strides=strides, padding=padding, dilation_rate=dilation)(inputs)
    if head == "global_average":
        h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, h)
    nngp, ntk = _kernels(model, x1, x2)
    ref_nngp, ref_ntk = _linear_references(model, x1, x2, _keras_variances(model))
    np.testing.assert_allclose(ntk, ref_ntk, rtol=1e-5)
    np.testing.assert_allclose(nngp, ref_nngp, rtol=1e-5)


@pytest.mark.parametrize("head", ["flatten", "global_average"])
def test_pooling_and_sums_of_convolutions_match_brute_force_jacobians(head):
    """'same' and 'valid' average pooling (TensorFlow's edge counts), a sum of three
    fresh branches, a keras_ntk convolution and a Keras Dense applied per position."""
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(size=(2, 7, 7, 2)).astype(np.float32), rng.normal(size=(2, 7, 7, 2)).astype(np.float32)
    inputs = keras.Input((7, 7, 2))
    a = ntk_layers.Conv2D(1, 3, padding="same", w_std=1.3, b_std=0.4, name="ntk_conv")(inputs)
    a = keras.layers.AveragePooling2D(3, strides=2, padding="same")(a)
    b = _keras_conv(1, 2, strides=2, padding="same")(inputs)
    c = keras.layers.Dense(
        1,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.7),
        bias_initializer=keras.initializers.RandomNormal(0.0, 0.3),
    )(inputs)
    c = keras.layers.AveragePooling2D(2, strides=2, padding="same")(c)
    h = keras.layers.Add()([a, b, c])
    h = keras.layers.AveragePooling2D(2, strides=1, padding="valid")(h)
    h = keras.layers.Flatten()(h) if head == "flatten" else keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, h)
    variances = _keras_variances(model)
    for v in model.get_layer("ntk_conv").trainable_variables:
        variances[v.path] = 1.0  # NTK parametrization: W, b ~ N(0, 1), scaled in the layer
    nngp, ntk = _kernels(model, x1, x2)
    ref_nngp, ref_ntk = _linear_references(model, x1, x2, variances)
    np.testing.assert_allclose(ntk, ref_ntk, rtol=1e-5)
    np.testing.assert_allclose(nngp, ref_nngp, rtol=1e-5)


# -- activations: Hermite expansion against closed forms and 2-D quadrature --------------------
COVARIANCES = [(2.0, 0.7, 1.5), (1.0, -0.6, 0.8), (0.5, 0.45, 0.5), (4.0, -3.5, 4.0), (3.0, 3.0, 3.0)]


def _expansion(fn):
    """(k11, k12, k22) -> (E[g g], E[g' g']) of dual.HermiteExpansion(fn), compiled once."""
    compiled = tf.function(dual.HermiteExpansion(fn).__call__)

    def evaluate(k11, k12, k22):
        return tuple(t.numpy() for t in compiled(*(tf.constant(v, tf.float64) for v in (k11, k12, k22))))

    return evaluate


def test_expansion_of_erf_and_relu_matches_their_closed_forms():
    """erf (smooth) to 1e-12; relu (a kink) to 1e-4, and E[relu' relu'] (a jump) only
    for |rho| < 1 (see dual.HermiteExpansion)."""
    erf, relu = _expansion(lambda t: tf.math.erf(t) * 1.0), _expansion(lambda t: tf.nn.relu(t) * 1.0)
    for k11, k12, k22 in COVARIANCES:
        args = [tf.constant(v, tf.float64) for v in (k11, k12, k22)]
        erf_closed = [t.numpy() for t in dual.erf(*args)]
        np.testing.assert_allclose(erf(k11, k12, k22), erf_closed, atol=1e-12)
        relu_phi, relu_dphi = (t.numpy() for t in dual.relu(*args))
        phi, dphi = relu(k11, k12, k22)
        assert phi == pytest.approx(relu_phi, abs=1e-4 * math.sqrt(k11 * k22))
        if abs(k12) < 0.95 * math.sqrt(k11 * k22):
            assert dphi == pytest.approx(relu_dphi, abs=1e-4)


def _second_moment(fn, k):
    return integrate.quad(lambda z: fn(math.sqrt(k) * z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -12, 12)[0]


SMOOTH = {
    "tanh": (tf.tanh, np.tanh, lambda t: 1 / np.cosh(t) ** 2),
    "gelu": (
        keras.activations.gelu,
        lambda t: 0.5 * t * (1 + special.erf(t / np.sqrt(2))),
        lambda t: 0.5 * (1 + special.erf(t / np.sqrt(2))) + t * np.exp(-t * t / 2) / np.sqrt(2 * np.pi),
    ),
    "swish": (
        keras.activations.silu,
        lambda t: t * special.expit(t),
        lambda t: special.expit(t) * (1 + t * (1 - special.expit(t))),
    ),
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_expansion_of_smooth_activations_matches_2d_quadrature(name):
    """Stated accuracy: 1e-8 relative to sqrt(E g(u)^2 E g(v)^2) for variances up to 4."""
    fn, g, dg = SMOOTH[name]
    expansion = _expansion(fn)
    for k11, k12, k22 in [(1.0, 0.6, 0.8), (4.0, -3.0, 3.5), (3.0, 3.0, 3.0)]:
        phi, dphi = expansion(k11, k12, k22)
        for value, h in ((phi, g), (dphi, dg)):
            if k11 == k12 == k22:
                reference = _second_moment(h, k11)
            else:
                reference = gaussian_expectation(lambda u, v: h(u) * h(v), k11, k12, k22)
            scale = math.sqrt(_second_moment(h, k11) * _second_moment(h, k22))
            assert abs(value - reference) < 1e-8 * scale, (name, k11, k12, k22)


def test_activation_without_closed_form_follows_the_same_path_through_a_model():
    """A lambda wrapping erf takes the expansion; the kernels match the closed form's."""
    x = np.random.default_rng(5).normal(size=(3, 4, 4, 1))

    def build(activation):
        inputs = keras.Input((4, 4, 1))
        h = ntk_layers.Conv2D(4, 3, strides=2, padding="same", w_std=1.5, b_std=0.2)(inputs)
        h = keras.layers.Activation(activation)(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, ntk_layers.Dense(1, w_std=1.5, b_std=0.2)(h))

    closed = _kernels(build(keras_ntk.activations.erf), x)
    expanded = _kernels(build(lambda t: keras.ops.erf(t) + 0.0), x)
    np.testing.assert_allclose(expanded, closed, rtol=1e-10)


# -- relu'(0) = 0 ------------------------------------------------------------------------------
def test_zero_input_with_zero_biases_gives_the_tensorflow_relu_derivative():
    """Issue 14: every pre-activation of x = 0 is exactly 0, relu'(0) = 0, so only the
    readout bias moves f(0): Theta(0, x) = 1 for every x, at every width."""
    rng = np.random.default_rng(6)
    x = np.concatenate([np.zeros((1, 5)), rng.normal(size=(3, 5))]).astype(np.float32)
    keras.utils.set_random_seed(1)
    model = keras_ntk.models.mlp(1024, 2, 1, parametrization="standard", b_std=0.0, input_shape=(5,))
    empirical = keras_ntk.empirical_ntk(model, x, output="trace").numpy()
    analytic = keras_ntk.infinite_width_kernel(x, depth=2, parametrization="standard", width=1024, b_std=0.0)
    limit = keras_ntk.infinite_width_kernel_fn(model)(x).numpy()
    np.testing.assert_allclose(empirical[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(analytic[0], 1.0, rtol=1e-12)
    # x with itself: acos near 1 turns rounding of the dot products into ~1e-9
    np.testing.assert_allclose(limit, analytic, rtol=1e-8)
    plain = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(64, activation="relu", kernel_initializer="random_normal"),
        keras.layers.Dense(1),
    ])  # Keras' default zero biases
    np.testing.assert_allclose(keras_ntk.infinite_width_kernel_fn(plain)(x).numpy()[0], 1.0, rtol=1e-12)


# -- the kernel function: tiles, memory, modes, TFP, errors ------------------------------------
def _pooled_cnn():
    inputs = keras.Input((5, 5, 2))
    h = ntk_layers.Conv2D(4, 3, padding="same", activation="relu", w_std=W, b_std=B)(inputs)
    h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, ntk_layers.Dense(3, w_std=W, b_std=B)(h))


def test_tiles_assemble_the_same_kernel_and_a_too_small_budget_fails_before_work(monkeypatch):
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=(7, 5, 5, 2)), rng.normal(size=(5, 5, 5, 2))
    model = _pooled_cnn()
    whole = keras_ntk.infinite_width_kernel_fn(model)
    one_pair = whole.program.tile_bytes(1, 1, ntk=True)
    tiled = keras_ntk.infinite_width_kernel_fn(model, memory_budget=8 * one_pair, progress=False)
    assert tiled.plan(7, 7) < 7
    for a, b in ((x1, None), (x1, x2)):
        np.testing.assert_allclose(tiled(a, b).numpy(), whole(a, b).numpy(), rtol=1e-12)
    assert tiled(x1).numpy() == pytest.approx(tiled(x1).numpy().T)
    monkeypatch.setattr(kernel_fn_module, "XLA_ENTRIES", 1)  # every tile compiled by XLA
    np.testing.assert_allclose(tiled(x1, x2).numpy(), whole(x1, x2).numpy(), rtol=1e-12)
    tiny = keras_ntk.infinite_width_kernel_fn(model, memory_budget=one_pair // 2)
    with pytest.raises(keras_ntk.NTKMemoryError, match="kernel entries alive"):
        tiny(x1)


def test_flatten_keeps_no_position_pairs_and_pooling_keeps_them():
    flat_cnn = keras_ntk.models.cnn(4, 2, 1, pooling="flatten", input_shape=(6, 6, 1))
    pooled = keras_ntk.models.cnn(4, 2, 1, pooling="global_average", input_shape=(6, 6, 1))
    flat_modes = {mode for _, _, mode, _ in keras_ntk.infinite_width_kernel_fn(flat_cnn).program.describe()}
    pooled_fn = keras_ntk.infinite_width_kernel_fn(pooled)
    assert "pairs" not in flat_modes and "diag" in flat_modes
    assert {mode for _, _, mode, _ in pooled_fn.program.describe()} == {"pairs", "flat"}
    # 2 convolutions and 2 activations on 36 x 36 position pairs, pooling, readout and its identity
    assert pooled_fn.total_entries == 4 * 36**2 + 3


def test_nested_sequential_and_tfp_kernel_of_a_model():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=6)
    body = keras.Sequential([ntk_layers.Dense(16, activation="erf", w_std=1.2, b_std=0.3)])
    inputs = keras.Input((3,))
    model = keras.Model(inputs, ntk_layers.Dense(1, w_std=1.2, b_std=0.3)(body(inputs)))
    expected = keras_ntk.infinite_width_kernel(x, depth=1, activation="erf", w_std=1.2, b_std=0.3).numpy()
    kernel = keras_ntk.InfiniteWidthKernel(model=model)
    np.testing.assert_allclose(kernel.matrix(x, x).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(kernel.apply(x, x).numpy(), np.diag(expected), rtol=1e-12)
    gp = tfp.distributions.GaussianProcess(kernel, index_points=x, observation_noise_variance=0.1, jitter=0.0)
    reference = stats.multivariate_normal(np.zeros(6), expected + 0.1 * np.eye(6)).logpdf(y)
    assert gp.log_prob(y).numpy() == pytest.approx(reference, rel=1e-10)
    with pytest.raises(ValueError, match="either depth"):
        keras_ntk.InfiniteWidthKernel(depth=2, model=model)


def _functional(build, shape=(6, 6, 2)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, build(inputs))


def _dense(units, **kwargs):
    return ntk_layers.Dense(units, **kwargs)


def _conv(**kwargs):
    return ntk_layers.Conv2D(3, 3, padding="same", **kwargs)


def _max_pooling(x):
    return keras.layers.MaxPooling2D()(_conv(activation="relu")(x))


def _correlated_sum(x):
    h = _conv()(x)
    return keras.layers.Add()([h, keras.layers.Identity()(h)])


def _activation_of_a_sum_with_an_activation(x):
    h = _conv()(x)
    return keras.layers.Activation("relu")(keras.layers.Add()([keras.layers.Activation("relu")(h), _conv()(h)]))


def _activation_of_the_input(x):
    return _conv()(keras.layers.Activation("tanh")(x))


def _layer_norm_after_relu(x):
    return keras.layers.LayerNormalization()(_conv(activation="relu")(x))


def _softmax(x):
    return keras.layers.Activation("softmax")(_conv()(x))


def _glorot_uniform_on_the_input(x):
    return keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(x)))


def _grouped_convolution(x):
    return keras.layers.Conv2D(4, 3, groups=2, kernel_initializer="random_normal")(_conv()(x))


BAD_MODELS = {
    _max_pooling: "MaxPooling2D.*Supported: keras_ntk.layers.Dense",
    _correlated_sum: "summands are correlated",
    _activation_of_a_sum_with_an_activation: "not a Gaussian pre-activation",
    _activation_of_the_input: "applied to the model input",
    _layer_norm_after_relu: "zero-mean inputs",
    _softmax: "not elementwise",
    _glorot_uniform_on_the_input: "not a Gaussian pre-activation",
    _grouped_convolution: "groups=2",
}


@pytest.mark.parametrize("build", list(BAD_MODELS), ids=lambda f: f.__name__.strip("_"))
def test_a_network_without_an_infinite_width_limit_is_a_clear_error(build):
    with pytest.raises(ValueError, match=BAD_MODELS[build]):
        keras_ntk.infinite_width_kernel_fn(_functional(build))


def test_shared_layers_bad_inputs_and_bad_get_are_errors():
    shared = _dense(4, activation="relu")
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="called more than once"):
        keras_ntk.infinite_width_kernel_fn(keras.Model(inputs, shared(shared(inputs))))
    kernel_fn = keras_ntk.infinite_width_kernel_fn(_functional(lambda x: _dense(1)(x), (4,)))
    with pytest.raises(ValueError, match=r"shape \(examples, 4\)"):
        kernel_fn(np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        kernel_fn(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="get must be"):
        kernel_fn(np.ones((2, 4)), get="gp")


# -- where the kernel function is used: keras-ntk demo and E5 ----------------------------------
@pytest.mark.slow
def test_demo_reports_a_wide_resnets_distance_to_its_limit():
    import io

    from sklearn.datasets import load_digits

    from keras_ntk import cli

    out = io.StringIO()
    distances = cli.demo([], [1], seeds=1, examples=4, out=out, wrn_widths=[1], wrn_examples=4)
    images = load_digits().data[:4]
    images = ((images - images.mean()) / images.std()).reshape(-1, 8, 8, 1).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras_ntk.models.wide_resnet(10, 1, 1, input_shape=(8, 8, 1))
    limit = keras_ntk.infinite_width_kernel_fn(model)(images).numpy()
    kernel = keras_ntk.empirical_ntk(model, images, output="trace", method="jacobian").numpy()
    expected = np.linalg.norm(kernel - limit) / np.linalg.norm(limit)
    assert distances["wrn"][0] == pytest.approx(expected, rel=1e-4)
    assert "WideResNet-10" in out.getvalue() and f"{distances['wrn'][0]:.4f}" in out.getvalue()


def test_e5_sweeps_wide_resnets_over_width_multipliers_at_one_depth():
    from keras_ntk.experiments import configs, e5_kernel_regime

    config = configs.override(
        configs.preset("E5", "quick"),
        {"architectures": "wrn", "wrn_widths": "1,3", "wrn_depth": "16", "parametrizations": "ntk", "seeds": "0"},
    )
    assert e5_kernel_regime.points(config) == [
        dict(architecture="wrn", parametrization="ntk", depth=16, width=w, seed=0) for w in (1, 3)
    ]
    assert "wrn" in configs.preset("E5", "paper").architectures
