"""Linearized Laplace approximation of a trained Keras model (PAPER.md, Definitions).

At the trained weights theta*, the posterior over parameters is N(theta*, P^-1) with
precision P = c GGN + D (curvature.py: c = 1/s^2 for regression, 1 for
classification; D = diag(delta), one prior precision per layer or one shared).
The linearized network's predictive is f(x*) ~ N(f(x*; theta*), J* P^-1 J*^T);
`structure="function_space"` computes the same as a GP with prior kernel
sum_g Theta_g / delta_g. The Laplace log marginal likelihood (evidence) is

    log p(y | f(X; theta*)) - 1/2 sum_p delta_p theta*_p^2 - 1/2 log det(P) / det(D),

differentiable in delta and s^2, which `optimize_hyperparameters` maximizes.
"""

import json
import math
import pathlib

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_ntk.ntk import rules as rules_lib
from keras_ntk.predictive import curvature as curvature_lib
from keras_ntk.predictive import gp, numerics, storage

tfd = tfp.distributions

LIKELIHOODS = ("regression", "classification")
STRUCTURES = ("full", "diag", "last_layer", "kron", "function_space")
LINKS = ("probit", "mc")


def _positive(value, what):
    value = np.asarray(value, np.float64)
    if value.size == 0 or not np.all(np.isfinite(value)) or np.any(value <= 0):
        raise ValueError(f"{what} must be positive and finite, got {value!r}.")
    return value


