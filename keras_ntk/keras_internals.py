"""How keras-ntk looks inside Keras models: the one place that knows how they are put together.

Public Keras API only:

  walk_layers(model)       every layer inside a model, nested models and layers included;
  graph_view(model)        keras.Model(model.inputs, model.outputs): the model's own graph
                           as a new, uncompiled functional model (None without a graph);
  nodes_by_depth(model)    a functional model's call nodes grouped by depth (the one
                           private Keras attribute read here: no public API exposes them);
  rebuild(model, replace)  a new functional model that computes what `model` computes,
                           every layer called through a stand-in (`replace(layer)` or a
                           `Delegate`), so a caller can observe or rewrite single layer
                           calls without touching the model.

`rebuild` leaves the model and its layers as they are: it clones the graph view with
keras.models.clone_model, whose clone function returns stand-ins, so the stand-ins,
not the model's layers, receive the new graph's nodes, and no compile configuration
or optimizer is copied (the view is uncompiled). The rebuilt model reads the model's
own variables, so it stays in step with training. Models without a functional graph
(subclassed keras.Model) cannot be rebuilt: `rebuild` returns None for them.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import keras


def _children(layer):
    """Direct sublayers: `layers` of a model, else the layers held by public attributes."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    found = []
    for name, value in vars(layer).items():
        if name.startswith("_"):
            continue
        if isinstance(value, dict):
            items = list(value.values())
        else:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
        found.extend(item for item in items if isinstance(item, keras.layers.Layer))
    return found


def walk_layers(model):
    """Every layer inside `model` (not `model` itself), depth first, each once.

    A model's sublayers are its `layers`; any other layer's are the layers held by
    its public attributes (directly or in a list, tuple or dict). Layers that a
    custom layer keeps under a private name are not visited.
    """
    seen = {id(model)}
    stack = list(reversed(_children(model)))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(reversed(_children(layer)))


class Delegate(keras.layers.Layer):
    """Stand-in that calls `target` unchanged (its own dtype policy, training flag and masks).

    Attributes:
      target: the layer it calls.
    """

    def __init__(self, target):
        super().__init__(name=target.name, dtype=target.dtype_policy)
        self.target = target

    def call(self, *args, **kwargs):
        return self.target(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.target.compute_output_spec(*args, **kwargs)


def _single(tensors):
    return tensors[0] if len(tensors) == 1 else list(tensors)


def graph_view(model):
    """keras.Model(model.inputs, model.outputs): a new, uncompiled functional model on
    `model`'s own graph (same layers and nodes), or None when `model` has no graph of
    layers (a subclassed keras.Model, or a model not built yet)."""
    if not isinstance(model, keras.Model):
        return None
    try:
        view = keras.Model(_single(model.inputs), _single(model.outputs), name=model.name)
    except (AttributeError, TypeError, ValueError):
        return None
    layers = {id(layer) for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}
    inside = {id(layer) for layer in view.layers if not isinstance(layer, keras.layers.InputLayer)}
    return view if layers == inside else None


def nodes_by_depth(model):
    """{depth: [keras Node]} of a functional model, depth 0 at the outputs; a node's
    `operation`, `input_tensors`, `outputs`, `arguments` and `is_input` describe one call."""
    return model._nodes_by_depth


def rebuild(model, replace):
    """A new functional model computing model(x), every layer called through a stand-in.

    Args:
      model: a built functional or sequential keras.Model.
      replace: layer -> a keras Layer to call in its place, or None for a `Delegate`
        (which calls the layer unchanged). Nested functional and sequential models are
        rebuilt with the same `replace`; other layers are passed to `replace`.
    Returns:
      the rebuilt keras.Model (inputs and outputs as `model`'s), or None when `model`
      has no functional graph (see `graph_view`).
    """
    view = graph_view(model)
    if view is None:
        return None

    def stand_in(layer):
        if isinstance(layer, keras.Model):
            nested = rebuild(layer, replace)
            if nested is not None:
                return nested
        replacement = replace(layer)
        return Delegate(layer) if replacement is None else replacement

    return keras.models.clone_model(view, clone_function=stand_in)
