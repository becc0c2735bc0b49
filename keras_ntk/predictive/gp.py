"""Gaussian-process posteriors with NTK and NNGP kernels (the NTK-GP).

With training inputs X (N examples), targets y (N, K), prior mean m (e.g. the
network at its current weights, f_0), kernel k and noise variance s^2:

    mean(x*)     = m(x*) + k(x*, X) (k(X, X) + s^2 I)^-1 (y - m(X)),
    cov(x*, x*') = k(x*, x*') - k(x*, X) (k(X, X) + s^2 I)^-1 k(X, x*').

output="independent": k(x1, x2) is (N, M), one kernel shared by K independent
outputs. output="full": k(x1, x2) is (N, M, K, K) and the Gram is the
(N K) x (N K) matrix whose row n * K + k belongs to example n, output k.
Every solve is a float64 Cholesky R R^T = k(X, X) + s^2 I from
`numerics.factorize`, whose jitter is reported, never silent; the covariance is
evaluated as k(x*, x*') - W^T W' with W = R^-1 k(X, x*) (`posterior_moments`,
shared by `NTKGP.predict` and compiled predictives). Predictions are TFP
distributions over (M, K) outputs.

The posterior variance is continuous but need not be smooth: kernels with a
cusp on the diagonal, k(x, x') = k(x, x) - c |x - x'| + O(|x - x'|^2) (the
ReLU NTK, whose relu'(u) relu'(v) term gives it), have posterior variances
that fall to about s^2 at every training input and rise between them, in
proportion to c times the gap. The standard-parametrization NTK's c grows
with the width, so on a grid as coarse as the training inputs its posterior
standard deviation looks jagged although every value is accurate.
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_ntk import models
from keras_ntk.ntk import NTK, infinite_width_kernel
from keras_ntk.ntk import contract as contract_lib
from keras_ntk.predictive import features, numerics, posterior_format
from keras_ntk.predictive.compiled import PredictiveFunctions

tfd = tfp.distributions

OUTPUTS = ("independent", "full")
DIAGONAL_CHUNK = 256


def check_examples(x, what):
    """x as a numpy array of shape (N, ...) with N >= 1 and finite values."""
    x = numerics.check_finite(x, what)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"{what} must have shape (examples, ...) with at least one example, got {x.shape}."
        )
    return x


def check_targets(y, what="y_train"):
    """y (N,) or (N, K) as a float64 (N, K) tensor; 1-D means K = 1."""
    y = numerics.check_finite(y, what)
    if y.ndim not in (1, 2) or y.shape[0] == 0 or y.size == 0:
        raise ValueError(f"{what} must have shape (N,) or (N, K) with N, K >= 1, got {y.shape}.")
    return tf.constant(y.reshape(y.shape[0], -1), tf.float64)


def check_nonnegative(value, what):
    """A finite float >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}.")
    return number


def evaluate_kernel(kernel, x1, x2, num_outputs=None, what="kernel"):
    """kernel(x1, x2) as float64, checked to be (N, M), or (N, M, K, K) for num_outputs=K."""
    value = tf.cast(tf.convert_to_tensor(kernel(x1, x2)), tf.float64)
    expected = (x1.shape[0], x2.shape[0])
    if num_outputs is not None:
        expected += (num_outputs, num_outputs)
    if tuple(value.shape) != expected:
        hint = (
            " output='independent' needs a per-output kernel such as NTK(model, output='trace');"
            " use output='full' for (N, M, K, K) kernels."
            if num_outputs is None
            else " output='full' needs K x K blocks, e.g. NTK(model, output='full'), with K the "
            "number of target columns."
        )
        raise ValueError(f"{what} returned shape {tuple(value.shape)}, expected {expected}.{hint}")
    if not bool(tf.reduce_all(tf.math.is_finite(value))):
        raise ValueError(f"{what} returned NaN or Inf.")
    return value


