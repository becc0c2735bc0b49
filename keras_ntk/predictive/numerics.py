"""float64 factorizations with adaptive jitter, reported and never silent.

`factorize(matrix)` tries a Cholesky factorization of the symmetric matrix A,
then of A + j I for j = 1e-10, 1e-9, ..., 1e-2 times the mean of diag(A). The
jitter used and the condition number of the factorized matrix travel with the
factor; when no jitter works, `FactorizationError` names every jitter tried.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

RELATIVE_JITTERS = (0.0,) + tuple(10.0**e for e in range(-10, -1))


class FactorizationError(ValueError):
    """A matrix that should be positive definite could not be factorized."""


@dataclasses.dataclass(frozen=True)
class Factorization:
    """Cholesky factor of A + jitter I.

    Attributes:
      chol: (n, n) float64 lower-triangular tf.Tensor L with L L^T = A + jitter I.
      jitter: the absolute jitter added to the diagonal (0.0 when none was needed).
      condition_number: 2-norm condition number of A + jitter I.
    """

    chol: tf.Tensor
    jitter: float
    condition_number: float

    def solve(self, rhs):
        """(A + jitter I)^-1 rhs for rhs (n, ...) float64."""
        return tf.linalg.cholesky_solve(self.chol, rhs)

    def log_det(self):
        """log det(A + jitter I)."""
        return 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(self.chol)))


def factorize(matrix, what="matrix"):
    """Cholesky-factorize a symmetric positive (semi-)definite matrix in float64.

    Args:
      matrix: (n, n) array or tensor.
      what: how error messages name the matrix.
    Returns:
      a `Factorization`.
    Raises:
      ValueError: not square or not finite.
      FactorizationError: not positive definite even with the largest jitter.
    """
    a = tf.convert_to_tensor(matrix, tf.float64)
    if a.shape.rank != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be a square matrix, got shape {a.shape}.")
    if not bool(tf.reduce_all(tf.math.is_finite(a))):
        raise ValueError(f"{what} contains NaN or Inf.")
    a = 0.5 * (a + tf.transpose(a))
    scale = float(tf.reduce_mean(tf.abs(tf.linalg.diag_part(a)))) or 1.0
    eye = tf.eye(a.shape[0], dtype=tf.float64)
    tried = []
    for relative in RELATIVE_JITTERS:
        jitter = relative * scale
        tried.append(jitter)
        try:
            chol = tf.linalg.cholesky(a + jitter * eye)
        except tf.errors.InvalidArgumentError:  # raised instead of NaN on some devices
            continue
        if bool(tf.reduce_all(tf.math.is_finite(chol))):
            return Factorization(chol, jitter, _condition_number(a + jitter * eye))
    raise FactorizationError(
        f"{what} ({a.shape[0]} x {a.shape[0]}) is not positive definite: Cholesky failed "
        f"with jitter {', '.join(f'{j:.1e}' for j in tried)} added to the diagonal "
        f"(relative to its mean diagonal {scale:.3g}). Check for duplicated inputs with zero "
        "noise, or raise the noise variance / prior precision."
    )


def _condition_number(a):
    eigenvalues = np.linalg.eigvalsh(a.numpy())
    smallest = eigenvalues[0]
    return math.inf if smallest <= 0 else float(eigenvalues[-1] / smallest)


def check_finite(array, what):
    """Raise ValueError when an array has NaN or Inf; return it as a numpy array."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or Inf.")
    return array
