"""NTKGP and gradient-flow dynamics against dense numpy / scipy references.

References: np.linalg.solve / inv / pinv posteriors, scipy.stats.multivariate_normal
log densities, scipy.linalg.expm, explicit Euler integration of the flow ODE, and
brute-force tape.jacobian NTKs (tests/references.py).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow_probability as tfp
from scipy import linalg, stats

import keras_ntk
from keras_ntk.predictive import numerics
from keras_ntk.predictive.dynamics import gradient_descent_mse, gradient_descent_mse_ensemble
from keras_ntk.predictive.gp import NTKGP
from references import brute_force_ntk, gp_posterior_variance, relu_mlp_ntk

tfd = tfp.distributions
TOL = dict(rtol=1e-6, atol=1e-6)


def _random_psd(rng, size, floor=0.05):
    a = rng.normal(size=(size, size))
    matrix = a @ a.T / size + floor * np.eye(size)
    return matrix / np.linalg.eigvalsh(matrix)[-1]


class IndexKernel:
    """A fixed random PSD kernel: inputs (n, 1) hold row indices into `matrix`.

    matrix (S, S) gives k(x1, x2) (n1, n2); matrix (S K, S K) in [s, k] order gives
    the full kernel (n1, n2, K, K).
    """

    def __init__(self, matrix, num_outputs=None):
        self.matrix = matrix
        if num_outputs is not None:
            s = matrix.shape[0] // num_outputs
            blocks = matrix.reshape(s, num_outputs, s, num_outputs)
            self.matrix = blocks.transpose(0, 2, 1, 3)

    def __call__(self, x1, x2):
        i1, i2 = np.asarray(x1)[:, 0].astype(int), np.asarray(x2)[:, 0].astype(int)
        return self.matrix[i1][:, i2]


def _indices(values):
    return np.asarray(values, dtype=np.float64)[:, None]


def _dense_posterior(k_train, k_cross, k_test, residual, m_test, noise):
    """Posterior mean and covariance by np.linalg.solve."""
    a = k_train + noise * np.eye(k_train.shape[0])
    mean = m_test + k_cross @ np.linalg.solve(a, residual)
    cov = k_test - k_cross @ np.linalg.solve(a, k_cross.T)
    return mean, cov


def _flat(kernel):
    n, m, k, _ = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(n * k, m * k)


def test_independent_posterior_equals_dense_formulas():
    rng = np.random.default_rng(0)
    n, m, k, noise = 7, 5, 3, 0.3
    kernel = IndexKernel(_random_psd(rng, n + m))
    x, x_test = _indices(range(n)), _indices(range(n, n + m))
    prior = rng.normal(size=(n + m, k))
    mean_fn = lambda z: prior[np.asarray(z)[:, 0].astype(int)]  # noqa: E731
    y = rng.normal(size=(n, k))

    gp = NTKGP(kernel, x, y, noise, mean_fn=mean_fn)
    mean, cov = _dense_posterior(
        kernel(x, x), kernel(x_test, x), kernel(x_test, x_test), y - prior[:n], prior[n:], noise
    )
    marginal = gp.predict(x_test)
    assert isinstance(marginal, tfd.Independent) and marginal.dtype.name == "float64"
    assert marginal.event_shape == (m, k)
    np.testing.assert_allclose(marginal.mean(), mean, **TOL)
    np.testing.assert_allclose(marginal.variance(), np.tile(np.diag(cov)[:, None], (1, k)), **TOL)
    noisy = gp.predict(x_test, observation_noise=True)
    np.testing.assert_allclose(noisy.variance(), marginal.variance() + noise, **TOL)

    joint = gp.predict(x_test, joint=True)
    assert isinstance(joint, tfd.MultivariateNormalTriL) and joint.event_shape == (m * k,)
    np.testing.assert_allclose(joint.mean(), mean.ravel(), **TOL)
    np.testing.assert_allclose(joint.covariance(), np.kron(cov, np.eye(k)), **TOL)
    assert gp.predictive_jitter == 0.0
    noisy_joint = gp.predict(x_test, joint=True, observation_noise=True)
    np.testing.assert_allclose(
        noisy_joint.covariance(), np.kron(cov, np.eye(k)) + noise * np.eye(m * k), **TOL
    )

    gram = kernel(x, x) + noise * np.eye(n)
    expected = sum(stats.multivariate_normal.logpdf(y[:, j], prior[:n, j], gram) for j in range(k))
    np.testing.assert_allclose(gp.log_marginal_likelihood(), expected, **TOL)
    assert gp.jitter == 0.0
    np.testing.assert_allclose(gp.condition_number, np.linalg.cond(gram), rtol=1e-6)


def test_full_output_posterior_equals_dense_formulas():
    rng = np.random.default_rng(1)
    n, m, k, noise = 6, 4, 2, 0.2
    kernel = IndexKernel(_random_psd(rng, (n + m) * k), num_outputs=k)
    x, x_test = _indices(range(n)), _indices(range(n, n + m))
    y = rng.normal(size=(n, k))

    gp = NTKGP(kernel, x, y, noise, output="full")
    mean, cov = _dense_posterior(
        _flat(kernel(x, x)),
        _flat(kernel(x_test, x)),
        _flat(kernel(x_test, x_test)),
        y.ravel(),
        np.zeros(m * k),
        noise,
    )
    np.testing.assert_allclose(gp.predict(x_test).mean(), mean.reshape(m, k), **TOL)
    np.testing.assert_allclose(gp.predict(x_test).variance(), np.diag(cov).reshape(m, k), **TOL)
    joint = gp.predict(x_test, joint=True, observation_noise=True)
    np.testing.assert_allclose(joint.mean(), mean, **TOL)
    np.testing.assert_allclose(joint.covariance(), cov + noise * np.eye(m * k), **TOL)
    expected = stats.multivariate_normal.logpdf(
        y.ravel(), np.zeros(n * k), _flat(kernel(x, x)) + noise * np.eye(n * k)
    )
    np.testing.assert_allclose(gp.log_marginal_likelihood(), expected, **TOL)


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_infinite_width_posterior_equals_dense_formulas(kind):
    rng = np.random.default_rng(2)
    x, x_test = rng.normal(size=(8, 3)), rng.normal(size=(5, 3))
    y = np.sin(x.sum(axis=1))
    kernel = functools.partial(keras_ntk.infinite_width_kernel, depth=2, kind=kind)
    gp = NTKGP.infinite_width(x, y, 0.05, depth=2, kind=kind)
    k_train, k_cross = kernel(x).numpy(), kernel(x_test, x).numpy()
    mean, cov = _dense_posterior(k_train, k_cross, kernel(x_test).numpy(), y, 0.0, 0.05)
    marginal = gp.predict(x_test)
    assert marginal.event_shape == (5, 1)
    np.testing.assert_allclose(marginal.mean()[:, 0], mean, **TOL)
    np.testing.assert_allclose(marginal.variance()[:, 0], np.diag(cov), **TOL)
    np.testing.assert_allclose(gp.predict(x_test, joint=True).covariance(), cov, **TOL)
    expected = stats.multivariate_normal.logpdf(y, np.zeros(8), k_train + 0.05 * np.eye(8))
    np.testing.assert_allclose(gp.log_marginal_likelihood(), expected, **TOL)


def _gap_data(seed=0, n=100, gap=(-0.2, 0.4), noise_std=0.1):
    """1-D regression data on [-1, 1] without points in `gap` (as in E1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1 - (gap[1] - gap[0]), size=n)
    x = np.where(x >= gap[0], x + (gap[1] - gap[0]), x)
    y = np.sin(1.5 * np.pi * x) + 0.5 * np.sin(5 * np.pi * x) * x + noise_std * rng.normal(size=n)
    return x[:, None], y


