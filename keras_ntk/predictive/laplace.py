"""Linearized Laplace approximation of a trained Keras model.

At the trained weights theta*, the posterior over the covered parameters is
N(theta*, P^-1) with precision P = c GGN + D (c = 1/s^2 for regression, 1 for
classification; D = diag(delta), one prior precision per layer or one shared;
see keras_ntk.predictive.curvature). The linearized network's predictive is

    f(x*) ~ N(f(x*; theta*), J* P^-1 J*^T),   J* = df(x*)/dtheta at theta*.

Which weights are covered and how the GGN is approximated are two choices
(keras_ntk.predictive.selection): subset_of_weights ("all", "last_layer" or a
list of layers) and hessian_structure ("full", "diag", "kron", "function_space",
the last the same posterior as "full" computed as a GP with prior kernel
sum_g Theta_g / delta_g); `structure` names common pairs. The Laplace log
marginal likelihood (evidence) is

    log p(y | f(X; theta*)) - 1/2 sum_p delta_p theta*_p^2 - 1/2 log det(P) / det(D)

over the covered parameters p, differentiable in delta and s^2, which
`optimize_hyperparameters` maximizes.
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_ntk.ntk import rules as rules_lib
from keras_ntk.predictive import gp, links, numerics, posterior_format, selection
from keras_ntk.predictive.compiled import PredictiveFunctions
from keras_ntk.predictive.curvature import make_curvature

tfd = tfp.distributions

LIKELIHOODS = ("regression", "classification")
STRUCTURES = tuple(selection.STRUCTURES)
LINKS = links.LINKS
F64 = tf.float64


def _positive(value, what):
    value = np.asarray(value, np.float64)
    if value.size == 0 or not np.all(np.isfinite(value)) or np.any(value <= 0):
        raise ValueError(f"{what} must be positive and finite, got {value!r}.")
    return value


def mean_function(model, x):
    """f(x; theta*) as (n, K) float64 (traceable)."""
    return tf.cast(rules_lib.flat_outputs(model, x), F64)


def linearized_moments(model, curvature, tensors, x, joint):
    """(f(x; theta*) (n, K), curvature.covariance(x, tensors, joint)): the linearized
    predictive's moments, pure TensorFlow."""
    return mean_function(model, x), curvature.covariance(x, tensors, joint)


def softmax_hessian_sqrt(logits):
    """L (n, K, K) with L L^T = diag(p) - p p^T, p = softmax(logits): the
    categorical likelihood's Hessian in the logits."""
    p = tf.nn.softmax(logits)
    sqrt_p = tf.sqrt(p)
    return tf.linalg.diag(sqrt_p) - p[:, :, None] * sqrt_p[:, None, :]


