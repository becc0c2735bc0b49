"""The posterior directory format: one fitted posterior per directory, written atomically.

A posterior directory holds

  model.keras     the network (absent for posteriors without one, e.g. an infinite-width GP)
  posterior.npz   the posterior's state: named numpy arrays, read without pickle
  metadata.json   one JSON object:

    format          "keras-ntk posterior" (FORMAT)
    format_version  FORMAT_VERSION; directories written before the field existed are version 1
    posterior       "laplace" or "ntk_gp" (POSTERIORS)
    likelihood      "regression" or "classification"
    structure       the posterior's structure name (Laplace: e.g. "kron"; NTK-GP: its output)
    has_model       whether model.keras is present
    input_shape, output_shape   of one example, without the batch axis (lists of ints)
    keras_ntk, tensorflow, keras   the versions that wrote it
    saved_at        UTC time of writing (ISO 8601)
    with a model:   input_dtype, output_dtype, parameters (count of trainable values)
    then the posterior's own entries (hyperparameters, kernel recipe, ...) and
    entries the caller adds (e.g. the serving export's parametrization).

`save` writes the three files into a staging directory beside the target and
puts it in place atomically (keras_ntk.atomic.staged_directory): a reader sees
the old complete posterior or the new one. `load` checks the files and the
metadata before reading anything else and loads model.keras with Keras
safe_mode=True (no arbitrary code) and without compiling.

What is loaded is what was saved: posterior.npz also holds RECORD_KEY, the JSON
of the metadata entries that describe the posterior (posterior, likelihood,
structure, shapes, dtypes, parameter count and the posterior's own entries), and
`load` refuses metadata whose entries disagree with it or with the loaded model.keras
(its shapes, dtypes and trainable parameter count). Directories written before
the record existed are checked against the model only.
"""

import dataclasses
import datetime
import json
import math
import pathlib

import numpy as np

from keras_ntk import atomic

FORMAT = "keras-ntk posterior"
FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
STATE_FILE = "posterior.npz"
METADATA_FILE = "metadata.json"
FILES = (MODEL_FILE, STATE_FILE, METADATA_FILE)
POSTERIORS = ("laplace", "ntk_gp")
LIKELIHOODS = ("regression", "classification")
REQUIRED_KEYS = ("posterior", "likelihood", "structure", "input_shape", "output_shape")
RECORD_KEY = "format/record"  # posterior.npz entry: JSON of the metadata entries the state was saved with
MODEL_KEYS = ("input_shape", "output_shape", "input_dtype", "output_dtype", "parameters")
UNRECORDED_KEYS = ("format", "format_version", "has_model", "keras_ntk", "tensorflow", "keras", "saved_at")


class CorruptPosterior(ValueError):
    """A directory that is not a loadable posterior (the message says why)."""


@dataclasses.dataclass(frozen=True)
class SavedPosterior:
    """What `load` read: metadata (dict), state (dict name -> numpy array), model
    (the Keras model, or None for posteriors without one)."""

    metadata: dict
    state: dict
    model: object


def _model_entries(model):
    """The MODEL_KEYS entries of a Keras model: one example's shapes, dtypes, trainable values."""
    return dict(
        input_shape=list(model.input_shape[1:]),
        output_shape=list(model.output_shape[1:]),
        input_dtype=str(model.inputs[0].dtype),
        output_dtype=str(model.outputs[0].dtype),
        parameters=int(sum(math.prod(v.shape) for v in model.trainable_variables)),
    )


def _schema_entries(posterior, likelihood, structure, model, input_shape, output_shape):
    import keras
    import tensorflow as tf

    from keras_ntk import __version__

    entries = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "posterior": posterior,
        "likelihood": likelihood,
        "structure": structure,
        "has_model": model is not None,
        "keras_ntk": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if model is not None:
        entries.update(_model_entries(model))
    else:
        entries.update(input_shape=list(input_shape), output_shape=list(output_shape))
    return entries


def save(
    directory,
    *,
    posterior,
    likelihood,
    structure,
    state,
    model=None,
    input_shape=None,
    output_shape=None,
    entries=None,
    extra=None,
):
    """Write a posterior directory atomically (replacing an existing one).

    Args:
      directory: the target directory (parents are created).
      posterior: one of POSTERIORS.
      likelihood: one of LIKELIHOODS.
      structure: the posterior's structure name.
      state: dict name -> array, written to posterior.npz.
      model: the Keras model, written to model.keras; None for a posterior without one,
        which then needs input_shape and output_shape (one example's shapes).
      entries: the posterior's own JSON-ready metadata entries.
      extra: JSON-ready entries of the caller (e.g. serving's export); they may not
        replace the format's or the posterior's entries.
    Returns:
      the pathlib.Path of the directory.
    Raises:
      ValueError: unknown posterior or likelihood, missing shapes, an entry that
        would replace another, or metadata that is not JSON-serializable.
    """
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}.")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
    if model is None and (input_shape is None or output_shape is None):
        raise ValueError("A posterior without a model needs input_shape and output_shape.")
    metadata = _schema_entries(posterior, likelihood, structure, model, input_shape, output_shape)
    for source in (entries or {}, extra or {}):
        clashes = sorted(set(source) & set(metadata))
        if clashes:
            raise ValueError(f"Metadata entries {clashes} are already set by the posterior format; rename them.")
        metadata.update(source)
    text = json.dumps(metadata, indent=2)
    if RECORD_KEY in state:
        raise ValueError(f"State entry {RECORD_KEY!r} is the posterior format's; rename it.")
    recorded = {k: v for k, v in metadata.items() if k not in UNRECORDED_KEYS and k not in (extra or {})}
    state = {**state, RECORD_KEY: np.array(json.dumps(recorded, sort_keys=True))}
    with atomic.staged_directory(directory) as staging:
        if model is not None:
            model.save(staging / MODEL_FILE)
        np.savez(staging / STATE_FILE, **state)
        (staging / METADATA_FILE).write_text(text)
    return pathlib.Path(directory)


