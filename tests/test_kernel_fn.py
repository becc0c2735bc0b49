"""infinite_width_kernel_fn against closed forms, brute-force Jacobians and quadrature.

Width-free references: the closed-form MLP / CNN kernels; for networks that are
linear in their parameters (one convolution, pooling, sums), the NTK is J J^T at
any width and the NNGP sum_theta Var(theta) J_theta J_theta^T, with J from a
plain loop of tape.gradient calls; adaptive 2-D quadrature for the Hermite
expansion of activations. Convergence with width: test_kernel_fn_convergence.py.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import integrate, special, stats

import keras_ntk
from keras_ntk import layers as ntk_layers
from keras_ntk.ntk.limits import dual
from references import gaussian_expectation

W, B = math.sqrt(2.0), 0.1


def _loop_jacobians(model, x):
    """{variable name: (N, K, size)} float64 by one tape.gradient call per example and output."""
    out = {v.path: [] for v in model.trainable_variables}
    for i in range(len(x)):
        with tf.GradientTape(persistent=True) as tape:
            outputs = tf.unstack(tf.reshape(model(x[i : i + 1]), [-1]))
        per_output = {v.path: [] for v in model.trainable_variables}
        for f_k in outputs:
            grads = tape.gradient(f_k, model.trainable_variables)
            for v, g in zip(model.trainable_variables, grads):
                g = np.zeros(v.shape) if g is None else g.numpy()
                per_output[v.path].append(np.ravel(g).astype(np.float64))
        for name, rows in per_output.items():
            out[name].append(rows)
    return {name: np.array(rows) for name, rows in out.items()}


def _gram(j1, j2):
    """mean over outputs k of J1[:, k] J2[:, k]^T: (N, M)."""
    return np.einsum("nkp,mkp->nm", j1, j2) / j1.shape[1]


def _linear_references(model, x1, x2, variances):
    """(NNGP, NTK) of a model linear in its parameters, from brute-force Jacobians.

    variances: variable path -> Var(theta) at init (zero mean)."""
    j1, j2 = _loop_jacobians(model, x1), _loop_jacobians(model, x2)
    ntk = sum(_gram(j1[v], j2[v]) for v in j1)
    nngp = sum(variances[v] * _gram(j1[v], j2[v]) for v in j1)
    return nngp, ntk


def _kernels(model, x1, x2=None, **kwargs):
    result = keras_ntk.infinite_width_kernel_fn(model, **kwargs)(x1, x2, get=("nngp", "ntk"))
    return result.nngp.numpy(), result.ntk.numpy()


# -- exact agreement with the closed-form MLP and CNN kernels ---------------------------------
@pytest.mark.parametrize(
    "parametrization, activation", [("ntk", "relu"), ("standard", "erf"), ("ntk", "identity")]
)
def test_mlp_model_gives_the_closed_form_mlp_kernel(parametrization, activation):
    x1 = np.random.default_rng(0).normal(size=(5, 2, 3))
    x2 = np.random.default_rng(1).normal(size=(3, 2, 3))
    model = keras_ntk.models.mlp(
        24, 3, 2, activation=activation, parametrization=parametrization, input_shape=(2, 3)
    )
    nngp, ntk = _kernels(model, x1, x2)
    kw = dict(depth=3, activation=activation, parametrization=parametrization, width=24)
    np.testing.assert_allclose(nngp, keras_ntk.infinite_width_kernel(x1, x2, kind="nngp", **kw), rtol=1e-12)
    np.testing.assert_allclose(ntk, keras_ntk.infinite_width_kernel(x1, x2, kind="ntk", **kw), rtol=1e-12)


@pytest.mark.parametrize("pooling, parametrization", [("flatten", "standard"), ("global_average", "ntk")])
def test_cnn_model_gives_the_closed_form_cnn_kernel(pooling, parametrization):
    x = np.random.default_rng(2).normal(size=(3, 5, 4, 2))
    model = keras_ntk.models.cnn(6, 2, 1, pooling=pooling, parametrization=parametrization, input_shape=(5, 4, 2))
    nngp, ntk = _kernels(model, x)
    kw = dict(depth=2, pooling=pooling, parametrization=parametrization, width=6)
    np.testing.assert_allclose(nngp, keras_ntk.infinite_width_cnn_kernel(x, kind="nngp", **kw), rtol=1e-12)
    np.testing.assert_allclose(ntk, keras_ntk.infinite_width_cnn_kernel(x, kind="ntk", **kw), rtol=1e-12)


# -- width-free geometry: networks linear in their parameters ----------------------------------
def _keras_conv(filters, kernel_size, **kwargs):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.7),
        bias_initializer=keras.initializers.RandomNormal(0.0, 0.3),
        **kwargs,
    )


def _keras_variances(model):
    return {
        v.path: (0.49 if v.path.endswith("kernel") else 0.09) for v in model.trainable_variables
    }


@pytest.mark.parametrize("head", ["none", "global_average"])
@pytest.mark.parametrize(
    "kernel_size, strides, padding, dilation",
    [(3, 2, "same", 1), ((3, 2), (1, 2), "valid", 1), (3, 1, "same", 2), (2, 1, "valid", (2, 1))],
)
def test_one_convolution_matches_brute_force_jacobians(kernel_size, strides, padding, dilation, head):
    """Any stride, padding and dilation: exact at one filter, 'diag' (head none: the
    mean over output positions) and 'pairs' (global average pooling) position modes."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(2, 7, 6, 2)).astype(np.float32), rng.normal(size=(2, 7, 6, 2)).astype(np.float32)
    inputs = keras.Input((7, 6, 2))
    h = _keras_conv(1, kernel_size, strides=strides, padding=padding, dilation_rate=dilation)(inputs)
    if head == "global_average":
        h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, h)
    nngp, ntk = _kernels(model, x1, x2)
    ref_nngp, ref_ntk = _linear_references(model, x1, x2, _keras_variances(model))
    np.testing.assert_allclose(ntk, ref_ntk, rtol=1e-5)
    np.testing.assert_allclose(nngp, ref_nngp, rtol=1e-5)


