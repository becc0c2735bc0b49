"""Kernel maps: how one layer transforms the infinite-width NNGP and NTK of its inputs.

Each map has a static part, `layout(inputs) -> Layout` (checks that the limit is
defined and raises ValueError naming the layer otherwise; `input_needs_pairs`
says which position pairs it reads), and a numerical part,
`__call__(kernels, inputs, output) -> Kernels` on one tile (state.py), given
the input and output Layouts with their modes. Notation:
K = nngp, T = ntk, v(p) the variance of one example at position p, and every
formula applies to cov1 and cov2 as to K (T is only tracked between x and x').
"""

import dataclasses
import typing

import tensorflow as tf

from keras_ntk.ntk.limits import spatial
from keras_ntk.ntk.limits.state import Kernels, Layout


def _error(name, message):
    return ValueError(f"Layer {name!r}: {message}")


@dataclasses.dataclass(frozen=True)
class Affine:
    """A dense layer (on each position) or a convolution: z = g_w W a + g_b b.

        K' = s_w L[K] + s_b,        T' = s_w L[T] + t_w L[K] + t_b,

    with L the receptive-field mean of a convolution (spatial.convolve), the mean
    over positions for a dense layer on flattened features, or the identity for
    a dense layer applied per position; s_w = n g_w^2 E[W^2] and s_b = g_b^2 E[b^2]
    the forward variances (n the fan-in); t_w = n g_w^2 and t_b = g_b^2 the
    layer's own share of the NTK when its kernel / bias are trainable, else 0.
    T includes the input's self share alpha K (state.Layout), which ends here.

    Attributes:
      conv: (kernel_size, strides, dilation, padding) of a convolution, None for dense.
      gaussian_weights, gaussian_bias: whether W and b are Gaussian at init.
    """

    name: str
    s_w: float
    s_b: float
    t_w: float
    t_b: float
    conv: typing.Optional[tuple] = None
    gaussian_weights: bool = True
    gaussian_bias: bool = True
    temporaries: int = 4

    def layout(self, inputs):
        (a,) = inputs
        if self.conv is not None:
            if a.rank != 4:
                raise _error(self.name, "a convolution needs inputs (batch, height, width, channels).")
            kernel_size, strides, dilation, padding = self.conv
            shape = tuple(
                spatial.output_length(n, k, s, r, padding)
                for n, k, s, r in zip(a.spatial, kernel_size, strides, dilation)
            )
            if min(shape) < 1:
                raise _error(self.name, f"its 'valid' window does not fit the {a.spatial} input.")
        else:
            shape = () if a.flattened else a.spatial
        gaussian = self.gaussian_bias and (self.gaussian_weights or a.source != "input")
        return Layout(
            spatial=shape,
            source="gaussian" if gaussian else "centered",
            fresh=frozenset([self.name]),
            ancestors=a.ancestors | {self.name},
            rank=2 if a.flattened else a.rank,
        )

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return output_needs_pairs and not inputs[0].flattened

    def __call__(self, kernels, inputs, output):
        (k,), (a,) = kernels, inputs

        def linear(kernel):
            if self.conv is not None:
                return spatial.convolve(kernel, a.mode, *self.conv)
            return spatial.mean_positions(kernel, a.mode) if a.flattened else kernel

        lk = linear(k.nngp)
        cov1, cov2 = k.covariances(lambda c: self.s_w * linear(c) + self.s_b)
        ntk = None
        if k.ntk is not None:
            ntk = self.s_w * (linear(k.ntk) + a.self_share * lk) + self.t_w * lk + self.t_b
        return Kernels(cov1, cov2, self.s_w * lk + self.s_b, ntk)


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise activation phi with dual `dual` (dual.py):

        K'(p, q) = E[phi(u) phi(v)],    T'(p, q) = T(p, q) E[phi'(u) phi'(v)],

    (u, v) ~ N(0, [[v(p), K(p, q)], [K(p, q), v'(q)]]). Needs Gaussian inputs
    (pre-activations); the identity passes everything through. A self share
    alpha of the input (state.Layout) adds alpha E[u phi'(u) v phi'(v)], from
    `self_dual`, the dual of t phi'(t).
    """

    name: str
    dual: typing.Callable
    identity: bool = False
    self_dual: typing.Optional[typing.Callable] = None
    temporaries: int = 8

    def layout(self, inputs):
        (a,) = inputs
        if self.identity:
            return a
        if a.source == "input":
            raise _error(
                self.name,
                "an activation applied to the model input has no infinite-width kernel map; "
                "apply it after a Dense or Conv2D layer.",
            )
        if a.source != "gaussian":
            raise _error(
                self.name,
                "the activation's input is not a Gaussian pre-activation in the limit (it is "
                "a sum with or a function of activations, or comes from non-Gaussian weights "
                "at a finite fan-in), so its dual activation is not defined. Put a Dense or "
                "Conv2D layer with Gaussian initial weights (for example "
                "keras.initializers.RandomNormal) in front of it.",
            )
        return dataclasses.replace(a, source="general", fresh=None, self_share=0.0)

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return output_needs_pairs

    def __call__(self, kernels, inputs, output):
        (k,), mode = kernels, inputs[0].mode
        if self.identity:
            return k
        v1 = spatial.variances(k.cov1, mode)
        v2 = spatial.variances(k.second, mode)

        def self_kernel(cov):
            v = spatial.variances(cov, mode)
            return self.dual(*_with_sides(v, cov, v, mode), derivative=False)[0]

        cov1, cov2 = k.covariances(self_kernel)
        sided = _with_sides(v1, k.nngp, v2, mode)
        e_phi, e_dphi = self.dual(*sided, derivative=k.ntk is not None)
        if k.ntk is None:
            return Kernels(cov1, cov2, e_phi, None)
        ntk = k.ntk * e_dphi
        if inputs[0].self_share:
            ntk += inputs[0].self_share * self.self_dual(*sided, derivative=False)[0]
        return Kernels(cov1, cov2, e_phi, ntk)


def _with_sides(v1, kernel, v2, mode):
    va, vb = spatial.sides(v1, v2, mode)
    return va, kernel, vb


@dataclasses.dataclass(frozen=True)
class LayerNorm:
    """Layer normalization over the channels (over all features after a Flatten):
    y = gamma (x - mean) / sqrt(var + eps) + beta. As channels -> infinity the
    mean tends to 0 and var to v(p) (for zero-mean inputs), so with
    N(p, q) = 1 / sqrt((v(p) + eps) (v'(q) + eps)):

        K' = E[gamma^2] N K + E[beta^2],    T' = E[gamma^2] N T + t_gamma N K + t_beta,

    t_gamma, t_beta = 1 when gamma / beta are trainable, else 0. The gamma term is
    not a deterministic kernel: dy/dgamma = x_hat = y / gamma is the channel's own
    value, so a following activation sees E[phi'(y) y phi'(y') y'] (Activation),
    not E[phi' phi'] N K. It is kept as the self share t_gamma / gamma^2 of the
    output (state.Layout), which needs a constant gamma and beta = 0 at init.
    """

    name: str
    epsilon: float
    gamma2: float
    beta2: float
    t_gamma: float
    t_beta: float
    gaussian_beta: bool = True
    temporaries: int = 4

    def layout(self, inputs):
        (a,) = inputs
        if a.source not in ("gaussian", "centered"):
            raise _error(
                self.name,
                "layer normalization in the infinite-width limit needs zero-mean inputs "
                "(pre-activations: outputs of Dense, Conv2D or sums of them); its input is "
                + ("the model input." if a.source == "input" else "an activation output."),
            )
        gaussian = a.source == "gaussian" and self.gaussian_beta
        share = a.self_share
        if self.t_gamma or share:
            if self.beta2 != 0 or self.gamma2 == 0:
                raise _error(
                    self.name,
                    "a trainable gamma needs a nonzero constant gamma and zero beta at "
                    "initialization for its infinite-width limit (the Keras defaults ones / zeros).",
                )
            share = share + self.t_gamma / self.gamma2
        return dataclasses.replace(a, source="gaussian" if gaussian else "centered", self_share=share)

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return output_needs_pairs

    def __call__(self, kernels, inputs, output):
        (k,), mode = kernels, inputs[0].mode

        def variance(cov):
            v = spatial.variances(cov, mode)
            if output.flattened:  # statistics over every position and channel
                v = tf.reduce_mean(v, axis=[-2, -1], keepdims=True)
            return v + self.epsilon

        def normalized(kernel, v1, v2):
            va, vb = spatial.sides(v1, v2, mode)
            return kernel / tf.sqrt(va * vb)

        def self_kernel(cov):
            v = variance(cov)
            return self.gamma2 * normalized(cov, v, v) + self.beta2

        cov1, cov2 = k.covariances(self_kernel)
        v1, v2 = variance(k.cov1), variance(k.second)
        nngp = normalized(k.nngp, v1, v2)
        ntk = None
        if k.ntk is not None:  # the gamma term and the input's self share go to the output's
            ntk = self.gamma2 * normalized(k.ntk, v1, v2) + self.t_beta
        return Kernels(cov1, cov2, self.gamma2 * nngp + self.beta2, ntk)


def _independent(a, b):
    """True when E[a b] = 0 per channel: one is linear in fresh zero-mean weights
    that the other does not depend on."""
    return any(
        first.fresh is not None and not (first.fresh & second.ancestors)
        for first, second in ((a, b), (b, a))
    )


@dataclasses.dataclass(frozen=True)
class Add:
    """A sum of tensors, K' = sum_i K_i and T' = sum_i T_i: exact when the summands
    are pairwise uncorrelated, which is checked (residual connections are)."""

    name: str
    temporaries: int = 1

    def layout(self, inputs):
        first = inputs[0]
        for other in inputs[1:]:
            if (other.spatial, other.flattened, other.rank) != (first.spatial, first.flattened, first.rank):
                raise _error(self.name, "its summands have different spatial shapes.")
        if any(a.source == "input" for a in inputs):
            raise _error(self.name, "adding the model input itself has no infinite-width kernel map.")
        if any(a.self_share for a in inputs):
            raise _error(
                self.name,
                "a summand carries the share of a trainable LayerNormalization gamma that no "
                "activation or Dense / Conv2D layer has resolved; put one between them or make "
                "the gamma non-trainable.",
            )
        for i, a in enumerate(inputs):
            for b in inputs[i + 1 :]:
                if not _independent(a, b):
                    raise _error(
                        self.name,
                        "its summands are correlated (neither is a fresh Dense / Conv2D output "
                        "that the other does not depend on, e.g. x + x or relu(z) + z), so "
                        "the kernel of the sum is not the sum of the kernels.",
                    )
        sources = {a.source for a in inputs}
        source = "gaussian" if sources == {"gaussian"} else (
            "centered" if sources <= {"gaussian", "centered"} else "general"
        )
        fresh = None
        if all(a.fresh is not None for a in inputs):
            fresh = frozenset().union(*(a.fresh for a in inputs))
        ancestors = frozenset().union(*(a.ancestors for a in inputs))
        return Layout(first.spatial, source, fresh, ancestors, first.rank, first.flattened)

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return output_needs_pairs

    def __call__(self, kernels, inputs, output):
        cov2 = None if kernels[0].cov2 is None else tf.add_n([k.cov2 for k in kernels])
        ntk = None if kernels[0].ntk is None else tf.add_n([k.ntk for k in kernels])
        return Kernels(
            tf.add_n([k.cov1 for k in kernels]), cov2, tf.add_n([k.nngp for k in kernels]), ntk
        )


@dataclasses.dataclass(frozen=True)
class AveragePool:
    """Average pooling, each side over its own window (spatial.average_pool); reads all
    position pairs and keeps only p = q when its consumers need no more."""

    name: str
    pool_size: tuple
    strides: tuple
    padding: str
    temporaries: int = 3

    def layout(self, inputs):
        (a,) = inputs
        if a.rank != 4:
            raise _error(self.name, "pooling needs inputs (batch, height, width, channels).")
        shape = tuple(
            spatial.output_length(n, k, s, 1, self.padding)
            for n, k, s in zip(a.spatial, self.pool_size, self.strides)
        )
        if min(shape) < 1:
            raise _error(self.name, f"its 'valid' window does not fit the {a.spatial} input.")
        return dataclasses.replace(a, spatial=shape)

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return True

    def __call__(self, kernels, inputs, output):
        (k,) = kernels

        def pool(kernel):
            pooled = spatial.average_pool(kernel, self.pool_size, self.strides, self.padding)
            return spatial.diagonal(pooled) if output.mode == "diag" else pooled

        cov1, cov2 = k.covariances(pool)
        return Kernels(cov1, cov2, pool(k.nngp), None if k.ntk is None else pool(k.ntk))


@dataclasses.dataclass(frozen=True)
class GlobalAveragePool:
    """Mean over all positions: K' = mean_{p, q} K(p, q) (needs all position pairs)."""

    name: str
    temporaries: int = 1

    def layout(self, inputs):
        (a,) = inputs
        if a.rank != 4:
            raise _error(self.name, "global pooling needs inputs (batch, height, width, channels).")
        return dataclasses.replace(a, spatial=(), rank=2)

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return True

    def __call__(self, kernels, inputs, output):
        (k,) = kernels

        def mean(kernel):
            return spatial.mean_positions(kernel, "pairs")

        cov1, cov2 = k.covariances(mean)
        return Kernels(cov1, cov2, mean(k.nngp), None if k.ntk is None else mean(k.ntk))


@dataclasses.dataclass(frozen=True)
class Flatten:
    """Positions become features; a following dense layer reads only p = q."""

    name: str
    temporaries: int = 0

    def layout(self, inputs):
        (a,) = inputs
        return dataclasses.replace(a, flattened=bool(a.spatial), rank=2)

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return False

    def __call__(self, kernels, inputs, output):
        return kernels[0]


@dataclasses.dataclass(frozen=True)
class Identity:
    """A layer that is the identity at inference (Dropout, GaussianNoise, ...)."""

    name: str
    temporaries: int = 0

    def layout(self, inputs):
        return inputs[0]

    def input_needs_pairs(self, output_needs_pairs, inputs):
        return output_needs_pairs

    def __call__(self, kernels, inputs, output):
        return kernels[0]