def flatten_blocks(kernel):
    """(N, M, K, K) -> (N K, M K) with row n * K + k and column m * K + l (traceable)."""
    shape = tf.shape(kernel)
    return tf.reshape(tf.transpose(kernel, (0, 2, 1, 3)), (shape[0] * shape[2], shape[1] * shape[3]))


def kernel_diagonal(kernel, x, num_outputs=None, what="kernel"):
    """k(x_i, x_i) for every example, evaluated in chunks of DIAGONAL_CHUNK examples.

    Returns (M,) float64, or the K x K blocks (M, K, K) for num_outputs=K.
    """
    parts = []
    for start in range(0, x.shape[0], DIAGONAL_CHUNK):
        chunk = x[start : start + DIAGONAL_CHUNK]
        block = evaluate_kernel(kernel, chunk, chunk, num_outputs, what)
        if num_outputs is None:
            parts.append(tf.linalg.diag_part(block))
        else:
            parts.append(tf.transpose(tf.linalg.diag_part(tf.transpose(block, (2, 3, 0, 1))), (2, 0, 1)))
    return tf.concat(parts, axis=0)


def posterior_moments(prior_mean, cross, prior, chol, alpha, independent, joint):
    """GP posterior mean and covariance at n test inputs from kernel values (pure TensorFlow).

    Args:
      prior_mean: m(x*) (n, K).
      cross: k(x*, X): (n, N) for independent outputs, else (n K, N K) [n, k] order.
      prior: k(x*, x*): joint (n, n) independent / (n K, n K) full; marginal (n,)
        independent / the blocks (n, K, K) full.
      chol: R (R_rows, R_rows), lower Cholesky factor of k(X, X) + s^2 I.
      alpha: (k(X, X) + s^2 I)^-1 (y - m(X)): (N, K) independent, (N K, 1) full.
      independent: one kernel shared by K independent outputs.
      joint: the joint covariance instead of the per-example blocks.
    Returns:
      mean (n, K) and the covariance k(x*, x*) - W^T W, W = R^-1 k(X, x*): joint
      (n, n) shared by the K outputs (independent) or (n K, n K); marginal the
      blocks (n, K, K) (independent: the variance times I_K).
    """
    n, k = tf.shape(prior_mean)[0], tf.shape(prior_mean)[1]
    mean = prior_mean + tf.reshape(tf.matmul(cross, alpha), (n, k))
    w = tf.linalg.triangular_solve(chol, tf.transpose(cross), lower=True)
    if joint:
        return mean, prior - tf.matmul(w, w, transpose_a=True)
    if independent:
        variance = prior - tf.reduce_sum(w**2, axis=0)
        return mean, variance[:, None, None] * tf.eye(k, dtype=tf.float64)
    w = tf.reshape(w, (-1, n, k))
    return mean, prior - tf.einsum("pik,pil->ikl", w, w)


def shared_joint(covariance, num_outputs):
    """kron(covariance, I_K): (n, n) shared by K independent outputs -> (n K, n K), [n, k] order."""
    n = tf.shape(covariance)[0]
    cov4 = tf.einsum("ij,kl->ikjl", covariance, tf.eye(num_outputs, dtype=covariance.dtype))
    return tf.reshape(cov4, (n * num_outputs, n * num_outputs))


_posterior_moments = tf.function(posterior_moments, reduce_retracing=True)