def test_standard_parametrization_posterior_variance_on_a_fine_grid():
    """The standard-parametrization NTK-GP at width 1024: kernel values up to ~6e3,
    posterior variances down to ~5e-3 (a cancellation of ~1e6 in k** - k*X K^-1 kX*).

    Against an independent numpy reference in extended precision (kernel and
    Cholesky, references.relu_mlp_ntk / gp_posterior_variance), the float64
    variance on a 4001-point grid agrees to 1e-4 relative: float64 kernels are
    accurate to ~3e-11 relative (arccos near angle 0 loses digits for nearby
    inputs), times the ~1e6 cancellation gives ~3e-5. The difference has no
    grid-to-grid jumps, so no numerical noise makes the band jagged.

    What does make it look jagged is the kernel: the ReLU NTK has a cusp on the
    diagonal, Theta(x, x') ~ Theta(x, x) - c |x - x'|, so the posterior variance
    falls to about s^2 at every training input and rises between them in arches
    of height ~ c * gap. In standard parametrization c grows with the width (the
    arch per unit gap scales by about 4 from width 256 to 1024) while in NTK
    parametrization it does not.
    """
    x, y = _gap_data()
    noise, width = 0.01, 1024
    grid = np.linspace(-1.2, 1.2, 4001)[:, None]
    common = dict(depth=2, w_std=2**0.5, b_std=1.0)
    gp = NTKGP.infinite_width(x, y, noise, parametrization="standard", width=width, **common)
    assert gp.jitter == 0.0
    variance = gp.predict(grid).variance().numpy()[:, 0]
    ref_args = dict(parametrization="standard", width=width, **common)
    reference = gp_posterior_variance(
        relu_mlp_ntk(x, x, **ref_args), relu_mlp_ntk(grid, x, **ref_args), relu_mlp_ntk(grid, None, **ref_args), noise
    ).astype(np.float64)
    assert reference.min() > 0.004 and relu_mlp_ntk(grid, None, **ref_args).max() > 4e3  # the scale described
    np.testing.assert_allclose(variance, reference, rtol=1e-4)
    assert np.abs(np.diff(variance - reference)).max() < 1e-6 * reference.max()

    xs = np.sort(x[:, 0])
    at_data = gp.predict(xs[:, None]).variance().numpy()[:, 0]
    assert at_data.max() <= noise

    def arch_per_gap(gp):
        v = gp.predict(grid).variance().numpy()[:, 0]
        heights = [
            v[(grid[:, 0] > a) & (grid[:, 0] < b)].max() / (b - a)
            for a, b in zip(xs[:-1], xs[1:])
            if 0.005 < b - a < 0.1  # neighbours inside the data, resolved by the grid
        ]
        return np.median(heights)

    narrow = NTKGP.infinite_width(x, y, noise, parametrization="standard", width=256, **common)
    assert 3.5 < arch_per_gap(gp) / arch_per_gap(narrow) < 4.1
    assert arch_per_gap(gp) > 50 * arch_per_gap(NTKGP.infinite_width(x, y, noise, **common))


