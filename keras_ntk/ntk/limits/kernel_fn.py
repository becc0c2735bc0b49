"""`infinite_width_kernel_fn`: the infinite-width NNGP and NTK of a Keras model, tiled."""

import collections

import keras
import numpy as np
import tensorflow as tf

from keras_ntk.ntk import memory
from keras_ntk.ntk.limits import dual, program as program_lib

GETS = ("nngp", "ntk")
XLA_ENTRIES = 2**28  # kernel entries per tile from which XLA's compile time (~10 s) pays


def _parse_get(get):
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in GETS for g in names) or len(set(names)) != len(names):
        raise ValueError(f'get must be "nngp", "ntk" or a tuple of them such as ("nngp", "ntk"), got {get!r}.')
    return names


def _chunks(x, size):
    """Chunks of `size` examples, the last padded with zeros so that every chunk has
    one shape (one trace): list of (chunk, real count, start)."""
    out = []
    for start in range(0, x.shape[0], size):
        piece = x[start : start + size]
        count = piece.shape[0]
        if count < size and x.shape[0] > size:
            piece = np.concatenate([piece, np.zeros((size - count, *x.shape[1:]), x.dtype)])
        out.append((piece, count, start))
    return out


class KernelFn:
    """The infinite-width kernels of one network: `kernel_fn(x1, x2=None, get="ntk")`.

    Made by `infinite_width_kernel_fn`. Calling it with x1 (N, *input_shape) and
    x2 (M, *input_shape) or None (x2 = x1) returns an (N, M) float64 tf.Tensor
    for get="nngp" or "ntk", and for a tuple such as ("nngp", "ntk") a namedtuple
    with those fields in that order. The (N, M) blocks are computed in tiles that
    fit `memory_budget`; a request whose smallest tile does not fit raises
    NTKMemoryError before any work.

    Attributes:
      program: the kernel maps (`describe()` lists each step's layer, map, mode
        and spatial shape).
      total_entries: kernel entries the maps compute per pair of examples (the
        sum over tensors of 1, H W or (H W)^2 for flat, "diag" or "pairs"
        kernels): the cost of a call is proportional to N M times this.
      peak_entries: entries per pair of examples alive at the peak (memory).
    """

    def __init__(self, program, *, memory_budget=None, progress=None):
        if memory_budget is not None and not memory_budget > 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}.")
        self.program = program
        self.memory_budget = memory_budget
        self.progress = progress
        self.total_entries = program.total_entries
        self.peak_entries = program.peak_entries
        self._graph = tf.function(self.program.evaluate, autograph=False)
        self._compiled = tf.function(self.program.evaluate, jit_compile=True, autograph=False)

    def _tile(self, a, b, ntk):
        """One tile; compiled by XLA (which fuses the maps' elementwise passes: ~1.5x
        faster on a CPU) once the tile is big enough to repay its compile time."""
        rows, cols = a.shape[0], (a if b is None else b).shape[0]
        large = rows * cols * self.total_entries >= XLA_ENTRIES
        return (self._compiled if large else self._graph)(a, b, ntk)

    def _as_inputs(self, x, what):
        x = np.asarray(x, dtype=np.float64)
        expected = self.program.input_shape
        if x.ndim != len(expected) + 1 or x.shape[1:] != expected:
            raise ValueError(
                f"{what} must have shape (examples, {', '.join(map(str, expected))}) to match the "
                f"network's input, got {x.shape}."
            )
        if x.shape[0] == 0:
            raise ValueError(f"{what} has no examples.")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{what} contains NaN or Inf.")
        return x

    def plan(self, n, m, get="ntk"):
        """Examples per tile side for an n x m request, or NTKMemoryError if none fits."""
        ntk = "ntk" in _parse_get(get)
        budget = self.memory_budget or memory.default_budget()
        result = 2 * n * m * program_lib.BYTES * (2 if ntk else 1)
        need_one = result + self.program.tile_bytes(1, 1, ntk)
        if need_one > budget:
            raise memory.NTKMemoryError(
                f"This infinite-width kernel request needs at least {memory.gib(need_one)}: the "
                f"result ({n} x {m} float64) takes {memory.gib(result)} and one pair of examples "
                f"{memory.gib(need_one - result)} ({self.peak_entries} kernel entries alive at "
                f"the peak, position pairs of pooled layers included), but memory_budget is "
                f"{memory.gib(budget)}. Use fewer examples or smaller images, or raise "
                "memory_budget if the machine has the memory."
            )
        chunk = max(n, m)
        while chunk > 1 and result + self.program.tile_bytes(min(chunk, n), min(chunk, m), ntk) > budget:
            chunk = (chunk + 1) // 2
        return chunk

    def __call__(self, x1, x2=None, get="ntk"):
        names = _parse_get(get)
        ntk = "ntk" in names
        a = self._as_inputs(x1, "x1")
        symmetric = x2 is None
        b = a if symmetric else self._as_inputs(x2, "x2")
        n, m = a.shape[0], b.shape[0]
        chunk = self.plan(n, m, names)
        rows = _chunks(a, chunk)
        cols = rows if symmetric else _chunks(b, chunk)
        if symmetric:
            pairs = [(i, j) for i in range(len(rows)) for j in range(i, len(rows))]
        else:
            pairs = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
        show = self.progress if self.progress is not None else len(pairs) >= 8
        bar = keras.utils.Progbar(len(pairs), unit_name="tile") if show else None
        out = {name: np.empty((n, m)) for name in GETS}
        for t, (i, j) in enumerate(pairs):
            same = symmetric and i == j
            block_b = None if same else tf.constant(cols[j][0])
            nngp, ntk_block = self._tile(tf.constant(rows[i][0]), block_b, ntk)
            (_, n_rows, start_i), (_, n_cols, start_j) = rows[i], cols[j]
            for name, block in (("nngp", nngp), ("ntk", ntk_block)):
                if block is None:
                    continue
                block = block.numpy()[:n_rows, :n_cols]
                out[name][start_i : start_i + n_rows, start_j : start_j + n_cols] = block
                if symmetric and i != j:
                    out[name][start_j : start_j + n_cols, start_i : start_i + n_rows] = block.T
            if bar is not None:
                bar.update(t + 1)
        values = [tf.constant(out[name]) for name in names]
        if isinstance(get, str):
            return values[0]
        return collections.namedtuple("Kernels", names)(*values)