def empirical_moments(feature_map, train, mean_model, chol, alpha, num_outputs, independent, x, joint):
    """Empirical NTK-GP posterior at x (n, ...) from the structured engine's
    per-example factors, pure TensorFlow.

    Args:
      feature_map: the network's `FeatureMap`; train: its factors of X.
      mean_model: the network as prior mean m(x) = f(x), or None for m = 0.
      chol, alpha: as `posterior_moments`.
      independent: the kernel is NTK(output="trace"), shared by the K outputs.
    Returns:
      mean (n, K) and the blocks (n, K, K), or the joint (n K, n K) covariance.
    """
    groups, n, k = feature_map.groups, tf.shape(x)[0], num_outputs

    def kernel(f1, f2):
        if independent:
            return contract_lib.contract(groups, f1, f2, "trace", tf.float64, False)
        return flatten_blocks(contract_lib.contract(groups, f1, f2, "full", tf.float64, False))

    fx = feature_map.factors(x)
    if mean_model is None:
        prior_mean = tf.zeros((n, k), tf.float64)
    else:
        prior_mean = tf.cast(tf.reshape(mean_model(x, training=False), (n, k)), tf.float64)
    if joint:
        prior = kernel(fx, fx)
    else:
        prior = contract_lib.contract(groups, fx, None, "diagonal", tf.float64, False)
        if independent:
            prior = tf.reduce_mean(tf.linalg.diag_part(prior), axis=1)
    mean, covariance = posterior_moments(prior_mean, kernel(fx, train), prior, chol, alpha, independent, joint)
    if joint and independent:
        covariance = shared_joint(covariance, k)
    return mean, covariance


def marginal_distribution(mean, variance):
    """Independent Normals over an (M, K) event; negative roundoff in variance is clipped to 0."""
    scale = tf.sqrt(tf.maximum(variance, tf.constant(0.0, tf.float64)))
    return tfd.Independent(tfd.Normal(loc=mean, scale=scale), reinterpreted_batch_ndims=2)


def joint_distribution(mean, covariance, what):
    """MultivariateNormalTriL over the flattened (M K,) event, [m, k] order.

    Args:
      mean: (M, K) float64.
      covariance: (M, M), shared by K independent outputs, so the joint covariance is
        kron(covariance, I_K) with Cholesky factor kron(L, I_K); or (M K, M K).
    Returns:
      (distribution, factorization of `covariance`).
    """
    m, k = mean.shape
    factor = numerics.factorize(covariance, what=what)
    chol = factor.chol
    if covariance.shape[0] == m and k > 1:
        chol = tf.einsum("ab,kl->akbl", chol, tf.eye(k, dtype=tf.float64))
        chol = tf.reshape(chol, (m * k, m * k))
    return tfd.MultivariateNormalTriL(loc=tf.reshape(mean, [-1]), scale_tril=chol), factor


def _empirical_kernel_and_mean(frozen, output, center):
    """The empirical-NTK kernel of `frozen` for `output`, and its mean f(x; theta) (or None)."""
    kernel = NTK(frozen, output="trace" if output == "independent" else "full", dtype="float64")
    mean_fn = None
    if center:
        dtype = frozen.inputs[0].dtype

        def mean_fn(x):
            f = frozen(np.asarray(x, dtype=dtype), training=False)
            return tf.reshape(f, (tf.shape(f)[0], -1))

    return kernel, mean_fn


def _frozen_copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


