"""The analytic infinite-width kernels against quadrature, Monte Carlo and brute force."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import special, stats

import keras_ntk
from references import brute_force_ntk, gaussian_expectation

# (k11, k12, k22): positive, negative and near-perfect correlation.
COVARIANCES = [(2.0, 0.7, 1.5), (1.0, -0.6, 0.8), (0.5, 0.49, 0.5)]


def _one_layer_expectations(activation, k11, k12, k22):
    """E[phi(u)phi(v)] and E[phi'(u)phi'(v)] read off the public kernel with depth 1.

    With w_std=1, b_std=0 and inputs whose dot products / d are (k11, k12, k22):
    nngp = E[phi phi] and ntk = k12 * E[phi' phi'] + E[phi phi].
    """
    chol = np.linalg.cholesky(np.array([[k11, k12], [k12, k22]]))
    x = chol * math.sqrt(2.0)  # rows x_i with <x_i, x_j> / 2 = K_ij
    kw = dict(depth=1, activation=activation, w_std=1.0, b_std=0.0)
    nngp = keras_ntk.infinite_width_kernel(x, kind="nngp", **kw).numpy()
    ntk = keras_ntk.infinite_width_kernel(x, kind="ntk", **kw).numpy()
    return nngp[0, 1], (ntk[0, 1] - nngp[0, 1]) / k12


@pytest.mark.parametrize("k11,k12,k22", COVARIANCES)
def test_relu_closed_form_matches_quadrature(k11, k12, k22):
    e_phi, e_dphi = _one_layer_expectations("relu", k11, k12, k22)
    assert e_phi == pytest.approx(gaussian_expectation(lambda u, v: u * v, k11, k12, k22, 0.0), rel=1e-6)
    assert e_dphi == pytest.approx(gaussian_expectation(lambda u, v: 1.0, k11, k12, k22, 0.0), rel=1e-6)


@pytest.mark.parametrize("k11,k12,k22", COVARIANCES)
def test_erf_closed_form_matches_quadrature(k11, k12, k22):
    e_phi, e_dphi = _one_layer_expectations("erf", k11, k12, k22)

    def derf(t):
        return 2 / math.sqrt(math.pi) * np.exp(-t * t)

    assert e_phi == pytest.approx(
        gaussian_expectation(lambda u, v: special.erf(u) * special.erf(v), k11, k12, k22), rel=1e-6
    )
    assert e_dphi == pytest.approx(
        gaussian_expectation(lambda u, v: derf(u) * derf(v), k11, k12, k22), rel=1e-6
    )


def test_identity_network_kernel_is_linear_kernel():
    x = np.random.default_rng(0).normal(size=(5, 3))
    w2, b2, depth = 1.7**2, 0.3**2, 3
    linear = w2 * x @ x.T / 3 + b2
    nngp, ntk = linear, linear
    for _ in range(depth):
        nngp = w2 * nngp + b2
        ntk = ntk * w2 + nngp
    kw = dict(depth=depth, activation="identity", w_std=1.7, b_std=0.3)
    np.testing.assert_allclose(keras_ntk.infinite_width_kernel(x, kind="nngp", **kw), nngp, rtol=1e-12)
    np.testing.assert_allclose(keras_ntk.infinite_width_kernel(x, kind="ntk", **kw), ntk, rtol=1e-12)


def _output_samples(parametrization, x, *, width, depth, outputs, seeds, activation):
    """Outputs of `seeds` independently initialized mlps, shape (seeds * outputs, N)."""
    samples = []
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        model = keras_ntk.models.mlp(
            width,
            depth,
            outputs,
            activation=activation,
            parametrization=parametrization,
            input_shape=x.shape[1:],
        )
        samples.append(model(x).numpy().T)
    return np.concatenate(samples).astype(np.float64)


def _assert_covariance_close(samples, reference):
    """|empirical - analytic| within 5 standard errors plus 3% finite-width bias.

    The standard error of a Gaussian second moment is sqrt((K_ii K_jj + K_ij^2) / n).
    """
    n = samples.shape[0]
    empirical = samples.T @ samples / n
    scale = np.sqrt(np.outer(np.diag(reference), np.diag(reference)))
    tolerance = 5 * np.sqrt((scale**2 + reference**2) / n) + 0.03 * scale
    np.testing.assert_array_less(np.abs(empirical - reference), tolerance)


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_forward_variance_at_init_matches_nngp_diagonal(parametrization, activation):
    x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    samples = _output_samples(
        parametrization, x, width=512, depth=2, outputs=32, seeds=40, activation=activation
    )
    nngp = keras_ntk.infinite_width_kernel(x, depth=2, activation=activation, kind="nngp").numpy()
    empirical_variance = np.mean(samples**2, axis=0)
    standard_error = np.diag(nngp) * math.sqrt(2 / samples.shape[0])
    assert np.all(np.abs(empirical_variance - np.diag(nngp)) < 5 * standard_error + 0.03 * np.diag(nngp))


def test_nngp_matches_monte_carlo_output_covariance():
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    samples = _output_samples("ntk", x, width=512, depth=3, outputs=32, seeds=60, activation="relu")
    nngp = keras_ntk.infinite_width_kernel(x, depth=3, kind="nngp").numpy()
    _assert_covariance_close(samples, nngp)


@pytest.mark.parametrize("depth", [1, 2])
def test_mean_empirical_ntk_converges_to_analytic_ntk_with_width(depth):
    """Relative error of the seed-averaged brute-force NTK falls as width grows 4x steps."""
    x = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32)
    analytic = keras_ntk.infinite_width_kernel(x, depth=depth).numpy()
    errors = []
    for width in (16, 64, 256, 1024):
        kernels = []
        for seed in range(4):
            keras.utils.set_random_seed(100 + seed)
            model = keras_ntk.models.mlp(width, depth, 1, input_shape=(5,))
            kernels.append(brute_force_ntk(model, x)[:, :, 0, 0])
        mean = np.mean(kernels, axis=0)
        errors.append(np.linalg.norm(mean - analytic) / np.linalg.norm(analytic))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05, errors
    assert errors[0] / errors[-1] > 4, errors  # ~1/sqrt(width): 64x width -> ~8x


def test_tfp_kernel_matches_function_and_drives_a_gaussian_process():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 3))
    y = rng.normal(size=7)
    kernel = keras_ntk.InfiniteWidthKernel(depth=2, activation="erf", w_std=1.3, b_std=0.2)
    expected = keras_ntk.infinite_width_kernel(x, depth=2, activation="erf", w_std=1.3, b_std=0.2).numpy()
    np.testing.assert_allclose(kernel.matrix(x, x).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(kernel.apply(x, x).numpy(), np.diag(expected), rtol=1e-12)
    gp = tfp.distributions.GaussianProcess(kernel, index_points=x, observation_noise_variance=0.1, jitter=0.0)
    reference = stats.multivariate_normal(np.zeros(7), expected + 0.1 * np.eye(7)).logpdf(y)
    assert gp.log_prob(y).numpy() == pytest.approx(reference, rel=1e-10)


def test_kernel_of_x1_alone_equals_kernel_with_itself():
    x = np.random.default_rng(5).normal(size=(4, 2, 3))
    np.testing.assert_array_equal(
        keras_ntk.infinite_width_kernel(x, depth=2), keras_ntk.infinite_width_kernel(x, x, depth=2)
    )
    assert keras_ntk.infinite_width_kernel(x, depth=2).dtype == tf.float64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=2, activation="softplus"), "activation"),
        (dict(depth=-1), "depth"),
        (dict(depth=2, kind="gp"), "kind"),
        (dict(depth=2, w_std=0.0), "w_std"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ntk.infinite_width_kernel(np.ones((2, 3)), **kwargs)


def test_bad_input_shapes_raise_value_error():
    with pytest.raises(ValueError, match="examples, features"):
        keras_ntk.infinite_width_kernel(np.ones(3), depth=1)
    with pytest.raises(ValueError, match="same number of features"):
        keras_ntk.infinite_width_kernel(np.ones((2, 3)), np.ones((2, 4)), depth=1)


def _mean_empirical_trace_ntk(build, x, seeds):
    kernels = []
    for seed in range(seeds):
        keras.utils.set_random_seed(200 + seed)
        kernels.append(keras_ntk.empirical_ntk(build(), x, output="trace").numpy())
    return np.mean(kernels, axis=0)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_standard_parametrization_ntk_is_the_limit_of_the_empirical_ntk(activation):
    """The width-dependent standard-parametrization limit: seed-averaged error falls ~1/width."""
    x = np.random.default_rng(6).normal(size=(6, 5)).astype(np.float32)
    errors = []
    for width in (16, 128, 1024):
        analytic = keras_ntk.infinite_width_kernel(
            x, depth=2, activation=activation, parametrization="standard", width=width
        ).numpy()
        mean = _mean_empirical_trace_ntk(
            lambda: keras_ntk.models.mlp(
                width, 2, 1, activation=activation, parametrization="standard", input_shape=(5,)
            ),
            x,
            seeds=4,
        )
        errors.append(np.linalg.norm(mean - analytic) / np.linalg.norm(analytic))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05, errors


@pytest.mark.parametrize("pooling", ["flatten", "global_average"])
def test_cnn_kernel_with_1x1_convolutions_is_the_mlp_kernel_of_the_pixels(pooling):
    """1x1 convolutions act on each pixel as an MLP: the CNN kernel averages the MLP
    kernel of the pixels over positions p = q (flatten) or over all pairs (p, q)."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(2, 4, 5, 2))
    kw = dict(depth=3, activation="erf", w_std=1.2, b_std=0.3)
    pixel_kernel = keras_ntk.infinite_width_kernel(
        a.reshape(-1, 2), b.reshape(-1, 2), **kw
    ).numpy().reshape(3, 4, 5, 2, 4, 5)
    if pooling == "flatten":
        expected = np.einsum("nhwmhw->nmhw", pixel_kernel).mean(axis=(2, 3))
    else:
        expected = pixel_kernel.mean(axis=(1, 2, 4, 5))
    cnn = keras_ntk.infinite_width_cnn_kernel(a, b, kernel_size=1, pooling=pooling, **kw).numpy()
    np.testing.assert_allclose(cnn, expected, rtol=1e-12)


