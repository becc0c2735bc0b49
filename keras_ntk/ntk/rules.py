"""Structured per-layer NTK rules and the probed forward pass that feeds them.

A layer with a rule computes z = weight_scale * conv_or_matmul(a, W) + bias_scale * b,
then an activation. Writing its input a as patches P (n, positions, C) so that
z[n, p, o] = weight_scale * sum_c P[n, p, c] W[c, o] + bias_scale * b[o], the
layer's parameters enter f only through z, and with delta[n, k, p, o] = df_k/dz[n, p, o]:

    df_k/dW[c, o] = weight_scale * sum_p P[n, p, c] delta[n, k, p, o]
    df_k/db[o]    = bias_scale   * sum_p delta[n, k, p, o].

A grouped convolution (Keras Conv2D with groups G > 1) splits the input channels
and the filters into G groups; group g's filters see only group g's channels:

    z[n, p, g, o] = weight_scale * sum_c P[n, p, g, c] W[c, g, o] + bias_scale * b[g, o],
    df_k/dW[c, g, o] = weight_scale * sum_p P[n, p, g, c] delta[n, k, p, g, o],

so the layer's NTK share is the sum over groups of each group's convolution share.
The rule computes z by G ungrouped convolutions, whose gradients TensorFlow's
automatic vectorization handles (its grouped-convolution gradients under
vectorization fail or are wrong).

Probing runs the model's twin (`twin`): a rebuilt functional model with the same
layers and variables in which every layer with a rule is called through a stand-in
(keras_internals.rebuild). While a thread records (`record_calls`), the stand-ins of
the rules it asked for record their input a and pre-activation z and, with a tape,
add a zero "probe" e to z; since examples are independent,
d(sum_n f_nk)/de[n] = delta[n, k], so K backward passes give every layer's delta at
once and no parameter Jacobian is formed. Recording is per thread and the model is
never modified, so any number of threads can trace and call kernels of one model.
"""

import dataclasses
import math
import threading
import typing
import weakref

import keras
import tensorflow as tf
from keras import ops