class Laplace:
    """Linearized Laplace approximation with GGN curvature.

    Args:
      model: a trained, built Keras model with one output (n, K); its current
        weights are the MAP estimate theta*.
      likelihood: "regression" (Gaussian, noise variance s^2) or "classification"
        (categorical over K softmax logits; labels as ints (n,) or one-hot (n, K)).
      structure: "full", "diag", "last_layer", "kron" (K-FAC) or "function_space".
      prior_precision: delta: one float for all parameters, or a dict layer path ->
        float (every layer with trainable variables) for per-layer precisions.
      noise_variance: s^2 of the regression likelihood.
      subset_size: function_space only, the number of training examples kept
        (a deterministic random subset by `seed`); None keeps all.
    """

    def __init__(
        self,
        model,
        likelihood="regression",
        structure="full",
        prior_precision=1.0,
        noise_variance=1.0,
        subset_size=None,
        seed=0,
    ):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}.")
        if subset_size is not None and (structure != "function_space" or subset_size < 1):
            raise ValueError("subset_size is a positive int, and only for structure='function_space'.")
        self.model, self.likelihood, self.structure = model, likelihood, structure
        self.subset_size, self.seed = subset_size, seed
        self.groups = curvature_lib.parameter_groups(model)
        if not self.groups:
            raise ValueError(f"Model {model.name!r} has no trainable variables.")
        names = list(self.groups)
        if isinstance(prior_precision, dict):
            if set(prior_precision) != set(names):
                raise ValueError(
                    f"A per-layer prior_precision needs exactly the layers {names}, "
                    f"got {sorted(prior_precision)}."
                )
            delta = [prior_precision[name] for name in names]
            self.per_layer = True
        else:
            delta = [prior_precision] * len(names)
            self.per_layer = False
        self._log_delta = tf.Variable(np.log(_positive(delta, "prior_precision")), dtype=tf.float64)
        self._log_noise = tf.Variable(math.log(_positive(noise_variance, "noise_variance")), dtype=tf.float64)
        self._covered = [len(names) - 1] if structure == "last_layer" else list(range(len(names)))
        self._fitted = False
        self.jitter = 0.0
        self.condition_number = None

    # -- hyperparameters --------------------------------------------------------
    @property
    def prior_precision(self):
        """float, or dict layer path -> float with per-layer precisions."""
        delta = np.exp(self._log_delta.numpy())
        return dict(zip(self.groups, delta.tolist())) if self.per_layer else float(delta[0])

    @property
    def noise_variance(self):
        return float(np.exp(self._log_noise.numpy()))

    def _delta(self, prior_precision=None):
        """(G,) prior precisions, one per group; a shared precision is _log_delta[0]."""
        if prior_precision is None:
            delta = tf.exp(self._log_delta)
            return delta if self.per_layer else tf.broadcast_to(delta[0], delta.shape)
        if isinstance(prior_precision, dict):
            prior_precision = [prior_precision[name] for name in self.groups]
        delta = tf.convert_to_tensor(prior_precision, tf.float64)
        return tf.broadcast_to(delta, [len(self.groups)])

    def _scale(self, noise_variance=None):
        if self.likelihood == "classification":
            return tf.constant(1.0, tf.float64)
        s2 = tf.exp(self._log_noise) if noise_variance is None else tf.convert_to_tensor(noise_variance, tf.float64)
        return 1.0 / s2

    # -- data -------------------------------------------------------------------
    def _batches(self, data, batch_size):
        if isinstance(data, tf.data.Dataset):
            for x, y in data:
                yield self._check_batch(x.numpy(), y.numpy())
            return
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError("data must be an (x, y) pair of arrays or a tf.data.Dataset of (x, y) batches.")
        x, y = self._check_batch(*data)
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]

    def _check_batch(self, x, y):
        x = numerics.check_finite(np.asarray(x, np.float32), "x")
        y = numerics.check_finite(np.asarray(y), "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
        expected = tuple(self.model.input_shape[1:])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (examples, {', '.join(map(str, expected))}), got {x.shape}.")
        return x, y

    def _targets(self, y, k):
        """Regression targets (n, K) float64, or classification one-hot (n, K)."""
        if self.likelihood == "regression":
            y = y.astype(np.float64).reshape(y.shape[0], -1)
            if y.shape[1] != k:
                raise ValueError(f"Regression targets must have shape (n,) or (n, {k}), got {y.shape}.")
            return y
        if y.ndim == 1:
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
                raise ValueError(f"Class labels must be ints in [0, {k}), got {y.dtype} in [{y.min()}, {y.max()}].")
            return np.eye(k)[y]
        if y.shape[1] != k:
            raise ValueError(f"One-hot labels must have shape (n, {k}), got {y.shape}.")
        return y.astype(np.float64)

    def _outputs(self, x):
        return tf.cast(rules_lib.flat_outputs(self.model, tf.constant(x)), tf.float64)

    @staticmethod
    def _softmax_hessian_sqrt(logits):
        """L (n, K, K) with L L^T = diag(p) - p p^T."""
        p = tf.nn.softmax(logits)
        sqrt_p = tf.sqrt(p)
        return tf.linalg.diag(sqrt_p) - p[:, :, None] * sqrt_p[:, None, :]

    def _lambda_sqrt(self, f):
        if self.likelihood == "regression":
            return tf.eye(f.shape[1], batch_shape=[f.shape[0]], dtype=tf.float64)
        return self._softmax_hessian_sqrt(f)

    # -- fitting ----------------------------------------------------------------
    def fit(self, data, batch_size=128):
        """Accumulate the curvature and the likelihood terms at the model's weights.

        Args:
          data: (x, y) arrays or a tf.data.Dataset of (x, y) batches.
        Returns:
          self.
        """
        self.curvature = self._make_curvature(self.model)
        if self.structure == "function_space" and self.subset_size is not None:
            data = self._subset(data)
        self._sse = 0.0
        self._log_lik_classification = 0.0
        self._count = 0
        for x, y in self._batches(data, batch_size):
            f = self._outputs(x)
            targets = self._targets(y, f.shape[1])
            if self.likelihood == "regression":
                self._sse += float(tf.reduce_sum((targets - f) ** 2))
            else:
                self._log_lik_classification += float(tf.reduce_sum(targets * tf.nn.log_softmax(f)))
            self._count += targets.size if self.likelihood == "regression" else targets.shape[0]
            self.curvature.accumulate(x, self._lambda_sqrt(f))
        if self._count == 0:
            raise ValueError("fit() received no examples.")
        self.curvature.finalize()
        self._theta_sq = tf.constant(
            [sum(float(tf.reduce_sum(tf.square(v))) for v in vs) for vs in self.groups.values()], tf.float64
        )
        self._fitted = True
        return self

    def _make_curvature(self, model):
        curvature = curvature_lib.make(self.structure, model, self.groups)
        if hasattr(curvature, "shared_prior"):
            curvature.shared_prior = not self.per_layer
        return curvature

    def _subset(self, data):
        if isinstance(data, tf.data.Dataset):
            x, y = (np.concatenate(part) for part in zip(*[(a.numpy(), b.numpy()) for a, b in data]))
        else:
            x, y = (np.asarray(a) for a in data)
        if self.subset_size >= x.shape[0]:
            return x, y
        index = np.sort(np.random.default_rng(self.seed).choice(x.shape[0], self.subset_size, replace=False))
        return x[index], y[index]

    def _require_fit(self):
        if not self._fitted:
            raise ValueError("Call fit(data) first.")

    # -- evidence ---------------------------------------------------------------
    def log_marginal_likelihood(self, prior_precision=None, noise_variance=None):
        """Laplace log evidence (float64 scalar tensor), differentiable in both arguments.

        Args default to the current hyperparameters; either may be a tf.Variable or
        tensor (prior_precision scalar or (G,) per layer, in the order of `groups`).
        """
        self._require_fit()
        delta = self._delta(prior_precision)
        scale = self._scale(noise_variance)
        if self.likelihood == "regression":
            log_lik = -0.5 * scale * self._sse - 0.5 * self._count * tf.math.log(2 * math.pi / scale)
        else:
            log_lik = tf.constant(self._log_lik_classification, tf.float64)
        covered = tf.gather(delta, self._covered)
        scatter = tf.reduce_sum(covered * tf.gather(self._theta_sq, self._covered))
        return log_lik - 0.5 * scatter - 0.5 * self.curvature.log_det_ratio(delta, scale)

    def optimize_hyperparameters(self, steps=200, learning_rate=0.1):
        """Maximize the log marginal likelihood over log delta (one shared value, or
        one per layer with per-layer precisions) and log s^2 (regression) with Adam.
        Returns {"prior_precision", "noise_variance", "log_marginal_likelihood"}."""
        self._require_fit()
        variables = [self._log_delta] + ([self._log_noise] if self.likelihood == "regression" else [])
        optimizer = keras.optimizers.Adam(learning_rate)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                loss = -self.log_marginal_likelihood(self._delta(), tf.exp(self._log_noise))
            gradients = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(gradients, variables))
        if not self.per_layer:
            self._log_delta.assign(tf.fill(self._log_delta.shape, self._log_delta[0]))
        return {
            "prior_precision": self.prior_precision,
            "noise_variance": self.noise_variance,
            "log_marginal_likelihood": float(self.log_marginal_likelihood()),
        }

    # -- prediction -------------------------------------------------------------
    def functional_covariance(self, x, joint=False):
        """Covariance of the linearized f at x (N, ...): (N, K, K), or (N K, N K) joint.

        Sets `jitter` (added to the inverted matrix) and `condition_number` (of the
        posterior precision; of I + c B in function space).
        """
        self._require_fit()
        x = self._check_batch(x, np.zeros(len(x)))[0]
        cov, self.jitter, self.condition_number = self.curvature.covariance(
            x, self._delta(), self._scale(), joint
        )
        return cov

    def predict(self, x, joint=False, link="probit", samples=1000, observation_noise=False, seed=None):
        """Predictive at x (N, ...).

        Regression: a TFP distribution over f(x) (the function; observation noise s^2
        only with observation_noise=True): joint=False an Independent Normal with
        mean / variance (N, K); joint=True a MultivariateNormalTriL over the
        flattened (N K) outputs in [n, k] order.
        Classification: tfd.Categorical with probs (N, K) from the Gaussian over
        logits through the mean-field probit approximation (`_mean_field_probit`)
        or Monte Carlo averaging of softmax over `samples` logit draws.
        """
        if link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}, got {link!r}.")
        mean = self._outputs(self._check_batch(x, np.zeros(len(x)))[0])
        cov = self.functional_covariance(x, joint=joint and self.likelihood == "regression")
        if self.likelihood == "regression":
            noise = self.noise_variance if observation_noise else 0.0
            if joint:
                cov = cov + noise * tf.eye(cov.shape[0], dtype=tf.float64)
                distribution, factor = gp.joint_distribution(mean, cov, "predictive covariance")
                self.jitter = max(self.jitter, factor.jitter)
                return distribution
            return gp.marginal_distribution(mean, tf.linalg.diag_part(cov) + noise)
        if link == "probit":
            return tfd.Categorical(probs=_mean_field_probit(mean, cov))
        k = mean.shape[1]
        chol = tf.linalg.cholesky(cov + 1e-10 * tf.eye(k, dtype=tf.float64))
        logits = tfd.MultivariateNormalTriL(mean, chol).sample(samples, seed=seed)
        return tfd.Categorical(probs=tf.reduce_mean(tf.nn.softmax(logits), axis=0))

    # -- persistence ------------------------------------------------------------
    def save(self, directory):
        """Write model.keras, posterior.npz and metadata.json into `directory`,
        atomically (a temporary directory renamed into place)."""
        self._require_fit()
        with storage.staged_directory(directory) as staging:
            self.model.save(staging / "model.keras")
            state = {f"curvature/{k}": v for k, v in self.curvature.state().items()}
            np.savez(
                staging / "posterior.npz",
                log_delta=self._log_delta.numpy(),
                log_noise=self._log_noise.numpy(),
                theta_sq=self._theta_sq.numpy(),
                sse=self._sse,
                log_lik_classification=self._log_lik_classification,
                count=self._count,
                **state,
            )
            (staging / "metadata.json").write_text(json.dumps(self._metadata(), indent=2))
        return pathlib.Path(directory)

    def _metadata(self):
        from keras_ntk import __version__

        return {
            "format": "keras-ntk posterior",
            "keras_ntk": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "posterior": "laplace",
            "likelihood": self.likelihood,
            "structure": self.structure,
            "prior_precision": self.prior_precision,
            "noise_variance": self.noise_variance,
            "per_layer": self.per_layer,
            "subset_size": self.subset_size,
            "seed": self.seed,
            "groups": list(self.groups),
            "input_shape": list(self.model.input_shape[1:]),
            "output_shape": list(self.model.output_shape[1:]),
            "parameters": int(sum(math.prod(v.shape) for v in self.model.trainable_variables)),
        }

    @classmethod
    def load(cls, directory, model=None):
        """Restore a Laplace saved by `save`; `model` defaults to the saved model.keras
        (loaded with safe_mode=True)."""
        directory = pathlib.Path(directory)
        meta = json.loads((directory / "metadata.json").read_text())
        if model is None:
            model = keras.models.load_model(directory / "model.keras", safe_mode=True)
        laplace = cls(
            model,
            likelihood=meta["likelihood"],
            structure=meta["structure"],
            prior_precision=meta["prior_precision"],
            noise_variance=meta["noise_variance"],
            subset_size=meta["subset_size"],
            seed=meta["seed"],
        )
        with np.load(directory / "posterior.npz") as state:
            laplace._log_delta.assign(state["log_delta"])
            laplace._log_noise.assign(state["log_noise"])
            laplace._theta_sq = tf.constant(state["theta_sq"], tf.float64)
            laplace._sse = float(state["sse"])
            laplace._log_lik_classification = float(state["log_lik_classification"])
            laplace._count = int(state["count"])
            laplace.curvature = laplace._make_curvature(model)
            prefix = "curvature/"
            laplace.curvature.restore({k[len(prefix) :]: state[k] for k in state.files if k.startswith(prefix)})
        laplace.curvature.finalize()
        laplace._fitted = True
        return laplace