class Laplace:
    """Linearized Laplace approximation with GGN curvature.

    Args:
      model: a trained, built Keras model with one output (n, K); its current
        weights are the MAP estimate theta*.
      likelihood: "regression" (Gaussian, noise variance s^2) or "classification"
        (categorical over K softmax logits; labels as ints (n,) or one-hot (n, K)).
      structure: a shorthand for (subset_of_weights, hessian_structure):
        "full", "diag", "kron" (K-FAC), "function_space" (all weights),
        "last_layer" (last layer, full), "last_layer_diag", "last_layer_kron",
        "last_layer_function_space". Default "full"; give either structure or
        the pair.
      prior_precision: delta: one float for all parameters, or a dict layer path ->
        float (every layer with trainable variables) for per-layer precisions.
      noise_variance: s^2 of the regression likelihood.
      subset_size: function space only, the number of training examples kept
        (a deterministic random subset by `seed`); None keeps all.
      subset_of_weights: "all", "last_layer" or a list of layer paths (keys of
        `groups`): the weights the posterior covers; the others stay at theta*.
      hessian_structure: "full", "diag", "kron" or "function_space".

    Attributes:
      structure: the shorthand of the pair ("subset_<hessian_structure>" for a list).
      groups: OrderedDict layer path -> trainable variables, all layers.
      covered_groups: the layers the posterior covers.
      jitter, condition_number: of the latest prediction's factorization.
    """

    def __init__(
        self,
        model,
        likelihood="regression",
        structure=None,
        prior_precision=1.0,
        noise_variance=1.0,
        subset_size=None,
        seed=0,
        *,
        subset_of_weights=None,
        hessian_structure=None,
    ):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        if structure is None and subset_of_weights is None and hessian_structure is None:
            structure = "full"
        self.subset_of_weights, self.hessian_structure = selection.resolve(
            structure, subset_of_weights, hessian_structure
        )
        if subset_size is not None and (
            self.hessian_structure != "function_space" or isinstance(subset_size, bool) or subset_size < 1
        ):
            raise ValueError("subset_size is a positive int, and only for the function-space structures.")
        self.model, self.likelihood = model, likelihood
        self.structure = selection.structure_name(self.subset_of_weights, self.hessian_structure)
        self.subset_size, self.seed = subset_size, seed
        self.groups = selection.parameter_groups(model)
        if not self.groups:
            raise ValueError(f"Model {model.name!r} has no trainable variables.")
        self.covered_groups = selection.select_groups(self.groups, self.subset_of_weights)
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
        self._log_delta = tf.Variable(np.log(_positive(delta, "prior_precision")), dtype=F64)
        self._log_noise = tf.Variable(math.log(_positive(noise_variance, "noise_variance")), dtype=F64)
        self._covered = [names.index(name) for name in self.covered_groups]
        self.curvature = None
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
        """s^2 of the regression likelihood (stored also for classification, unused there)."""
        return float(np.exp(self._log_noise.numpy()))

    @property
    def fitted(self):
        """Whether `fit` (or `load`) has accumulated the curvature."""
        return self.curvature is not None

    def _delta(self, prior_precision=None):
        """(G,) prior precisions, one per group; a shared precision is _log_delta[0]."""
        if prior_precision is None:
            delta = tf.exp(self._log_delta)
            return delta if self.per_layer else tf.broadcast_to(delta[0], delta.shape)
        if isinstance(prior_precision, dict):
            prior_precision = [prior_precision[name] for name in self.groups]
        delta = tf.convert_to_tensor(prior_precision, F64)
        return tf.broadcast_to(delta, [len(self.groups)])

    def _scale(self, noise_variance=None):
        if self.likelihood == "classification":
            return tf.constant(1.0, F64)
        s2 = tf.exp(self._log_noise) if noise_variance is None else tf.convert_to_tensor(noise_variance, F64)
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

    def _check_inputs(self, x):
        x = numerics.check_finite(np.asarray(x, self.model.inputs[0].dtype), "x")
        expected = tuple(self.model.input_shape[1:])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (examples, {', '.join(map(str, expected))}), got {x.shape}.")
        return x

    def _check_batch(self, x, y):
        x = self._check_inputs(x)
        y = numerics.check_finite(np.asarray(y), "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
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

    def _lambda_sqrt(self, f):
        if self.likelihood == "regression":
            return tf.eye(f.shape[1], batch_shape=[f.shape[0]], dtype=F64)
        return softmax_hessian_sqrt(f)

    # -- fitting ----------------------------------------------------------------
    def fit(self, data, batch_size=128):
        """Accumulate the curvature and the likelihood terms at the model's weights.

        Args:
          data: (x, y) arrays or a tf.data.Dataset of (x, y) batches.
        Returns:
          self.
        """
        curvature = self._make_curvature()
        if self.hessian_structure == "function_space" and self.subset_size is not None:
            data = self._subset(data)
        sse, log_lik, count = 0.0, 0.0, 0
        for x, y in self._batches(data, batch_size):
            f = mean_function(self.model, tf.constant(x))
            targets = self._targets(y, f.shape[1])
            if self.likelihood == "regression":
                sse += float(tf.reduce_sum((targets - f) ** 2))
                count += targets.size
            else:
                log_lik += float(tf.reduce_sum(targets * tf.nn.log_softmax(f)))
                count += targets.shape[0]
            curvature.accumulate(x, self._lambda_sqrt(f))
        if count == 0:
            raise ValueError("fit() received no examples.")
        curvature.finalize()
        theta_sq = [sum(float(tf.reduce_sum(tf.square(v))) for v in vs) for vs in self.groups.values()]
        self._sse, self._log_lik_classification, self._count = sse, log_lik, count
        self._theta_sq = tf.constant(theta_sq, F64)
        self.curvature = curvature
        return self

    def _make_curvature(self):
        index = {name: i for i, name in enumerate(self.groups)}
        return make_curvature(
            self.hessian_structure, self.model, self.covered_groups, index, shared_prior=not self.per_layer
        )

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
        if not self.fitted:
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
            log_lik = tf.constant(self._log_lik_classification, F64)
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
    def _factors(self):
        factors = self.curvature.factors(self._delta(), self._scale())
        self.jitter, self.condition_number = factors.jitter, factors.condition_number
        return factors

    def functional_covariance(self, x, joint=False):
        """Covariance of the linearized f at x (N, ...): (N, K, K), or (N K, N K) joint
        in [n, k] order, float64.

        Sets `jitter` (added to the inverted matrix) and `condition_number` (of the
        posterior precision; of I + c B in function space).
        """
        self._require_fit()
        x = self._check_inputs(x)
        return self.curvature.evaluate(x, self._factors(), joint)

    def predictive_functions(self):
        """The current posterior's prediction as pure TensorFlow functions (see
        `PredictiveFunctions`), the same covariance `functional_covariance` runs;
        `compile_predictive` traces them with a fixed input signature."""
        self._require_fit()
        factors = self._factors()
        moments = functools.partial(linearized_moments, self.model, self.curvature, factors.tensors)
        return PredictiveFunctions(
            model=self.model,
            likelihood=self.likelihood,
            noise_variance=self.noise_variance if self.likelihood == "regression" else 0.0,
            jitter=factors.jitter,
            marginal=functools.partial(moments, joint=False),
            joint=functools.partial(moments, joint=True),
        )

    def predict(self, x, joint=False, link="probit", samples=1000, observation_noise=False, seed=None):
        """Predictive at x (N, ...).

        Regression: a TFP distribution over f(x) (the function; observation noise s^2
        only with observation_noise=True): joint=False an Independent Normal with
        mean / variance (N, K); joint=True a MultivariateNormalTriL over the
        flattened (N K) outputs in [n, k] order.
        Classification: tfd.Categorical with probs (N, K) from the Gaussian over
        logits through the mean-field probit approximation (links.mean_field_probit)
        or Monte Carlo averaging of softmax over `samples` logit draws
        (links.monte_carlo, reproducible for an int `seed`).
        """
        if link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}, got {link!r}.")
        self._require_fit()
        x = self._check_inputs(x)
        mean = mean_function(self.model, tf.constant(x))
        cov = self.functional_covariance(x, joint=joint and self.likelihood == "regression")
        if self.likelihood == "regression":
            noise = self.noise_variance if observation_noise else 0.0
            if joint:
                cov = cov + noise * tf.eye(cov.shape[0], dtype=F64)
                distribution, factor = gp.joint_distribution(mean, cov, "predictive covariance")
                self.jitter = max(self.jitter, factor.jitter)
                return distribution
            return gp.marginal_distribution(mean, tf.linalg.diag_part(cov) + noise)
        if link == "probit":
            return tfd.Categorical(probs=links.mean_field_probit(mean, cov))
        seed = np.random.default_rng().integers(2**31) if seed is None else seed
        probs = links.monte_carlo(mean, cov, samples, tf.constant([seed, 0], tf.int64))
        return tfd.Categorical(probs=probs)

    # -- persistence ------------------------------------------------------------
    def save(self, directory, metadata=None):
        """Write the posterior as a posterior directory (model.keras, posterior.npz,
        metadata.json; see keras_ntk.predictive.posterior_format), atomically.

        Args:
          metadata: extra JSON-ready entries for metadata.json.
        Returns:
          the pathlib.Path of the directory.
        """
        self._require_fit()
        state = {
            "log_delta": self._log_delta.numpy(),
            "log_noise": self._log_noise.numpy(),
            "theta_sq": self._theta_sq.numpy(),
            "sse": self._sse,
            "log_lik_classification": self._log_lik_classification,
            "count": self._count,
            **{f"curvature/{k}": v for k, v in self.curvature.state().items()},
        }
        entries = {
            "subset_of_weights": self.subset_of_weights,
            "hessian_structure": self.hessian_structure,
            "prior_precision": self.prior_precision,
            "noise_variance": self.noise_variance,
            "per_layer": self.per_layer,
            "subset_size": self.subset_size,
            "seed": self.seed,
            "groups": list(self.groups),
        }
        return posterior_format.save(
            directory,
            posterior="laplace",
            likelihood=self.likelihood,
            structure=self.structure,
            state=state,
            model=self.model,
            entries=entries,
            extra=metadata,
        )

    @classmethod
    def load(cls, directory, model=None):
        """Restore a Laplace saved by `save`; `model` defaults to the saved model.keras
        (loaded with safe_mode=True). Raises posterior_format.CorruptPosterior (a
        ValueError) for a directory that is not a Laplace posterior."""
        saved = posterior_format.load(directory, "laplace", model)
        meta = saved.metadata
        if "hessian_structure" in meta:
            choice = dict(subset_of_weights=meta["subset_of_weights"], hessian_structure=meta["hessian_structure"])
        else:  # written before the pair was stored
            choice = dict(structure=meta["structure"])
        laplace = cls(
            saved.model,
            likelihood=meta["likelihood"],
            prior_precision=meta["prior_precision"],
            noise_variance=meta["noise_variance"],
            subset_size=meta["subset_size"],
            seed=meta["seed"],
            **choice,
        )
        laplace._restore(saved.state)
        return laplace

    def _restore(self, state):
        self._log_delta.assign(state["log_delta"])
        self._log_noise.assign(state["log_noise"])
        self._theta_sq = tf.constant(state["theta_sq"], F64)
        self._sse = float(state["sse"])
        self._log_lik_classification = float(state["log_lik_classification"])
        self._count = int(state["count"])
        curvature = self._make_curvature()
        prefix = "curvature/"
        curvature.restore({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        curvature.finalize()
        self.curvature = curvature


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
