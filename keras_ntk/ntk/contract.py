"""Contraction of per-example factors (see features.py) into kernel blocks.

Output modes, for blocks of n rows (x1) and m columns (x2), K outputs:
  "full"      Theta[i, j, k, l]                    (n, m, K, K)
  "trace"     mean_k Theta[i, j, k, k]              (n, m)
  "diagonal"  Theta[i, i, k, l], rows only          (n, K, K)
"""

import tensorflow as tf

OUTPUTS = ("full", "trace", "diagonal")


def _factored(group, f1, f2, output):
    a1, d1 = f1
    if output == "diagonal":
        coef = group.weight_coef * tf.reduce_sum(a1 * a1, axis=-1) + group.bias_coef
        return coef[:, None, None] * tf.einsum("iko,ilo->ikl", d1, d1)
    a2, d2 = f2
    coef = group.weight_coef * tf.matmul(a1, a2, transpose_b=True) + group.bias_coef
    if output == "full":
        return coef[:, :, None, None] * tf.einsum("iko,jlo->ijkl", d1, d2)
    k = tf.cast(tf.shape(d1)[1], d1.dtype)
    n, m = tf.shape(d1)[0], tf.shape(d2)[0]
    dd = tf.matmul(tf.reshape(d1, (n, -1)), tf.reshape(d2, (m, -1)), transpose_b=True)
    return coef * dd / k


def _gradient(f1, f2, output):
    (g1,) = f1
    if output == "diagonal":
        return tf.einsum("ikp,ilp->ikl", g1, g1)
    (g2,) = f2
    n, k = tf.shape(g1)[0], tf.shape(g1)[1]
    m = tf.shape(g2)[0]
    if output == "full":
        flat = tf.matmul(tf.reshape(g1, (n * k, -1)), tf.reshape(g2, (m * k, -1)), transpose_b=True)
        return tf.transpose(tf.reshape(flat, (n, k, m, k)), (0, 2, 1, 3))
    dot = tf.matmul(tf.reshape(g1, (n, -1)), tf.reshape(g2, (m, -1)), transpose_b=True)
    return dot / tf.cast(k, g1.dtype)


def contract(groups, factors1, factors2, output, dtype, per_layer):
    """Kernel block from two factor lists (factors2 is ignored for "diagonal").

    Returns a tensor, or with per_layer a dict group name -> tensor (groups of
    the same name are summed).
    """
    blocks = {}
    for i, group in enumerate(groups):
        f1 = tuple(tf.cast(t, dtype) for t in factors1[i])
        f2 = None if factors2 is None else tuple(tf.cast(t, dtype) for t in factors2[i])
        if group.kind == "factored":
            block = _factored(group, f1, f2, output)
        else:
            block = _gradient(f1, f2, output)
        blocks[group.name] = blocks[group.name] + block if group.name in blocks else block
    return blocks if per_layer else tf.add_n(list(blocks.values()))
