"""Independent reference computations for the tests: brute force, quadrature, numpy."""

import numpy as np
import tensorflow as tf
from scipy import integrate


def brute_force_ntk(model, x):
    """Empirical NTK by tape.jacobian over all trainable variables.

    Returns (N, N, K, K) float64 numpy array: sum_p J[i,k,p] J[j,l,p].
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        f = model(x)
    jacobians = tape.jacobian(f, model.trainable_variables)
    n, k = f.shape
    j = np.concatenate(
        [np.reshape(jac.numpy().astype(np.float64), (n, k, -1)) for jac in jacobians], axis=-1
    )
    return np.einsum("ikp,jlp->ijkl", j, j)


def gaussian_expectation(fn, k11, k12, k22, lower=-np.inf):
    """E[fn(u, v) 1(u > lower) 1(v > lower)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]]).

    Adaptive 2-D quadrature of fn times the bivariate normal density over the box
    (lower, 10 sd]^2; put the kink of a piecewise function on `lower` so that the
    integrand is smooth on the box.
    """
    cov = np.array([[k11, k12], [k12, k22]])
    inv = np.linalg.inv(cov)
    norm = 1.0 / (2 * np.pi * np.sqrt(np.linalg.det(cov)))
    lo_u = max(lower, -10 * np.sqrt(k11))
    lo_v = max(lower, -10 * np.sqrt(k22))

    def integrand(v, u):
        q = inv[0, 0] * u * u + 2 * inv[0, 1] * u * v + inv[1, 1] * v * v
        return fn(u, v) * norm * np.exp(-0.5 * q)

    value, _ = integrate.dblquad(
        integrand, lo_u, 10 * np.sqrt(k11), lo_v, 10 * np.sqrt(k22), epsabs=1e-12, epsrel=1e-10
    )
    return value


def conv2d_numpy(x, kernel, stride, padding):
    """Channels-last 2-D cross-correlation by explicit loops over output positions."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    if padding == "same":
        oh, ow = -(-h // stride), -(-w // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwcf->nf", patch, kernel)
    return out
