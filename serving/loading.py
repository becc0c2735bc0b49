"""Safe loading of one exported version directory (a posterior directory, see
keras_ntk.predictive.posterior_format).

Only the three regular files of the format are read; model.keras is loaded with
Keras safe_mode=True (no lambda or arbitrary code deserialization) and without
compiling; metadata.json is checked before anything else is touched.
"""

import pathlib

from keras_ntk.predictive import posterior_format

CorruptModel = posterior_format.CorruptPosterior  # a ValueError whose message says what is wrong


def read_metadata(directory):
    """metadata.json of a version directory, checked to describe a servable posterior
    (all three files present, model.keras included)."""
    return posterior_format.read_metadata(directory, require_model=True)


def load_posterior(directory):
    """(posterior, model) of a version directory, or CorruptModel saying why not."""
    from keras_ntk.predictive import load_posterior as load

    directory = pathlib.Path(directory)
    read_metadata(directory)
    try:
        posterior = load(directory)
    except CorruptModel:
        raise
    except Exception as error:
        raise CorruptModel(f"{directory / posterior_format.STATE_FILE} could not be restored: {error}") from None
    return posterior, posterior.model