def _mean_field_probit(mean, cov):
    """E[softmax(f)] for f ~ N(mean, cov), per example: mean (n, K), cov (n, K, K).

    Mean-field probit approximation (Lu, Ie & Sha 2020), using the variance of the
    logit differences: p_k ~ 1 / (1 + sum_{j != k} exp(-(mu_k - mu_j) /
    sqrt(1 + pi/8 Var(f_k - f_j)))), normalized to sum to one.
    """
    variance = tf.linalg.diag_part(cov)
    difference_variance = variance[:, :, None] + variance[:, None, :] - 2 * cov
    scaled = (mean[:, :, None] - mean[:, None, :]) / tf.sqrt(1 + math.pi / 8 * difference_variance)
    probs = 1.0 / tf.reduce_sum(tf.exp(-scaled), axis=2)  # the j = k term is exp(0) = 1
    return probs / tf.reduce_sum(probs, axis=1, keepdims=True)


class EvidenceCallback(keras.callbacks.Callback):
    """Tune a Laplace's prior precision and noise by evidence maximization every
    `every` epochs of `fit`; the values go into the epoch logs."""

    def __init__(self, laplace, data, every=1, steps=50, learning_rate=0.1):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}.")
        self.laplace, self.data, self.every = laplace, data, every
        self.steps, self.learning_rate = steps, learning_rate
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        self.laplace.fit(self.data)
        result = self.laplace.optimize_hyperparameters(self.steps, self.learning_rate)
        self.history.append({"epoch": epoch + 1, **result})
        if logs is not None:
            logs["log_marginal_likelihood"] = result["log_marginal_likelihood"]
            logs["noise_variance"] = result["noise_variance"]
            if not self.laplace.per_layer:
                logs["prior_precision"] = result["prior_precision"]
