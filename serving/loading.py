"""Safe loading of one exported version directory (see export.py for the layout).

Only the three regular files of the format are read; model.keras is loaded with
Keras safe_mode=True (no lambda or arbitrary code deserialization) and without
compiling; metadata.json is checked before anything else is touched.
"""

import json
import math
import pathlib

from .export import FILES, FORMAT, POSTERIORS


class CorruptModel(ValueError):
    """A version directory that is not a loadable export (the message says why)."""


def _regular_file(directory, name):
    path = directory / name
    if path.is_symlink() or not path.is_file():
        raise CorruptModel(f"{path} is missing or not a regular file.")
    return path


def read_metadata(directory):
    """metadata.json of a version directory, checked to describe a servable posterior."""
    directory = pathlib.Path(directory)
    for name in FILES:
        _regular_file(directory, name)
    try:
        meta = json.loads((directory / "metadata.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptModel(f"{directory / 'metadata.json'} is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptModel(f"{directory / 'metadata.json'} does not say format {FORMAT!r}.")
    if meta.get("posterior") not in POSTERIORS:
        raise CorruptModel(f"posterior {meta.get('posterior')!r} is not one of {POSTERIORS}.")
    for key in ("input_shape", "output_shape", "likelihood"):
        if key not in meta:
            raise CorruptModel(f"{directory / 'metadata.json'} lacks {key!r}.")
    return meta


def load_posterior(directory):
    """(posterior, model) of a version directory, or CorruptModel saying why not."""
    import keras

    from keras_ntk.predictive import NTKGP, Laplace

    directory = pathlib.Path(directory)
    meta = read_metadata(directory)
    try:
        model = keras.models.load_model(directory / "model.keras", safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for a bad archive
        raise CorruptModel(f"{directory / 'model.keras'} could not be loaded safely: {error}") from None
    if list(model.input_shape[1:]) != list(meta["input_shape"]):
        raise CorruptModel(
            f"model.keras takes inputs {list(model.input_shape[1:])} but metadata.json says "
            f"{meta['input_shape']}."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1 or math.prod(model.output_shape[1:]) < 1:
        raise CorruptModel("model.keras must have one input and one output tensor.")
    try:
        cls = Laplace if meta["posterior"] == "laplace" else NTKGP
        posterior = cls.load(directory, model=model)
    except Exception as error:
        raise CorruptModel(f"{directory / 'posterior.npz'} could not be restored: {error}") from None
    return posterior, model