def infinite_width_kernel_fn(model, *, memory_budget=None, progress=None, hermite_terms=dual.DEFAULT_TERMS):
    """The infinite-width NNGP and NTK of a built Keras model, as neural-tangents' `kernel_fn`.

    Walks the model's layers (functional, Sequential and nested models) and
    composes one kernel map per layer, as neural-tangents' stax composes its
    kernel functions. For every tensor h of the network with channel index c:

        NNGP  K(x, x') = E[h_c(x) h_c(x')]                       (a second moment),
        NTK   T(x, x') = sum_theta dh_c(x)/dtheta dh_c(x')/dtheta,

    the limits as every hidden width (units, channels) grows, identical for all
    channels c. A dense or convolutional layer maps (K, T) to
    (s_w L[K] + s_b, s_w L[T] + t_w L[K] + t_b), L the receptive-field mean of a
    convolution (positions outside a 'same' padding count as 0); an activation
    phi to (E[phi(u) phi(v)], T E[phi'(u) phi'(v)]) with (u, v) Gaussian of
    covariance K; layer normalization divides by the standard deviations; sums add;
    pooling averages each side over its window (maps.py has each map).

    Layer parameters: s_w = n g_w^2 E[W^2] and s_b = g_b^2 E[b^2] for weights W,
    biases b, fan-in n, and the scales g_w, g_b that multiply them in the layer
    (keras_ntk layers: `weight_scale`, `bias_scale`; Keras layers: 1, with E[W^2]
    read from the initializer). t_w = n g_w^2 and t_b = g_b^2 for trainable
    kernels and biases (only trainable variables are parameters, as in
    `keras_ntk.empirical_ntk`). In NTK parametrization the kernels do not depend on
    the widths; in standard parametrization (and for plain Keras layers) the NTK
    grows with the fan-ins n, which are the model's own.

    Supported layers: keras_ntk.layers.Dense and Conv2D (both parametrizations);
    keras.layers.Dense (also per position on images), Conv2D (channels_last,
    groups=1, any strides, 'same' or 'valid' padding, dilation); Activation,
    ReLU, LeakyReLU and fused activations: relu and erf in closed form, the
    identity, and any other elementwise function (tanh, gelu, swish, ...) by its
    Hermite expansion of `hermite_terms` terms with coefficients by Gaussian
    quadrature (for smooth functions an error below 1e-8 for pre-activation
    variances up to 4, 2e-5 up to 10; slow for kinks: see dual.HermiteExpansion);
    AveragePooling2D, GlobalAveragePooling2D, Flatten, Add (summands must be
    uncorrelated, as residual branches are: checked), LayerNormalization over the
    channels (the mean over infinitely many channels is 0 and the variance is
    the NNGP's; epsilon, gamma and beta included); Dropout, GaussianNoise,
    GaussianDropout, AlphaDropout, ActivityRegularization and Identity (the
    identity at inference). Any other layer raises ValueError naming it.

    Conventions: weights and biases have zero mean; an activation needs a
    Gaussian input, so a layer that reads the model input directly (finite
    fan-in) must have Gaussian weights (RandomNormal or
    VarianceScaling(distribution="untruncated_normal"); keras_ntk layers are)
    before a nonlinearity; relu'(0) = 0 as in TensorFlow, so a pre-activation of
    variance 0 (a zero input with zero biases) contributes no derivative term,
    like the empirical NTK.

    Args:
      model: a built single-input, single-output Keras model, inputs (batch, d)
        or (batch, H, W, C).
      memory_budget: bytes a call may use, result included (default half the
        available memory, or KERAS_NTK_MEMORY_BUDGET).
      progress: show a progress bar over tiles (None: when there are 8 or more).
      hermite_terms: terms of the Hermite expansion of activations without a closed form.
    Returns:
      a `KernelFn`: kernel_fn(x1, x2=None, get="ntk") -> (N, M) float64 tf.Tensor
      (a namedtuple of them for get=("nngp", "ntk")), the kernel of each output
      (the (N, M, K, K) kernel is this times the K x K identity); for outputs with
      positions, the mean over positions (as `empirical_ntk(..., output="trace")`).
    Raises:
      ValueError: a layer or a configuration without an infinite-width limit.
    """
    program = program_lib.Program.from_model(model, hermite_terms)
    return KernelFn(program, memory_budget=memory_budget, progress=progress)