# 7-9 s a case: `make test` keeps ntk with flatten, `make test-slow` runs the rest.
@pytest.mark.parametrize(
    "parametrization,pooling",
    [("ntk", "flatten")]
    + [pytest.param(p, q, marks=pytest.mark.slow)
       for p, q in (("ntk", "global_average"), ("standard", "flatten"), ("standard", "global_average"))],
)
def test_mean_empirical_cnn_ntk_converges_to_analytic_ntk_with_width(pooling, parametrization):
    x = np.random.default_rng(8).normal(size=(4, 5, 5, 2)).astype(np.float32)
    errors = []
    for width in (8, 64, 512):
        analytic = keras_ntk.infinite_width_cnn_kernel(
            x, depth=2, pooling=pooling, parametrization=parametrization, width=width
        ).numpy()
        mean = _mean_empirical_trace_ntk(
            lambda: keras_ntk.models.cnn(
                width, 2, 1, pooling=pooling, parametrization=parametrization, input_shape=x.shape[1:]
            ),
            x,
            seeds=3,
        )
        errors.append(np.linalg.norm(mean - analytic) / np.linalg.norm(analytic))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05, errors


def test_cnn_nngp_matches_monte_carlo_output_covariance():
    x = np.random.default_rng(9).normal(size=(3, 5, 5, 2)).astype(np.float32)
    samples = []
    for seed in range(40):
        keras.utils.set_random_seed(seed)
        model = keras_ntk.models.cnn(64, 2, 16, input_shape=x.shape[1:])
        samples.append(model(x).numpy().T)
    nngp = keras_ntk.infinite_width_cnn_kernel(x, depth=2, kind="nngp").numpy()
    _assert_covariance_close(np.concatenate(samples).astype(np.float64), nngp)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=0), "at least one convolution"),
        (dict(depth=2, kernel_size=2), "kernel_size"),
        (dict(depth=2, pooling="max"), "pooling"),
        (dict(depth=2, parametrization="standard"), "width"),
    ],
)
def test_bad_cnn_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ntk.infinite_width_cnn_kernel(np.ones((2, 4, 4, 1)), **kwargs)
    with pytest.raises(ValueError, match="height, width, channels"):
        keras_ntk.infinite_width_cnn_kernel(np.ones((2, 16)), depth=1)
