"""The empirical NTK of a Keras model, tiled to a memory budget.

Theta(x, x') = J(x) J(x')^T with J = df/dtheta over the trainable variables,
K x K per pair of examples. Output modes (contract.py): "full" (N, M, K, K),
"trace" (N, M) = mean over the K diagonal output pairs (comparable with the
per-output infinite-width kernel), "diagonal" (N, K, K) = each x1 with itself.
`NTK` plans tiles of the request within a memory budget and assembles them; the
blocks themselves come from its strategy (strategies.py): per-example factors
("structured", "jacobian") or NTK-vector products ("ntk_vp").
"""

import dataclasses
import threading
import typing
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_ntk import traced
from keras_ntk.ntk import contract as contract_lib
from keras_ntk.ntk import memory
from keras_ntk.ntk import precision as precision_lib
from keras_ntk.ntk import rules as rules_lib
from keras_ntk.ntk import strategies

METHODS = ("auto", "structured", "jacobian", "ntk_vp")


def _devices():
    """Devices that share the tiles: all GPUs, else all logical CPUs."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How `NTK` computes an n x m request (`NTK.plan`).

    Attributes:
      n, m: examples of x1 and x2 (m = n for x2=None).
      symmetric: x2=None, so only tiles on and above the diagonal are computed.
      tile: examples per tile (rows and columns); tiles: tiles computed.
      cache_factors: whether every chunk's factors are kept for the whole request
        (else those of the current row chunk only).
      memory_bytes: estimated peak memory of the call, result included.
      method: the strategy's method, and for method="auto" why it was chosen.
      layers: the strategy's per-group costs (features.GroupCost) for this
        request: method, estimated FLOPs and factor bytes per example.
      flops: estimated floating-point operations of the whole request.
    """

    n: int
    m: int
    symmetric: bool
    tile: int
    tiles: int
    cache_factors: bool
    memory_bytes: int
    method: str
    layers: tuple
    flops: float

    def __str__(self):
        lines = [
            f"{self.n} x {self.m} examples{' (x2=None)' if self.symmetric else ''}: "
            f"{self.tiles} tile(s) of {self.tile}, factors {'cached' if self.cache_factors else 'per row'}, "
            f"~{memory.gib(self.memory_bytes)}, ~{self.flops / 1e9:.3g} GFLOP; method {self.method}",
            f"  {'layer':<40} {'method':<24} {'GFLOP':>9} {'factor bytes/example':>21}",
        ]
        for layer in self.layers:
            lines.append(
                f"  {layer.name:<40} {layer.method:<24} {layer.flops / 1e9:>9.4f} {layer.factor_bytes:>21,}"
            )
        return "\n".join(lines)


class _Tiling(typing.NamedTuple):
    n: int
    m: int
    symmetric: bool
    chunk: int
    rows: int
    cols: int
    tiles: int
    cache: bool
    memory_bytes: int


