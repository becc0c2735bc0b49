"""Continual learning: accuracy matrices, forgetting, and how far the NTK moves per task.

A stream of T tasks is trained in order, one ``model.fit`` per task. The accuracy
matrix R (T, T) holds R[i, j] = accuracy on task j's test set after training on
tasks 0..i. From it:

* average accuracy   A = (1/T) sum_j R[T-1, j]   (the final row);
* learning accuracy  L = (1/T) sum_j R[j, j]     (each task right after its training);
* forgetting of an old task j < T-1
      f_j = max_{j <= l <= T-2} R[l, j] - R[T-1, j],
  the best accuracy it had after it was learned minus its final accuracy
  (Chaudhry et al. 2018); negative when a task improves later (backward
  transfer); average forgetting F = (1/(T-1)) sum_{j<T-1} f_j.

Heads. A model with H heads of C classes outputs logits (N, H * C), head h being
columns h*C .. h*C + C - 1. Labels carry their head: a coded label is
``h * C + c`` for class c of head h (:func:`head_labels`), so one compiled model
trains every task: :class:`MultiHeadCrossEntropy` and :class:`MultiHeadAccuracy`
score each example on its own head only. Multi-head (task-incremental)
evaluation gives task t head t; single-head evaluation is H = 1 (coded label =
class label, argmax over all outputs).

The NTK's relative change across task i is
||Theta_end - Theta_start||_F / ||Theta_start||_F on a fixed probe set, Theta the
empirical NTK (trace over outputs, (P, P)) when the task's fit starts and ends
(:class:`NTKChangeCallback`); small values mean lazy, kernel-regime training.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import keras
import numpy as np
import tensorflow as tf

from keras_ntk import diagnostics
from keras_ntk.ntk import empirical_ntk

__all__ = [
    "AccuracyMatrixCallback",
    "MultiHeadAccuracy",
    "MultiHeadCrossEntropy",
    "NTKChangeCallback",
    "TargetAccuracyStopping",
    "average_accuracy",
    "average_forgetting",
    "forgetting",
    "head_labels",
    "learning_accuracy",
    "task_accuracy",
]


# ------------------------------------------------------------------ the accuracy matrix


def _checked_matrix(matrix):
    r = np.asarray(matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(
            f"The accuracy matrix must be square (T, T) with T >= 1 tasks, got shape {r.shape}."
        )
    unfilled = np.flatnonzero(~np.all(np.isfinite(r), axis=1))
    if unfilled.size:
        raise ValueError(
            f"Rows {unfilled.tolist()} of the accuracy matrix are not finite: every task of "
            "the stream must be trained (and evaluated) before the metrics are computed."
        )
    return r


def average_accuracy(matrix):
    """Mean final accuracy (1/T) sum_j R[T-1, j] of an accuracy matrix R (T, T)."""
    return float(np.mean(_checked_matrix(matrix)[-1]))


def learning_accuracy(matrix):
    """Mean accuracy right after training, (1/T) sum_j R[j, j], of R (T, T)."""
    return float(np.mean(np.diag(_checked_matrix(matrix))))


def forgetting(matrix):
    """Forgetting of each old task: f_j = max_{j<=l<=T-2} R[l, j] - R[T-1, j].

    Args:
      matrix: accuracy matrix R (T, T), T >= 2, R[i, j] the accuracy on task j
        after training on task i.
    Returns:
      float64 (T-1,): f_j for j = 0..T-2 (negative where a task improved later).
    """
    r = _checked_matrix(matrix)
    t = r.shape[0]
    if t < 2:
        raise ValueError("Forgetting needs at least two tasks (an old task and a later one).")
    learned = np.tril(np.ones((t - 1, t - 1), dtype=bool))  # row l >= column j
    best = np.max(np.where(learned, r[:-1, :-1], -np.inf), axis=0)
    return best - r[-1, :-1]


def average_forgetting(matrix):
    """Mean forgetting (1/(T-1)) sum_{j<T-1} f_j of R (T, T); see :func:`forgetting`."""
    return float(np.mean(forgetting(matrix)))


# --------------------------------------------------------------------------- heads


def head_labels(y, head, classes_per_head):
    """Coded labels ``head * classes_per_head + y`` for class labels y (N,) of one head.

    Returns int64 (N,). Raises ValueError for labels outside 0..classes_per_head-1.
    """
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be integer class labels of shape (N,), got {y.dtype} {y.shape}.")
    if y.size and (y.min() < 0 or y.max() >= classes_per_head):
        raise ValueError(
            f"Labels of one head must lie in 0..{classes_per_head - 1}, got {y.min()}..{y.max()}; "
            "remap them per task (e.g. task_stream(..., remap_labels=True))."
        )
    return (int(head) * int(classes_per_head) + y).astype(np.int64)


def _head_logits(y_true, y_pred, classes_per_head):
    """The logits (N, C) of each example's own head and its class within it (N,)."""
    outputs = y_pred.shape[-1]
    if outputs is not None and outputs % classes_per_head:
        raise ValueError(
            f"The model has {outputs} outputs, not a multiple of classes_per_head="
            f"{classes_per_head}; a model with H heads must output H * classes_per_head logits."
        )
    coded = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    heads = tf.reshape(y_pred, [tf.shape(y_pred)[0], -1, classes_per_head])
    return tf.gather(heads, coded // classes_per_head, axis=1, batch_dims=1), coded % classes_per_head


def _check_classes(classes_per_head):
    if isinstance(classes_per_head, bool) or not isinstance(classes_per_head, (int, np.integer)) \
            or classes_per_head < 1:
        raise ValueError(f"classes_per_head must be a positive int, got {classes_per_head!r}.")
    return int(classes_per_head)


@keras.saving.register_keras_serializable(package="keras_ntk")
class MultiHeadCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy of each example on its own head.

    y_true: coded labels (N,) or (N, 1) (:func:`head_labels`); y_pred: logits
    (N, H * classes_per_head). Per example: -log softmax(z_h)[c] for coded label
    h * C + c, z_h the C logits of head h. With H = 1 this is the ordinary sparse
    categorical cross-entropy from logits.
    """

    def __init__(self, classes_per_head, name="multi_head_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes_per_head = _check_classes(classes_per_head)

    def call(self, y_true, y_pred):
        logits, classes = _head_logits(y_true, y_pred, self.classes_per_head)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=logits)

    def get_config(self):
        return {**super().get_config(), "classes_per_head": self.classes_per_head}


def _head_correct(y_true, y_pred, classes_per_head):
    logits, classes = _head_logits(y_true, y_pred, classes_per_head)
    return tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), classes), tf.float32)


@keras.saving.register_keras_serializable(package="keras_ntk")
class MultiHeadAccuracy(keras.metrics.MeanMetricWrapper):
    """Fraction of examples whose own head's argmax is their class (coded labels)."""

    def __init__(self, classes_per_head, name="accuracy", dtype=None):
        self.classes_per_head = _check_classes(classes_per_head)
        super().__init__(_head_correct, name=name, dtype=dtype, classes_per_head=self.classes_per_head)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "classes_per_head": self.classes_per_head}


