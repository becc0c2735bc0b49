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


PARAMETRIZATIONS = ("ntk", "standard")
POOLINGS = ("global_average", "flatten")


def check_arguments(depth, activation, w_std, b_std, kind, parametrization="ntk", width=None):
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
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}.")
    if parametrization == "standard" and kind == "ntk":
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(
                "The standard-parametrization NTK grows with the hidden fan-in: pass the "
                f"network's width (a positive int), got width={width!r}."
            )


def _direct_terms(parametrization, w_std, b_std, fan_ins):
    """Per layer, the factors (a_h, c_h) of its own parameters' NTK share a_h E_h + c_h.

    E_h is the mean over units of <input, input'> of layer h (h = 0: the network
    input). A layer with weight scale s and bias scale t (layers.py) contributes
    s^2 <a, a'> + t^2 = s^2 n_h E_h + t^2: (w_std^2, b_std^2) in NTK
    parametrization, (n_h, 1) in standard parametrization.
    """
    if parametrization == "ntk":
        return [(w_std**2, b_std**2)] * len(fan_ins)
    return [(float(n), 1.0) for n in fan_ins]


def kernel_from_dot_products(
    k11, k12, k22, *, depth, activation, w_std, b_std, kind, parametrization="ntk", fan_ins=None
):
    """Run the layer recursion elementwise on input dot products.

    Args:
      k11, k12, k22: broadcast-compatible float64 tensors <x,x>/d, <x,x'>/d, <x',x'>/d.
      parametrization: "ntk", or "standard" with `fan_ins` = [d, width, ..., width]
        (depth + 1 entries: the fan-in of each hidden layer and of the readout).
    Returns:
      Sigma_depth (kind="nngp") or Theta_depth (kind="ntk"), broadcast shape.
    """
    expectations = _EXPECTATIONS[activation]
    w2, b2 = w_std**2, b_std**2
    terms = _direct_terms(parametrization, w_std, b_std, fan_ins or [0] * (depth + 1))
    s11, s12, s22 = w2 * k11 + b2, w2 * k12 + b2, w2 * k22 + b2
    a, c = terms[0]
    ntk = a * k12 + c
    for h in range(1, depth + 1):
        e12, de12 = expectations(s11, s12, s22)
        e11, _ = expectations(s11, s11, s11)
        e22, _ = expectations(s22, s22, s22)
        s11, s12, s22 = w2 * e11 + b2, w2 * e12 + b2, w2 * e22 + b2
        a, c = terms[h]
        ntk = ntk * (w2 * de12) + a * e12 + c
    return ntk if kind == "ntk" else s12


def _as_examples(x, what, rank=None):
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None or x.shape.rank < 2 or (rank is not None and x.shape.rank != rank):
        expected = "(examples, features...)" if rank is None else "(examples, height, width, channels)"
        raise ValueError(f"{what} must have shape {expected}, got shape {x.shape}.")
    return tf.cast(x, tf.float64)


def infinite_width_kernel(
    x1,
    x2=None,
    *,
    depth,
    activation="relu",
    w_std=math.sqrt(2.0),
    b_std=0.1,
    kind="ntk",
    parametrization="ntk",
    width=None,
):
    """Infinite-width NTK or NNGP kernel matrix of an MLP (`keras_ntk.models.mlp`).

    In standard parametrization the NTK grows with the width: the limit of the
    empirical NTK is, layer by layer, the NTK-parametrization recursion with each
    layer's own share w_std^2 E_h + b_std^2 replaced by n_h E_h + 1 (n_h its
    fan-in), which needs `width`. The NNGP does not depend on the parametrization.

    Args:
      x1: (N, ...) inputs; trailing axes are flattened to d features.
      x2: (M, ...) inputs with the same d, or None for x1.
      depth: number of hidden layers (as in `keras_ntk.models.mlp`), >= 0.
      activation: "relu", "erf" or "identity".
      w_std, b_std: sigma_w, sigma_b shared by all layers.
      kind: "ntk" (Theta) or "nngp" (Sigma, the output covariance at init).
      parametrization: "ntk" or "standard".
      width: hidden width, needed for the standard-parametrization NTK.
    Returns:
      (N, M) float64 tf.Tensor, per output: the full (N, M, K, K) kernel of a
      K-output network is this matrix times the K x K identity.
    """
    check_arguments(depth, activation, w_std, b_std, kind, parametrization, width)
    a = _as_examples(x1, "x1")
    a = tf.reshape(a, (tf.shape(a)[0], -1))
    b = a if x2 is None else _as_examples(x2, "x2")
    b = tf.reshape(b, (tf.shape(b)[0], -1))
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"x1 and x2 must have the same number of features, got {a.shape[1]} and {b.shape[1]}."
        )
    d = a.shape[1]
    k11 = tf.reduce_sum(a * a, axis=1)[:, None] / d
    k22 = tf.reduce_sum(b * b, axis=1)[None, :] / d
    k12 = tf.matmul(a, b, transpose_b=True) / d
    return kernel_from_dot_products(
        k11,
        k12,
        k22,
        depth=depth,
        activation=activation,
        w_std=w_std,
        b_std=b_std,
        kind=kind,
        parametrization=parametrization,
        fan_ins=[d] + [width or 0] * depth,
    )


