"""Closed-form gradient-flow dynamics of squared-loss training in the kernel regime.

Loss L(f) = 0.5 * sum_{n, k} (f_k(x_n) - y_nk)^2 (a sum: neural-tangents divides
it by y.size), gradient descent with learning rate eta in continuous time, t in
steps (flow time eta t). With a constant NTK (linearized or infinite-width network),
Theta = Theta(X, X) + diag_reg I (N, N) shared by K independent outputs:

    f_t(X)  = y + exp(-eta Theta t) (f_0(X) - y),
    f_t(x*) = f_0(x*) + Theta(x*, X) T_t (y - f_0(X)),   T_t = Theta^-1 (I - exp(-eta Theta t)).

Both run in the float64 eigenbasis Theta = V diag(lambda) V^T: exp(-eta Theta t) =
V diag(exp(-eta lambda t)) V^T and T_t = V diag(g) V^T with
g = -expm1(-eta lambda t) / lambda (-> eta t as lambda -> 0; 1 / lambda at t = inf).
Eigenvalues <= N * eps * max|lambda| are null directions: the flow does not move f
along them and they add nothing to test predictions. That is exact when
Theta(x*, X) lies in the range of Theta (true for a positive semi-definite
kernel) and makes t = inf the pseudo-inverse solution; `rank` reports how many
directions are not null.

Ensemble over random initializations, f_0 ~ GP(0, K) with K the NNGP kernel:

    mean_t(x)    = Theta(x, X) T_t y,
    cov_t(x, x') = K(x, x') + Theta(x, X) T_t K(X, X) T_t Theta(X, x')
                   - Theta(x, X) T_t K(X, x') - K(x, X) T_t Theta(X, x').

At t = 0 this is the NNGP prior; diag_reg enters Theta only.
"""

import math

import numpy as np
import tensorflow as tf

from keras_ntk.predictive import gp, numerics


def _check_time(t):
    try:
        time = float(t)
    except (TypeError, ValueError):
        time = math.nan
    if isinstance(t, bool) or not time >= 0:
        raise ValueError(f"t must be a number >= 0 or np.inf (training steps), got {t!r}.")
    return time


def _check_learning_rate(learning_rate):
    rate = gp.check_nonnegative(learning_rate, "learning_rate")
    if rate == 0:
        raise ValueError("learning_rate must be > 0, got 0.")
    return rate


def _as_matrix(value, shape, what):
    """value as a finite float64 tensor of `shape` (None matches any size)."""
    matrix = tf.constant(numerics.check_finite(value, what), tf.float64)
    if matrix.shape.rank != len(shape) or any(
        e is not None and e != s for e, s in zip(shape, matrix.shape)
    ):
        expected = ", ".join("M" if e is None else str(e) for e in shape)
        raise ValueError(f"{what} must have shape ({expected}), got {tuple(matrix.shape)}.")
    return matrix


def _as_outputs(value, num_examples, num_outputs, what):
    """Network outputs (n, K), or (n,) when K = 1, as a float64 (n, K) tensor."""
    array = np.asarray(value)
    if array.ndim == 1 and num_outputs == 1:
        array = array[:, None]
    return _as_matrix(array, (num_examples, num_outputs), what)


class _FlowBasis:
    """Eigenbasis of Theta(X, X) + diag_reg I and the gradient-flow coefficients in it."""

    def __init__(self, ntk_train_train, learning_rate, diag_reg):
        self.learning_rate = _check_learning_rate(learning_rate)
        n = ntk_train_train.shape[0]
        theta = 0.5 * (ntk_train_train + tf.transpose(ntk_train_train))
        theta += gp.check_nonnegative(diag_reg, "diag_reg") * tf.eye(n, dtype=tf.float64)
        self.eigenvalues, self.eigenvectors = tf.linalg.eigh(theta)
        tolerance = n * np.finfo(np.float64).eps * float(tf.reduce_max(tf.abs(self.eigenvalues)))
        self.active = self.eigenvalues > tolerance
        self.rank = int(tf.reduce_sum(tf.cast(self.active, tf.int32)))

    def coefficients(self, t):
        """(exp(-eta lambda t), g) per eigenvalue, (N,) each; null directions (1, 0)."""
        lam = tf.where(self.active, self.eigenvalues, tf.ones_like(self.eigenvalues))
        if math.isinf(t):
            decay, gain = tf.zeros_like(lam), 1.0 / lam
        else:
            flow = self.learning_rate * t * lam
            decay, gain = tf.exp(-flow), -tf.math.expm1(-flow) / lam
        return tf.where(self.active, decay, 1.0), tf.where(self.active, gain, 0.0)

    def apply(self, diagonal, rhs):
        """V diag(diagonal) V^T rhs for rhs (N, ...)."""
        v = self.eigenvectors
        return tf.matmul(v, diagonal[:, None] * tf.matmul(v, rhs, transpose_a=True))

    def transfer(self, ntk_test_train, t):
        """Theta(x*, X) T_t, (M, N)."""
        _, gain = self.coefficients(t)
        return tf.transpose(self.apply(gain, tf.transpose(ntk_test_train)))


