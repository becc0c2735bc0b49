"""Gaussian-process posteriors with NTK and NNGP kernels (the NTK-GP of PAPER.md).

With training inputs X (N examples), targets y (N, K), prior mean m (e.g. the
network at its current weights, f_0), kernel k and noise variance s^2:

    mean(x*)     = m(x*) + k(x*, X) (k(X, X) + s^2 I)^-1 (y - m(X)),
    cov(x*, x*') = k(x*, x*') - k(x*, X) (k(X, X) + s^2 I)^-1 k(X, x*').

output="independent": k(x1, x2) is (N, M), one kernel shared by K independent
outputs. output="full": k(x1, x2) is (N, M, K, K) and the Gram is the
(N K) x (N K) matrix whose row n * K + k belongs to example n, output k.
Every solve is a float64 Cholesky from `numerics.factorize`, whose jitter is
reported, never silent. Predictions are TFP distributions over (M, K) outputs.
"""

import functools
import json
import math
import pathlib

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_ntk import models
from keras_ntk.ntk import NTK, infinite_width_kernel
from keras_ntk.predictive import numerics, storage

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
    """(N, M, K, K) -> (N K, M K) with row n * K + k and column m * K + l."""
    n, m, k, _ = kernel.shape
    return tf.reshape(tf.transpose(kernel, (0, 2, 1, 3)), (n * k, m * k))


