"""Analytic infinite-width NNGP and NTK of fully connected networks (NTK parametrization).

For a network with `depth` hidden layers, activation phi and a linear readout
(`keras_ntk.models.mlp`), with d the input dimension:

    Sigma_0(x, x')  = w_std^2 <x, x'> / d + b_std^2,          Theta_0 = Sigma_0,
    Sigma_h         = w_std^2 E[phi(u) phi(v)]   + b_std^2,
    dSigma_h        = w_std^2 E[phi'(u) phi'(v)],
    Theta_h         = Theta_{h-1} dSigma_h + Sigma_h,          h = 1 .. depth,
    (u, v) ~ N(0, [[Sigma_{h-1}(x, x), Sigma_{h-1}(x, x')], [., Sigma_{h-1}(x', x')]]).

NNGP = Sigma_depth, NTK = Theta_depth: the covariance of one output at init and
the per-output NTK of the limit. The Gaussian expectations have closed forms
(Cho & Saul 2009 arc-cosine kernels for ReLU; Williams 1997 for erf).
"""

import math

import tensorflow as tf

from keras_ntk import activations
from keras_ntk.layers import check_stds

KINDS = ("ntk", "nngp")


def _relu_expectations(k11, k12, k22):
    """E[relu(u)relu(v)] and E[relu'(u)relu'(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]])."""
    norm = tf.sqrt(k11 * k22)
    cos_theta = tf.clip_by_value(tf.math.divide_no_nan(k12, norm), -1.0, 1.0)
    theta = tf.acos(cos_theta)
    e_phi = norm / (2 * math.pi) * (tf.sin(theta) + (math.pi - theta) * cos_theta)
    e_dphi = (math.pi - theta) / (2 * math.pi)
    return e_phi, e_dphi


def _erf_expectations(k11, k12, k22):
    """E[erf(u)erf(v)] and E[erf'(u)erf'(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]])."""
    a, b = 1 + 2 * k11, 1 + 2 * k22
    e_phi = 2 / math.pi * tf.asin(tf.clip_by_value(2 * k12 / tf.sqrt(a * b), -1.0, 1.0))
    e_dphi = 4 / math.pi / tf.sqrt(a * b - 4 * k12**2)
    return e_phi, e_dphi


def _identity_expectations(k11, k12, k22):
    del k11, k22
    return k12, tf.ones_like(k12)


_EXPECTATIONS = {
    "relu": _relu_expectations,
    "erf": _erf_expectations,
    "identity": _identity_expectations,
}


def check_arguments(depth, activation, w_std, b_std, kind):
    """Raise ValueError for arguments the recursion does not define."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative int (number of hidden layers), got {depth!r}.")
    if activation not in _EXPECTATIONS:
        raise ValueError(
            f"No closed-form infinite-width kernel for activation {activation!r}: "
            f"expected one of {activations.ANALYTIC}."
        )
    check_stds(w_std, b_std)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


def kernel_from_dot_products(k11, k12, k22, *, depth, activation, w_std, b_std, kind):
    """Run the layer recursion elementwise on input dot products.

    Args:
      k11, k12, k22: broadcast-compatible float64 tensors <x,x>/d, <x,x'>/d, <x',x'>/d.
    Returns:
      Sigma_depth (kind="nngp") or Theta_depth (kind="ntk"), broadcast shape.
    """
    expectations = _EXPECTATIONS[activation]
    w2, b2 = w_std**2, b_std**2
    s11, s12, s22 = w2 * k11 + b2, w2 * k12 + b2, w2 * k22 + b2
    ntk = s12
    for _ in range(depth):
        e12, de12 = expectations(s11, s12, s22)
        e11, _ = expectations(s11, s11, s11)
        e22, _ = expectations(s22, s22, s22)
        s11, s12, s22 = w2 * e11 + b2, w2 * e12 + b2, w2 * e22 + b2
        ntk = ntk * (w2 * de12) + s12
    return ntk if kind == "ntk" else s12


def _as_examples(x, what):
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(
            f"{what} must have shape (examples, features...), got shape {x.shape}."
        )
    x = tf.cast(x, tf.float64)
    return tf.reshape(x, (tf.shape(x)[0], -1))


def infinite_width_kernel(
    x1,
    x2=None,
    *,
    depth,
    activation="relu",
    w_std=math.sqrt(2.0),
    b_std=0.1,
    kind="ntk",
):
    """Infinite-width NTK or NNGP kernel matrix of an MLP in NTK parametrization.

    Args:
      x1: (N, ...) inputs; trailing axes are flattened to d features.
      x2: (M, ...) inputs with the same d, or None for x1.
      depth: number of hidden layers (as in `keras_ntk.models.mlp`), >= 0.
      activation: "relu", "erf" or "identity".
      w_std, b_std: sigma_w, sigma_b shared by all layers.
      kind: "ntk" (Theta) or "nngp" (Sigma, the output covariance at init).
    Returns:
      (N, M) float64 tf.Tensor, per output: the full (N, M, K, K) kernel of a
      K-output network is this matrix times the K x K identity.
    """
    check_arguments(depth, activation, w_std, b_std, kind)
    a = _as_examples(x1, "x1")
    b = a if x2 is None else _as_examples(x2, "x2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"x1 and x2 must have the same number of features, got {a.shape[1]} and {b.shape[1]}."
        )
    d = tf.cast(tf.shape(a)[1], tf.float64)
    k11 = tf.reduce_sum(a * a, axis=1)[:, None] / d
    k22 = tf.reduce_sum(b * b, axis=1)[None, :] / d
    k12 = tf.matmul(a, b, transpose_b=True) / d
    return kernel_from_dot_products(
        k11, k12, k22, depth=depth, activation=activation, w_std=w_std, b_std=b_std, kind=kind
    )