@pytest.mark.parametrize("head", ["flatten", "global_average"])
def test_pooling_and_sums_of_convolutions_match_brute_force_jacobians(head):
    """'same' and 'valid' average pooling (TensorFlow's edge counts), a sum of three
    fresh branches, a keras_ntk convolution and a Keras Dense applied per position."""
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(size=(2, 7, 7, 2)).astype(np.float32), rng.normal(size=(2, 7, 7, 2)).astype(np.float32)
    inputs = keras.Input((7, 7, 2))
    a = ntk_layers.Conv2D(1, 3, padding="same", w_std=1.3, b_std=0.4, name="ntk_conv")(inputs)
    a = keras.layers.AveragePooling2D(3, strides=2, padding="same")(a)
    b = _keras_conv(1, 2, strides=2, padding="same")(inputs)
    c = keras.layers.Dense(
        1,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.7),
        bias_initializer=keras.initializers.RandomNormal(0.0, 0.3),
    )(inputs)
    c = keras.layers.AveragePooling2D(2, strides=2, padding="same")(c)
    h = keras.layers.Add()([a, b, c])
    h = keras.layers.AveragePooling2D(2, strides=1, padding="valid")(h)
    h = keras.layers.Flatten()(h) if head == "flatten" else keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, h)
    variances = _keras_variances(model)
    for v in model.get_layer("ntk_conv").trainable_variables:
        variances[v.path] = 1.0  # NTK parametrization: W, b ~ N(0, 1), scaled in the layer
    nngp, ntk = _kernels(model, x1, x2)
    ref_nngp, ref_ntk = _linear_references(model, x1, x2, variances)
    np.testing.assert_allclose(ntk, ref_ntk, rtol=1e-5)
    np.testing.assert_allclose(nngp, ref_nngp, rtol=1e-5)