def kernel_diagonal(kernel, x, num_outputs=None, what="kernel"):
    """k(x_i, x_i) for every example, evaluated in chunks of DIAGONAL_CHUNK examples.

    Returns (M,) float64, or (M, K) (the diagonal of each K x K block) for num_outputs=K.
    """
    parts = []
    for start in range(0, x.shape[0], DIAGONAL_CHUNK):
        chunk = x[start : start + DIAGONAL_CHUNK]
        block = evaluate_kernel(kernel, chunk, chunk, num_outputs, what)
        if num_outputs is None:
            parts.append(tf.linalg.diag_part(block))
        else:
            per_example = tf.linalg.diag_part(tf.transpose(block, (2, 3, 0, 1)))
            parts.append(tf.linalg.diag_part(tf.transpose(per_example, (2, 0, 1))))
    return tf.concat(parts, axis=0)


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
      jitter: absolute jitter added to its diagonal (0.0 when none was needed).
      condition_number: 2-norm condition number of the factorized matrix.
      predictive_jitter: jitter added to the covariance by the latest
        predict(joint=True) call (None before one).
      num_outputs: K.
    """

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
        self._residual = self._columns(self.y_train - self._prior_mean(self.x_train))
        self._alpha = self.factorization.solve(self._residual)

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
    ):
        """Zero-mean GP with the analytic infinite-width NTK (kind="ntk") or NNGP
        (kind="nngp") of `keras_ntk.models.mlp` (arguments as `infinite_width_kernel`),
        shared by independent outputs."""
        recipe = dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std, kind=kind)
        gp = cls(functools.partial(infinite_width_kernel, **recipe), x_train, y_train, noise_variance)
        gp._recipe = {"kernel": "infinite_width", **recipe}
        return gp

    @property
    def jitter(self):
        return self.factorization.jitter

    @property
    def condition_number(self):
        return self.factorization.condition_number

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
        m, k = x.shape[0], self.num_outputs
        cross = self._matrix(x, self.x_train)
        mean = self._prior_mean(x) + tf.reshape(tf.matmul(cross, self._alpha), (m, k))
        chol = self.factorization.chol
        whitened = tf.linalg.triangular_solve(chol, tf.transpose(cross), lower=True)
        noise = self.noise_variance if observation_noise else 0.0
        if joint:
            covariance = self._matrix(x, x) - tf.matmul(whitened, whitened, transpose_a=True)
            covariance += noise * tf.eye(covariance.shape[0], dtype=tf.float64)
            distribution, factor = joint_distribution(mean, covariance, "the predictive covariance")
            self.predictive_jitter = factor.jitter
            return distribution
        reduction = tf.reduce_sum(whitened**2, axis=0)
        if self.output == "independent":
            variance = kernel_diagonal(self.kernel, x) - reduction
            variance = tf.tile(variance[:, None], (1, k))
        else:
            prior = kernel_diagonal(self.kernel, x, k)
            variance = prior - tf.reshape(reduction, (m, k))
        return marginal_distribution(mean, variance + noise)

    def log_marginal_likelihood(self):
        """log p(y | X) as a float64 scalar tensor.

        "independent": sum_k log N(y[:, k] | m_k(X), k(X, X) + s^2 I);
        "full": log N(vec(y) | vec(m(X)), Gram + s^2 I) with vec in [n, k] order.
        Includes the reported jitter in the covariance.
        """
        n, k = self.y_train.shape
        copies = k if self.output == "independent" else 1
        return -0.5 * (
            tf.reduce_sum(self._residual * self._alpha)
            + copies * self.factorization.log_det()
            + n * k * math.log(2 * math.pi)
        )

    # -- persistence ------------------------------------------------------------
    @property
    def model(self):
        """The (copied) network of an `empirical` GP, else None."""
        return self._model

    def save(self, directory):
        """Write the GP into `directory`, atomically (a temporary directory renamed
        into place): metadata.json, posterior.npz (x_train (N, ...), y_train (N, K),
        the Cholesky factor of the Gram (N, N) or (N K, N K), the representer
        weights alpha, residual y - m(X), jitter, condition number) and, for an
        `empirical` GP, model.keras (the network at the copied weights).

        Only GPs built by `NTKGP.empirical` or `NTKGP.infinite_width` can be saved;
        a GP over an arbitrary kernel callable raises ValueError.
        """
        if self._recipe is None:
            raise ValueError(
                "save() needs to know how to rebuild the kernel: only GPs built by "
                "NTKGP.empirical or NTKGP.infinite_width can be saved."
            )
        if self._recipe["kernel"] == "infinite_width" and not isinstance(self._recipe["activation"], str):
            raise ValueError("save() needs the activation of an infinite-width GP given by name.")
        with storage.staged_directory(directory) as staging:
            if self._model is not None:
                self._model.save(staging / "model.keras")
            np.savez(
                staging / "posterior.npz",
                x_train=self.x_train,
                y_train=self.y_train.numpy(),
                chol=self.factorization.chol.numpy(),
                jitter=self.factorization.jitter,
                condition_number=self.factorization.condition_number,
                residual=self._residual.numpy(),
                alpha=self._alpha.numpy(),
                noise_variance=self.noise_variance,
            )
            (staging / "metadata.json").write_text(json.dumps(self._metadata(), indent=2))
        return pathlib.Path(directory)

    def _metadata(self):
        from keras_ntk import __version__

        meta = {
            "format": "keras-ntk posterior",
            "keras_ntk": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "posterior": "ntk_gp",
            "likelihood": "regression",
            "structure": self.output,
            "kernel": dict(self._recipe),
            "noise_variance": self.noise_variance,
            "jitter": self.jitter,
            "train_examples": int(self.x_train.shape[0]),
            "input_shape": list(self.x_train.shape[1:]),
            "output_shape": [self.num_outputs],
        }
        if self._model is not None:
            meta["input_shape"] = list(self._model.input_shape[1:])
            meta["output_shape"] = list(self._model.output_shape[1:])
            meta["parameters"] = int(sum(math.prod(v.shape) for v in self._model.trainable_variables))
        return meta

    @classmethod
    def load(cls, directory, model=None):
        """Restore a GP saved by `save` without refactorizing: the stored Cholesky
        factor and representer weights are used as they are. `model` defaults to
        the saved model.keras (loaded with safe_mode=True)."""
        directory = pathlib.Path(directory)
        meta = json.loads((directory / "metadata.json").read_text())
        if meta.get("posterior") != "ntk_gp":
            raise ValueError(f"{directory} holds a {meta.get('posterior')!r} posterior, not an NTK-GP.")
        recipe = dict(meta["kernel"])
        gp = cls.__new__(cls)
        gp.output = meta["structure"]
        gp._recipe = recipe
        gp._model = None
        gp.mean_fn = None
        if recipe["kernel"] == "empirical_ntk":
            if model is None:
                model = keras.models.load_model(directory / "model.keras", safe_mode=True, compile=False)
            gp._model = model
            gp.kernel, gp.mean_fn = _empirical_kernel_and_mean(model, gp.output, recipe["center"])
        elif recipe["kernel"] == "infinite_width":
            kwargs = {k: v for k, v in recipe.items() if k != "kernel"}
            gp.kernel = functools.partial(infinite_width_kernel, **kwargs)
        else:
            raise ValueError(f"Unknown kernel {recipe['kernel']!r} in {directory / 'metadata.json'}.")
        with np.load(directory / "posterior.npz") as state:
            gp.x_train = state["x_train"]
            gp.y_train = tf.constant(state["y_train"], tf.float64)
            gp.noise_variance = float(state["noise_variance"])
            gp.factorization = numerics.Factorization(
                tf.constant(state["chol"], tf.float64),
                float(state["jitter"]),
                float(state["condition_number"]),
            )
            gp._residual = tf.constant(state["residual"], tf.float64)
            gp._alpha = tf.constant(state["alpha"], tf.float64)
        gp.num_outputs = int(gp.y_train.shape[1])
        gp.predictive_jitter = None
        return gp
