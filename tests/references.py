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


def loop_jacobian(model, x, variables=None):
    """Per-example Jacobians df_k(x_n)/dtheta by a plain loop of tape.gradient calls
    (one backward pass per example and output, no vectorization).

    Returns (N, K, P) float64: the variables (default all trainable ones) flattened
    row-major and concatenated in order.
    """
    variables = list(model.trainable_variables if variables is None else variables)
    rows = []
    for xi in np.asarray(x):
        per_output = []
        with tf.GradientTape(persistent=True) as tape:
            f = tf.reshape(model(xi[None], training=False), [-1])
            outputs = [f[k] for k in range(f.shape[0])]
        for fk in outputs:
            grads = tape.gradient(fk, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            per_output.append(np.concatenate([np.ravel(g.numpy()) for g in grads]).astype(np.float64))
        del tape
        rows.append(per_output)
    return np.asarray(rows)


def softmax_hessian(logits):
    """diag(p) - p p^T per example, (N, K, K) float64."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.einsum("nk,kl->nkl", p, np.eye(p.shape[1])) - np.einsum("nk,nl->nkl", p, p)


def dense_chain_kfac_factors(layers, x, likelihood):
    """K-FAC factors of a chain of dense layers z = ws a W + bs b, a' = phi(z), in numpy.

    Args:
      layers: list of dicts with kernel (C, O), bias (O,), ws, bs and activation
        ("relu" or "linear"), in call order; the last one's z is the output f.
      x: (N, C_0) inputs.
      likelihood: "regression" (H = I) or "classification" (H = softmax Hessian of f),
        the likelihood's Hessian in f per example.
    Returns:
      f (N, K), and per layer (A, G, a_tilde (N, C + 1), dz (N, K, O)):
      A = sum_n a~ a~^T with a~ = [ws a; bs], G = sum_n dz^T H dz / N, dz = df/dz.
    """
    a, inputs, zs = np.asarray(x, np.float64), [], []
    for layer in layers:
        inputs.append(a)
        z = layer["ws"] * a @ layer["kernel"] + layer["bs"] * layer["bias"]
        zs.append(z)
        a = np.maximum(z, 0.0) if layer["activation"] == "relu" else z
    f = zs[-1]
    eye = np.broadcast_to(np.eye(f.shape[1]), (len(f), f.shape[1], f.shape[1]))
    hessians = eye if likelihood == "regression" else softmax_hessian(f)
    dz = np.broadcast_to(np.eye(f.shape[1]), (len(f), f.shape[1], f.shape[1])).copy()
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        if layers[i]["activation"] == "relu":
            dz = dz * (zs[i] > 0)[:, None, :]
        grads[i] = dz
        dz = layers[i]["ws"] * np.einsum("nko,co->nkc", dz, layers[i]["kernel"])
    out = []
    for layer, a_in, g in zip(layers, inputs, grads):
        a_tilde = np.concatenate([layer["ws"] * a_in, np.full((len(a_in), 1), layer["bs"])], axis=1)
        big_g = np.einsum("nko,nkl,nlq->oq", g, hessians, g) / len(a_in)
        out.append((a_tilde.T @ a_tilde, big_g, a_tilde, g))
    return f, out


def relu_mlp_ntk(x1, x2, depth, w_std, b_std, parametrization="ntk", width=None, dtype=np.longdouble):
    """Infinite-width NTK of a ReLU MLP (keras_ntk.models.mlp) in numpy, in `dtype`
    (default 80-bit extended precision on x86), from the arc-cosine closed forms:

        Sigma_0 = w^2 <x, x'> / d + b^2,  Theta_0 = share_0,
        Sigma_h = w^2 E[relu(u) relu(v)] + b^2,  Theta_h = Theta_{h-1} w^2 E[relu'(u) relu'(v)] + share_h,

    with layer h's own share w^2 E_h + b^2 (NTK parametrization) or n_h E_h + 1
    (standard parametrization, fan-ins n = d, width, ..., width), E_h the mean
    <input, input'> of layer h. x2=None returns the diagonal k(x_i, x_i), (N,).
    """
    a = np.asarray(x1, dtype)
    d = a.shape[1]
    if x2 is None:
        k11 = k22 = k12 = np.sum(a * a, axis=1) / d
    else:
        b = np.asarray(x2, dtype)
        k11, k22 = (np.sum(a * a, axis=1) / d)[:, None], (np.sum(b * b, axis=1) / d)[None, :]
        k12 = a @ b.T / d
    pi = np.arccos(dtype(-1))
    w2, b2 = dtype(w_std) ** 2, dtype(b_std) ** 2
    fan_ins = [d] + [width] * depth

    def share(h, e):
        return w2 * e + b2 if parametrization == "ntk" else dtype(fan_ins[h]) * e + 1

    def relu(s11, s12, s22):
        norm = np.sqrt(s11 * s22)
        cos = np.clip(s12 / norm, -1, 1)
        theta = np.arccos(cos)
        return norm / (2 * pi) * (np.sin(theta) + (pi - theta) * cos), (pi - theta) / (2 * pi)

    ntk = share(0, k12)
    s11, s12, s22 = w2 * k11 + b2, w2 * k12 + b2, w2 * k22 + b2
    for h in range(1, depth + 1):
        e12, de12 = relu(s11, s12, s22)
        e11, _ = relu(s11, s11, s11)
        e22, _ = relu(s22, s22, s22)
        ntk = ntk * w2 * de12 + share(h, e12)
        s11, s12, s22 = w2 * e11 + b2, w2 * e12 + b2, w2 * e22 + b2
    return ntk


def gp_posterior_variance(k_train, k_cross, k_diagonal, noise):
    """k(x, x) - k(x, X) (K + s^2 I)^-1 k(X, x) per test input, by a row-by-row
    Cholesky factorization and forward substitution in the arrays' own dtype
    (numpy's linalg has no extended precision)."""
    a = k_train + noise * np.eye(len(k_train), dtype=k_train.dtype)
    n = len(a)
    chol = np.zeros_like(a)
    for j in range(n):
        chol[j, j] = np.sqrt(a[j, j] - chol[j, :j] @ chol[j, :j])
        chol[j + 1 :, j] = (a[j + 1 :, j] - chol[j + 1 :, :j] @ chol[j, :j]) / chol[j, j]
    w = np.zeros_like(k_cross.T)
    for i in range(n):
        w[i] = (k_cross.T[i] - chol[i, :i] @ w[:i]) / chol[i, i]
    return k_diagonal - np.sum(w * w, axis=0)