@pytest.fixture(scope="module")
def small_mlp():
    keras.utils.set_random_seed(3)
    model = keras_ntk.models.mlp(16, 2, 2, input_shape=(3,))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    x_test = rng.normal(size=(4, 3)).astype(np.float32)
    y = rng.normal(size=(6, 2))
    return model, x, x_test, y


@pytest.mark.parametrize("output", ["independent", "full"])
def test_empirical_ntk_posterior_equals_dense_formulas(small_mlp, output):
    model, x, x_test, y = small_mlp
    noise = 0.1
    gp = NTKGP.empirical(model, x, y, noise, output=output)
    theta = brute_force_ntk(model, np.concatenate([x, x_test]))
    f = model(np.concatenate([x, x_test])).numpy().astype(np.float64)
    n, m = len(x), len(x_test)
    if output == "independent":
        per_output = np.einsum("ijkk->ij", theta) / theta.shape[-1]
        blocks = per_output[:n, :n], per_output[n:, :n], per_output[n:, n:]
        residual, prior = y - f[:n], f[n:]
    else:
        blocks = _flat(theta[:n, :n]), _flat(theta[n:, :n]), _flat(theta[n:, n:])
        residual, prior = (y - f[:n]).ravel(), f[n:].ravel()
    mean, cov = _dense_posterior(*blocks, residual, prior, noise)
    if output == "full":
        mean, variance = mean.reshape(m, 2), np.diag(cov).reshape(m, 2)
    else:
        variance = np.tile(np.diag(cov)[:, None], (1, 2))
    marginal = gp.predict(x_test)
    np.testing.assert_allclose(marginal.mean(), mean, **TOL)
    np.testing.assert_allclose(marginal.variance(), variance, **TOL)

    # the GP keeps the weights it was built with
    before = marginal.mean().numpy()
    weights = model.get_weights()
    model.set_weights([w + 0.1 for w in weights])
    try:
        np.testing.assert_array_equal(gp.predict(x_test).mean(), before)
    finally:
        model.set_weights(weights)


