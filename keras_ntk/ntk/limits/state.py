"""What the kernel maps pass along: a static `Layout` per tensor, `Kernels` per tile.

Every tensor of the model stands for infinitely many i.i.d. channels. Its
kernels between a batch x (n examples) and a batch x' (m examples), float64:

    nngp  (n, m, *S)   E[h(x) h(x')] per channel (a second moment);
    ntk   (n, m, *S)   sum over parameters of dh(x)/dtheta dh(x')/dtheta per channel;
    cov1  (n, 1, *S)   E[h(x) h(x)], x with itself (its variances feed activations);
    cov2  (1, m, *S)   the same for x' (None when x' is x: cov1 with its batch axes swapped);

S the spatial axes of the layout's mode (see spatial.py).
"""

import dataclasses
import typing

import tensorflow as tf

# What a tensor is, for the maps that need Gaussian or zero-mean inputs:
#   "input"     the data itself (deterministic, finitely many channels);
#   "gaussian"  jointly Gaussian with mean zero in the limit (pre-activations);
#   "centered"  mean zero, not necessarily Gaussian;
#   "general"   anything else (activations).
SOURCES = ("input", "gaussian", "centered", "general")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static facts about one tensor, known before any kernel is computed.

    Attributes:
      spatial: (H, W) of its positions, () for vectors ((positions, 1) for an
        input with one or more than two position axes).
      flattened: positions folded into the feature axis by a Flatten layer.
      source: one of SOURCES.
      fresh: the affine layers this tensor is a linear function of, fresh
        zero-mean weights nothing else in its past uses; None when it is not
        such a function (the data, an activation).
      ancestors: every affine layer it depends on.
      rank: the rank of the tensor, batch axis included.
      self_share: alpha when part of the NTK is alpha times the tensor's own NNGP,
        kept apart (`Kernels.ntk` holds the rest): the share of a trainable
        LayerNormalization gamma, whose gradient dh/dgamma = h / gamma is the
        channel's own value and so does not concentrate; an activation or a
        dense layer resolves it (maps.py).
      mode: "flat", "diag" or "pairs", assigned once the consumers are known.
    """

    spatial: tuple
    source: str
    fresh: typing.Optional[frozenset]
    ancestors: frozenset
    rank: int
    flattened: bool = False
    self_share: float = 0.0
    mode: typing.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The kernels of one tensor for one tile (shapes in the module docstring)."""

    cov1: tf.Tensor
    cov2: typing.Optional[tf.Tensor]
    nngp: tf.Tensor
    ntk: typing.Optional[tf.Tensor]

    @property
    def second(self):
        """cov2, also when x' is x."""
        if self.cov2 is not None:
            return self.cov2
        perm = [1, 0] + list(range(2, self.cov1.shape.rank))
        return tf.transpose(self.cov1, perm)

    def covariances(self, fn):
        """(fn(cov1), fn(cov2)) with cov2 = None kept None."""
        return fn(self.cov1), (None if self.cov2 is None else fn(self.cov2))