from keras_ntk import keras_internals
from keras_ntk import layers as ntk_layers


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How one layer's parameters enter the NTK.

    Attributes:
      layer: the Keras layer.
      weight_scale, bias_scale: factors multiplying kernel and bias in `call`.
      use_kernel, use_bias: whether kernel / bias are trainable parameters.
      groups: G, the convolution's groups (1 for dense layers and ungrouped convolutions).
    """

    layer: keras.layers.Layer
    weight_scale: float
    bias_scale: float
    use_kernel: bool
    use_bias: bool
    groups: int = 1

    @property
    def name(self):
        return self.layer.path

    @property
    def variables(self):
        out = [self.layer.kernel] if self.use_kernel else []
        return out + ([self.layer.bias] if self.use_bias else [])

    def is_conv(self):
        return isinstance(self.layer, (ntk_layers.Conv2D, keras.layers.Conv2D))

    def linear(self, inputs, dtype=None):
        """Pre-activation z of `inputs`, computed in `dtype` (default: the layer's compute dtype)."""
        layer = self.layer
        if dtype is None and isinstance(layer, (ntk_layers.Dense, ntk_layers.Conv2D)):
            return layer.linear(inputs)
        kernel, bias = layer.kernel, layer.bias
        if dtype is not None:
            inputs, kernel = tf.cast(inputs, dtype), tf.cast(kernel, dtype)
            bias = None if bias is None else tf.cast(bias, dtype)
        if not self.is_conv():
            z = ops.matmul(inputs, kernel)
        elif self.groups == 1:
            z = ops.conv(inputs, kernel, strides=layer.strides, padding=layer.padding)
        else:
            z = ops.concatenate(
                [
                    ops.conv(a, w, strides=layer.strides, padding=layer.padding)
                    for a, w in zip(
                        ops.split(inputs, self.groups, axis=-1), ops.split(kernel, self.groups, axis=-1)
                    )
                ],
                axis=-1,
            )
        if self.weight_scale != 1.0:
            z = z * self.weight_scale
        if bias is None:
            return z
        return z + (bias if self.bias_scale == 1.0 else bias * self.bias_scale)

    def patches(self, inputs):
        """Layer inputs as patches, (n, positions, C): C = kernel height * width * input
        channels (the rows of the flat kernel times G for a grouped convolution)."""
        n = tf.shape(inputs)[0]
        if self.is_conv():
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

    def gradients(self, patches, delta):
        """Per-example gradients of the trainable kernel and bias, (n, K, size), from
        patches (n, P, C) and delta (n, K, P, O); kernel entries in the kernel's layout."""
        n, k = tf.shape(delta)[0], tf.shape(delta)[1]
        positions, groups = patches.shape[1], self.groups
        grads = []
        if self.use_kernel and groups == 1:
            g = tf.einsum("npc,nkpo->nkco", patches, delta) * self.weight_scale
            grads.append(tf.reshape(g, (n, k, -1)))
        elif self.use_kernel:
            channels = patches.shape[-1] // (groups * math.prod(self.layer.kernel_size))
            p = tf.reshape(patches, (n, positions, -1, groups, channels))
            d = tf.reshape(delta, (n, k, positions, groups, -1))
            g = tf.einsum("npsgc,nkpgo->nkscgo", p, d) * self.weight_scale
            grads.append(tf.reshape(g, (n, k, -1)))
        if self.use_bias:
            grads.append(tf.reduce_sum(delta, axis=2) * self.bias_scale)
        return tf.concat(grads, axis=-1)


def _is_trainable(variable):
    return variable is not None and variable.trainable


def _form(layer):
    """The `LayerRule` describing how `layer` computes z (whatever is trainable), or None
    when the layer is not a Dense / Conv2D the rules can compute."""
    groups = 1
    if isinstance(layer, (ntk_layers.Dense, ntk_layers.Conv2D)):
        weight_scale, bias_scale = layer.weight_scale, layer.bias_scale
    elif type(layer) is keras.layers.Dense:
        if layer.lora_enabled or layer.quantization_mode:
            return None
        weight_scale = bias_scale = 1.0
    elif type(layer) is keras.layers.Conv2D:
        if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1):
            return None
        weight_scale = bias_scale = 1.0
        groups = layer.groups
    else:
        return None
    return LayerRule(
        layer, weight_scale, bias_scale, _is_trainable(layer.kernel), _is_trainable(layer.bias), groups
    )


def rule_for(layer):
    """The `LayerRule` of a layer, or None when its parameters need the Jacobian path."""
    rule = _form(layer) if layer.trainable else None
    if rule is None or not (rule.use_kernel or rule.use_bias):
        return None
    return rule


class Call(typing.NamedTuple):
    """One recorded call of a rule layer: inputs, pre-activation z (probe not
    included), the probe (None when not probing) and the layer's outputs."""

    rule: LayerRule
    inputs: tf.Tensor
    z: tf.Tensor
    probe: typing.Optional[tf.Tensor]
    outputs: tf.Tensor


class _Recording(typing.NamedTuple):
    rules: dict  # id(layer) -> LayerRule
    tape: typing.Optional[tf.GradientTape]
    calls: list


_THREAD = threading.local()


def _active_recording():
    stack = getattr(_THREAD, "recordings", None)
    return stack[-1] if stack else None


class _RuleLayerStandIn(keras.layers.Layer):
    """Calls a rule layer as activation(linear(a) [+ probe]), recording the call when
    the calling thread records this layer's rule."""

    def __init__(self, target):
        super().__init__(name=target.name, dtype=target.dtype_policy)
        self.target = target

    def call(self, inputs):
        form = _form(self.target)
        if form is None:
            return self.target(inputs)
        z = form.linear(inputs)
        recording = _active_recording()
        rule = None if recording is None else recording.rules.get(id(self.target))
        if rule is None:
            return self.target.activation(z)
        probe = None
        if recording.tape is not None:
            probe = tf.zeros_like(z)
            recording.tape.watch(probe)
        outputs = self.target.activation(z if probe is None else z + probe)
        recording.calls.append(Call(rule, inputs, z, probe, outputs))
        return outputs

    def compute_output_spec(self, inputs):
        return self.target.compute_output_spec(inputs)


