"""Natural gradient / damped Gauss-Newton steps in function space, for `fit` and custom loops.

For a batch x (B, ...) with flattened outputs f (B, K), J the (B K, P) Jacobian
df/dtheta over the trainable variables (rows ordered (example, output)), and the
summed loss L(theta) = sum_i w_i l(f_i, y_i) with output gradient g = dL/df and
output Hessian Lambda = d^2 L/df^2 (both stacked to B K; Lambda block diagonal,
K x K per example), one step with damping lambda > 0 and learning rate eta is the
damped generalized Gauss-Newton (GGN) step

    dtheta = -eta (J^T Lambda J + lambda I_P)^-1 J^T g
           = -eta J^T (Lambda G + lambda I_BK)^-1 g,          G = J J^T (B K, B K),

the second line by the push-through identity
(J^T Lambda J + lambda I) J^T = J^T (Lambda G + lambda I). Losses:

  "squared_error"             l = 1/2 ||f - y||^2: g = f - y = r, Lambda = I, so
                              dtheta = -eta J^T (G + lambda I)^-1 r, natural gradient
                              descent with the batch's empirical NTK G;
  "categorical_crossentropy"  l = -sum_k y_k log softmax(f)_k (f are logits,
                              y probabilities or one-hot): with p = softmax(f) and
                              s = sum_k y_k, g = s p - y and Lambda = s (diag p - p p^T).

Sample weights w_i scale g_i and Lambda_i. G is the batch's full empirical NTK
(B, B, K, K) from keras-ntk's engine, reshaped to (B K, B K); the B K system is
solved in float64 (LU with partial pivoting; Lambda G + lambda I is not symmetric
for cross-entropy, its eigenvalues are >= lambda); J^T alpha is one
vector-Jacobian product, the gradient of sum(f * alpha). Memory is
O(P + (B K)^2): no P x P matrix and no Jacobian of this batch is formed by the step.

Levenberg-Marquardt adaptation (adaptive_damping=True): after the step, the
actual change of the batch loss is compared with the change the quadratic model
predicts, q = g^T df + 1/2 df^T Lambda df with df = J dtheta = -eta G alpha
(the GGN model without the damping term), rho = actual / predicted. The step is
kept when rho > 0 (the loss went down) and undone otherwise; lambda is multiplied
by damping_factor when rho < 1/4, divided by it when rho > 3/4, and kept in
[min_damping, max_damping]. With adaptive_damping=False every step is kept and
lambda stays fixed.

The model runs in inference mode (training=False) in every step, as in the NTK
engine: the NTK is defined for layers whose examples stay independent.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import collections

import keras
import tensorflow as tf

from keras_ntk import traced
from keras_ntk import diagnostics

LOSSES = ("squared_error", "categorical_crossentropy")

# One batch's linearization: pre-step outputs and flat f (B, K) with the tape that
# recorded them, summed loss, g (B K,), Lambda blocks (B, K, K), G (B K, B K), alpha (B K,).
_Solution = collections.namedtuple("_Solution", "outputs tape f loss g hessian gram alpha")


class _SquaredError:
    """l(f, y) = 1/2 ||f - y||^2 per example, for f, y (B, K) float64."""

    @staticmethod
    def per_example(f, y):
        return 0.5 * tf.reduce_sum((f - y) ** 2, axis=-1)

    @staticmethod
    def output_gradient(f, y):
        return f - y

    @staticmethod
    def output_hessian(f, y):
        return tf.eye(tf.shape(f)[1], batch_shape=tf.shape(f)[:1], dtype=f.dtype)


class _SoftmaxCrossEntropy:
    """l(f, y) = -sum_k y_k log softmax(f)_k per example, for logits f, targets y (B, K)."""

    @staticmethod
    def per_example(f, y):
        return -tf.reduce_sum(y * tf.nn.log_softmax(f, axis=-1), axis=-1)

    @staticmethod
    def output_gradient(f, y):
        return tf.reduce_sum(y, axis=-1, keepdims=True) * tf.nn.softmax(f, axis=-1) - y

    @staticmethod
    def output_hessian(f, y):
        p = tf.nn.softmax(f, axis=-1)
        total = tf.reduce_sum(y, axis=-1)[:, None, None]
        return total * (tf.linalg.diag(p) - p[:, :, None] * p[:, None, :])


_LOSS_CLASSES = {"squared_error": _SquaredError, "categorical_crossentropy": _SoftmaxCrossEntropy}


def _flat_pair(outputs, y):
    """Outputs (B, ...) as f (B, K) and targets as (B, K) float64; ValueError if K differs."""
    f = tf.reshape(outputs, (tf.shape(outputs)[0], -1))
    y = tf.convert_to_tensor(y)
    flat = tf.reshape(y, (tf.shape(y)[0], -1)) if y.shape.rank else y
    if flat.shape.rank != 2 or (None not in (flat.shape[1], f.shape[1]) and flat.shape[1] != f.shape[1]):
        raise ValueError(
            f"y must have {f.shape[1]} values per example to match the model's output "
            f"{tuple(outputs.shape[1:])}, got y of shape {tuple(y.shape)}."
        )
    return f, tf.cast(flat, tf.float64)


def _weights(sample_weight, batch):
    if sample_weight is None:
        return tf.ones((batch,), tf.float64)
    return tf.reshape(tf.cast(sample_weight, tf.float64), (batch,))


def _check_positive(value, what, hint):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}. {hint}")
    return float(value)


class NaturalGradient:
    """Damped Gauss-Newton (natural-gradient) steps on the trainable variables of `model`.

    See the module docstring for the step, the losses and the damping rule.

    Args:
      model: a built Keras model with one input and one output tensor
        (K = its flattened output size per example).
      loss: "squared_error" or "categorical_crossentropy" (the model outputs logits).
      damping: lambda > 0, in units of the summed batch loss (initial value when adaptive).
      adaptive_damping: Levenberg-Marquardt accept/reject and adaptation of lambda.
      learning_rate: eta > 0 (1 is the full Gauss-Newton step).
      damping_factor: > 1, lambda's factor per adaptation.
      min_damping, max_damping: bounds of the adapted lambda.
      gram_dtype: dtype of the Gram's contraction in the NTK engine (the
        solve is float64 either way): "float32" (default) is faster, and its
        rounding, about 1e-7 lambda_max(G), acts as a floor on the effective
        damping; "float64" removes it.

    Attributes:
      damping, learning_rate: float64 tf.Variables, assignable between steps.

    Use `step(x, y)` in a custom loop (compiled), `apply(x, y)` inside your own
    tf.function, or `NaturalGradientModel` to train with `fit`.
    """

    def __init__(
        self,
        model,
        loss="squared_error",
        *,
        damping=1.0,
        adaptive_damping=True,
        learning_rate=1.0,
        damping_factor=2.0,
        min_damping=1e-8,
        max_damping=1e8,
        gram_dtype="float32",
    ):
        if loss not in _LOSS_CLASSES:
            raise ValueError(
                f"loss must be one of {LOSSES}, got {loss!r}. The Gauss-Newton step needs the "
                "loss's output Hessian, which keras-ntk has for these two; for a classifier use "
                "'categorical_crossentropy' on logits (one-hot targets)."
            )
        if not getattr(model, "built", False):
            raise ValueError("NaturalGradient needs a built model; call the model on a batch first.")
        if not model.trainable_variables:
            raise ValueError(
                f"Model {model.name!r} has no trainable variables, so there is nothing for the "
                "natural-gradient step to update. Set `trainable = True` on the layers to train."
            )
        hint = "lambda > 0 keeps Lambda J J^T + lambda I invertible; try 1.0 with adaptive_damping=True."
        damping = _check_positive(damping, "damping", hint)
        learning_rate = _check_positive(learning_rate, "learning_rate", "1.0 is the full Gauss-Newton step.")
        self.min_damping = _check_positive(min_damping, "min_damping", hint)
        self.max_damping = _check_positive(max_damping, "max_damping", hint)
        if not self.min_damping <= damping <= self.max_damping:
            raise ValueError(
                f"damping {damping!r} must lie in [min_damping, max_damping] = "
                f"[{self.min_damping!r}, {self.max_damping!r}]; widen the bounds or change damping."
            )
        if isinstance(damping_factor, bool) or not isinstance(damping_factor, (int, float)) or not damping_factor > 1:
            raise ValueError(f"damping_factor must be > 1, got {damping_factor!r}; e.g. 2.")
        self.damping_factor = float(damping_factor)
        if gram_dtype not in ("float32", "float64", tf.float32, tf.float64):
            raise ValueError(f"gram_dtype must be 'float32' or 'float64', got {gram_dtype!r}.")
        self.gram_dtype = tf.as_dtype(gram_dtype)
        self.model = model
        self.loss = loss
        self.adaptive_damping = bool(adaptive_damping)
        self.damping = tf.Variable(damping, dtype=tf.float64, trainable=False, name="damping")
        self.learning_rate = tf.Variable(learning_rate, dtype=tf.float64, trainable=False, name="learning_rate")
        self._loss = _LOSS_CLASSES[loss]
        self._compiled_step = traced.per_object(self.apply, reduce_retracing=True)

    # -- pieces of the step -----------------------------------------------------
    def per_example_loss(self, outputs, y, sample_weight=None):
        """w_i l(f_i, y_i) for outputs (B, ...) and targets with K values per example: (B,) float64."""
        f, y = _flat_pair(outputs, y)
        return _weights(sample_weight, tf.shape(f)[0]) * self._loss.per_example(tf.cast(f, tf.float64), y)

    def batch_loss(self, x, y, sample_weight=None):
        """Summed loss sum_i w_i l(f(x_i), y_i) of a batch, float64 scalar."""
        return tf.reduce_sum(self.per_example_loss(self.model(x, training=False), y, sample_weight))

    def _gram(self, x, size):
        """The batch's G = J J^T (B K, B K) float64 from the NTK engine (run eagerly)."""
        gram = tf.py_function(
            lambda batch: diagnostics.gram_matrix(self.model, batch, self.gram_dtype), [x], tf.float64
        )
        return tf.reshape(gram, (size, size))

    def _solve(self, x, y, sample_weight):
        """The batch's `_Solution`: alpha = (Lambda G + lambda I)^-1 g in float64."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([v.value for v in self.model.trainable_variables])
            outputs = self.model(x, training=False)
            f, y = _flat_pair(outputs, y)
        batch, k = tf.shape(f)[0], tf.shape(f)[1]
        f64 = tf.cast(f, tf.float64)
        w = _weights(sample_weight, batch)
        loss = tf.reduce_sum(w * self._loss.per_example(f64, y))
        g = tf.reshape(w[:, None] * self._loss.output_gradient(f64, y), (-1,))
        hessian = w[:, None, None] * self._loss.output_hessian(f64, y)
        size = batch * k
        gram = self._gram(x, size)
        hessian_gram = tf.reshape(
            tf.einsum("bkm,bmn->bkn", hessian, tf.reshape(gram, (batch, k, size))), (size, size)
        )
        system = hessian_gram + self.damping * tf.eye(size, dtype=tf.float64)
        alpha = tf.linalg.solve(system, g[:, None])[:, 0]
        return _Solution(outputs, tape, f, loss, g, hessian, gram, alpha)

    def direction(self, x, y, sample_weight=None):
        """The step dtheta = -eta J^T (Lambda G + lambda I)^-1 g, not applied.

        Args:
          x: (B, ...) inputs; y: targets with K values per example, (B, K) or
            the model's output shape; sample_weight: optional (B,).
        Returns:
          list of tensors shaped like model.trainable_variables.
        """
        return self._vjp_step(self._solve(x, y, sample_weight))

    def _vjp_step(self, solution):
        """-eta J^T alpha: one vector-Jacobian product through the solution's tape."""
        f = solution.f
        cotangent = tf.cast(tf.reshape(solution.alpha, tf.shape(f)), f.dtype)
        vjp = solution.tape.gradient(
            f, [v.value for v in self.model.trainable_variables], output_gradients=cotangent,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        scale = tf.cast(-self.learning_rate, f.dtype)
        return [scale * v for v in vjp]

    # -- the step -------------------------------------------------------------
    def apply(self, x, y, sample_weight=None):
        """Take one step on the batch (x, y); traceable inside a tf.function.

        Returns:
          dict of tensors: "outputs" (the model's outputs before the step),
          "loss" (sum_i w_i l_i / B before the step), "damping" (lambda after the
          adaptation), "accepted" (1.0 if the step was kept, else 0.0), "rho"
          (actual over predicted decrease; NaN with fixed damping).
        """
        solution = self._solve(x, y, sample_weight)
        step = self._vjp_step(solution)
        outputs, loss, g = solution.outputs, solution.loss, solution.g
        variables = self.model.trainable_variables
        batch = tf.cast(tf.shape(solution.f)[0], tf.float64)
        if not self.adaptive_damping:
            for variable, delta in zip(variables, step):
                variable.assign_add(delta)
            nan = tf.constant(float("nan"), tf.float64)
            return dict(outputs=outputs, loss=loss / batch, damping=tf.identity(self.damping),
                        accepted=tf.constant(1.0, tf.float64), rho=nan)

        delta_f = -self.learning_rate * tf.linalg.matvec(solution.gram, solution.alpha)
        blocks = tf.reshape(delta_f, tf.shape(solution.f))
        predicted = tf.tensordot(g, delta_f, 1) + 0.5 * tf.reduce_sum(
            blocks * tf.linalg.matvec(solution.hessian, blocks)
        )
        before = [tf.identity(v.value) for v in variables]
        for variable, delta in zip(variables, step):
            variable.assign_add(delta)
        actual = self.batch_loss(x, y, sample_weight) - loss
        rho = actual / tf.minimum(predicted, -tf.constant(1e-300, tf.float64))
        accepted = rho > 0
        for variable, value in zip(variables, before):
            variable.assign(tf.where(accepted, variable, value))
        factor = tf.constant(self.damping_factor, tf.float64)
        damping = tf.where(tf.logical_not(rho >= 0.25), self.damping * factor,
                           tf.where(rho > 0.75, self.damping / factor, self.damping))
        self.damping.assign(tf.clip_by_value(damping, self.min_damping, self.max_damping))
        return dict(outputs=outputs, loss=loss / batch, damping=tf.identity(self.damping),
                    accepted=tf.cast(accepted, tf.float64), rho=rho)

    def step(self, x, y, sample_weight=None):
        """`apply` compiled with tf.function (one trace per input shape); see `apply`."""
        return self._compiled_step(x, y, sample_weight)


@keras.saving.register_keras_serializable(package="keras_ntk")
class NaturalGradientModel(keras.Model):
    """A Keras model whose `fit` takes natural-gradient (damped Gauss-Newton) steps.

    Wraps `model` (its variables are this model's variables; calling this model
    calls it). `train_step` takes one `NaturalGradient` step per batch, so `fit`
    works with callbacks, History, validation data, sample weights and
    `steps_per_execution`. The logs hold "loss" (the epoch's mean batch loss
    before each step, see `NaturalGradient.apply`), the compiled metrics on the
    pre-step outputs, and "damping" and "accepted" of the epoch's last step;
    `evaluate` and validation report the same loss.

    Compile with `compile(metrics=...)` and no optimizer or loss: the step is the
    optimizer and the loss is set here. The Gram comes from the NTK engine run
    eagerly through tf.py_function, which XLA cannot compile, so
    jit_compile=True raises ValueError and "auto" means False.

    Args:
      model: the built Keras model to train, (B, ...) -> (B, ...) with K outputs.
      loss, damping, adaptive_damping, learning_rate, damping_factor,
      min_damping, max_damping, gram_dtype: see `NaturalGradient`.
    """

    def __init__(self, model, loss="squared_error", *, damping=1.0, adaptive_damping=True,
                 learning_rate=1.0, damping_factor=2.0, min_damping=1e-8, max_damping=1e8,
                 gram_dtype="float32", **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self._settings = dict(loss=loss, damping=damping, adaptive_damping=adaptive_damping,
                              learning_rate=learning_rate, damping_factor=damping_factor,
                              min_damping=min_damping, max_damping=max_damping, gram_dtype=gram_dtype)
        self.natural_gradient = NaturalGradient(model, **self._settings)
        self.built = True  # the wrapped model is built (NaturalGradient checks it)

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compile(self, optimizer=None, loss=None, *, jit_compile="auto", **kwargs):
        if optimizer is not None:
            raise ValueError(
                "NaturalGradientModel takes its own natural-gradient steps: compile it without an "
                "optimizer, and set learning_rate / damping on NaturalGradientModel."
            )
        if loss is not None:
            raise ValueError(
                f"NaturalGradientModel's loss is set when it is built (here {self._settings['loss']!r}); "
                "compile it without `loss`."
            )
        if jit_compile is True:
            raise ValueError(
                "NaturalGradientModel cannot run under XLA: its Gram J J^T comes from keras-ntk's NTK "
                "engine through tf.py_function. Use jit_compile=False (what 'auto' means here)."
            )
        super().compile(optimizer=None, jit_compile=False, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean over the batch of w_i l(f(x_i), y_i), the loss the step minimizes."""
        loss = tf.reduce_mean(self.natural_gradient.per_example_loss(y_pred, y, sample_weight))
        return tf.cast(loss, keras.backend.floatx())

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        result = self.natural_gradient.apply(x, y, sample_weight)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(result["loss"], sample_weight=tf.shape(result["outputs"])[0])
        logs = self.compute_metrics(x, y, result["outputs"], sample_weight=sample_weight)
        return {**logs, "damping": result["damping"], "accepted": result["accepted"]}

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))

    def get_config(self):
        return {**super().get_config(), **self._settings,
                "model": keras.saving.serialize_keras_object(self.model)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)
