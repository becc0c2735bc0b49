"""Contraction of per-example factors (see features.py) into kernel blocks.

Output modes, for blocks of n rows (x1) and m columns (x2), K outputs:
  "full"      Theta[i, j, k, l]                    (n, m, K, K)
  "trace"     mean_k Theta[i, j, k, k]              (n, m)
  "diagonal"  Theta[i, i, k, l], rows only          (n, K, K)

For "full" and "trace" every group's block is a coefficient times a Gram
matrix of per-example rows R_i (r, P):

    Theta_g[i, j] = c_ij R_i R_j^T    (r, r),

R_i = D_i (K, O) with c_ij = wc <A_i, A_j> + bc for a factored group, R_i = G_i
(K, P) with c_ij = 1 for a gradient group; for "trace" R_i is flattened to
one row (1, K P) and the block divided by K. The Grams are (n r, P) x (P, m r)
matmuls whose (n, r, m, r) results are scaled, summed over groups and
transposed once to (n, m, r, r). A symmetric block (x2 = x1) of at least
_PARTS * _MIN_PART_ROWS rows n r splits the examples into _PARTS parts and
computes only the pairs of parts on and above the diagonal (10 of 16 for 4
parts), mirroring the others.
"""

import tensorflow as tf

OUTPUTS = ("full", "trace", "diagonal")
_PARTS = 4
_MIN_PART_ROWS = 128  # smaller Gram parts (few examples, few outputs) cost more than they save
PARTED_MIN_ROWS = _PARTS * _MIN_PART_ROWS  # rows n r of a symmetric block computed in parts
PARTED_SHARE = (_PARTS * (_PARTS + 1) // 2) / _PARTS**2  # share of its Gram entries computed


def _diagonal(group, f):
    """Theta_g[i, i] (n, K, K) of one group."""
    if group.kind == "factored":
        a, d = f
        coef = group.weight_coef * tf.reduce_sum(a * a, axis=-1) + group.bias_coef
        return coef[:, None, None] * tf.einsum("iko,ilo->ikl", d, d)
    (g,) = f
    return tf.einsum("ikp,ilp->ikl", g, g)


def _rows(f, output):
    """Per-example rows R (n, r, P) of a factor tuple: deltas or gradients."""
    rows = f[-1]
    if output == "trace":
        rows = tf.reshape(rows, (tf.shape(rows)[0], 1, -1))
    return rows


def _coefficient(group, f1, f2):
    """c (n, m) of a factored group, None (all ones) for a gradient group."""
    if group.kind != "factored":
        return None
    return group.weight_coef * tf.matmul(f1[0], f2[0], transpose_b=True) + group.bias_coef


def _gram(rows1, rows2, coef):
    """c * Gram of rows1 (n, r, P) and rows2 (m, r, P), coef (n, m) or None: (n, r, m, r)."""
    n, r, p = tf.shape(rows1)[0], tf.shape(rows1)[1], tf.shape(rows1)[2]
    m = tf.shape(rows2)[0]
    # einsum rather than matmul(..., transpose_b=True): 7% faster per tile with x2 given
    # (benchmarks/ntk_bench.py, MLP full), the same for x2=None
    gram = tf.einsum("ip,jp->ij", tf.reshape(rows1, (-1, p)), tf.reshape(rows2, (-1, p)))
    gram = tf.reshape(gram, (n, r, m, r))
    return gram if coef is None else gram * coef[:, None, :, None]


def _worth_parts(rows):
    """Whether the symmetric block of rows (n, r, P) has enough rows n r for parts."""
    n, r = rows.shape[0], rows.shape[1]
    return n is not None and r is not None and n * r >= PARTED_MIN_ROWS


def _parts(n):
    """(lo, hi) example ranges of the _PARTS parts of a symmetric block."""
    size = (n + _PARTS - 1) // _PARTS
    return [(tf.minimum(a * size, n), tf.minimum((a + 1) * size, n)) for a in range(_PARTS)]


def _mirror(upper):
    """(n, n, r, r) block from its parts on and above the diagonal, upper[a, b] (a <= b)
    of shape (n_a, r, n_b, r); part (b, a) is part (a, b) transposed."""
    rows = []
    for a in range(_PARTS):
        row = [tf.transpose(upper[b, a], (2, 0, 3, 1)) for b in range(a)]
        row += [tf.transpose(upper[a, b], (0, 2, 1, 3)) for b in range(a, _PARTS)]
        rows.append(tf.concat(row, axis=1))
    return tf.concat(rows, axis=0)


def contract(groups, factors1, factors2, output, dtype, per_layer, symmetric=False):
    """Kernel block from two factor lists.

    factors2 is ignored for "diagonal" and when `symmetric` (the block of
    factors1 with itself). Returns a tensor, or with per_layer a dict group
    name -> tensor (groups of the same name are summed).
    """
    factors1 = [tuple(tf.cast(t, dtype) for t in f) for f in factors1]
    if output == "diagonal":
        blocks = {}
        for group, f in zip(groups, factors1):
            block = _diagonal(group, f)
            blocks[group.name] = blocks[group.name] + block if group.name in blocks else block
        return blocks if per_layer else tf.add_n(list(blocks.values()))
    if symmetric:
        factors2 = factors1
    else:
        factors2 = [tuple(tf.cast(t, dtype) for t in f) for f in factors2]
    parted = symmetric and _worth_parts(_rows(factors1[0], output))
    parts = _parts(tf.shape(factors1[0][-1])[0]) if parted else None
    sums = {}  # name -> (n, r, m, r) Gram sum, or {(a, b): part} when parted
    for group, f1, f2 in zip(groups, factors1, factors2):
        rows1, rows2 = _rows(f1, output), _rows(f2, output)
        coef = _coefficient(group, f1, f2)
        if parted:
            new = {
                (a, b): _gram(
                    rows1[lo:hi],
                    rows1[lo2:hi2],
                    None if coef is None else coef[lo:hi, lo2:hi2],
                )
                for a, (lo, hi) in enumerate(parts)
                for b, (lo2, hi2) in enumerate(parts)
                if a <= b
            }
        else:
            new = _gram(rows1, rows2, coef)
        key = group.name if per_layer else None
        old = sums.get(key)
        if old is None:
            sums[key] = new
        elif parted:
            sums[key] = {ab: old[ab] + new[ab] for ab in old}
        else:
            sums[key] = old + new
    blocks = {}
    for key, total in sums.items():
        block = _mirror(total) if parted else tf.transpose(total, (0, 2, 1, 3))
        if output == "trace":
            k = tf.shape(factors1[0][-1])[1]
            block = block[:, :, 0, 0] / tf.cast(k, dtype)
        blocks[key] = block
    return blocks if per_layer else blocks[None]
