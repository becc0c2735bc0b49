"""Analytic infinite-width NNGP and NTK of the MLPs and CNNs of `keras_ntk.models`.

For a network with `depth` hidden layers, activation phi and a linear readout
(`keras_ntk.models.mlp`), with d the input dimension:

    Sigma_0(x, x')  = w_std^2 <x, x'> / d + b_std^2,          Theta_0 = Sigma_0,
    Sigma_h         = w_std^2 E[phi(u) phi(v)]   + b_std^2,
    dSigma_h        = w_std^2 E[phi'(u) phi'(v)],
    Theta_h         = Theta_{h-1} dSigma_h + Sigma_h,          h = 1 .. depth,
    (u, v) ~ N(0, [[Sigma_{h-1}(x, x), Sigma_{h-1}(x, x')], [., Sigma_{h-1}(x', x')]]).

NNGP = Sigma_depth, NTK = Theta_depth: the covariance of one output at init and
the per-output NTK of the limit. The Gaussian expectations have closed forms
(Cho & Saul 2009 arc-cosine kernels for ReLU; Williams 1997 for erf). relu'(0)
is 0, as in TensorFlow: where Sigma_{h-1}(x, x) = 0 (a zero input with zero
biases) E[phi'(u) phi'(v)] = 0, and the kernel equals the limit of the empirical
NTK that TensorFlow computes.

Both functions compose the same per-layer kernel maps as
`keras_ntk.infinite_width_kernel_fn` (keras_ntk/ntk/limits/maps.py), which
covers any Keras model built from supported layers.
"""

import math

import tensorflow as tf

from keras_ntk import activations
from keras_ntk.layers import check_stds
from keras_ntk.ntk.limits import dual, maps
from keras_ntk.ntk.limits.kernel_fn import KernelFn
from keras_ntk.ntk.limits.program import Program
from keras_ntk.ntk.limits.state import Kernels, Layout

KINDS = ("ntk", "nngp")
PARAMETRIZATIONS = ("ntk", "standard")
POOLINGS = ("global_average", "flatten")


def check_arguments(depth, activation, w_std, b_std, kind, parametrization="ntk", width=None):
    """Raise ValueError for arguments the recursion does not define."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative int (number of hidden layers), got {depth!r}.")
    if activation not in dual.CLOSED_FORMS:
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


def _affine(name, parametrization, w_std, b_std, fan_in, conv=None):
    """The kernel map of a keras_ntk Dense / Conv2D with bias: s_w = w_std^2, s_b = b_std^2;
    its own NTK share is w_std^2 E + b_std^2 (NTK parametrization) or n E + 1 (standard)."""
    if parametrization == "ntk":
        t_w, t_b = w_std**2, b_std**2
    else:
        t_w, t_b = float(fan_in), 1.0
    return maps.Affine(name, w_std**2, b_std**2, t_w, t_b, conv)


def _hidden(name, activation, parametrization, w_std, b_std, fan_in, conv=None):
    act = maps.Activation(name, dual.CLOSED_FORMS[activation], identity=activation == "identity")
    return [_affine(name, parametrization, w_std, b_std, fan_in, conv), act]


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
    fan_ins = fan_ins or [0] * (depth + 1)
    layers = [m for h in range(depth) for m in _hidden(f"dense_{h}", activation, parametrization, w_std, b_std, fan_ins[h])]
    layers.append(_affine("readout", parametrization, w_std, b_std, fan_ins[depth]))
    flat = Layout(spatial=(), source="input", fresh=None, ancestors=frozenset(), rank=2, mode="flat")
    kernels = Kernels(k11, k22, k12, tf.zeros_like(k12) if kind == "ntk" else None)
    for kernel_map in layers:
        kernels = kernel_map([kernels], [flat], flat)
    return kernels.ntk if kind == "ntk" else kernels.nngp


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
      (N, M) float64 tf.Tensor, per output (relu'(0) = 0: see the module docstring): the full (N, M, K, K) kernel of a
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
    memory_budget=None,
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
    its memory is N M (H W)^2 float64 values per intermediate, tiled to
    `memory_budget` (NTKMemoryError when one pair of examples does not fit).

    Args:
      x1: (N, H, W, C) images; x2: (M, H, W, C) or None for x1.
      depth: number of convolutions, >= 1.
      kernel_size: odd int, the convolution window.
      pooling: "global_average" or "flatten".
      activation, w_std, b_std, kind: as `infinite_width_kernel`.
      parametrization, width: as `infinite_width_kernel`; width is the number of
        channels, needed for the standard-parametrization NTK.
      memory_budget: bytes the call may use (default: half the available memory).
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
    b = None if x2 is None else _as_examples(x2, "x2", rank=4)
    if b is not None and a.shape[1:] != b.shape[1:]:
        raise ValueError(f"x1 and x2 must have the same image shape, got {a.shape[1:]} and {b.shape[1:]}.")
    height, cols, channels = a.shape[1:]
    channels_out = width or 0  # only the standard parametrization reads the fan-ins
    conv = ((kernel_size, kernel_size), (1, 1), (1, 1), "same")
    layers = []
    for h in range(depth):
        fan_in = (channels if h == 0 else channels_out) * kernel_size**2
        layers += _hidden(f"conv_{h}", activation, parametrization, w_std, b_std, fan_in, conv)
    if pooling == "global_average":
        layers.append(maps.GlobalAveragePool("pool"))
        readout_fan_in = channels_out
    else:
        layers.append(maps.Flatten("flatten"))
        readout_fan_in = channels_out * height * cols
    layers.append(_affine("readout", parametrization, w_std, b_std, readout_fan_in))
    kernel_fn = KernelFn(Program.chain((height, cols, channels), layers), memory_budget=memory_budget)
    return kernel_fn(a.numpy(), None if b is None else b.numpy(), get=kind)
