"""Experiment aids: deterministic subsets, and classification labels as regression targets."""

import numpy as np


def subset(x, y, size, seed=0):
    """A deterministic random subset of ``size`` examples, drawn without replacement.

    The indices are the first ``size`` entries of
    ``np.random.default_rng(seed).permutation(N)``, so the same seed gives the same
    subset, and a smaller subset is a prefix of a larger one with the same seed.

    Args:
      x: array ``(N, ...)``; y: array ``(N, ...)`` or None.
    Returns:
      ``(x[idx], y[idx])`` with ``size`` rows, dtypes unchanged (``y`` None stays None).
    """
    x = np.asarray(x)
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}.")
    if int(size) != size or not 0 <= size <= n:
        raise ValueError(
            f"size must be an integer in [0, {n}] (the number of examples), got {size}."
        )
    idx = np.random.default_rng(seed).permutation(n)[: int(size)]
    return x[idx], (None if y is None else np.asarray(y)[idx])


def regression_targets(y, num_classes):
    """Centered one-hot targets for classification as regression.

    Args:
      y: integer labels ``(N,)`` in ``0..num_classes-1``.
    Returns:
      float32 ``(N, num_classes)``: ``one_hot(y) - 1/num_classes`` (rows sum to 0).
    """
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be integer labels of shape (N,), got {y.dtype} {y.shape}.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}.")
    targets = np.full((len(y), num_classes), -1.0 / num_classes, dtype=np.float32)
    targets[np.arange(len(y)), y] += 1.0
    return targets
