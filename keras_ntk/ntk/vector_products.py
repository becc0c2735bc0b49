"""Matrix-free NTK-vector products: Theta(x1, x2) v = J(x1) (J(x2)^T v).

J(x2)^T v is one backward pass (a vector-Jacobian product with output
gradients v); J(x1) u is one forward-mode pass (tf.autodiff.ForwardAccumulator
with tangents u). No Jacobian and no kernel is formed: memory O(parameters).
"""

import weakref

import tensorflow as tf

from keras_ntk.ntk import rules as rules_lib


def _product(model, x1, x2, v):
    """Theta(x1, x2) v for x1 (n, ...), x2 (m, ...), v (m, K) -> (n, K)."""
    variables = [w.value for w in model.trainable_variables]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(variables)
        f2 = rules_lib.flat_outputs(model, x2)
    u = tape.gradient(
        f2, variables, output_gradients=v, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    with tf.autodiff.ForwardAccumulator(variables, u) as accumulator:
        f1 = rules_lib.flat_outputs(model, x1)
    return accumulator.jvp(f1, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def ntk_vector_product(model, x, v):
    """NTK-vector product Theta(x, x) v without forming Theta.

    Args:
      model: a Keras model with one output, K = its flattened output size.
      x: (N, ...) inputs.
      v: (N, K) vector, or (N, K, R) for R vectors at once.
    Returns:
      (N, K) (or (N, K, R)) tf.Tensor: sum_{j,l} Theta(x_i, x_j)[k, l] v[j, l].
    """
    x = tf.convert_to_tensor(x, dtype=model.inputs[0].dtype if model.inputs else None)
    v = tf.convert_to_tensor(v, dtype=x.dtype)
    if v.shape.rank not in (2, 3) or v.shape[0] != x.shape[0]:
        raise ValueError(
            f"v must have shape (N, K) or (N, K, R) with N = {x.shape[0]} examples, "
            f"got {v.shape}."
        )
    return _compiled_product(model)(x, v)


_COMPILED = weakref.WeakKeyDictionary()


def _compiled_product(model):
    if model not in _COMPILED:

        def product(x, v):
            if v.shape.rank == 2:
                return _product(model, x, x, v)
            columns = tf.transpose(v, (2, 0, 1))
            out = tf.map_fn(lambda c: _product(model, x, x, c), columns)
            return tf.transpose(out, (1, 2, 0))

        _COMPILED[model] = tf.function(product, reduce_retracing=True)
    return _COMPILED[model]


def kernel_block(model, x1, x2):
    """Full kernel block (n, m, K, K) by M*K NTK-vector products with basis vectors."""
    m = tf.shape(x2)[0]
    k = tf.shape(rules_lib.flat_outputs(model, x2[:1]))[1]
    basis = tf.reshape(tf.eye(m * k, dtype=x2.dtype), (m * k, m, k))
    columns = tf.vectorized_map(lambda e: _product(model, x1, x2, e), basis)  # (m*k, n, K)
    n = tf.shape(x1)[0]
    return tf.transpose(tf.reshape(columns, (m, k, n, k)), (2, 0, 3, 1))
