"""Diagnostics of the kernel regime: kernel distances, scaling fits, the Gram's spectrum
and the Jacobian-stability conditions of natural gradient descent.

For inputs X (N, ...) and a model with K outputs, J is the (N K, P) Jacobian of the
flattened outputs over the trainable variables (rows ordered (example, output))
and G = J J^T (N K, N K) its Gram, the full empirical NTK. Zhang, Martens and
Grosse (2019) prove that natural gradient descent (Gauss-Newton for the squared
loss) on targets Y (N, K) converges at a rate independent of the data's
conditioning when, at theta_0,

  (i)  lambda_0 = lambda_min(G(theta_0)) > 0, and
  (ii) ||J(theta) - J(theta_0)||_2 <= (C/3) sqrt(lambda_0) for every theta in the
       ball ||theta - theta_0||_2 <= R = 3 ||Y - f(X; theta_0)||_F / sqrt(lambda_0),
       with a constant C <= 1/2.

`JacobianStability` measures both along a trajectory; `StabilityCallback` does it
during `fit`.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import dataclasses
import math
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_ntk import traced
from keras_ntk.ntk import empirical_ntk

# The theory's bound on the stability constant: condition (ii) needs C <= 1/2.
STABILITY_BOUND = 0.5


def relative_distance(kernel, reference):
    """||kernel - reference||_F / ||reference||_F for arrays of equal shape."""
    kernel = np.asarray(kernel, np.float64)
    reference = np.asarray(reference, np.float64)
    if kernel.shape != reference.shape:
        raise ValueError(f"Kernels must have equal shapes, got {kernel.shape} and {reference.shape}.")
    return float(np.linalg.norm(kernel - reference) / np.linalg.norm(reference))


def log_log_slope(x, y):
    """Least-squares slope of log(y) against log(x): the exponent a in y ~ x^a."""
    slope, _ = np.polyfit(np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64)), 1)
    return float(slope)


# -- the Gram G = J J^T and its spectrum ---------------------------------------------
def gram_matrix(model, x, dtype=tf.float64):
    """G = J J^T of a batch as a matrix: (N K, N K) float64 tf.Tensor.

    G[(i, k), (j, l)] = Theta(x_i, x_j)[k, l], the full empirical NTK (N, N, K, K)
    of keras-ntk's engine with row index i K + k, symmetrized. `dtype` is the
    engine's contraction dtype: float64 (default) makes G the exact Gram of
    the model's float32 factors up to float64 rounding; float32 is faster
    (about 2.5x for wide MLPs) with errors of about 1e-7 lambda_max. Run
    eagerly (the engine plans its tiles on the host).
    """
    kernel = empirical_ntk(model, x, output="full", dtype=dtype, progress=False)
    n, k = kernel.shape[0], kernel.shape[2]
    gram = tf.cast(tf.reshape(tf.transpose(kernel, (0, 2, 1, 3)), (n * k, n * k)), tf.float64)
    return 0.5 * (gram + tf.transpose(gram))


@dataclasses.dataclass(frozen=True)
class GramSpectrum:
    """Extreme eigenvalues of a Gram matrix G (n x n), from a float64 symmetric eigensolver.

    Attributes:
      lambda_min, lambda_max: smallest and largest eigenvalue.
      condition_number: lambda_max / lambda_min (inf when lambda_min <= 0).
      size: n.
    """

    lambda_min: float
    lambda_max: float
    condition_number: float
    size: int

    @property
    def positive_definite(self):
        """lambda_min > n eps lambda_max (eps = 2^-52): numerically of full rank.

        This is numpy's matrix-rank tolerance; below it lambda_min is rounding
        noise and condition (i) does not hold in floating point.
        """
        return bool(self.lambda_min > self.size * np.finfo(np.float64).eps * self.lambda_max)


def spectrum(gram):
    """`GramSpectrum` of a symmetric matrix (n, n) (array or tensor), float64 eigvalsh.

    TensorFlow's eigensolver, not numpy's: next to TensorFlow's thread pools,
    OpenBLAS's threads can make numpy's 50 times slower on a few shared cores.
    """
    gram = tf.convert_to_tensor(gram, tf.float64)
    if gram.shape.rank != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"The Gram matrix must be square, got shape {tuple(gram.shape)}.")
    eigenvalues = tf.linalg.eigvalsh(0.5 * (gram + tf.transpose(gram))).numpy()
    smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
    condition = largest / smallest if smallest > 0 else math.inf
    return GramSpectrum(smallest, largest, condition, gram.shape[0])


def gram_spectrum(model, x):
    """`GramSpectrum` of G = J J^T (N K, N K) of `model` on inputs x (N, ...)."""
    return spectrum(gram_matrix(model, x))


# -- ||J(theta) - J(theta_ref)||_2 by Lanczos on products ------------------------------
_PRODUCTS = weakref.WeakKeyDictionary()


def _difference_products(model):
    """Compiled (theta, theta_ref, x, v) -> D D^T v, D = J(theta) - J(theta_ref), v (N K,).

    D^T v is two vector-Jacobian products (one per parameter set) and D u two
    forward-mode Jacobian-vector products; the model is evaluated at either set
    with Keras' stateless_call, so its variables are never changed.
    """
    if model not in _PRODUCTS:
        non_trainable = model.non_trainable_variables

        def outputs(theta, x):
            out, _ = model.stateless_call(theta, [v.value for v in non_trainable], x, training=False)
            return tf.reshape(out, (tf.shape(out)[0], -1))

        def vjp(theta, x, v):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(theta)
                f = outputs(theta, x)
            return tape.gradient(f, theta, output_gradients=tf.reshape(tf.cast(v, f.dtype), tf.shape(f)),
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        def jvp(theta, x, u):
            with tf.autodiff.ForwardAccumulator(theta, u) as accumulator:
                f = outputs(theta, x)
            return tf.reshape(accumulator.jvp(f, unconnected_gradients=tf.UnconnectedGradients.ZERO), (-1,))

        def product(theta, theta_ref, x, v):
            u = [a - b for a, b in zip(vjp(theta, x, v), vjp(theta_ref, x, v))]
            return tf.cast(jvp(theta, x, u) - jvp(theta_ref, x, u), tf.float64)

        _PRODUCTS[model] = traced.per_object(product, reduce_retracing=True)
    return _PRODUCTS[model]


def largest_eigenvalue(matvec, size, *, tolerance=1e-6, max_iterations=None, seed=0):
    """Largest eigenvalue of a symmetric positive semi-definite operator by Lanczos.

    Lanczos with full reorthogonalization from a seeded random start; stops when
    the Ritz residual bound beta_j |s_j| is at most tolerance times the largest
    Ritz value, or after max_iterations (default `size`, where the Krylov space
    is the whole space and the value exact up to rounding).

    Args:
      matvec: function (size,) float64 numpy -> (size,) array, v -> A v.
      size: dimension n of A.
    Returns:
      float, the largest Ritz value (>= 0 up to rounding).
    """
    steps = size if max_iterations is None else min(size, int(max_iterations))
    q = np.random.default_rng(seed).standard_normal(size)
    basis = [q / np.linalg.norm(q)]
    alphas, betas = [], []
    top = 0.0
    for _ in range(steps):
        w = np.asarray(matvec(basis[-1]), np.float64)
        alphas.append(float(basis[-1] @ w))
        q_matrix = np.array(basis)
        for _ in range(2):
            w = w - q_matrix.T @ (q_matrix @ w)
        beta = float(np.linalg.norm(w))
        tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        values, vectors = np.linalg.eigh(tridiagonal)
        top = float(values[-1])
        if beta * abs(vectors[-1, -1]) <= tolerance * abs(top) or beta == 0.0:
            break
        betas.append(beta)
        basis.append(w / beta)
    return top


def jacobian_distance(model, reference, x, *, tolerance=1e-6, max_iterations=None):
    """||J(theta) - J(theta_ref)||_2, the spectral norm of the (N K, P) difference.

    theta are `model`'s current trainable variables, theta_ref the arrays in
    `reference` (same shapes). Lanczos (`largest_eigenvalue`) on D D^T, D =
    J(theta) - J(theta_ref), whose products take two VJPs and two JVPs; neither
    Jacobian nor any P x P matrix is formed. The products run in the model's
    dtype: in float32 the result has an absolute floor of about 1e-7 ||J||_2.

    Args:
      reference: list of arrays aligned with model.trainable_variables.
      x: (N, ...) inputs.
    Returns:
      float.
    """
    variables = model.trainable_variables
    if len(reference) != len(variables) or any(
        tuple(np.shape(r)) != tuple(v.shape) for r, v in zip(reference, variables)
    ):
        raise ValueError(
            "reference must hold one array per trainable variable of the model, with shapes "
            f"{[tuple(v.shape) for v in variables]}, got {[tuple(np.shape(r)) for r in reference]}."
        )
    theta = [tf.convert_to_tensor(v.value) for v in variables]
    theta_ref = [tf.convert_to_tensor(r, v.dtype) for r, v in zip(reference, variables)]
    x = tf.convert_to_tensor(x, model.inputs[0].dtype if getattr(model, "inputs", None) else None)
    product = _difference_products(model)
    size = int(x.shape[0]) * int(np.prod(model(x[:1], training=False).shape[1:]))
    top = largest_eigenvalue(
        lambda v: product(theta, theta_ref, x, tf.constant(v)).numpy(), size,
        tolerance=tolerance, max_iterations=max_iterations,
    )
    return math.sqrt(max(top, 0.0))


def ball_radius(residual_norm, lambda_min):
    """R = 3 ||Y - f(X; theta_0)||_F / sqrt(lambda_0), the radius of condition (ii)'s ball."""
    if not lambda_min > 0:
        return 0.0
    return 3.0 * float(residual_norm) / math.sqrt(lambda_min)


