"""The layer calls of a built Keras model in execution order, nested models expanded.

A functional model's calls come from its nodes by depth (keras_internals, as Keras'
own functional models walk them): the public `layer.input` / `layer.output` name a
nested model's own tensors, not those of the call in the enclosing model.
"""

import dataclasses

import keras

from keras_ntk import keras_internals


@dataclasses.dataclass(frozen=True)
class Call:
    """One layer call: tensors are numbered 0 (the model input), 1, 2, ... in order."""

    layer: keras.layers.Layer
    inputs: tuple
    output: int


def _not_a_layer(operation):
    return ValueError(
        f"The model applies the operation {type(operation).__name__} "
        f"({getattr(operation, 'name', '?')!r}), which is not a Keras layer and has no "
        "infinite-width kernel map; use the layer (e.g. keras.layers.Add()([a, b]) instead of a + b)."
    )


def _check_arguments(layer, kwargs):
    """Only inference-mode calls: training None / False (Keras records it for Dropout)."""
    extra = {k: v for k, v in kwargs.items() if v is not None and not (k == "training" and v is False)}
    if extra:
        raise ValueError(
            f"Layer {layer.name!r} is called with keyword arguments {sorted(extra)}; the "
            "infinite-width kernel maps need plain inference-mode calls."
        )


class _Walk:
    def __init__(self):
        self.calls = []
        self.count = 1
        self.layers = set()

    def call(self, operation, inputs):
        if isinstance(operation, keras.Sequential):
            (h,) = inputs
            for layer in operation.layers:
                (h,) = self.call(layer, (h,))
            return (h,)
        if isinstance(operation, keras.Model):
            return self.functional(operation, inputs)
        if not isinstance(operation, keras.layers.Layer):
            raise _not_a_layer(operation)
        if id(operation) in self.layers:
            raise ValueError(
                f"Layer {operation.name!r} is called more than once (shared weights); the "
                "infinite-width kernel maps need every layer used once."
            )
        self.layers.add(id(operation))
        output = self.count
        self.count += 1
        self.calls.append(Call(operation, tuple(inputs), output))
        return (output,)

    def functional(self, model, inputs):
        if len(model.inputs) != len(inputs):
            raise ValueError(f"Model {model.name!r} has {len(model.inputs)} inputs; expected {len(inputs)}.")
        tensors = {id(x): k for x, k in zip(model.inputs, inputs)}
        nodes_by_depth = keras_internals.nodes_by_depth(model)
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                if node.is_input or any(id(x) not in tensors for x in node.input_tensors):
                    continue
                _check_arguments(node.operation, node.arguments.kwargs)
                if len(node.outputs) != 1:
                    raise ValueError(f"Layer {node.operation.name!r} has several outputs.")
                (out,) = self.call(node.operation, [tensors[id(x)] for x in node.input_tensors])
                tensors[id(node.outputs[0])] = out
        return tuple(tensors[id(x)] for x in model.outputs)


def layer_calls(model):
    """(calls, output tensor number) of a built single-input, single-output model.

    Raises:
      ValueError: the model is not built, has several inputs or outputs, reuses
        a layer, or applies an operation that is not a layer.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a keras.Model, got {type(model).__name__}.")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            f"Model {model.name!r} has no symbolic inputs: build it with keras.Input "
            "(functional or Sequential([keras.Input(shape), ...]))."
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
            "the infinite-width kernel needs one of each."
        )
    walk = _Walk()
    (output,) = walk.call(model, (0,))
    return walk.calls, output
