"""How the engine computes kernel blocks: the factor path and the vector-product path.

`NTK` (empirical.py) plans tiles and assembles them; a strategy turns inputs into
blocks of the requested output mode ("full" (n, m, K, K), "trace" (n, m),
"diagonal" (n, K, K)) and dtype:

  encode(x)                   per-chunk state, computed once per chunk and reused by
                              every tile of that chunk;
  block(rows, cols, symmetric)  the block of two encoded chunks (cols is ignored for
                              "diagonal" and when `symmetric`, the block of rows with itself);
  tile(x1, x2)                the block of raw inputs (x2=None: of x1 with itself);
                              traced as one function for a one-tile request, and one
                              replica's share of the tiles;
  prepare(x)                  the one-time check of TensorFlow's vectorization, run
                              eagerly on x's first two examples before `tile` is traced;
  costs(n, m, symmetric, rows, cols)  estimated FLOPs per parameter group of a request
                              in rows x cols tiles (features.GroupCost).

FactorStrategy ("structured", "jacobian"): per-example factors (features.FeatureMap)
contracted into blocks (contract.py); memory O(factors) per example.
VectorProductStrategy ("ntk_vp"): NTK-vector products with basis vectors
(vector_products.py); no Jacobian is stored, a block of m columns costs m K products.
"""

import dataclasses
import math
import threading
import time

import numpy as np
import tensorflow as tf

from keras_ntk import traced
from keras_ntk.ntk import contract as contract_lib
from keras_ntk.ntk import features as features_lib
from keras_ntk.ntk import rules as rules_lib
from keras_ntk.ntk import vector_products
from keras_ntk.ntk import vectorization


class FactorStrategy:
    """Blocks from per-example factors.

    Args:
      model: a built Keras model with one output tensor.
      method: "structured", "structured_dense" or "jacobian" (see features.FeatureMap).
      output, dtype, per_layer: as for `NTK`.
      examples: (m, ...) with m = 1 or 2, for probing the model (features.FeatureMap;
        its first call checks the vectorized gradients and states the cost).
    Attributes:
      feature_map: the features.FeatureMap.
      choice: the method, and for method="auto" why it was chosen (auto_strategy).
      timings: seconds per candidate when method="auto" timed them, else {}.
      num_outputs: K.
      parts: number of Gram matrices summed per block (one per parameter group).
      names: number of kernels returned per call (1, or layers + 1 with per_layer).
    """

    def __init__(self, model, method, output, dtype, per_layer, examples):
        self.output, self.dtype, self.per_layer = output, dtype, per_layer
        self.choice, self.timings = method, {}
        self._bytes = None
        self.feature_map = features_lib.FeatureMap(model, method, examples, dtype)
        self.num_outputs = self.feature_map.num_outputs
        groups = self.feature_map.groups
        self.parts = len(groups)
        self.names = len({g.name for g in groups}) + 1 if per_layer else 1
        self._contract = traced.per_object(
            lambda f1, f2, symmetric: contract_lib.contract(
                groups, f1, f2, output, dtype, per_layer, symmetric
            ),
            reduce_retracing=True,
        )
    def bytes_per_example(self):
        """(bytes kept per encoded example, working bytes per example while encoding)."""
        if self._bytes is None:
            self._bytes = self.feature_map.bytes_per_example(4)
        return self._bytes

    def encode(self, x):
        return self.feature_map(x)

    def block(self, rows, cols, symmetric):
        return self._contract(rows, None if symmetric else cols, symmetric)

    def tile(self, x1, x2=None):
        """The block of x1 (n, ...) with x2 (m, ...), or with itself for x2=None; x1 and x2
        are encoded as one batch (larger matmuls, one pass of the network's ops)."""
        groups = self.feature_map.groups
        if x2 is None or self.output == "diagonal":
            symmetric = self.output != "diagonal"
            return contract_lib.contract(
                groups, self.encode(x1), None, self.output, self.dtype, self.per_layer, symmetric
            )
        n = tf.shape(x1)[0]
        both = self.encode(tf.concat([x1, x2], axis=0))
        rows = [tuple(t[:n] for t in f) for f in both]
        cols = [tuple(t[n:] for t in f) for f in both]
        return contract_lib.contract(groups, rows, cols, self.output, self.dtype, self.per_layer)

    def prepare(self, x):
        if not self.feature_map.checked:
            self.feature_map(tf.constant(x[:2]))

    def costs(self, n, m, symmetric, rows, cols):
        """features.GroupCost of every group with `flops` for the whole request."""
        encodes, pairs = _counts(self.output, n, m, symmetric, rows, cols, self.num_outputs)
        return [
            dataclasses.replace(c, flops=encodes * c.encode_flops + pairs * c.pair_flops)
            for c in self.feature_map.costs(self.output)
        ]