# -- the conditions along a trajectory -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StabilityRecord:
    """One measurement at the current parameters theta_t.

    Attributes:
      parameter_distance: ||theta_t - theta_0||_2.
      inside_ball: parameter_distance <= R.
      jacobian_distance: ||J(theta_t) - J(theta_0)||_2.
      stability_constant: the running C' (see `JacobianStability`).
      lambda_min: lambda_min(G(theta_t)).
      ntk_change: ||G(theta_t) - G(theta_0)||_F / ||G(theta_0)||_F.
      loss: 1/(2N) ||Y - f(X; theta_t)||_F^2.
    """

    parameter_distance: float
    inside_ball: bool
    jacobian_distance: float
    stability_constant: float
    lambda_min: float
    ntk_change: float
    loss: float

    def as_logs(self):
        """The record as float-valued log entries (names as in `StabilityCallback`)."""
        return {
            "gram_lambda_min": self.lambda_min,
            "jacobian_distance": self.jacobian_distance,
            "stability_constant": self.stability_constant,
            "ntk_change": self.ntk_change,
            "diagnostic_loss": self.loss,
            "parameter_distance": self.parameter_distance,
            "inside_ball": float(self.inside_ball),
        }


class JacobianStability:
    """Zhang et al.'s conditions (see the module docstring) along a trajectory.

    At construction, theta_0 = the model's current trainable variables (copied),
    G_0 = G(theta_0) on X, lambda_0 = lambda_min(G_0) and R = 3 ||Y - f(X;
    theta_0)||_F / sqrt(lambda_0). Each `measure()` at the model's current theta_t
    records a `StabilityRecord`. The empirical stability constant is

        C' = 3 max_t ||J(theta_t) - J(theta_0)||_2 / sqrt(lambda_0)

    over the measured iterates with ||theta_t - theta_0||_2 <= R (theta_0 itself
    counts, with distance 0): the smallest C for which condition (ii) holds at
    those iterates, hence a lower bound on the C the theorem needs over the
    whole ball. Condition (ii) holds empirically when C' <= 1/2.

    Args:
      model: a built Keras model with one input and one output.
      x: (N, ...) inputs; y: (N, K) targets (or the model's output shape).
      tolerance, max_iterations: of the Lanczos iteration (`jacobian_distance`).
    """

    def __init__(self, model, x, y, *, tolerance=1e-6, max_iterations=None):
        self.model = model
        self.x = np.asarray(x, model.inputs[0].dtype if getattr(model, "inputs", None) else np.float32)
        self.y = np.asarray(y, np.float64).reshape(len(self.x), -1)
        self.tolerance, self.max_iterations = tolerance, max_iterations
        self.theta_0 = [np.array(v.numpy()) for v in model.trainable_variables]
        self.gram_0 = gram_matrix(model, self.x).numpy()
        self.initial = spectrum(self.gram_0)
        self.residual_norm_0 = float(np.linalg.norm(self.y - self._outputs()))
        self.radius = ball_radius(self.residual_norm_0, self.initial.lambda_min)
        self.records = []
        self._largest_inside = 0.0

    def _outputs(self):
        f = self.model(self.x, training=False).numpy().astype(np.float64)
        return f.reshape(len(self.x), -1)

    @property
    def stability_constant(self):
        """C' over the iterates measured so far (0 before any)."""
        if not self.initial.lambda_min > 0:
            return math.inf
        return 3.0 * self._largest_inside / math.sqrt(self.initial.lambda_min)

    def conditions(self):
        """{"lambda_min_positive": (i) holds numerically (`GramSpectrum.positive_definite`),
        "jacobian_stable": C' <= 1/2 over the iterates measured so far}."""
        return {
            "lambda_min_positive": self.initial.positive_definite,
            "jacobian_stable": self.stability_constant <= STABILITY_BOUND,
        }

    def measure(self):
        """Measure at the model's current parameters; returns and keeps a `StabilityRecord`."""
        variables = self.model.trainable_variables
        distance = math.sqrt(sum(float(np.sum((v.numpy() - t) ** 2)) for v, t in zip(variables, self.theta_0)))
        inside = distance <= self.radius
        jac = jacobian_distance(
            self.model, self.theta_0, self.x, tolerance=self.tolerance, max_iterations=self.max_iterations
        )
        if inside:
            self._largest_inside = max(self._largest_inside, jac)
        gram = gram_matrix(self.model, self.x).numpy()
        residual = self.y - self._outputs()
        record = StabilityRecord(
            parameter_distance=distance,
            inside_ball=inside,
            jacobian_distance=jac,
            stability_constant=self.stability_constant,
            lambda_min=spectrum(gram).lambda_min,
            ntk_change=relative_distance(gram, self.gram_0),
            loss=float(0.5 * np.sum(residual**2) / len(self.x)),
        )
        self.records.append(record)
        return record