class Twin(typing.NamedTuple):
    """A model's twin: `model` computes what the original computes with the same
    variables; `layers` are the layers called through rule stand-ins, in graph order."""

    model: keras.Model
    layers: tuple


_TWINS = weakref.WeakKeyDictionary()  # model -> (layer ids, Twin)
_TWINS_LOCK = threading.Lock()


def twin(model):
    """The `Twin` of `model` (built once per model and layer set, shared by all threads).

    A model without a functional graph (a subclassed keras.Model) is its own twin,
    with no rule layers: all its parameters take the Jacobian path.
    """
    key = tuple(id(layer) for layer in keras_internals.walk_layers(model))
    with _TWINS_LOCK:
        cached = _TWINS.get(model)
        if cached is None or cached[0] != key:
            wrapped = []

            def replace(layer):
                if _form(layer) is None:
                    return None
                wrapped.append(layer)
                return _RuleLayerStandIn(layer)

            rebuilt = keras_internals.rebuild(model, replace)
            # the cache must not reference `model` itself (it is the weak key)
            cached = (key, None if rebuilt is None else Twin(rebuilt, tuple(wrapped)))
            _TWINS[model] = cached
    return Twin(model, ()) if cached[1] is None else cached[1]


def find_rules(model, grouped=False):
    """Rules of every layer of `model` that its twin probes (nested models included).

    Grouped convolutions are included only with grouped=True: their patches span all
    input channels, so code that reads patches as kernel rows must handle G first.
    """
    rules = [rule_for(layer) for layer in twin(model).layers]
    return [r for r in rules if r is not None and (grouped or r.groups == 1)]


def record_calls(model, rules, x, tape=None):
    """model(x) in inference mode through the twin, recording every call of `rules`' layers.

    With a `tape`, each recorded call adds a zero probe watched by `tape` to its z.
    Returns (outputs as model_outputs returns them, list of `Call` in call order).
    """
    recording = _Recording({id(rule.layer): rule for rule in rules}, tape, [])
    stack = getattr(_THREAD, "recordings", None)
    if stack is None:
        stack = _THREAD.recordings = []
    stack.append(recording)
    try:
        outputs = model_outputs(twin(model).model, x)
    finally:
        stack.pop()
    return outputs, recording.calls


def trace_calls(model, rules, example):
    """One eager probed forward pass on `example` (1, ...).

    Returns (calls, positions, K): calls[name] is how often each rule's layer is
    called, positions[name] the patch positions of its last call, K the output size.
    Rules whose layer is called other than once are not per-example-factorizable.
    """
    with tf.GradientTape() as tape:
        f, records = record_calls(model, rules, example, tape)
    names = [call.rule.name for call in records]
    positions = {call.rule.name: int(call.rule.patches(call.inputs).shape[1]) for call in records}
    k = math.prod(f.shape[1:])
    return {rule.name: names.count(rule.name) for rule in rules}, positions, int(k)


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


def probe_layers(model, rules, x, vectorized=True):
    """Inputs and deltas of every rule layer for a batch, in one forward pass and
    K backward passes (call inside tf.function).

    Args:
      rules: `LayerRule`s of layers that the forward pass calls exactly once.
      x: (n, ...) inputs.
      vectorized: the K backward passes as one vectorized pass (tape.jacobian with
        TensorFlow's pfor) or, with False, as a loop of K passes.
    Returns:
      f (n, K) and a list of (rule, patches (n, P, C), delta (n, K, P, O)) with
      delta[n, k, p, o] = df_k / dz[n, p, o].
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        out, records = record_calls(model, rules, x, tape)
        f = tf.reshape(out, (tf.shape(out)[0], -1))
        total = tf.reduce_sum(f, axis=0)
    deltas = tape.jacobian(total, [call.probe for call in records], experimental_use_pfor=vectorized)
    out = []
    for call, delta in zip(records, deltas):
        rule, patches = call.rule, call.rule.patches(call.inputs)
        k, n = tf.shape(delta)[0], tf.shape(delta)[1]
        delta = tf.reshape(delta, (k, n, patches.shape[1], -1))
        out.append((rule, patches, tf.transpose(delta, (1, 0, 2, 3))))
    return f, out