class NTKGP:
    """GP posterior with an NTK or NNGP kernel (see the module docstring for the math).

    Args:
      kernel: callable kernel(x1, x2) -> (N, M) for output="independent" or
        (N, M, K, K) for output="full".
      x_train: (N, ...) inputs, finite.
      y_train: (N,) or (N, K) targets, finite; 1-D means K = 1.
      noise_variance: s^2 >= 0; 0 is accepted when k(X, X) factorizes (with
        jitter, reported in `jitter`).
      mean_fn: prior mean, callable x (M, ...) -> (M, K) (or (M,) when K = 1),
        e.g. the network f_0; default zero.
      output: "independent" or "full".

    Attributes:
      factorization: `numerics.Factorization` of k(X, X) + s^2 I, (N, N) or (N K, N K).
      representer_weights: alpha = (k(X, X) + s^2 I)^-1 (y - m(X)), (N, K) or (N K, 1).
      jitter: absolute jitter added to its diagonal (0.0 when none was needed).
      condition_number: 2-norm condition number of the factorized matrix.
      predictive_jitter: jitter added to the covariance by the latest
        predict(joint=True) call (None before one).
      num_outputs: K.
      likelihood: "regression".
    """

    likelihood = "regression"

    def __init__(
        self, kernel, x_train, y_train, noise_variance, mean_fn=None, output="independent"
    ):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
        if not callable(kernel):
            raise ValueError(f"kernel must be a callable kernel(x1, x2), got {kernel!r}.")
        if mean_fn is not None and not callable(mean_fn):
            raise ValueError(
                f"mean_fn must be a callable x -> (examples, K) or None, got {mean_fn!r}."
            )
        self.kernel = kernel
        self.mean_fn = mean_fn
        self.output = output
        self._recipe = None  # how save() can rebuild the kernel: set by empirical / infinite_width
        self._model = None
        self.x_train = check_examples(x_train, "x_train")
        self.y_train = check_targets(y_train)
        self.num_outputs = int(self.y_train.shape[1])
        if self.x_train.shape[0] != self.y_train.shape[0]:
            raise ValueError(
                f"x_train and y_train must have the same number of examples, got "
                f"{self.x_train.shape[0]} and {self.y_train.shape[0]}."
            )
        self.noise_variance = check_nonnegative(noise_variance, "noise_variance")
        self.predictive_jitter = None
        gram = self._matrix(self.x_train, self.x_train)
        self.factorization = numerics.factorize(
            gram + self.noise_variance * tf.eye(gram.shape[0], dtype=tf.float64),
            what="the training Gram matrix k(X, X) + noise_variance I",
        )
        self.residual = self._columns(self.y_train - self._prior_mean(self.x_train))
        self.representer_weights = self.factorization.solve(self.residual)

    @classmethod
    def empirical(cls, model, x_train, y_train, noise_variance, output="independent", center=True):
        """NTK-GP with the empirical NTK of `model` at its current weights.

        The weights are copied, so later training of `model` does not change this GP.
        output="independent" uses the per-output kernel NTK(model, output="trace")
        (mean of the K diagonal output blocks), output="full" the (N, M, K, K) NTK;
        both contracted in float64. center=True makes the prior mean the network
        itself, m(x) = f(x; theta) at the copied weights; center=False a zero mean.
        """
        frozen = _frozen_copy(model)
        kernel, mean_fn = _empirical_kernel_and_mean(frozen, output, center)
        gp = cls(kernel, x_train, y_train, noise_variance, mean_fn=mean_fn, output=output)
        gp._recipe = {"kernel": "empirical_ntk", "center": bool(center)}
        gp._model = frozen
        return gp

    @classmethod
    def infinite_width(
        cls,
        x_train,
        y_train,
        noise_variance,
        *,
        depth,
        activation="relu",
        w_std=models.DEFAULT_W_STD,
        b_std=models.DEFAULT_B_STD,
        kind="ntk",
        parametrization="ntk",
        width=None,
    ):
        """Zero-mean GP with the analytic infinite-width NTK (kind="ntk") or NNGP
        (kind="nngp") of `keras_ntk.models.mlp` (arguments as `infinite_width_kernel`;
        the standard-parametrization NTK needs the network's `width`), shared by
        independent outputs. Kernel, solve and predictions are float64 throughout."""
        recipe = dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std, kind=kind)
        if parametrization != "ntk" or width is not None:
            recipe.update(parametrization=parametrization, width=width)
        gp = cls(functools.partial(infinite_width_kernel, **recipe), x_train, y_train, noise_variance)
        gp._recipe = {"kernel": "infinite_width", **recipe}
        return gp

    @property
    def jitter(self):
        return self.factorization.jitter

    @property
    def condition_number(self):
        return self.factorization.condition_number

    @property
    def model(self):
        """The (copied) network of an `empirical` GP, else None."""
        return self._model

    def _matrix(self, x1, x2):
        """k(x1, x2) as (N, M), or (N K, M K) for output="full"."""
        if self.output == "independent":
            return evaluate_kernel(self.kernel, x1, x2)
        return flatten_blocks(evaluate_kernel(self.kernel, x1, x2, self.num_outputs))

    def _columns(self, values):
        """(N, K) -> right-hand sides of the Gram: (N, K), or (N K, 1) for output="full"."""
        return values if self.output == "independent" else tf.reshape(values, (-1, 1))

    def _prior_mean(self, x):
        n, k = x.shape[0], self.num_outputs
        if self.mean_fn is None:
            return tf.zeros((n, k), tf.float64)
        value = tf.cast(tf.convert_to_tensor(self.mean_fn(x)), tf.float64)
        if tuple(value.shape) == (n,) and k == 1:
            value = tf.reshape(value, (n, 1))
        if tuple(value.shape) != (n, k):
            raise ValueError(f"mean_fn returned shape {tuple(value.shape)}, expected ({n}, {k}).")
        if not bool(tf.reduce_all(tf.math.is_finite(value))):
            raise ValueError("mean_fn returned NaN or Inf.")
        return value

    def predict(self, x, joint=False, observation_noise=False):
        """Posterior predictive at test inputs x (M, ...), float64.

        Args:
          x: (M, ...) inputs shaped like x_train.
          joint: False: tfd.Independent(tfd.Normal) with event (M, K); mean() and
            variance() are (M, K). True: tfd.MultivariateNormalTriL over the
            flattened (M K,) event in [m, k] order, covariance (M K, M K)
            (kron(cov, I_K) for output="independent"); the jitter its
            factorization needed is stored in `predictive_jitter`.
          observation_noise: add s^2 to the variance (predicting noisy targets).
        Returns:
          a TFP distribution.
        """
        x = check_examples(x, "x")
        if x.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(
                f"x must have shape (examples, {', '.join(map(str, self.x_train.shape[1:]))}) "
                f"like x_train, got {x.shape}."
            )
        independent = self.output == "independent"
        if joint:
            prior = self._matrix(x, x)
        else:
            prior = kernel_diagonal(self.kernel, x, None if independent else self.num_outputs)
        mean, covariance = _posterior_moments(
            self._prior_mean(x),
            self._matrix(x, self.x_train),
            prior,
            self.factorization.chol,
            self.representer_weights,
            independent,
            joint,
        )
        noise = self.noise_variance if observation_noise else 0.0
        if joint:
            covariance += noise * tf.eye(covariance.shape[0], dtype=tf.float64)
            distribution, factor = joint_distribution(mean, covariance, "the predictive covariance")
            self.predictive_jitter = factor.jitter
            return distribution
        return marginal_distribution(mean, tf.linalg.diag_part(covariance) + noise)

    def predictive_functions(self):
        """The posterior's prediction as pure TensorFlow functions (a
        `PredictiveFunctions`) for `compile_predictive`: the empirical NTK from the
        structured engine's per-example factors (the training inputs' computed
        once) and the same `posterior_moments` as `predict`.

        Raises:
          ValueError: the GP has no network (not built by `empirical`).
        """
        model = self._model
        if model is None:
            raise ValueError(
                "Only NTK-GPs with an empirical NTK (a network) can be compiled; "
                "an infinite-width GP has no model to run."
            )
        feature_map = features.feature_map(model, self.x_train)
        moments = functools.partial(
            empirical_moments,
            feature_map,
            features.factors_of(feature_map, self.x_train),
            model if self.mean_fn is not None else None,
            self.factorization.chol,
            self.representer_weights,
            self.num_outputs,
            self.output == "independent",
        )
        return PredictiveFunctions(
            model=model,
            likelihood=self.likelihood,
            noise_variance=self.noise_variance,
            jitter=self.jitter,
            marginal=functools.partial(moments, joint=False),
            joint=functools.partial(moments, joint=True),
        )

    def log_marginal_likelihood(self):
        """log p(y | X) as a float64 scalar tensor.

        "independent": sum_k log N(y[:, k] | m_k(X), k(X, X) + s^2 I);
        "full": log N(vec(y) | vec(m(X)), Gram + s^2 I) with vec in [n, k] order.
        Includes the reported jitter in the covariance.
        """
        n, k = self.y_train.shape
        copies = k if self.output == "independent" else 1
        return -0.5 * (
            tf.reduce_sum(self.residual * self.representer_weights)
            + copies * self.factorization.log_det()
            + n * k * math.log(2 * math.pi)
        )

    # -- persistence ------------------------------------------------------------
    def save(self, directory, metadata=None):
        """Write the GP as a posterior directory (keras_ntk.predictive.posterior_format),
        atomically: posterior.npz holds x_train (N, ...), y_train (N, K), the Cholesky
        factor of the Gram (N, N) or (N K, N K), the representer weights, the
        residual y - m(X), jitter and condition number; an `empirical` GP also
        writes model.keras (the network at the copied weights).

        Only GPs built by `NTKGP.empirical` or `NTKGP.infinite_width` can be saved;
        a GP over an arbitrary kernel callable raises ValueError.

        Args:
          metadata: extra JSON-ready entries for metadata.json.
        Returns:
          the pathlib.Path of the directory.
        """
        if self._recipe is None:
            raise ValueError(
                "save() needs to know how to rebuild the kernel: only GPs built by "
                "NTKGP.empirical or NTKGP.infinite_width can be saved."
            )
        if self._recipe["kernel"] == "infinite_width" and not isinstance(self._recipe["activation"], str):
            raise ValueError("save() needs the activation of an infinite-width GP given by name.")
        state = dict(
            x_train=self.x_train,
            y_train=self.y_train.numpy(),
            chol=self.factorization.chol.numpy(),
            jitter=self.factorization.jitter,
            condition_number=self.factorization.condition_number,
            residual=self.residual.numpy(),
            alpha=self.representer_weights.numpy(),
            noise_variance=self.noise_variance,
        )
        entries = {
            "kernel": dict(self._recipe),
            "noise_variance": self.noise_variance,
            "jitter": self.jitter,
            "train_examples": int(self.x_train.shape[0]),
        }
        return posterior_format.save(
            directory,
            posterior="ntk_gp",
            likelihood=self.likelihood,
            structure=self.output,
            state=state,
            model=self._model,
            input_shape=self.x_train.shape[1:],
            output_shape=[self.num_outputs],
            entries=entries,
            extra=metadata,
        )

    @classmethod
    def load(cls, directory, model=None):
        """Restore a GP saved by `save` without refactorizing: the stored Cholesky
        factor and representer weights are used as they are. `model` defaults to
        the saved model.keras (loaded with safe_mode=True). Raises
        posterior_format.CorruptPosterior (a ValueError) for a directory that is
        not an NTK-GP posterior."""
        saved = posterior_format.load(directory, "ntk_gp", model)
        meta, state = saved.metadata, saved.state
        recipe = dict(meta["kernel"])
        gp = cls.__new__(cls)
        gp.output = meta["structure"]
        gp._recipe = recipe
        gp._model = None
        gp.mean_fn = None
        if recipe["kernel"] == "empirical_ntk":
            gp._model = saved.model
            gp.kernel, gp.mean_fn = _empirical_kernel_and_mean(saved.model, gp.output, recipe["center"])
        elif recipe["kernel"] == "infinite_width":
            kwargs = {k: v for k, v in recipe.items() if k != "kernel"}
            gp.kernel = functools.partial(infinite_width_kernel, **kwargs)
        else:
            raise posterior_format.CorruptPosterior(f"Unknown kernel {recipe['kernel']!r} in {directory}.")
        gp.x_train = state["x_train"]
        gp.y_train = tf.constant(state["y_train"], tf.float64)
        gp.noise_variance = float(state["noise_variance"])
        gp.factorization = numerics.Factorization(
            tf.constant(state["chol"], tf.float64), float(state["jitter"]), float(state["condition_number"])
        )
        gp.residual = tf.constant(state["residual"], tf.float64)
        gp.representer_weights = tf.constant(state["alpha"], tf.float64)
        gp.num_outputs = int(gp.y_train.shape[1])
        gp.predictive_jitter = None
        return gp