# What tensorboard's tf.summary.scalar attaches (written here without the tensorboard package).
_SCALAR = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
)


class StabilityCallback(keras.callbacks.Callback):
    """Records Zhang et al.'s stability diagnostics during `fit`, into History.

    At the start of training a `JacobianStability` is set up on (x, y) at the
    initial weights; at the end of every `every`-th epoch it measures and adds
    to the epoch's logs (hence to History, and to TensorBoard when `log_dir` is
    given): gram_lambda_min (lambda_min of G_t), jacobian_distance
    (||J_t - J_0||_2), stability_constant (the running C'), ntk_change
    (||G_t - G_0||_F / ||G_0||_F), diagnostic_loss (1/(2N) ||Y - f_t||_F^2),
    parameter_distance (||theta_t - theta_0||_2) and inside_ball (1.0 or 0.0).
    With every > 1 those History lists hold one value per measured epoch.

    Args:
      x: (N, ...) inputs; y: (N, K) targets. The measurements cost a Gram of N K
        rows and a Lanczos run of two VJPs and two JVPs per iteration.
      model: the model whose Jacobian is tracked (default: the model being fit).
      every: measure every `every` epochs.
      log_dir: a directory for TensorBoard scalars (one per record, step = epoch).
      tolerance, max_iterations: see `jacobian_distance`.
    Attributes:
      tracker: the `JacobianStability` (its `initial` spectrum, `radius`, `records`).
    """

    def __init__(self, x, y, *, model=None, every=1, log_dir=None, tolerance=1e-6, max_iterations=None):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (epochs between measurements), got {every!r}.")
        self.x, self.y, self.tracked_model, self.every = x, y, model, every
        self.log_dir, self.tolerance, self.max_iterations = log_dir, tolerance, max_iterations
        self.tracker = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self.tracker = JacobianStability(
            self.tracked_model or self.model, self.x, self.y,
            tolerance=self.tolerance, max_iterations=self.max_iterations,
        )
        if self.log_dir is not None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        entries = self.tracker.measure().as_logs()
        if logs is not None:
            logs.update(entries)
        if self._writer is not None:
            with self._writer.as_default():
                for name, value in entries.items():
                    tf.summary.write(name, tf.constant(value, tf.float32), step=epoch, metadata=_SCALAR)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
