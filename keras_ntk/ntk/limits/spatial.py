"""Spatial operations on infinite-width kernels of images, channels last.

A kernel between two batches has two batch axes (rows, columns) followed by its
spatial axes, in one of three modes:

    "flat"   (B1, B2)                   no spatial axes;
    "diag"   (B1, B2, H, W)             K(x_p, x'_p), same positions only;
    "pairs"  (B1, B2, H, W, H, W)       K(x_p, x'_q), every pair of positions.

A convolution moves both positions of a pair by the same offset, so it maps
"diag" to "diag"; pooling averages each side over its own window, so it needs
"pairs". Flatten followed by a dense layer only reads p = q.
"""

import math

import tensorflow as tf


def output_length(length, window, stride, dilation, padding):
    """Output length of a TensorFlow convolution / pooling along one axis."""
    span = (window - 1) * dilation + 1
    if padding == "same":
        return -(-length // stride)
    return (length - span) // stride + 1


def _pads(length, window, stride, dilation, padding):
    """(before, after) zero padding of one axis, as TensorFlow pads 'same'."""
    if padding == "valid":
        return 0, 0
    out = output_length(length, window, stride, dilation, padding)
    total = max((out - 1) * stride + (window - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2


def _window_sum(k, groups, window, strides, dilation, padding):
    """sum over offsets d of k at (s p + r d) on every axis pair of `groups`, zero outside.

    `groups` lists (row axis, column axis) pairs that move together (the two
    positions of a pair under a convolution, or one side under pooling).
    """
    rank = k.shape.rank
    pads = [[0, 0]] * rank
    sizes = {}
    for axes in groups:
        for axis, w, s, r in zip(axes, window, strides, dilation):
            pads[axis] = list(_pads(k.shape[axis], w, s, r, padding))
            sizes[axis] = (output_length(k.shape[axis], w, s, r, padding), s, r)
    padded = tf.pad(k, pads)
    total = None
    for di in range(window[0]):
        for dj in range(window[1]):
            index = [slice(None)] * rank
            for axes in groups:
                for axis, offset in zip(axes, (di, dj)):
                    out, s, r = sizes[axis]
                    index[axis] = slice(offset * r, offset * r + (out - 1) * s + 1, s)
            piece = padded[tuple(index)]
            total = piece if total is None else total + piece
    return total


def spatial_groups(mode, rank):
    """The (row, column) axis pairs of the positions in a kernel of this mode and rank."""
    if mode == "diag":
        return [(rank - 2, rank - 1)]
    if mode == "pairs":
        return [(rank - 4, rank - 3), (rank - 2, rank - 1)]
    raise ValueError(f"A {mode!r} kernel has no spatial axes.")


def convolve(k, mode, kernel_size, strides, dilation, padding):
    """(1 / (kh kw)) sum_d k(s p + r d, s q + r d): the receptive-field mean of a convolution.

    Positions outside the (zero-padded) image contribute 0. k has mode "diag" or
    "pairs"; the result has the same mode and the output spatial size.
    """
    groups = spatial_groups(mode, k.shape.rank)
    total = _window_sum(k, groups, kernel_size, strides, dilation, padding)
    return total / (kernel_size[0] * kernel_size[1])


def average_pool(k, pool_size, strides, padding):
    """Average pooling of both sides of a "pairs" kernel, each over its own window.

    out(p, q) = sum_{d, d'} k(s p + d, s q + d') / (c_p c_q), c_p the number of
    window positions inside the image (TensorFlow's 'same' average pooling
    leaves the padding out of the count).
    """
    rank = k.shape.rank
    side_a, side_b = spatial_groups("pairs", rank)
    height, width = k.shape[rank - 2], k.shape[rank - 1]
    ones = tf.ones((height, width), k.dtype)
    counts = _window_sum(ones, [(0, 1)], pool_size, strides, (1, 1), padding)
    pooled = _window_sum(k, [side_a], pool_size, strides, (1, 1), padding)
    pooled = _window_sum(pooled, [side_b], pool_size, strides, (1, 1), padding)
    return pooled / (counts[:, :, None, None] * counts)


def diagonal(k):
    """The p = q entries of a "pairs" kernel: (B1, B2, H, W, H, W) -> (B1, B2, H, W)."""
    shape = tf.shape(k)
    height, width = k.shape[-2], k.shape[-1]
    square = tf.reshape(k, tf.concat([shape[:2], [height * width, height * width]], 0))
    return tf.reshape(tf.linalg.diag_part(square), tf.concat([shape[:2], [height, width]], 0))


def mean_positions(k, mode):
    """Mean over every spatial axis: the kernel of the spatial mean ("pairs") or of
    the flattened features ("diag", positions p = q); "flat" is returned as is."""
    if mode == "flat":
        return k
    axes = [a for group in spatial_groups(mode, k.shape.rank) for a in group]
    return tf.reduce_mean(k, axis=axes)


def variances(cov, mode):
    """Per-position variances (B1, B2[, H, W]) from a self kernel K(x_p, x_q) of x with itself."""
    return diagonal(cov) if mode == "pairs" else cov


def sides(var1, var2, mode):
    """var1 at the first and var2 at the second position of each entry of a `mode` kernel.

    var1 (B1, B2[, H, W]) and var2 likewise; in "pairs" mode they become
    (B1, B2, H, W, 1, 1) and (B1, B2, 1, 1, H, W) so that they broadcast against
    K(x_p, x'_q).
    """
    if mode != "pairs":
        return var1, var2
    return var1[..., :, :, None, None], var2[..., None, None, :, :]


def position_count(mode, spatial):
    """Entries per pair of examples in a kernel of this mode and spatial shape (H, W)."""
    return {"flat": 1, "diag": math.prod(spatial), "pairs": math.prod(spatial) ** 2}[mode]