class GradientDescentMSE:
    """Predictions of gradient flow on the squared loss: the result of `gradient_descent_mse`.

    Call it as predict(t, fx_train_0, fx_test_0=None, ntk_test_train=None):
      t: training time in steps (flow time learning_rate * t), a number >= 0 or np.inf.
      fx_train_0: (N, K) (or (N,) when K = 1) outputs at t = 0 on the training inputs.
      fx_test_0: (M, K) outputs at t = 0 on test inputs; None means zeros.
      ntk_test_train: (M, N) Theta(x*, X); None skips test predictions.
    It returns (f_train_t (N, K), f_test_t (M, K) or None), float64 tf.Tensors.

    Attributes:
      eigenvalues: (N,) float64 eigenvalues of Theta(X, X) + diag_reg I, ascending.
      rank: number of eigen-directions that are not null (see module docstring).
    """

    def __init__(self, ntk_train_train, y_train, learning_rate=1.0, diag_reg=0.0):
        self.y_train = gp.check_targets(y_train)
        self._n, self._k = self.y_train.shape
        theta = _as_matrix(ntk_train_train, (self._n, self._n), "ntk_train_train")
        self._basis = _FlowBasis(theta, learning_rate, diag_reg)
        self.eigenvalues = self._basis.eigenvalues
        self.rank = self._basis.rank

    def __call__(self, t, fx_train_0, fx_test_0=None, ntk_test_train=None):
        t = _check_time(t)
        f_train_0 = _as_outputs(fx_train_0, self._n, self._k, "fx_train_0")
        decay, _ = self._basis.coefficients(t)
        f_train = self.y_train + self._basis.apply(decay, f_train_0 - self.y_train)
        if ntk_test_train is None:
            if fx_test_0 is not None:
                raise ValueError("fx_test_0 needs ntk_test_train (M, N) to predict test outputs.")
            return f_train, None
        cross = _as_matrix(ntk_test_train, (None, self._n), "ntk_test_train")
        m = cross.shape[0]
        f_test_0 = (
            tf.zeros((m, self._k), tf.float64)
            if fx_test_0 is None
            else _as_outputs(fx_test_0, m, self._k, "fx_test_0")
        )
        f_test = f_test_0 + tf.matmul(self._basis.transfer(cross, t), self.y_train - f_train_0)
        return f_train, f_test


def gradient_descent_mse(ntk_train_train, y_train, learning_rate=1.0, diag_reg=0.0):
    """Closed-form gradient flow on 0.5 * ||f(X) - y||^2 (see the module docstring).

    Args:
      ntk_train_train: (N, N) NTK Theta(X, X), shared by the K outputs.
      y_train: (N, K) or (N,) targets (1-D means K = 1).
      learning_rate: eta > 0.
      diag_reg: >= 0, added to the diagonal of Theta (absolute, unlike
        neural-tangents' default relative scale).
    Returns:
      a `GradientDescentMSE` predict(t, fx_train_0, fx_test_0=None, ntk_test_train=None)
      -> (f_train_t (N, K), f_test_t (M, K) or None).
    """
    return GradientDescentMSE(ntk_train_train, y_train, learning_rate, diag_reg)


