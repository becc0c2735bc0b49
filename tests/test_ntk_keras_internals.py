"""keras_internals: walking a model's layers and rebuilding it around stand-ins."""

import keras
import numpy as np

from keras_ntk import keras_internals


class Block(keras.layers.Layer):
    """A custom layer holding sublayers in an attribute and in a list."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(4, name="block_inner")
        self.stack = [keras.layers.Dense(4, name="block_stack")]

    def call(self, x):
        return self.stack[0](self.inner(x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def _nested_model():
    keras.utils.set_random_seed(14)
    nested = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="nested_dense")], name="nested")
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, name="first")(inputs)
    h = keras.layers.Dropout(0.5, name="dropout")(Block(name="block")(h))
    model = keras.Model(inputs, keras.layers.Dense(2, name="last")(nested(h)))
    model.compile(optimizer="adam", loss="mse")
    return model


def test_walk_layers_visits_nested_models_and_custom_layers_once():
    model = _nested_model()
    names = [layer.name for layer in keras_internals.walk_layers(model)]
    assert sorted(names) == sorted(
        [model.layers[0].name, "first", "block", "block_inner", "block_stack", "dropout", "nested",
         "nested_dense", "last"]
    )


def test_rebuild_computes_the_same_outputs_through_stand_ins_and_leaves_the_model_alone():
    model = _nested_model()
    x = np.random.default_rng(14).normal(size=(5, 3)).astype(np.float32)
    before = {layer.name: len(layer._inbound_nodes) for layer in keras_internals.walk_layers(model)}
    seen = []

    def replace(layer):
        seen.append(layer.name)
        return None

    rebuilt = keras_internals.rebuild(model, replace)
    np.testing.assert_array_equal(rebuilt(x, training=False), model(x, training=False))
    assert sorted(seen) == ["block", "dropout", "first", "last", "nested_dense"]
    assert {id(v) for v in rebuilt.weights} == {id(v) for v in model.weights}
    assert not rebuilt.compiled and model.compiled
    after = {layer.name: len(layer._inbound_nodes) for layer in keras_internals.walk_layers(model)}
    assert after == before


def test_a_subclassed_model_cannot_be_rebuilt():
    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    assert keras_internals.graph_view(model) is None
    assert keras_internals.rebuild(model, lambda layer: None) is None