def test_uncentered_empirical_joint_posterior_equals_dense_formulas(small_mlp):
    """center=False (zero prior mean), joint predictive, on keras_ntk.NTK's kernel."""
    model, x, x_test, y = small_mlp
    gp = NTKGP.empirical(model, x, y, 0.1, output="full", center=False)
    ntk = keras_ntk.NTK(model, output="full", dtype="float64")
    mean, cov = _dense_posterior(
        _flat(ntk(x, x).numpy()),
        _flat(ntk(x_test, x).numpy()),
        _flat(ntk(x_test, x_test).numpy()),
        y.ravel(),
        0.0,
        0.1,
    )
    joint = gp.predict(x_test, joint=True)
    np.testing.assert_allclose(joint.mean(), mean, **TOL)
    np.testing.assert_allclose(joint.covariance(), cov, **TOL)


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


GP_BAD_INPUTS = {
    "mismatched examples": (lambda k, x, y: NTKGP(k, x, y[:4], 0.1), "same number of examples"),
    "3-d targets": (lambda k, x, y: NTKGP(k, x, y[:, :, None], 0.1), r"\(N,\) or \(N, K\)"),
    "nan in y": (
        lambda k, x, y: NTKGP(k, x, _with(y, (2, 1), np.nan), 0.1),
        "y_train contains NaN",
    ),
    "inf in x": (
        lambda k, x, y: NTKGP(k, _with(x, (3, 0), np.inf), y, 0.1),
        "x_train contains NaN or Inf",
    ),
    "negative noise": (lambda k, x, y: NTKGP(k, x, y, -0.1), "noise_variance"),
    "nan noise": (lambda k, x, y: NTKGP(k, x, y, np.nan), "noise_variance"),
    "unknown output": (lambda k, x, y: NTKGP(k, x, y, 0.1, output="diagonal"), "output must be"),
    "per-output kernel as full": (
        lambda k, x, y: NTKGP(k, x, y, 0.1, output="full"),
        r"expected \(5, 5, 2, 2\)",
    ),
    "mean_fn shape": (
        lambda k, x, y: NTKGP(k, x, y, 0.1, mean_fn=lambda z: np.zeros((len(z), 3))),
        r"mean_fn returned shape \(5, 3\), expected \(5, 2\)",
    ),
    "test input shape": (
        lambda k, x, y: NTKGP(k, x, y, 0.1).predict(np.zeros((2, 2))),
        "like x_train",
    ),
    "depth": (lambda k, x, y: NTKGP.infinite_width(x, y, 0.1, depth=-1), "depth"),
}


@pytest.mark.parametrize("case", GP_BAD_INPUTS)
def test_bad_inputs_raise_value_error(case):
    make, message = GP_BAD_INPUTS[case]
    rng = np.random.default_rng(4)
    kernel = IndexKernel(_random_psd(rng, 6))
    with pytest.raises(ValueError, match=message):
        make(kernel, _indices(range(5)), rng.normal(size=(5, 2)))


def test_zero_noise_with_duplicated_inputs_factorizes_with_reported_jitter():
    x = np.random.default_rng(5).normal(size=(5, 3))
    x = np.concatenate([x, x[:2]])
    y = np.arange(7.0)
    gp = NTKGP.infinite_width(x, y, 0.0, depth=2)
    gram = keras_ntk.infinite_width_kernel(x, depth=2).numpy()
    scale = np.mean(np.diag(gram))
    assert scale * 1e-10 * 0.999 <= gp.jitter <= scale * 1e-2 * 1.001
    assert np.isfinite(gp.predict(x[:3]).mean().numpy()).all()
    assert NTKGP.infinite_width(x, y, 0.01, depth=2).jitter == 0.0


def test_kernel_that_is_not_psd_raises_factorization_error():
    kernel = IndexKernel(-np.eye(4))
    with pytest.raises(numerics.FactorizationError, match="jitter"):
        NTKGP(kernel, _indices(range(4)), np.ones(4), 0.0)


# -- gradient-descent dynamics -------------------------------------------------


def _split_kernel(rng, n, m):
    joint = _random_psd(rng, n + m)
    return joint[:n, :n], joint[n:, :n], joint


def test_gradient_flow_endpoints():
    rng = np.random.default_rng(6)
    n, m, k = 7, 4, 2
    theta, cross, _ = _split_kernel(rng, n, m)
    y, f0, f0_test = rng.normal(size=(n, k)), rng.normal(size=(n, k)), rng.normal(size=(m, k))
    predict = gradient_descent_mse(theta, y, learning_rate=0.5)
    assert predict.rank == n
    f_train, f_test = predict(0.0, f0, f0_test, cross)
    np.testing.assert_allclose(f_train, f0, **TOL)
    np.testing.assert_allclose(f_test, f0_test, **TOL)
    f_train, f_test = predict(np.inf, f0, f0_test, cross)
    np.testing.assert_allclose(f_train, y, **TOL)
    np.testing.assert_allclose(f_test, f0_test + cross @ np.linalg.solve(theta, y - f0), **TOL)
    f_train, no_test = predict(np.inf, f0)
    assert no_test is None
    np.testing.assert_allclose(f_train, y, **TOL)


