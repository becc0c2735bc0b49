"""NTK factors of a training set: the structured engine's per-example factors, in chunks."""

import tensorflow as tf

from keras_ntk.ntk import features as features_lib

CHUNK = 256


def feature_map(model, examples):
    """The structured `FeatureMap` of `model` (rules where they exist, Jacobians
    elsewhere), its dense-chain recursion in float64 like NTK(dtype="float64").

    Args:
      examples: (m, ...) inputs, m >= 1; the first two build and check the map.
    """
    return features_lib.FeatureMap(model, "structured", tf.constant(examples[:2]), dtype=tf.float64)


def factors_of(features, x, chunk=CHUNK):
    """The per-example factors of x (N, ...) by `features` (a FeatureMap), computed
    `chunk` examples at a time and concatenated: a list aligned with features.groups."""
    parts = [features(tf.constant(x[i : i + chunk])) for i in range(0, len(x), chunk)]
    return [tuple(tf.concat(pieces, axis=0) for pieces in zip(*group)) for group in zip(*parts)]
