"""Structured per-layer NTK rules and the probed forward pass that feeds them.

A layer with a rule computes z = weight_scale * conv_or_matmul(a, W) + bias_scale * b,
then an activation. Writing its input a as patches P (n, positions, C) so that
z[n, p, o] = weight_scale * sum_c P[n, p, c] W[c, o] + bias_scale * b[o], the
layer's parameters enter f only through z, and with delta[n, k, p, o] = df_k/dz[n, p, o]:

    df_k/dW[c, o] = weight_scale * sum_p P[n, p, c] delta[n, k, p, o]
    df_k/db[o]    = bias_scale   * sum_p delta[n, k, p, o].

The probed forward pass records a (the layer input) and adds a zero "probe" e
to z; since examples are independent, d(sum_n f_nk)/de[n] = delta[n, k], so K
vectorized backward passes give every layer's delta at once and no parameter
Jacobian is formed.
"""

import contextlib
import dataclasses
import math
import typing

import keras
import tensorflow as tf
from keras import ops

from keras_ntk import layers as ntk_layers


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How one layer's parameters enter the NTK.

    Attributes:
      layer: the Keras layer.
      weight_scale, bias_scale: factors multiplying kernel and bias in `call`.
      use_kernel, use_bias: whether kernel / bias are trainable parameters.
    """

    layer: keras.layers.Layer
    weight_scale: float
    bias_scale: float
    use_kernel: bool
    use_bias: bool

    @property
    def name(self):
        return self.layer.path

    @property
    def variables(self):
        out = [self.layer.kernel] if self.use_kernel else []
        return out + ([self.layer.bias] if self.use_bias else [])

    def pre_activation(self, inputs):
        layer = self.layer
        if isinstance(layer, ntk_layers._ParametrizedLayer):
            return layer.linear(inputs)
        if isinstance(layer, keras.layers.Conv2D):
            z = ops.conv(inputs, layer.kernel, strides=layer.strides, padding=layer.padding)
        else:
            z = ops.matmul(inputs, layer.kernel)
        return z if layer.bias is None else z + layer.bias

    def patches(self, inputs):
        """Layer inputs as patches, (n, positions, C) with C = rows of the flat kernel."""
        n = tf.shape(inputs)[0]
        if isinstance(self.layer, (ntk_layers.Conv2D, keras.layers.Conv2D)):
            kh, kw = self.layer.kernel_size
            sh, sw = self.layer.strides
            inputs = tf.image.extract_patches(
                inputs,
                sizes=[1, kh, kw, 1],
                strides=[1, sh, sw, 1],
                rates=[1, 1, 1, 1],
                padding=self.layer.padding.upper(),
            )
        positions = math.prod(inputs.shape[1:-1])
        return tf.reshape(inputs, (n, positions, inputs.shape[-1]))


def _is_trainable(variable):
    return variable is not None and variable.trainable


def rule_for(layer):
    """The `LayerRule` of a layer, or None when its parameters need the Jacobian path."""
    if not layer.trainable:
        return None
    if isinstance(layer, (ntk_layers.Dense, ntk_layers.Conv2D)):
        weight_scale, bias_scale = layer.weight_scale, layer.bias_scale
    elif type(layer) is keras.layers.Dense:
        if layer.lora_enabled or layer.quantization_mode:
            return None
        weight_scale = bias_scale = 1.0
    elif type(layer) is keras.layers.Conv2D:
        if (
            layer.data_format != "channels_last"
            or tuple(layer.dilation_rate) != (1, 1)
            or layer.groups != 1
        ):
            return None
        weight_scale = bias_scale = 1.0
    else:
        return None
    use_kernel, use_bias = _is_trainable(layer.kernel), _is_trainable(layer.bias)
    if not (use_kernel or use_bias):
        return None
    return LayerRule(layer, weight_scale, bias_scale, use_kernel, use_bias)


def find_rules(model):
    """Rules for every layer of `model` (nested models included) that has one."""
    rules = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        rule = rule_for(layer)
        if rule is not None:
            rules.append(rule)
    return rules


class Call(typing.NamedTuple):
    """One recorded call of a rule layer: inputs, pre-activation z (probe not
    included), the probe (None when not probing) and the layer's outputs."""

    rule: LayerRule
    inputs: tf.Tensor
    z: tf.Tensor
    probe: typing.Optional[tf.Tensor]
    outputs: tf.Tensor


@contextlib.contextmanager
def probed(rules, tape, records):
    """Patch each rule layer's `call` to record a `Call` and, with a tape, add a probe.

    `records` receives one `Call` per call. With a `tape`, the probe is a zero
    tensor of z's shape watched by `tape` and the layer returns
    activation(z + probe); with tape=None nothing is added.
    """

    def make_call(rule):
        def call(inputs, *args, **kwargs):
            z = rule.pre_activation(inputs)
            probe = None
            if tape is not None:
                probe = tf.zeros_like(z)
                tape.watch(probe)
            outputs = rule.layer.activation(z if probe is None else z + probe)
            records.append(Call(rule, inputs, z, probe, outputs))
            return outputs

        return call

    for rule in rules:
        rule.layer.call = make_call(rule)
    try:
        yield
    finally:
        for rule in rules:
            del rule.layer.call


def trace_calls(model, rules, example):
    """One eager probed forward pass on `example` (1, ...).

    Returns (calls, positions, K): calls[name] is how often each rule's layer is
    called, positions[name] the patch positions of its last call, K the output size.
    Rules whose layer is called other than once are not per-example-factorizable.
    """
    records = []
    with tf.GradientTape() as tape:
        with probed(rules, tape, records):
            f = flat_outputs(model, example)
    names = [call.rule.name for call in records]
    positions = {call.rule.name: int(call.rule.patches(call.inputs).shape[1]) for call in records}
    return {rule.name: names.count(rule.name) for rule in rules}, positions, int(f.shape[1])


def model_outputs(model, x):
    """model(x) in inference mode, checked to be one tensor of shape (n, ...)."""
    out = model(x, training=False)
    if isinstance(out, (list, tuple, dict)):
        raise ValueError(
            "The NTK needs a model with a single output tensor; got a structure of "
            f"{len(out)} outputs. Wrap the model so that it returns one tensor."
        )
    if len(out.shape) < 2:
        raise ValueError(f"Model outputs must have shape (batch, ...), got {out.shape}.")
    return out


def flat_outputs(model, x):
    """model(x) in inference mode as (n, K): trailing output axes are flattened."""
    out = model_outputs(model, x)
    return tf.reshape(out, (tf.shape(out)[0], -1))


def probe_layers(model, rules, x):
    """Inputs and deltas of every rule layer for a batch, in one forward pass and
    K vectorized backward passes (call inside tf.function).

    Args:
      rules: `LayerRule`s of layers that the forward pass calls exactly once.
      x: (n, ...) inputs.
    Returns:
      f (n, K) and a list of (rule, patches (n, P, C), delta (n, K, P, O)) with
      delta[n, k, p, o] = df_k / dz[n, p, o].
    """
    records = []
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        with probed(rules, tape, records):
            f = flat_outputs(model, x)
        total = tf.reduce_sum(f, axis=0)
    deltas = tape.jacobian(total, [call.probe for call in records])
    out = []
    for call, delta in zip(records, deltas):
        rule, patches = call.rule, call.rule.patches(call.inputs)
        k, n = tf.shape(delta)[0], tf.shape(delta)[1]
        delta = tf.reshape(delta, (k, n, patches.shape[1], -1))
        out.append((rule, patches, tf.transpose(delta, (1, 0, 2, 3))))
    return f, out