def _euler(theta, cross, y, f0, f0_test, flow_time, steps):
    """Explicit Euler for df/ds = -Theta (f - y), df*/ds = -Theta_*X (f - y), s <= flow_time."""
    h = flow_time / steps
    f, f_test = f0.copy(), f0_test.copy()
    for _ in range(steps):
        r = f - y
        f, f_test = f - h * theta @ r, f_test - h * cross @ r
    return f, f_test


def test_gradient_flow_matches_euler_integration():
    rng = np.random.default_rng(7)
    n, m, k, eta, t = 6, 3, 2, 0.5, 3.0
    theta, cross, _ = _split_kernel(rng, n, m)
    y, f0, f0_test = rng.normal(size=(n, k)), rng.normal(size=(n, k)), rng.normal(size=(m, k))
    coarse = _euler(theta, cross, y, f0, f0_test, eta * t, 10_000)
    fine = _euler(theta, cross, y, f0, f0_test, eta * t, 20_000)
    richardson = [2 * b - a for a, b in zip(coarse, fine)]
    f_train, f_test = gradient_descent_mse(theta, y, learning_rate=eta)(t, f0, f0_test, cross)
    np.testing.assert_allclose(f_train, richardson[0], **TOL)
    np.testing.assert_allclose(f_test, richardson[1], **TOL)
    assert np.abs(f_train.numpy() - f0).max() > 0.1


def test_long_training_equals_the_ntk_gp_posterior_mean():
    rng = np.random.default_rng(8)
    n, m, k, reg = 6, 4, 2, 1e-2
    kernel = IndexKernel(_random_psd(rng, n + m))
    x, x_test = _indices(range(n)), _indices(range(n, n + m))
    f0_all = rng.normal(size=(n + m, k))
    y = rng.normal(size=(n, k))
    theta, cross = kernel(x, x), kernel(x_test, x)
    predict = gradient_descent_mse(theta, y, diag_reg=reg)
    numpy_mean = f0_all[n:] + cross @ np.linalg.solve(theta + reg * np.eye(n), y - f0_all[:n])
    gp = NTKGP(kernel, x, y, reg, mean_fn=lambda z: f0_all[np.asarray(z)[:, 0].astype(int)])
    gp_mean = gp.predict(x_test).mean()
    np.testing.assert_allclose(gp_mean, numpy_mean, **TOL)
    for t in (np.inf, 1e5):
        _, f_test = predict(t, f0_all[:n], f0_all[n:], cross)
        np.testing.assert_allclose(f_test, gp_mean, **TOL)


def test_gradient_flow_on_a_singular_ntk_uses_the_pseudo_inverse():
    rng = np.random.default_rng(9)
    kernel = IndexKernel(_random_psd(rng, 8))
    x, x_test = _indices([0, 1, 2, 3, 4, 0]), _indices([5, 6, 7])
    theta, cross = kernel(x, x), kernel(x_test, x)
    y, f0, f0_test = rng.normal(size=(6, 1)), rng.normal(size=(6,)), rng.normal(size=(3,))
    predict = gradient_descent_mse(theta, y)
    assert predict.rank == 5
    f_train, f_test = predict(np.inf, f0, f0_test, cross)
    pinv = np.linalg.pinv(theta)
    residual = f0[:, None] - y
    np.testing.assert_allclose(f_train, y + (np.eye(6) - theta @ pinv) @ residual, **TOL)
    np.testing.assert_allclose(f_test, f0_test[:, None] - cross @ pinv @ residual, **TOL)