def task_accuracy(model, x, y, classes_per_head=None, batch_size=1024):
    """Accuracy of ``model`` on one task: inputs x (N, ...), coded labels y (N,).

    classes_per_head None means one head over all outputs. Predictions run through
    the model's compiled predict step (``predict_on_batch``), ``batch_size``
    examples at a time.
    """
    x = np.asarray(x)
    if len(x) != len(np.asarray(y)):
        raise ValueError(f"x has {len(x)} examples but y has {len(np.asarray(y))} labels.")
    if len(x) == 0:
        raise ValueError("The task has no examples to evaluate.")
    logits = np.concatenate(
        [np.asarray(model.predict_on_batch(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )
    classes = logits.shape[-1] if classes_per_head is None else _check_classes(classes_per_head)
    return float(np.mean(_head_correct(np.asarray(y), tf.constant(logits), classes).numpy()))


# ------------------------------------------------------------------------ callbacks


class AccuracyMatrixCallback(keras.callbacks.Callback):
    """Fills the accuracy matrix of a stream trained with one ``fit`` call per task.

    Args:
      tasks: the T evaluation sets ``(x_j, y_j)``: inputs (N_j, ...) and coded
        labels (N_j,).
      classes_per_head: C of the model's heads; None means one head over all outputs.
      model: the model to evaluate; default the model being fit.
      batch_size: prediction batch size.

    When the i-th fit with this callback ends (i = 0, 1, ...), row i of ``matrix``
    ((T, T) float64, NaN until filled) receives the accuracy on every task. A
    further fit after T rows raises ValueError.
    """

    def __init__(self, tasks, classes_per_head=None, model=None, batch_size=1024):
        super().__init__()
        if not tasks:
            raise ValueError("tasks must hold at least one (x, y) evaluation set.")
        self.tasks = [(np.asarray(x), np.asarray(y)) for x, y in tasks]
        self.classes_per_head = None if classes_per_head is None else _check_classes(classes_per_head)
        self.evaluated_model = model
        self.batch_size = batch_size
        self.matrix = np.full((len(self.tasks), len(self.tasks)), np.nan)
        self.rows_filled = 0

    def on_train_end(self, logs=None):
        if self.rows_filled == len(self.tasks):
            raise ValueError(
                f"All {len(self.tasks)} rows of the accuracy matrix are filled; use a new "
                "AccuracyMatrixCallback for another stream."
            )
        model = self.evaluated_model or self.model
        self.matrix[self.rows_filled] = [
            task_accuracy(model, x, y, self.classes_per_head, self.batch_size) for x, y in self.tasks
        ]
        self.rows_filled += 1


class NTKChangeCallback(keras.callbacks.Callback):
    """Relative change of the empirical NTK on a fixed probe set across each fit.

    Args:
      probe: inputs (P, ...) on which the kernel is evaluated.
      model: the model whose NTK is taken; default the model being fit.
      output: the empirical NTK's output mode, "trace" ((P, P), mean over outputs)
        or "full" ((P, P, K, K)).

    Each fit appends ||Theta_end - Theta_start||_F / ||Theta_start||_F to
    ``changes``, Theta_start / Theta_end the kernel when the fit starts / ends;
    ``kernels`` holds the first start kernel and every end kernel (numpy). The
    end kernel of one fit is the start kernel of the next, so the model must not
    change between the fits of a stream.
    """

    def __init__(self, probe, model=None, output="trace"):
        super().__init__()
        self.probe = np.asarray(probe)
        self.measured_model = model
        self.output = output
        self.kernels = []
        self.changes = []

    def _kernel(self):
        return empirical_ntk(self.measured_model or self.model, self.probe, output=self.output).numpy()

    def on_train_begin(self, logs=None):
        if not self.kernels:
            self.kernels.append(self._kernel())

    def on_train_end(self, logs=None):
        self.kernels.append(self._kernel())
        self.changes.append(diagnostics.relative_distance(self.kernels[-1], self.kernels[-2]))

    def total_change(self):
        """||Theta_last - Theta_first||_F / ||Theta_first||_F over the whole stream."""
        if len(self.kernels) < 2:
            raise ValueError("No fit has ended yet: the NTK has not been measured after training.")
        return diagnostics.relative_distance(self.kernels[-1], self.kernels[0])


class TargetAccuracyStopping(keras.callbacks.Callback):
    """Stops ``fit`` at the end of the first epoch whose training accuracy reaches ``target``.

    The accuracy read is ``logs[monitor]``, Keras' running mean over the epoch's
    batches (it lags the accuracy at the epoch's end). ``reached`` says whether
    the target was met; ``epochs`` counts the epochs run.
    """

    def __init__(self, target, monitor="accuracy"):
        super().__init__()
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target must be an accuracy in (0, 1], got {target!r}.")
        self.target = float(target)
        self.monitor = monitor
        self.reached = False
        self.epochs = 0

    def on_train_begin(self, logs=None):
        self.reached = False
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1
        if logs is None or self.monitor not in logs:
            raise ValueError(
                f"TargetAccuracyStopping monitors {self.monitor!r}, which fit did not log "
                f"(logged: {sorted(logs or {})}); compile the model with that metric."
            )
        if logs[self.monitor] >= self.target:
            self.reached = True
            self.model.stop_training = True
