"""Dual activations: what an elementwise activation phi does to the infinite-width kernels.

For (u, v) ~ N(0, [[k11, k12], [k12, k22]]) a dual activation returns

    E[phi(u) phi(v)]      the second moment of the activations (the next NNGP),
    E[phi'(u) phi'(v)]    the factor that multiplies the NTK of the pre-activations.

Closed forms: ReLU (the arc-cosine kernels of degree 1 and 0, Cho & Saul 2009),
erf (Williams 1997) and the identity. Any other elementwise function by its
Hermite expansion with coefficients from Gaussian quadrature (`HermiteExpansion`).

Zero variance: a pre-activation of variance exactly 0 is the constant 0 (for
example every unit of a zero input with zero biases), and the derivative there
is TensorFlow's: relu'(0) = 0. The limit then agrees exactly with the empirical
NTK TensorFlow computes; for ReLU with k11 k22 = 0 the derivative term is 0
(not the 1/4 that the arc-cosine formula's angle pi/2 would give).

All functions take broadcast-compatible float64 tensors and return the
broadcast shape; `derivative=False` skips E[phi' phi'] (returned as None).
"""

import math

import numpy as np
import tensorflow as tf


def relu(k11, k12, k22, derivative=True):
    """E[relu(u) relu(v)] = sqrt(k11 k22) (sin t + (pi - t) cos t) / (2 pi) and
    E[relu'(u) relu'(v)] = (pi - t) / (2 pi), cos t = k12 / sqrt(k11 k22); 0 when k11 k22 = 0."""
    norm = tf.sqrt(k11 * k22)
    cos_theta = tf.clip_by_value(tf.math.divide_no_nan(k12, norm), -1.0, 1.0)
    theta = tf.acos(cos_theta)
    e_phi = norm / (2 * math.pi) * (tf.sin(theta) + (math.pi - theta) * cos_theta)
    if not derivative:
        return e_phi, None
    e_dphi = tf.where(norm > 0, (math.pi - theta) / (2 * math.pi), tf.zeros_like(theta))
    return e_phi, e_dphi


def erf(k11, k12, k22, derivative=True):
    """E[erf(u) erf(v)] = (2/pi) asin(2 k12 / sqrt((1 + 2 k11)(1 + 2 k22))) and
    E[erf'(u) erf'(v)] = (4/pi) / sqrt((1 + 2 k11)(1 + 2 k22) - 4 k12^2)."""
    ab = (1 + 2 * k11) * (1 + 2 * k22)
    e_phi = 2 / math.pi * tf.asin(tf.clip_by_value(2 * k12 / tf.sqrt(ab), -1.0, 1.0))
    if not derivative:
        return e_phi, None
    return e_phi, 4 / math.pi / tf.sqrt(ab - 4 * k12**2)


def identity(k11, k12, k22, derivative=True):
    """E[u v] = k12 and E[1 * 1] = 1."""
    k12 = k12 + tf.zeros_like(k11) + tf.zeros_like(k22)
    return k12, (tf.ones_like(k12) if derivative else None)


CLOSED_FORMS = {"relu": relu, "erf": erf, "identity": identity}

DEFAULT_TERMS = 256


def times_derivative(fn):
    """The elementwise function t -> t fn'(t) (fn' by automatic differentiation)."""

    def g(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = tf.cast(fn(t), tf.float64)
        return t * tape.gradient(y, t)

    return g


def _hermite_table(z, terms):
    """Orthonormal probabilists' Hermite polynomials h_k(z), k < terms: (len(z), terms)."""
    table = np.zeros((len(z), terms))
    table[:, 0] = 1.0
    if terms > 1:
        table[:, 1] = z
    for k in range(1, terms - 1):
        table[:, k + 1] = (z * table[:, k] - math.sqrt(k) * table[:, k - 1]) / math.sqrt(k + 1)
    return table


class HermiteExpansion:
    """Dual activation of any elementwise `fn` by Mehler's Hermite expansion.

    Writing u = sqrt(k11) z1 and v = sqrt(k22) z2 with standard normals of
    correlation rho = k12 / sqrt(k11 k22),

        E[g(u) g(v)] = sum_k c_k(k11) c_k(k22) rho^k,
        c_k(s) = E[g(sqrt(s) z) h_k(z)],

    h_k the orthonormal (probabilists') Hermite polynomials, for g = fn and
    g = fn' (from automatic differentiation, so at a zero input it is
    TensorFlow's derivative). The coefficients are Gaussian integrals in one
    variable, computed by quadrature (the midpoint rule with step 0.025 over
    [-14, 14], accurate to ~1e-14 for smooth g) once per variance, i.e. per
    example and position, not per pair; each kernel entry then costs `terms`
    multiply-adds. The series converges geometrically for |rho| < 1 and is
    slowest at |rho| = 1. Accuracy at the default 256 terms, relative to
    sqrt(E[g(u)^2] E[g(v)^2]), measured against adaptive 2-D quadrature for
    tanh, gelu, swish, sigmoid and erf (g and g'): below 1e-8 for variances up
    to 4 and below 2e-5 up to 10 (tanh is the hardest). Functions with a kink
    (relu, leaky relu) converge only algebraically: about 3e-5, except
    E[g' g'] (g' jumps) near |rho| = 1, where the error is ~1e-2; use the
    closed forms where they exist.
    """

    def __init__(self, fn, terms=DEFAULT_TERMS):
        if isinstance(terms, bool) or not isinstance(terms, int) or terms < 2:
            raise ValueError(f"the number of Hermite terms must be an int >= 2, got {terms!r}.")
        step = 0.025
        z = np.arange(-14.0 + step / 2, 14.0, step)  # midpoints: no node on a kink at 0
        weights = step * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        self.fn = fn
        self.terms = terms
        self._nodes = tf.constant(z, tf.float64)
        self._table = tf.constant(_hermite_table(z, terms) * weights[:, None], tf.float64)

    def _coefficients(self, variance, derivative):
        """c_k of fn (and of fn') at each variance: variance.shape + (terms,)."""
        flat = tf.reshape(variance, [-1])
        t = tf.sqrt(flat)[:, None] * self._nodes[None, :]
        if derivative:
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = tf.cast(self.fn(t), tf.float64)
            dy = tape.gradient(y, t)
        else:
            y, dy = tf.cast(self.fn(t), tf.float64), None
        shape = tf.concat([tf.shape(variance), [self.terms]], 0)
        out = [tf.reshape(tf.matmul(g, self._table), shape) for g in (y, dy) if g is not None]
        return out if derivative else out + [None]

    def _series(self, c1, c2, rho):
        """sum_k c1[..., k] c2[..., k] rho^k by Horner's rule, highest k first."""
        first = list(range(c1.shape.rank))
        order = [first[-1]] + first[:-1]
        elems = (tf.reverse(tf.transpose(c1, order), [0]), tf.reverse(tf.transpose(c2, order), [0]))
        return tf.foldl(lambda total, c: total * rho + c[0] * c[1], elems, initializer=tf.zeros_like(rho))

    def __call__(self, k11, k12, k22, derivative=True):
        rho = tf.clip_by_value(tf.math.divide_no_nan(k12, tf.sqrt(k11 * k22)), -1.0, 1.0)
        rho = rho + tf.zeros_like(k11) + tf.zeros_like(k22)
        c1, d1 = self._coefficients(k11, derivative)
        c2, d2 = self._coefficients(k22, derivative)
        e_phi = self._series(c1, c2, rho)
        return e_phi, (self._series(d1, d2, rho) if derivative else None)