class GradientDescentMSEEnsemble:
    """Distribution over initializations of the network trained by gradient flow:
    the result of `gradient_descent_mse_ensemble`.

    Call it as predict(t, x_test, joint=False) with t a number >= 0 or np.inf
    (steps) and x_test (M, ...) shaped like x_train. It returns, in float64,
    joint=False: tfd.Independent(tfd.Normal) with event (M, K), mean() and
    variance() (M, K); joint=True: tfd.MultivariateNormalTriL over the flattened
    (M K,) event in [m, k] order with covariance kron(cov_t, I_K), whose
    factorization jitter is stored in `predictive_jitter`.

    Attributes:
      eigenvalues, rank: as `GradientDescentMSE`.
      predictive_jitter: jitter of the latest joint=True call (None before one).
    """

    def __init__(self, ntk, nngp, x_train, y_train, learning_rate=1.0, diag_reg=0.0):
        for kernel, what in ((ntk, "ntk"), (nngp, "nngp")):
            if not callable(kernel):
                raise ValueError(
                    f"{what} must be a callable kernel(x1, x2) -> (N, M), got {kernel!r}."
                )
        self.ntk, self.nngp = ntk, nngp
        self.x_train = gp.check_examples(x_train, "x_train")
        self.y_train = gp.check_targets(y_train)
        if self.x_train.shape[0] != self.y_train.shape[0]:
            raise ValueError(
                f"x_train and y_train must have the same number of examples, got "
                f"{self.x_train.shape[0]} and {self.y_train.shape[0]}."
            )
        theta = gp.evaluate_kernel(ntk, self.x_train, self.x_train, what="ntk")
        self._nngp_train = gp.evaluate_kernel(nngp, self.x_train, self.x_train, what="nngp")
        self._basis = _FlowBasis(theta, learning_rate, diag_reg)
        self.eigenvalues = self._basis.eigenvalues
        self.rank = self._basis.rank
        self.predictive_jitter = None

    def __call__(self, t, x_test, joint=False):
        t = _check_time(t)
        x = gp.check_examples(x_test, "x_test")
        if x.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(
                f"x_test must have shape (examples, {', '.join(map(str, self.x_train.shape[1:]))}) "
                f"like x_train, got {x.shape}."
            )
        ntk_cross = gp.evaluate_kernel(self.ntk, x, self.x_train, what="ntk")
        transfer = self._basis.transfer(ntk_cross, t)
        nngp_cross = gp.evaluate_kernel(self.nngp, x, self.x_train, what="nngp")
        mean = tf.matmul(transfer, self.y_train)
        propagated = tf.matmul(transfer, self._nngp_train)
        if joint:
            mixed = tf.matmul(transfer, nngp_cross, transpose_b=True)
            covariance = (
                gp.evaluate_kernel(self.nngp, x, x, what="nngp")
                + tf.matmul(propagated, transfer, transpose_b=True)
                - mixed
                - tf.transpose(mixed)
            )
            distribution, factor = gp.joint_distribution(
                mean, covariance, "the ensemble covariance"
            )
            self.predictive_jitter = factor.jitter
            return distribution
        variance = (
            gp.kernel_diagonal(self.nngp, x, what="nngp")
            + tf.reduce_sum(propagated * transfer, axis=1)
            - 2.0 * tf.reduce_sum(transfer * nngp_cross, axis=1)
        )
        return gp.marginal_distribution(mean, tf.tile(variance[:, None], (1, mean.shape[1])))


def gradient_descent_mse_ensemble(ntk, nngp, x_train, y_train, learning_rate=1.0, diag_reg=0.0):
    """Mean and covariance over initializations of gradient flow on squared loss.

    For the infinite-width network (or the linearized network with f_0 ~ GP(0, K)),
    see the module docstring for the math.

    Args:
      ntk, nngp: callables kernel(x1, x2) -> (N, M) per-output kernels, e.g.
        functools.partial(keras_ntk.infinite_width_kernel, depth=3, kind="ntk") and
        kind="nngp"; they are evaluated on x_train once and on test inputs per call.
      x_train: (N, ...) inputs; y_train: (N, K) or (N,) targets.
      learning_rate: eta > 0; diag_reg: >= 0 added to Theta(X, X) (absolute).
    Returns:
      a `GradientDescentMSEEnsemble` predict(t, x_test, joint=False) -> TFP distribution
      over (M, K) outputs (joint=True: over the flattened (M K,) vector).
    """
    return GradientDescentMSEEnsemble(ntk, nngp, x_train, y_train, learning_rate, diag_reg)
