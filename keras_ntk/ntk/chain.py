"""Deltas of a chain of dense layers by an explicit batched backward recursion.

A chain is L + 1 rule layers, each a Dense layer on (batch, features) inputs,
each fed exactly the output of the one before, the last one's output being the
model's output:

    z_l = s_l a_l W_l + t_l b_l,   a_{l+1} = phi_l(z_l),   f = phi_L(z_L)   (K = O_L),

W_l of shape (O_{l-1}, O_l), s_l the rule's weight scale. By the chain rule the
deltas delta_l[n, k, :] = df_k / dz_l, shape (n, K, O_l), are

    delta_L = diag(phi_L'(z_L)),   delta_l = (delta_{l+1} W_{l+1}^T) * s_{l+1} phi_l'(z_l),

one (nK, O_{l+1}) x (O_{l+1}, O_l) matmul per layer, in place of K vectorized
backward passes through the whole network. The layer inputs before the chain
(e.g. a Flatten, or layers whose parameters take the Jacobian path) do not enter
the recursion.

Used only where this is exact: `find` checks the chain on an eager forward pass
(every layer's input is the very tensor the previous layer returned, the model
returns the last layer's output) and that every activation is one with a known
derivative; otherwise it returns None and the engine uses the probe path.

The recursion needs no automatic differentiation, so it can run in a wider dtype
than the model: with dtype float64 for a float32 model, `probe_chain` recomputes
the chain's z_l and a_l in float64 from the first layer's input, and the factors
carry no float32 rounding (their values do not depend on the batch they were
computed in).
"""

import math

import keras
import tensorflow as tf

from keras_ntk import activations
from keras_ntk import layers as ntk_layers
from keras_ntk.ntk import rules as rules_lib


def _relu(z, y):
    return tf.cast(z > 0, z.dtype)  # as tf.nn.relu's gradient: 0 at z = 0


def _tanh(z, y):
    return 1 - tf.square(y)


def _erf(z, y):
    return (2 / math.sqrt(math.pi)) * tf.exp(-tf.square(z))


# (activation, phi'(z, y = phi(z)) or None for the identity)
_DERIVATIVES = (
    (keras.activations.linear, None),
    (keras.activations.relu, _relu),
    (keras.activations.tanh, _tanh),
    (activations.erf, _erf),
)


def _derivative(activation):
    """(known?, derivative or None for the identity) of an activation function."""
    for candidate, derivative in _DERIVATIVES:
        if activation is candidate:
            return True, derivative
    return False, None


def _is_dense(layer):
    return isinstance(layer, ntk_layers.Dense) or type(layer) is keras.layers.Dense


def find(model, rules, example):
    """The rules in call order if they form a chain ending at the output, else None.

    Args:
      rules: `LayerRule`s of the layers the forward pass calls exactly once.
      example: (1, ...) input for one eager forward pass.
    """
    if not rules or not all(
        _is_dense(r.layer) and _derivative(r.layer.activation)[0] for r in rules
    ):
        return None
    out, records = rules_lib.record_calls(model, rules, example)
    if len(records) != len(rules) or any(
        len(call.inputs.shape) != 2 or len(call.z.shape) != 2 for call in records
    ):
        return None
    linked = all(after.inputs is before.outputs for before, after in zip(records, records[1:]))
    if not linked or out is not records[-1].outputs:
        return None
    return [call.rule for call in records]


def probe_chain(model, chain, x, dtype=None):
    """Inputs and deltas of every layer of a chain (call inside tf.function).

    Args:
      chain: the rules returned by `find`, in call order.
      x: (n, ...) inputs.
      dtype: dtype of the recursion; wider than the model's compute dtype, the chain's
        forward pass is recomputed in it from the first chain layer's input, so that
        inputs and deltas carry no rounding of the narrower dtype. Default: the
        model's compute dtype.
    Returns:
      list of (rule, a (n, O_{l-1}), delta (n, K, O_l)), in chain order, with
      delta[n, k, o] = df_k / dz_l[n, o].
    """
    _, records = rules_lib.record_calls(model, chain, x)
    if [call.rule.name for call in records] != [rule.name for rule in chain]:
        raise RuntimeError("The model called its dense layers differently than when probed.")
    if dtype is not None and tf.as_dtype(dtype).size > records[0].z.dtype.size:
        records = _recompute(records, tf.as_dtype(dtype))
    last = records[-1]
    n, k = tf.shape(x)[0], last.z.shape[-1]
    _, derivative = _derivative(last.rule.layer.activation)
    delta = tf.eye(k, batch_shape=[n], dtype=last.z.dtype)
    if derivative is not None:
        delta *= derivative(last.z, last.outputs)[:, None, :]
    deltas = [delta]
    for below, above in zip(records[-2::-1], records[:0:-1]):
        kernel = tf.cast(above.rule.layer.kernel.value, delta.dtype)  # (O_below, O_above)
        # einsum rather than matmul(..., transpose_b=True): oneDNN's transposed-B
        # matmul is about 15% slower here
        delta = tf.einsum("nki,oi->nko", delta, kernel)
        scale = above.rule.weight_scale
        _, derivative = _derivative(below.rule.layer.activation)
        if derivative is not None:
            delta *= (scale * derivative(below.z, below.outputs))[:, None, :]
        elif scale != 1.0:
            delta *= scale
        deltas.append(delta)
    return [(call.rule, call.inputs, d) for call, d in zip(records, deltas[::-1])]


def _recompute(records, dtype):
    """The chain's calls recomputed in `dtype` from the first call's input."""
    out, a = [], records[0].inputs
    for call in records:
        z = call.rule.linear(a, dtype)
        outputs = call.rule.layer.activation(z)
        out.append(call._replace(inputs=tf.cast(a, dtype), z=z, outputs=outputs))
        a = outputs
    return out