GD_BAD_INPUTS = {
    "theta not square": (
        lambda th, c, y, p: gradient_descent_mse(th[:3], y),
        r"must have shape \(4, 4\)",
    ),
    "targets mismatch": (
        lambda th, c, y, p: gradient_descent_mse(th, y[:3]),
        r"must have shape \(3, 3\)",
    ),
    "zero learning rate": (
        lambda th, c, y, p: gradient_descent_mse(th, y, learning_rate=0.0),
        "learning_rate",
    ),
    "negative diag_reg": (
        lambda th, c, y, p: gradient_descent_mse(th, y, diag_reg=-1.0),
        "diag_reg",
    ),
    "nan theta": (
        lambda th, c, y, p: gradient_descent_mse(np.full_like(th, np.nan), y),
        "NaN",
    ),
    "negative t": (lambda th, c, y, p: p(-1.0, y), "t must be"),
    "nan t": (lambda th, c, y, p: p(np.nan, y), "t must be"),
    "fx_train_0 shape": (lambda th, c, y, p: p(1.0, y[:, :1]), "fx_train_0"),
    "fx_test_0 alone": (lambda th, c, y, p: p(1.0, y, np.zeros((2, 2))), "needs ntk_test_train"),
    "ntk_test_train shape": (
        lambda th, c, y, p: p(1.0, y, None, c[:, :3]),
        r"ntk_test_train must have shape \(M, 4\)",
    ),
}


@pytest.mark.parametrize("case", GD_BAD_INPUTS)
def test_gradient_flow_bad_inputs_raise_value_error(case):
    make, message = GD_BAD_INPUTS[case]
    rng = np.random.default_rng(10)
    theta, cross, _ = _split_kernel(rng, 4, 2)
    y = rng.normal(size=(4, 2))
    with pytest.raises(ValueError, match=message):
        make(theta, cross, y, gradient_descent_mse(theta, y))


def test_ensemble_bad_inputs_raise_value_error():
    x, y = np.zeros((3, 2)), np.zeros(3)
    ntk = functools.partial(keras_ntk.infinite_width_kernel, depth=1)
    with pytest.raises(ValueError, match="same number of examples"):
        gradient_descent_mse_ensemble(ntk, ntk, x, y[:2])
    with pytest.raises(ValueError, match="nngp must be a callable"):
        gradient_descent_mse_ensemble(ntk, None, x, y)
    with pytest.raises(ValueError, match="like x_train"):
        gradient_descent_mse_ensemble(ntk, ntk, x, y)(1.0, np.zeros((2, 3)))


# -- ensemble over initializations ------------------------------------------------


@pytest.fixture(scope="module")
def ensemble_problem():
    rng = np.random.default_rng(11)
    x, x_test = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    y = rng.normal(size=(6, 2))
    ntk = functools.partial(keras_ntk.infinite_width_kernel, depth=2, kind="ntk")
    nngp = functools.partial(keras_ntk.infinite_width_kernel, depth=2, kind="nngp")
    kernels = {
        name: (fn(x, x).numpy(), fn(x_test, x).numpy(), fn(x_test, x_test).numpy())
        for name, fn in (("ntk", ntk), ("nngp", nngp))
    }
    return gradient_descent_mse_ensemble(ntk, nngp, x, y, learning_rate=0.7), x_test, y, kernels


def _dense_ensemble(kernels, y, transfer_train):
    """Mean and covariance for T_t given as a dense (N, N) matrix."""
    theta_train, theta_cross, _ = kernels["ntk"]
    k_train, k_cross, k_test = kernels["nngp"]
    a = theta_cross @ transfer_train
    cov = k_test + a @ k_train @ a.T - a @ k_cross.T - k_cross @ a.T
    return a @ y, cov


@pytest.mark.parametrize("t", [0.0, 2.0, np.inf])
def test_ensemble_equals_dense_formulas(ensemble_problem, t):
    predict, x_test, y, kernels = ensemble_problem
    theta = kernels["ntk"][0]
    if t == 0.0:
        mean, cov = np.zeros((4, 2)), kernels["nngp"][2]
    elif np.isinf(t):
        mean, cov = _dense_ensemble(kernels, y, np.linalg.inv(theta))
    else:
        transfer = np.linalg.inv(theta) @ (np.eye(6) - linalg.expm(-0.7 * t * theta))
        mean, cov = _dense_ensemble(kernels, y, transfer)
    marginal = predict(t, x_test)
    np.testing.assert_allclose(marginal.mean(), mean, **TOL)
    np.testing.assert_allclose(marginal.variance(), np.tile(np.diag(cov)[:, None], (1, 2)), **TOL)
    joint = predict(t, x_test, joint=True)
    np.testing.assert_allclose(joint.mean(), mean.ravel(), **TOL)
    np.testing.assert_allclose(joint.covariance(), np.kron(cov, np.eye(2)), **TOL)
    assert predict.predictive_jitter == 0.0