def _receptive_mean(kernel, kernel_size, axes_pairs):
    """(1 / k^2) sum over offsets d of kernel(p + d, q + d), zero outside the image.

    `kernel` has spatial axis pairs `axes_pairs` = [(row axis, column axis), ...]:
    one pair (same-position kernels (..., H, W)) or two ((..., H, W, H, W), the
    position pairs (p, q)); each pair is shifted by the same offset d, as a
    'same'-padded convolution of stride 1 moves both inputs of the kernel.
    """
    radius = kernel_size // 2
    pads = [[0, 0]] * kernel.shape.rank
    for pair in axes_pairs:
        for axis in pair:
            pads[axis] = [radius, kernel_size - 1 - radius]
    padded = tf.pad(kernel, pads)
    total = tf.zeros_like(kernel)
    for di in range(kernel_size):
        for dj in range(kernel_size):
            begin = [0] * kernel.shape.rank
            for row, col in axes_pairs:
                begin[row], begin[col] = di, dj
            total += tf.slice(padded, begin, kernel.shape)
    return total / kernel_size**2


def infinite_width_cnn_kernel(
    x1,
    x2=None,
    *,
    depth,
    kernel_size=3,
    pooling="global_average",
    activation="relu",
    w_std=math.sqrt(2.0),
    b_std=0.1,
    kind="ntk",
    parametrization="ntk",
    width=None,
):
    """Infinite-width NTK or NNGP of a CNN (`keras_ntk.models.cnn`) as channels -> infinity.

    `depth` 'same'-padded stride-1 convolutions (kernel_size x kernel_size, fan-in
    n = channels k^2), then global average pooling or flatten and a linear readout.
    With A[K](p, q) = (1/k^2) sum_d K(p + d, q + d) over the receptive field
    (Novak et al. 2019; Arora et al. 2019):

        Sigma_0 = w^2 A[<x_p, x'_q> / C] + b^2,
        Sigma_h = w^2 A[E phi phi] + b^2,   Theta_h = w^2 A[Theta_{h-1} E phi' phi'] + share_h,

    and the readout averages over position pairs (p, q) (global average pooling)
    or over positions p = q (flatten). Flatten only needs same-position kernels
    (N, M, H, W); global average pooling needs all pairs (N, M, H, W, H, W), so
    its memory is N M (H W)^2 float64 values per intermediate.

    Args:
      x1: (N, H, W, C) images; x2: (M, H, W, C) or None for x1.
      depth: number of convolutions, >= 1.
      kernel_size: odd int, the convolution window.
      pooling: "global_average" or "flatten".
      activation, w_std, b_std, kind: as `infinite_width_kernel`.
      parametrization, width: as `infinite_width_kernel`; width is the number of
        channels, needed for the standard-parametrization NTK.
    Returns:
      (N, M) float64 tf.Tensor, per output.
    """
    check_arguments(depth, activation, w_std, b_std, kind, parametrization, width)
    if depth < 1:
        raise ValueError(f"A CNN has at least one convolution: depth >= 1, got {depth}.")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    a = _as_examples(x1, "x1", rank=4)
    b = a if x2 is None else _as_examples(x2, "x2", rank=4)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"x1 and x2 must have the same image shape, got {a.shape[1:]} and {b.shape[1:]}.")
    height, cols, channels = a.shape[1:]
    channels_out = width or 0  # only the standard parametrization reads the fan-ins
    fan_ins = [channels * kernel_size**2] + [channels_out * kernel_size**2] * (depth - 1)
    readout_fan_in = channels_out * (1 if pooling == "global_average" else height * cols)
    terms = _direct_terms(parametrization, w_std, b_std, fan_ins + [readout_fan_in])
    expectations = _EXPECTATIONS[activation]
    w2, b2 = w_std**2, b_std**2

    def same_position(x):  # (n, H, W): Sigma_h(x_p, x_p), all h, by the local recursion
        sigma = w2 * _receptive_mean(tf.reduce_sum(x * x, -1) / channels, kernel_size, [(1, 2)]) + b2
        out = [sigma]
        for _ in range(depth - 1):
            e, _ = expectations(sigma, sigma, sigma)
            sigma = w2 * _receptive_mean(e, kernel_size, [(1, 2)]) + b2
            out.append(sigma)
        return out

    if pooling == "flatten":  # (N, M, H, W), positions p = q
        pairs = [(2, 3)]
        gram = tf.einsum("nhwc,mhwc->nmhw", a, b) / channels
        v1 = [s[:, None] for s in same_position(a)]
        v2 = [s[None] for s in same_position(b)]
        readout_axes = [2, 3]
    else:  # (N, M, H, W, H, W), position pairs (p, q)
        pairs = [(2, 3), (4, 5)]
        gram = tf.einsum("nhwc,mijc->nmhwij", a, b) / channels
        v1 = [s[:, None, :, :, None, None] for s in same_position(a)]
        v2 = [s[None, :, None, None] for s in same_position(b)]
        readout_axes = [2, 3, 4, 5]

    sigma = w2 * _receptive_mean(gram, kernel_size, pairs) + b2
    a0, c0 = terms[0]
    ntk = a0 * _receptive_mean(gram, kernel_size, pairs) + c0
    for h in range(1, depth + 1):
        e, de = expectations(v1[h - 1], sigma, v2[h - 1])
        a_h, c_h = terms[h]
        if h < depth:
            sigma = w2 * _receptive_mean(e, kernel_size, pairs) + b2
            ntk = (
                w2 * _receptive_mean(ntk * de, kernel_size, pairs)
                + a_h * _receptive_mean(e, kernel_size, pairs)
                + c_h
            )
        else:
            mean_e = tf.reduce_mean(e, axis=readout_axes)
            sigma = w2 * mean_e + b2
            ntk = w2 * tf.reduce_mean(ntk * de, axis=readout_axes) + a_h * mean_e + c_h
    return ntk if kind == "ntk" else sigma
