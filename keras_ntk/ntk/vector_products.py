"""Matrix-free NTK-vector products: Theta(x1, x2) v = J(x1) (J(x2)^T v).

J(x2)^T v is one backward pass (a vector-Jacobian product with output
gradients v); J(x1) u is one forward-mode pass (tf.autodiff.ForwardAccumulator
with tangents u). No Jacobian and no kernel is formed: memory O(parameters).
"""

import weakref

import tensorflow as tf

from keras_ntk import traced
from keras_ntk.ntk import rules as rules_lib


def _product(model, x1, x2, v):
    """Theta(x1, x2) v for x1 (n, ...), x2 (m, ...), v (m, K) -> (n, K).

    Differentiates the model's twin (rules.twin: grouped convolutions as ungrouped
    ones) with respect to the model's trainable variables.
    """
    forward = rules_lib.twin(model).model
    variables = [w.value for w in model.trainable_variables]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(variables)
        f2 = rules_lib.flat_outputs(forward, x2)
    u = tape.gradient(
        f2, variables, output_gradients=v, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    with tf.autodiff.ForwardAccumulator(variables, u) as accumulator:
        f1 = rules_lib.flat_outputs(forward, x1)
    return accumulator.jvp(f1, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _map(fn, elems, vectorized, dtype):
    """fn over the leading axis of elems (results of `dtype`): tf.vectorized_map, or
    tf.map_fn (a loop)."""
    if vectorized:
        return tf.vectorized_map(fn, elems)
    return tf.map_fn(fn, elems, fn_output_signature=dtype)


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

        _COMPILED[model] = traced.per_object(product, reduce_retracing=True)
    return _COMPILED[model]


def kernel_block(model, x1, x2, vectorized=True):
    """Full kernel block (n, m, K, K) by M*K NTK-vector products with basis vectors
    (call inside tf.function); vectorized=False loops over the basis instead of
    vectorizing the products."""
    m = tf.shape(x2)[0]
    f = rules_lib.flat_outputs(model, x2[:1])
    k = tf.shape(f)[1]
    basis = tf.reshape(tf.eye(m * k, dtype=f.dtype), (m * k, m, k))
    columns = _map(lambda e: _product(model, x1, x2, e), basis, vectorized, f.dtype)  # (m*k, n, K)
    n = tf.shape(x1)[0]
    return tf.transpose(tf.reshape(columns, (m, k, n, k)), (2, 0, 3, 1))


def diagonal_block(model, x, vectorized=True):
    """Theta(x_i, x_i) (n, K, K) by n*K NTK-vector products, one per example i and
    basis vector e_l (call inside tf.function); vectorized as `kernel_block`."""
    n = tf.shape(x)[0]
    f = rules_lib.flat_outputs(model, x[:1])
    k = tf.shape(f)[1]

    def column(pair):
        xi = tf.gather(x, pair // k)[None]
        e = tf.one_hot(pair % k, k, dtype=f.dtype)[None]
        return _product(model, xi, xi, e)[0]  # Theta(x_i, x_i)[:, l]

    columns = _map(column, tf.range(n * k), vectorized, f.dtype)  # (n*K, K): [i*K + l, k]
    return tf.transpose(tf.reshape(columns, (n, k, k)), (0, 2, 1))