def _regular_file(directory, name):
    path = directory / name
    if path.is_symlink() or not path.is_file():
        raise CorruptPosterior(f"{path} is missing or not a regular file.")
    return path


def read_metadata(directory, require_model=False):
    """metadata.json of a posterior directory, checked against the schema.

    Args:
      require_model: also require model.keras (a server needs the network).
    Returns:
      the metadata dict.
    Raises:
      CorruptPosterior: a file is missing or not a regular file, the metadata is
        not JSON, not this format, a newer format version, or lacks a key.
    """
    directory = pathlib.Path(directory)
    path = _regular_file(directory, METADATA_FILE)
    _regular_file(directory, STATE_FILE)
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptPosterior(f"{path} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CorruptPosterior(f"{path} does not say format {FORMAT!r}.")
    version = metadata.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CorruptPosterior(
            f"{path} has format_version {version!r}; this keras-ntk reads versions 1 to {FORMAT_VERSION}: "
            "upgrade keras-ntk to load it."
        )
    if metadata.get("posterior") not in POSTERIORS:
        raise CorruptPosterior(f"posterior {metadata.get('posterior')!r} in {path} is not one of {POSTERIORS}.")
    for key in REQUIRED_KEYS:
        if key not in metadata:
            raise CorruptPosterior(f"{path} lacks {key!r}.")
    if "has_model" not in metadata:  # written before the field existed
        metadata["has_model"] = (directory / MODEL_FILE).exists()
    if require_model or metadata["has_model"]:
        _regular_file(directory, MODEL_FILE)
    return metadata


def _load_model(directory, metadata):
    import keras

    path = directory / MODEL_FILE
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for a bad archive
        raise CorruptPosterior(f"{path} could not be loaded safely: {error}") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1 or math.prod(model.output_shape[1:]) < 1:
        raise CorruptPosterior(f"{path} must have one input and one output tensor.")
    actual = _model_entries(model)
    for key in MODEL_KEYS:
        if key in metadata and metadata[key] != actual[key]:
            raise CorruptPosterior(
                f"{METADATA_FILE} in {directory} says {key} {metadata[key]!r} but {MODEL_FILE} has {actual[key]!r}: "
                "the metadata does not describe this model; export the posterior again."
            )
    return model


def _check_record(directory, metadata, state):
    """Pop RECORD_KEY from `state` and refuse metadata whose entries disagree with it
    (an absent entry is left to the loaders' defaults for older writers)."""
    if RECORD_KEY not in state:  # written before the record existed
        return
    try:
        recorded = json.loads(str(state.pop(RECORD_KEY)))
    except (ValueError, TypeError) as error:
        raise CorruptPosterior(f"{directory / STATE_FILE} has an unreadable {RECORD_KEY!r}: {error}") from None
    for key, value in sorted(recorded.items()):
        if key in metadata and json.dumps(metadata[key], sort_keys=True) != json.dumps(value, sort_keys=True):
            raise CorruptPosterior(
                f"{METADATA_FILE} in {directory} says {key} {metadata.get(key)!r} but {STATE_FILE} was saved with "
                f"{value!r}: the metadata does not describe this posterior; export the posterior again."
            )


def load(directory, posterior, model=None):
    """Read a posterior directory written by `save`.

    Args:
      posterior: the posterior kind the caller restores (one of POSTERIORS).
      model: the Keras model to use instead of model.keras (None: load model.keras
        when the directory has one).
    Returns:
      a SavedPosterior.
    Raises:
      CorruptPosterior: see `read_metadata`; another posterior kind; model.keras or
        posterior.npz unreadable; metadata that disagrees with the model or with the
        entries posterior.npz was saved with.
    """
    directory = pathlib.Path(directory)
    metadata = read_metadata(directory)
    if metadata["posterior"] != posterior:
        raise CorruptPosterior(f"{directory} holds a {metadata['posterior']!r} posterior, not {posterior!r}.")
    if model is None and metadata["has_model"]:
        model = _load_model(directory, metadata)
    try:
        with np.load(directory / STATE_FILE, allow_pickle=False) as archive:
            state = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise CorruptPosterior(f"{directory / STATE_FILE} could not be read: {error}") from None
    _check_record(directory, metadata, state)
    return SavedPosterior(metadata, state, model)