AUTO_MEASURE_FLOPS = 5e9  # planned work above which method="auto" times its candidates
AUTO_EXAMPLES = 8


def auto_strategy(model, output, dtype, per_layer, x, n, m):
    """The FactorStrategy that method="auto" picks for a first request of n examples
    against m (None: x2=None), x (>= 2, ...) being its first examples.

    Dense layers always take their structured rule: its factors have C + K O
    entries per example against K C O for a Jacobian. For convolutions both paths
    form the same K per-example gradients at the same planned FLOPs (features.
    FeatureMap.costs), and which is faster depends on TensorFlow's kernels for the
    layer's shapes, so when the planned work of the request is at least
    AUTO_MEASURE_FLOPS, both ("structured" and "structured_dense", whose
    convolutions take the Jacobian path) are timed on the first AUTO_EXAMPLES
    examples of x (traced, then the median of 3 calls) and the faster is kept;
    smaller requests keep "structured". The strategy's `choice` says which and why.
    """
    structured = FactorStrategy(model, "structured", output, dtype, per_layer, x[:2])
    if not any(rule.is_conv() for rule in structured.feature_map.rules):
        structured.choice = "structured (no convolution)"
        return structured
    planned = sum(c.flops for c in structured.costs(n, n if m is None else m, m is None, 1, 1))
    if planned < AUTO_MEASURE_FLOPS:
        structured.choice = f"structured (planned {planned / 1e9:.2g} GFLOP, below the timing threshold)"
        return structured
    candidates = {
        "structured": structured,
        "structured_dense": FactorStrategy(model, "structured_dense", output, dtype, per_layer, x[:2]),
    }
    batch = tf.constant(x[:AUTO_EXAMPLES])
    timings = {}
    for name, candidate in candidates.items():
        candidate.prepare(x)
        tile = traced.per_object(lambda a, candidate=candidate: candidate.tile(a, None))
        tile(batch)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            _result_of(tile(batch))
            times.append(time.perf_counter() - start)
        timings[name] = float(np.median(times))
    best = min(timings, key=timings.get)
    chosen = candidates[best]
    chosen.timings = timings
    chosen.choice = f"{best} (timed on {batch.shape[0]} examples: " + ", ".join(
        f"{name} {1e3 * t:.3g} ms" for name, t in timings.items()
    ) + ")"
    return chosen


def _result_of(block):
    """Wait for a block (tensor or dict of tensors) to be computed."""
    for value in block.values() if isinstance(block, dict) else [block]:
        value.numpy()


