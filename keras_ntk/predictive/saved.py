"""Load any posterior directory: a Laplace or an NTK-GP, by its metadata."""

from keras_ntk.predictive import posterior_format
from keras_ntk.predictive.gp import NTKGP
from keras_ntk.predictive.laplace import Laplace

CLASSES = {"laplace": Laplace, "ntk_gp": NTKGP}


def load_posterior(directory, model=None):
    """The Laplace or NTKGP saved in `directory` (see posterior_format).

    Args:
      model: the Keras model to use instead of the saved model.keras.
    Raises:
      posterior_format.CorruptPosterior (a ValueError): not a posterior directory.
    """
    metadata = posterior_format.read_metadata(directory)
    return CLASSES[metadata["posterior"]].load(directory, model=model)
