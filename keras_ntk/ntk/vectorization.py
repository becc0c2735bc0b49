"""The check of TensorFlow's vectorized gradients against unvectorized ones.

TensorFlow's automatic vectorization (pfor, behind tape.jacobian and
tf.vectorized_map) converts every op of a backward pass by its own rule; one wrong
rule (grouped convolutions have one) makes per-example gradients silently wrong.
The engine therefore checks each kernel function once, when it is built, for the
parameter groups whose factors come from vectorization.

Probes r = (x_i, v_r): one or two examples x_i and two random output vectors
v_r (K,) per example. The reference is u_r = d(v_r . f(x_i)) / d theta_g, one
unvectorized tape.gradient call per probe, and the check compares Gram matrices

    G_g[r, s] = <u_r, u_s>   with   v_r^T Theta_g(x_i, x_j) v_s   from the engine,

entry by entry, relative to sqrt(G_g[r, r] G_g[s, s]) (plus a small absolute
floor for groups whose gradients vanish). Gram matrices, not gradients, are
compared: they are what the NTK is made of, whatever layout a factorization gives
the parameters.
"""

import warnings

import numpy as np
import tensorflow as tf

from keras_ntk.ntk import rules as rules_lib

RTOL = 1e-3  # float32 rounding is ~1e-6 here; the vectorization bugs seen are >= 10%
_VECTORS_PER_EXAMPLE = 2


def probes(num_examples, num_outputs, seed=0):
    """(example index (R,), output vectors (R, K)) for R = 2 * num_examples probes."""
    index = np.repeat(np.arange(num_examples), _VECTORS_PER_EXAMPLE)
    vectors = np.random.default_rng(seed).normal(size=(index.size, num_outputs))
    return index, vectors


def reference_grams(model, variable_groups, examples, index, vectors):
    """Gram matrices of unvectorized gradients: name -> (R, R) float64.

    Args:
      variable_groups: dict name -> list of variables (the parameters theta_g).
      examples: (m, ...) inputs; index, vectors: the probes (see `probes`).
    """
    names = list(variable_groups)
    variables = [v.value for name in names for v in variable_groups[name]]
    sizes = [len(variable_groups[name]) for name in names]
    rows = []
    for i, v in zip(index, vectors):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            f = rules_lib.flat_outputs(model, tf.constant(examples[i : i + 1]))
            target = tf.reduce_sum(f[0] * tf.constant(v, f.dtype))
        grads = tape.gradient(target, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        rows.append([np.asarray(g, np.float64).ravel() for g in grads])
    grams, start = {}, 0
    for name, size in zip(names, sizes):
        u = np.stack([np.concatenate(row[start : start + size]) for row in rows])
        grams[name] = u @ u.T
        start += size
    return grams


def kernel_grams(blocks, index, vectors):
    """v_r^T Theta_g(x_i, x_j) v_s from kernel blocks name -> (m, m, K, K): name -> (R, R).

    A diagonal block (m, K, K) (Theta_g(x_i, x_i) only) gives NaN where i != j, and
    `mismatched` compares only the other entries.
    """
    grams = {}
    for name, block in blocks.items():
        block = np.asarray(block, np.float64)
        if block.ndim == 3:
            m = block.shape[0]
            full = np.full((m, m, *block.shape[1:]), np.nan)
            full[np.arange(m), np.arange(m)] = block
            block = full
        grams[name] = np.einsum("rk,rskl,sl->rs", vectors, block[index][:, index], vectors)
    return grams


def mismatched(candidate, reference, rtol=RTOL):
    """Names whose candidate Gram differs from the reference beyond rtol (see module docstring)."""
    floor = max((np.abs(np.diag(g)).max() for g in reference.values()), default=0.0) * 1e-6
    bad = []
    for name, expected in reference.items():
        scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
        if np.any(np.abs(candidate[name] - expected) > rtol * scale + floor):
            bad.append(name)
    return bad


def check(model, variable_groups, example, num_outputs, blocks, fall_back):
    """Check the engine's kernel blocks against unvectorized gradients; fall back once.

    Args:
      model: the Keras model (its own forward pass gives the reference).
      variable_groups: dict name -> variables of the groups to check.
      example: (m, ...) inputs, m = 1 or 2.
      num_outputs: K.
      blocks: () -> dict name -> kernel block of `example`, full (m, m, K, K) or
        diagonal (m, K, K), computed by the engine's current path (at least the
        checked names).
      fall_back: names -> None; switches those groups to their unvectorized path.
    Returns:
      the names that failed and were switched (empty when all passed).
    Raises:
      ValueError: a group fails again after falling back (its layer is named).
    Cost: 2 m backward passes of `model`, one call of `blocks` (two after a fall-back).
    """
    index, vectors = probes(example.shape[0], num_outputs)
    reference = reference_grams(model, variable_groups, example, index, vectors)

    def failing(tolerate_errors):
        try:
            computed = {name: value for name, value in blocks().items() if name in reference}
        except (tf.errors.OpError, ValueError, NotImplementedError) as error:
            if not tolerate_errors:
                raise
            return list(reference), error
        return mismatched(kernel_grams(computed, index, vectors), reference), None

    bad, error = failing(True)
    if not bad:
        return ()
    cause = "" if error is None else f" (the vectorized computation raised {type(error).__name__})"
    warnings.warn(
        f"TensorFlow's vectorized gradients of {', '.join(bad)} disagree with unvectorized "
        f"gradients{cause}; keras-ntk computes their NTK without vectorization, which is slower.",
        RuntimeWarning,
        stacklevel=2,
    )
    fall_back(bad)
    still_bad, _ = failing(False)
    if still_bad:
        raise ValueError(
            f"The NTK of {', '.join(still_bad)} disagrees with unvectorized gradients even "
            "when computed without vectorization: the model's gradients differ between "
            "calls (a stochastic or stateful gradient?). The NTK needs deterministic "
            "per-example gradients: replace or freeze these layers."
        )
    return tuple(bad)