def _counts(output, n, m, symmetric, rows, cols, k):
    """(examples encoded, example pairs contracted) of an n x m request in rows x cols
    tiles, as empirical.NTK runs it: chunks padded to the tile size when there are
    several, encoded chunks kept for the request."""
    chunk = -(-max(n, m) // max(rows, cols))
    n_rows = n if rows == 1 else rows * chunk
    if output == "diagonal":
        return n_rows, n_rows
    if not symmetric:
        m_cols = m if cols == 1 else cols * chunk
        return n_rows + m_cols, n_rows * m_cols
    size = min(n, chunk)
    r = k if output == "full" else 1
    share = contract_lib.PARTED_SHARE if size * r >= contract_lib.PARTED_MIN_ROWS else 1.0
    return n_rows, (rows * (rows - 1) // 2 + rows * share) * size**2


class VectorProductStrategy:
    """Blocks from NTK-vector products with basis vectors (no per-layer split).

    Args:
      model: a built Keras model with one output tensor.
      output, dtype: as for `NTK`.
      examples: (m, ...) with m = 1 or 2 examples of the first call.
    Attributes:
      num_outputs, parts, names: as for `FactorStrategy` (parts = names = 1).
      unvectorized: whether the products run unvectorized because the check failed.

    The first block checks the vectorized products once against unvectorized
    gradients (vectorization.check: 2 m backward passes) on its first m rows,
    reusing the block when it pairs x1 with itself; a first block of x1 against
    x2 (or one traced into a distributed run) checks on `examples` instead, one
    more m x m block. If they disagree, every block loops over the basis vectors.
    """

    def __init__(self, model, output, dtype, examples):
        self.model, self.output, self.dtype = model, output, dtype
        self.num_outputs = int(rules_lib.flat_outputs(model, examples[:1]).shape[1])
        self.parts = self.names = 1
        self.unvectorized = False
        self._examples = examples
        self._checked = False
        self._check_lock = threading.Lock()
        self._compile(vectorized=True)

    def _compile(self, vectorized):
        model = self.model
        self._full = traced.per_object(
            lambda a, b: vector_products.kernel_block(model, a, b, vectorized), reduce_retracing=True
        )
        self._diagonal = traced.per_object(
            lambda a: vector_products.diagonal_block(model, a, vectorized), reduce_retracing=True
        )

    def _raw(self, rows, cols):
        """Diagonal (n, K, K) or full (n, m, K, K) block in the model's dtype."""
        return self._diagonal(rows) if self.output == "diagonal" else self._full(rows, cols)

    def _checked_raw(self, rows, cols, symmetric):
        """The first block, checking the products on its first rows (see the class docstring)."""
        name = f"model {self.model.name!r}"
        computed = []
        if symmetric or self.output == "diagonal":
            examples = rows[: min(2, rows.shape[0])]

            def blocks():
                computed[:] = [self._raw(rows, cols)]
                m = examples.shape[0]
                first = computed[0][:m] if self.output == "diagonal" else computed[0][:m, :m]
                return {name: first.numpy()}

        else:
            examples = tf.constant(self._examples)

            def blocks():
                return {name: self._full(examples, examples).numpy()}

        self.unvectorized = bool(
            vectorization.check(
                self.model,
                {name: list(self.model.trainable_variables)},
                np.asarray(examples),
                self.num_outputs,
                blocks,
                lambda names: self._compile(vectorized=False),
            )
        )
        self._checked = True
        return computed[0] if computed else self._raw(rows, cols)

    def bytes_per_example(self):
        params = sum(math.prod(v.shape) for v in self.model.trainable_variables)
        return 0, 4 * self.num_outputs * params * 4

    def costs(self, n, m, symmetric, rows, cols):
        """One features.GroupCost for all parameters: a block of a x b examples takes
        b K products, each a forward, a JVP and a VJP over a examples, ~6 a P FLOPs."""
        params = sum(math.prod(v.shape) for v in self.model.trainable_variables)
        pairs = n if self.output == "diagonal" else (n * (n + 1) // 2 if symmetric else n * m)
        flops = 6.0 * params * self.num_outputs * pairs
        return [features_lib.GroupCost("all parameters", "ntk_vp", 0.0, flops / max(pairs, 1), 0, flops)]

    def prepare(self, x):
        if not self._checked:
            self.block(tf.constant(x[:2]), None, True)

    def encode(self, x):
        return x

    def block(self, rows, cols, symmetric):
        cols = rows if cols is None else cols
        raw = None
        if not self._checked:
            with self._check_lock:
                if not self._checked and tf.executing_eagerly():
                    raw = self._checked_raw(rows, cols, symmetric)
                elif not self._checked:
                    traced.eagerly(self._checked_raw, rows, cols, False)
        if raw is None:
            raw = self._raw(rows, cols)
        out = tf.cast(raw, self.dtype)
        if self.output == "trace":
            return tf.reduce_mean(tf.linalg.diag_part(out), axis=-1)
        return out

    def tile(self, x1, x2=None):
        return self.block(x1, x2, x2 is None)
