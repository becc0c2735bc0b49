"""TensorFlow Probability `PositiveSemidefiniteKernel`s backed by keras-ntk kernels."""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from keras_ntk.ntk import infinite
from keras_ntk.ntk.limits import infinite_width_kernel_fn


class InfiniteWidthKernel(tfp.math.psd_kernels.AutoCompositeTensorPsdKernel):
    """The analytic infinite-width NTK or NNGP as a TFP kernel, of an MLP or of any model.

    Plugs into `tfp.distributions.GaussianProcess` and
    `GaussianProcessRegressionModel`; computations are float64.

    Two forms:
      InfiniteWidthKernel(depth, activation, w_std, b_std, kind): the MLP of
        `keras_ntk.infinite_width_kernel`; inputs (..., examples, d) with
        `feature_ndims=1`, any batch shape, usable inside tf.function.
      InfiniteWidthKernel(model=model, kind=kind): the limit of a built Keras
        model, `keras_ntk.infinite_width_kernel_fn(model)`; inputs
        (examples, *model input shape), feature_ndims the rank of one model
        input, no batch shape. Evaluated by the tiled kernel function on the
        host, so it runs eagerly (not inside tf.function).

    Args:
      depth, activation, w_std, b_std: as `keras_ntk.infinite_width_kernel`.
      kind: "ntk" or "nngp".
      model: a built Keras model (instead of depth, ...).
      **kernel_fn_kwargs: memory_budget, progress, hermite_terms for
        `infinite_width_kernel_fn` (with `model` only).
    """

    def __init__(
        self,
        depth=None,
        activation="relu",
        w_std=math.sqrt(2.0),
        b_std=0.1,
        kind="ntk",
        validate_args=False,
        name="InfiniteWidthKernel",
        *,
        model=None,
        **kernel_fn_kwargs,
    ):
        parameters = dict(locals())
        if (model is None) == (depth is None):
            raise ValueError("Pass either depth (an MLP's limit) or model (a Keras model's limit), not both.")
        if model is None:
            if kernel_fn_kwargs:
                raise ValueError(f"{sorted(kernel_fn_kwargs)} only apply with model=.")
            infinite.check_arguments(depth, activation, w_std, b_std, kind)
            self._kernel_fn = None
            feature_ndims = 1
        else:
            if kind not in infinite.KINDS:
                raise ValueError(f"kind must be one of {infinite.KINDS}, got {kind!r}.")
            self._kernel_fn = infinite_width_kernel_fn(model, **kernel_fn_kwargs)
            feature_ndims = len(self._kernel_fn.program.input_shape)
        self._depth = depth
        self._activation = activation
        self._w_std = float(w_std)
        self._b_std = float(b_std)
        self._kind = kind
        super().__init__(
            feature_ndims=feature_ndims,
            dtype=tf.float64,
            name=name,
            validate_args=validate_args,
            parameters=parameters,
        )

    @classmethod
    def _parameter_properties(cls, dtype):
        return {}

    def _recursion(self, k11, k12, k22):
        return infinite.kernel_from_dot_products(
            k11,
            k12,
            k22,
            depth=self._depth,
            activation=self._activation,
            w_std=self._w_std,
            b_std=self._b_std,
            kind=self._kind,
        )

    def _model_examples(self, x, what):
        rank = self.feature_ndims + 1
        if x.shape.rank != rank:
            raise ValueError(
                f"{what} must have shape (examples, *model input shape) (rank {rank}) for a "
                f"model's kernel, got shape {x.shape}; batch shapes are not supported."
            )
        return x.numpy()

    def _apply(self, x1, x2, example_ndims=0):
        if self._kernel_fn is not None:
            shape = tf.broadcast_static_shape(x1.shape, x2.shape)
            a, b = tf.broadcast_to(x1, shape), tf.broadcast_to(x2, shape)
            features = shape[shape.rank - self.feature_ndims :]
            flat_a = self._model_examples(tf.reshape(a, (-1, *features)), "x1")
            flat_b = self._model_examples(tf.reshape(b, (-1, *features)), "x2")
            values = tf.linalg.diag_part(self._kernel_fn(flat_a, flat_b, get=self._kind))
            return tf.reshape(values, shape[: shape.rank - self.feature_ndims])
        d = tf.cast(tf.shape(x1)[-1], tf.float64)
        k11 = tf.reduce_sum(x1 * x1, axis=-1) / d
        k22 = tf.reduce_sum(x2 * x2, axis=-1) / d
        k12 = tf.reduce_sum(x1 * x2, axis=-1) / d
        return self._recursion(k11, k12, k22)

    def _matrix(self, x1, x2):
        if self._kernel_fn is not None:
            a, b = self._model_examples(x1, "x1"), self._model_examples(x2, "x2")
            return self._kernel_fn(a, b, get=self._kind)
        d = tf.cast(tf.shape(x1)[-1], tf.float64)
        k11 = tf.reduce_sum(x1 * x1, axis=-1)[..., :, None] / d
        k22 = tf.reduce_sum(x2 * x2, axis=-1)[..., None, :] / d
        k12 = tf.matmul(x1, x2, transpose_b=True) / d
        return self._recursion(k11, k12, k22)


class EmpiricalNTKKernel(tfp.math.psd_kernels.PositiveSemidefiniteKernel):
    """The empirical NTK of a Keras model as a TFP kernel (eager mode).

    k(x, x') = mean_k Theta(x, x')[k, k], the "trace" output of
    `keras_ntk.empirical_ntk`, in float64: the per-output kernel for GP models
    with independent outputs. Inputs have shape (examples, *model input shape);
    feature_ndims is the rank of one model input. The kernel is evaluated by
    the tiled engine: eagerly for any size, inside tf.function for inputs of
    static shape that fit one tile (see `keras_ntk.NTK`).

    Args:
      model: a built Keras model with one output.
      scale: multiplies the kernel (e.g. 1 / prior precision).
      **ntk_kwargs: method, memory_budget, progress for `keras_ntk.NTK`.
    """

    def __init__(self, model, scale=1.0, name="EmpiricalNTKKernel", **ntk_kwargs):
        parameters = dict(locals())
        from keras_ntk.ntk.empirical import NTK

        self._ntk = NTK(model, output="trace", dtype=tf.float64, **ntk_kwargs)
        self._scale = float(scale)
        super().__init__(
            feature_ndims=len(model.input_shape) - 1,
            dtype=tf.float64,
            name=name,
            parameters=parameters,
        )

    @classmethod
    def _parameter_properties(cls, dtype):
        return {}

    def _matrix(self, x1, x2):
        return self._scale * self._ntk(x1, x2)

    def _apply(self, x1, x2, example_ndims=0):
        shape = tf.broadcast_static_shape(x1.shape, x2.shape)
        a, b = tf.broadcast_to(x1, shape), tf.broadcast_to(x2, shape)
        features = a.shape[a.shape.rank - self.feature_ndims :]
        flat_a = tf.reshape(a, (-1, *features))
        flat_b = tf.reshape(b, (-1, *features))
        values = tf.linalg.diag_part(self._ntk(flat_a, flat_b))
        return self._scale * tf.reshape(values, a.shape[: a.shape.rank - self.feature_ndims])