class NTK:
    """Empirical NTK of `model`, compiled once and called on many batches.

    Args:
      model: a built Keras model with one output tensor (K = flattened size).
      output: "full" | "trace" | "diagonal" (see module docstring).
      method: "auto" (structured rules for dense layers; for convolutions the
        structured rule or the Jacobian path, whichever a timing on the first
        request's examples finds faster when its planned work is large, see
        strategies.auto_strategy; `plan()` shows the choice), "structured"
        (per-layer rules for Dense and Conv2D, keras_ntk's and Keras', grouped
        convolutions included, Jacobians for other parameters), "jacobian"
        (per-example Jacobians of all parameters) or "ntk_vp" (NTK-vector products
        with basis vectors; no Jacobian stored). See strategies.py.
      memory_budget: bytes the call may use, result included; default half the
        available memory (or KERAS_NTK_MEMORY_BUDGET).
      per_layer: return a dict layer path -> kernel whose values sum to the total.
      dtype: dtype of the kernel (default float32); contractions run in it. With a
        wider dtype than the model's, a chain of dense layers (features.py) also
        computes its activations and deltas in it, so its kernel does not depend on
        how the examples are tiled; other layers' gradients are the model's own.
      precision: "highest" (default): float32 matmuls in full float32 while the
        kernel is computed, whatever TensorFlow's TensorFloat-32 setting (see
        precision.py; the setting is restored afterwards); "default": under that
        setting (TF32 on Ampere and newer GPUs unless turned off, ~1e-3 relative).
      jit_compile: compile one-tile requests with XLA (tf.function(jit_compile=True)):
        measured 1.4x faster on an MLP's full kernel on 2 CPU cores but slower on its
        trace kernel and on a CNN (benchmarks/README.md), and XLA compiles once per
        distinct (n, m), ~1 s each, so it pays where the same shapes recur (a
        prediction loop at a fixed batch size). The first call checks the XLA
        kernel against the plain one (relative 1e-5 in float32) and falls back to the
        plain one with a RuntimeWarning if they disagree. Requests of several tiles
        and kernels traced into a caller's function run as without it.
      progress: show a progress bar over tiles (None: when there are 8 or more).

    Calling it with x1 (N, ...) and optional x2 (M, ...) returns a tf.Tensor
    (or dict of them) on the device that computed it. x2=None uses the symmetry
    Theta(x, x') = Theta(x', x)^T. A request that fits one tile runs as one
    compiled function with no host round trip; several tiles are assembled on
    the device. Inside a caller's tf.function, x1 and x2 may be symbolic tensors
    with a static batch size and the kernel is traced into the caller's graph;
    that needs a request planned as one tile (ValueError otherwise).

    The model runs in inference mode (training=False); only trainable
    variables are parameters. The first call probes the model and checks
    TensorFlow's vectorized gradients once on two of its examples (see
    features.FeatureMap and strategies.VectorProductStrategy for the cost);
    layers that fail are computed without vectorization. Instances may be
    called from several threads at once.

    Attributes:
      strategy: the strategies.FactorStrategy or VectorProductStrategy, once called.
    """

    def __init__(
        self,
        model,
        *,
        output="full",
        method="auto",
        memory_budget=None,
        per_layer=False,
        dtype=None,
        precision="highest",
        jit_compile=False,
        progress=None,
    ):
        if output not in contract_lib.OUTPUTS:
            raise ValueError(f"output must be one of {contract_lib.OUTPUTS}, got {output!r}.")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if per_layer and method == "ntk_vp":
            raise ValueError("per_layer=True needs method 'structured' or 'jacobian', not 'ntk_vp'.")
        if memory_budget is not None and not memory_budget > 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}.")
        if precision not in precision_lib.PRECISIONS:
            raise ValueError(f"precision must be one of {precision_lib.PRECISIONS}, got {precision!r}.")
        self.model = model
        self.output = output
        self.method = method
        self.memory_budget = memory_budget
        self.per_layer = per_layer
        self.dtype = tf.as_dtype(dtype or tf.float32)
        if not self.dtype.is_floating:
            raise ValueError(f"dtype must be a floating dtype, got {self.dtype.name}.")
        self.precision = precision
        self.jit_compile = bool(jit_compile)
        self.progress = progress
        self.strategy = None
        self._lock = threading.Lock()
        self._devices = None
        self._one_tile = None

    # -- inputs ---------------------------------------------------------------
    def _expected_shape(self):
        return tuple(self.model.input_shape) if getattr(self.model, "inputs", None) else None

    def _shape_error(self, what, shape):
        expected = self._expected_shape()
        if expected is not None and (
            len(shape) != len(expected)
            or any(e is not None and s is not None and e != s for e, s in zip(expected[1:], shape[1:]))
        ):
            raise ValueError(
                f"{what} must have shape (examples, {', '.join(map(str, expected[1:]))}) "
                f"to match the model's input, got {tuple(shape)}."
            )

    def _as_inputs(self, x, what):
        dtype = self.model.inputs[0].dtype if getattr(self.model, "inputs", None) else "float32"
        x = np.asarray(x, dtype=dtype)
        self._shape_error(what, x.shape)
        if x.shape[0] == 0:
            raise ValueError(f"{what} has no examples.")
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise ValueError(f"{what} contains NaN or Inf.")
        return x

    def _as_symbolic(self, x, what):
        dtype = self.model.inputs[0].dtype if getattr(self.model, "inputs", None) else "float32"
        x = tf.convert_to_tensor(x)
        x = tf.cast(x, dtype) if x.dtype != tf.as_dtype(dtype) else x
        self._shape_error(what, x.shape)
        if x.shape.rank is None or x.shape[0] is None:
            raise ValueError(
                f"Inside tf.function the NTK needs {what}'s batch size to plan its tiles, but "
                f"{what} has shape {x.shape}. Give the tf.function an input_signature with a "
                "fixed batch size, or call the NTK eagerly."
            )
        return x

    def _synthetic(self, count, like=None):
        """`count` standard normal inputs shaped like one example of `like` (default: of
        the model's input), for probing and planning."""
        expected = self._expected_shape()
        if like is not None:
            shape, dtype = tuple(like.shape[1:]), like.dtype
        elif expected is not None and None not in expected[1:]:
            shape, dtype = expected[1:], self.model.inputs[0].dtype
        else:
            raise ValueError(
                f"Model {self.model.name!r} has no fixed input shape to probe it with: call the NTK "
                "on a batch first."
            )
        values = np.random.default_rng(0).normal(size=(count, *shape))
        return values.astype(tf.as_dtype(dtype).as_numpy_dtype)

    def _prepare(self, x, n=None, m=None):
        """Build the strategy for a first request of n examples (default len(x)) against m
        (None: x2=None), x being its first examples."""
        with self._lock:
            if self.strategy is not None:
                return
            self._check_independent_examples(x)
            if self.method == "ntk_vp":
                strategy = strategies.VectorProductStrategy(self.model, self.output, self.dtype, x[:2])
            elif self.method == "auto":
                strategy = strategies.auto_strategy(
                    self.model, self.output, self.dtype, self.per_layer, x, n or x.shape[0], m
                )
            else:
                strategy = strategies.FactorStrategy(
                    self.model, self.method, self.output, self.dtype, self.per_layer, x[:2]
                )
            self._one_tile = self._plain_tiles = (
                traced.per_object(lambda x1: strategy.tile(x1, None), reduce_retracing=True),
                traced.per_object(strategy.tile, reduce_retracing=True),
            )
            if self.jit_compile:
                self._one_tile = (
                    traced.per_object(lambda x1: strategy.tile(x1, None), jit_compile=True),
                    traced.per_object(strategy.tile, jit_compile=True),
                )
                self._xla_checked = False
            self.strategy = strategy

    def _check_independent_examples(self, x):
        """Raise ValueError when one example's output depends on another example."""
        if x.shape[0] < 2 or not np.issubdtype(x.dtype, np.floating):
            return
        pair = x[:2]
        changed = np.concatenate([pair[:1] * 0.5 + 1.0, pair[1:]])
        before = rules_lib.flat_outputs(self.model, pair)[1].numpy()
        after = rules_lib.flat_outputs(self.model, changed)[1].numpy()
        if not np.allclose(before, after, rtol=1e-4, atol=1e-5 * (1 + np.abs(before).max())):
            raise ValueError(
                "The model's output for one example depends on the other examples of the "
                "batch (for example BatchNormalization called in training mode, or a layer "
                "that mixes the batch), so the per-example NTK is not defined. Use layers "
                "that keep examples independent (LayerNorm, or BatchNorm in inference mode)."
            )

    # -- planning -------------------------------------------------------------
    def _result_entries(self, n, m):
        k = self.strategy.num_outputs
        return {"full": n * m * k * k, "trace": n * m, "diagonal": n * k * k}[self.output]

    def _tile_bytes(self, c):
        k2 = self.strategy.num_outputs**2 if self.output != "trace" else 1
        cols = 1 if self.output == "diagonal" else c
        return c * cols * k2 * self.dtype.size * (3 + self.strategy.parts)

    def plan(self, n, m=None):
        """The `Plan` of an n x m request (m=None: x2=None), or NTKMemoryError.

        Before the first call this probes the model (and for method="auto" makes its
        choice) on standard normal inputs of the model's input shape.
        """
        if self.strategy is None:
            self._prepare(self._synthetic(max(2, min(n, strategies.AUTO_EXAMPLES))), n, m)
        tiling = self._tiling(n, m)
        layers = tuple(self.strategy.costs(tiling.n, tiling.m, tiling.symmetric, tiling.rows, tiling.cols))
        return Plan(
            n=tiling.n,
            m=tiling.m,
            symmetric=tiling.symmetric,
            tile=tiling.chunk,
            tiles=tiling.tiles,
            cache_factors=tiling.cache,
            memory_bytes=tiling.memory_bytes,
            method=getattr(self.strategy, "choice", self.method),
            layers=layers,
            flops=float(sum(layer.flops for layer in layers)),
        )

    def _tiling(self, n, m):
        """The `_Tiling` of an n x m request (m=None: x2=None) within the memory budget."""
        symmetric = m is None or self.output == "diagonal"
        m = n if m is None else m
        budget = self.memory_budget or memory.default_budget()
        result = 2 * self._result_entries(n, m) * self.dtype.size * self.strategy.names
        factor, working = self.strategy.bytes_per_example()
        if not symmetric:
            working *= 2  # a one-tile request encodes x1 and x2 as one batch
        need_one = result + working + self._tile_bytes(1)
        if need_one > budget:
            raise memory.NTKMemoryError(
                f"This NTK request needs at least {memory.gib(need_one)}: the result "
                f"({self.output!r}, {n} x {m} examples, K = {self.strategy.num_outputs}) takes "
                f"{memory.gib(result)} and processing one example "
                f"{memory.gib(working + self._tile_bytes(1))}, but memory_budget is "
                f"{memory.gib(budget)}. Use fewer examples, output='trace' or 'diagonal' "
                "(K^2 times smaller), or raise memory_budget if the machine has the memory."
            )
        chunk = max(n, m)
        while chunk > 1 and result + chunk * working + self._tile_bytes(chunk) > budget:
            chunk = (chunk + 1) // 2
        used = result + chunk * working + self._tile_bytes(chunk)
        cache = (n + m) * factor <= budget - used
        rows, cols = -(-n // chunk), -(-m // chunk)
        if self.output == "diagonal":
            tiles = rows
        elif symmetric:
            tiles = rows * (rows + 1) // 2
        else:
            tiles = rows * cols
        held = (n + m) * factor if cache else 2 * chunk * factor
        return _Tiling(n, m, symmetric, chunk, rows, cols, tiles, cache, used + held)

    # -- computation ----------------------------------------------------------
    @tf.autograph.experimental.do_not_convert  # called from a caller's tf.function: plain Python
    def __call__(self, x1, x2=None):
        if self.output == "diagonal" and x2 is not None:
            raise ValueError("output='diagonal' pairs each example of x1 with itself; pass x2=None.")
        if not tf.executing_eagerly():
            return self._traced_call(x1, x2)
        x1 = self._as_inputs(x1, "x1")
        symmetric = x2 is None
        x2 = x1 if symmetric else self._as_inputs(x2, "x2")
        self._prepare(x1, n=None, m=None if symmetric else x2.shape[0])
        n, m = x1.shape[0], x2.shape[0]
        tiling = self._tiling(n, None if symmetric else m)
        with precision_lib.full_float32(self.precision):
            self.strategy.prepare(x1)
            if tiling.tiles > 1:
                return self._tiled(x1, x2, tiling)
            args = (tf.constant(x1),) if symmetric else (tf.constant(x1), tf.constant(x2))
            block = self._one_tile[len(args) - 1](*args)
            if self.jit_compile and not self._xla_checked:
                block = self._check_xla(block, args)
            if self.progress:
                keras.utils.Progbar(1, unit_name="tile").update(1)
            return block

    def _check_xla(self, block, args):
        """The first XLA block against the plain computation; fall back if they disagree."""
        with self._lock:
            plain = self._plain_tiles[len(args) - 1](*args)
            pairs = [(block[k], plain[k]) for k in plain] if isinstance(plain, dict) else [(block, plain)]
            tolerance = 1e-5 if self.dtype.size <= 4 else 1e-10
            worst = max(
                float(tf.reduce_max(tf.abs(a - b)) / tf.maximum(tf.reduce_max(tf.abs(b)), 1e-30)) for a, b in pairs
            )
            if not worst <= tolerance:
                warnings.warn(
                    f"The XLA-compiled NTK of model {self.model.name!r} differs from the plain "
                    f"computation by {worst:.2g} relative (tolerance {tolerance:g}); keras-ntk "
                    "computes it without XLA.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._one_tile = self._plain_tiles
            self._xla_checked = True
            return plain

    def _traced_call(self, x1, x2):
        """The kernel traced into the caller's tf.function (one tile only)."""
        x1 = self._as_symbolic(x1, "x1")
        x2 = None if x2 is None else self._as_symbolic(x2, "x2")
        examples = self._synthetic(2, like=x1)
        traced.eagerly(self._prepare, examples)
        traced.eagerly(self.strategy.prepare, examples)
        tiling = self._tiling(x1.shape[0], None if x2 is None else x2.shape[0])
        if tiling.tiles > 1:
            raise ValueError(
                f"This NTK request ({tiling.n} x {tiling.m} examples) needs {tiling.tiles} tiles of "
                f"{tiling.chunk} within memory_budget, and inside tf.function the NTK computes "
                "one tile only. Call it eagerly (it assembles the tiles), request fewer "
                "examples, or raise memory_budget if the machine has the memory."
            )
        return self.strategy.tile(x1, x2)

    def _tiled(self, x1, x2, tiling):
        chunk, symmetric = tiling.chunk, tiling.symmetric
        row_chunks = _chunks(x1, chunk)
        col_chunks = row_chunks if symmetric else _chunks(x2, chunk)
        if self.output == "diagonal":
            pairs = [(i, i) for i in range(len(row_chunks))]
        elif symmetric:
            pairs = [(i, j) for i in range(len(row_chunks)) for j in range(i, len(row_chunks))]
        else:
            pairs = [(i, j) for i in range(len(row_chunks)) for j in range(len(col_chunks))]
        show = self.progress if self.progress is not None else len(pairs) >= 8
        bar = keras.utils.Progbar(len(pairs), unit_name="tile") if show else None
        devices = _devices()
        if len(devices) > 1 and len(pairs) > 1:
            blocks = self._distributed_blocks(devices, row_chunks, col_chunks, pairs)
        else:
            blocks = self._local_blocks(row_chunks, col_chunks, pairs, symmetric, tiling.cache)
        done = {}
        for t, (pair, block) in enumerate(blocks):
            done[pair] = block if isinstance(block, dict) else {None: block}
            if bar is not None:
                bar.update(t + 1)
        kernels = {name: self._assemble(done, name, row_chunks, col_chunks, symmetric) for name in done[pairs[0]]}
        return kernels if self.per_layer else kernels[None]

    def _local_blocks(self, row_chunks, col_chunks, pairs, symmetric, cache):
        """Yield ((i, j), block) on the default device, reusing encoded chunks:
        all of them when `cache`, else those of the current row chunk."""
        strategy = self.strategy
        store = {}

        def encoded(side, index, chunks, keep):
            if (side, index) in store:
                return store[side, index]
            value = strategy.encode(tf.constant(chunks[index][0]))
            if keep:
                store[side, index] = value
            return value

        for i, j in pairs:
            if not cache:
                for key in [key for key in store if key != ("rows", i)]:
                    del store[key]
            rows = encoded("rows", i, row_chunks, keep=True)
            cols = None
            if self.output != "diagonal":
                side = "rows" if symmetric else "cols"
                cols = encoded(side, j, col_chunks, keep=cache or (symmetric and i == j))
            yield (i, j), strategy.block(rows, cols, symmetric and i == j)

    def _distributed_blocks(self, devices, row_chunks, col_chunks, pairs):
        """Yield ((i, j), block), tiles shared by `devices` in rounds through a
        tf.distribute.MirroredStrategy: each replica computes one tile."""
        with self._lock:
            if self._devices is None:
                replicas = tf.distribute.MirroredStrategy(devices)
                run = traced.per_object(lambda rows, cols: replicas.run(self.strategy.tile, args=(rows, cols)))
                self._devices = (replicas, run)
        replicas, run = self._devices
        count = len(devices)
        for first in range(0, len(pairs), count):
            round_pairs = pairs[first : first + count]
            padded = round_pairs + [round_pairs[-1]] * (count - len(round_pairs))

            def per_replica(chunks, side):
                return replicas.experimental_distribute_values_from_function(
                    lambda ctx: tf.constant(chunks[padded[ctx.replica_id_in_sync_group][side]][0])
                )

            blocks = run(per_replica(row_chunks, 0), per_replica(col_chunks, 1))
            yield from zip(round_pairs, replicas.experimental_local_results(blocks))

    def _assemble(self, done, name, row_chunks, col_chunks, symmetric):
        """One kernel from its tiles done[(i, j)][name], concatenated on the default device."""
        if self.output == "diagonal":
            return tf.concat([done[i, i][name][:count] for i, (_, count, _) in enumerate(row_chunks)], 0)
        rows = []
        for i, (_, n_rows, _) in enumerate(row_chunks):
            row = []
            for j, (_, n_cols, _) in enumerate(col_chunks):
                if (i, j) in done:
                    row.append(done[i, j][name][:n_rows, :n_cols])
                else:  # symmetric: the tile (j, i) transposed
                    block = done[j, i][name][:n_cols, :n_rows]
                    row.append(tf.transpose(block, (1, 0, 3, 2) if self.output == "full" else (1, 0)))
            rows.append(tf.concat(row, 1) if len(row) > 1 else row[0])
        return tf.concat(rows, 0) if len(rows) > 1 else rows[0]


def _chunks(x, size):
    """Split x into chunks of `size` examples, the last padded with zeros so that
    every chunk has one shape (one trace): list of (padded chunk, real count, start)."""
    out = []
    for start in range(0, x.shape[0], size):
        piece = x[start : start + size]
        count = piece.shape[0]
        if count < size and x.shape[0] > size:
            piece = np.concatenate([piece, np.zeros((size - count, *x.shape[1:]), x.dtype)])
        out.append((piece, count, start))
    return out


_CACHE = weakref.WeakKeyDictionary()


def empirical_ntk(
    model,
    x1,
    x2=None,
    *,
    output="full",
    method="auto",
    memory_budget=None,
    per_layer=False,
    dtype=None,
    precision="highest",
    jit_compile=False,
    progress=None,
):
    """Empirical NTK of a Keras model: see `NTK` for the arguments.

    Returns:
      "full": (N, M, K, K); "trace": (N, M) mean over outputs; "diagonal":
      (N, K, K). A dict layer path -> kernel with per_layer=True.
    The compiled form is cached per model and options, so repeated calls do
    not retrace.
    """
    key = (output, method, memory_budget, per_layer, tf.as_dtype(dtype or tf.float32).name, precision, jit_compile, progress)
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = NTK(
            model,
            output=output,
            method=method,
            memory_budget=memory_budget,
            per_layer=per_layer,
            dtype=dtype,
            precision=precision,
            jit_compile=jit_compile,
            progress=progress,
        )
    return per_model[key](x1, x2)
