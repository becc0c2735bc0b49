"""Export a fitted posterior as one versioned model directory for the server.

Layout: BASE/NAME/VERSION/ with VERSION a positive integer, holding one posterior
directory (keras_ntk.predictive.posterior_format: model.keras, posterior.npz,
metadata.json) whose metadata also carries what the server reports: the
network's parametrization and the export time. The posterior is saved under
BASE/NAME/.export-*.tmp and renamed into place by a rename that never replaces
a version, so the server (which ignores names that are not positive integers)
never sees it half written. NAME must match NAME_PATTERN, so it cannot leave BASE.
"""

import datetime
import pathlib
import re

import keras

from keras_ntk import atomic, keras_internals
from keras_ntk.predictive import posterior_format

from . import loading

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")
FILES = posterior_format.FILES


def check_name(name):
    """Raise ValueError unless `name` is a safe model name (one path component)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"Model name {name!r} is not allowed: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit."
        )
    return name


def versions_on_disk(model_dir):
    """Sorted integer versions of the version directories under BASE/NAME."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if VERSION_PATTERN.match(p.name) and p.is_dir())


def parametrization(model):
    """"ntk" or "standard" when every parametrized layer of `model` (keras_ntk
    layers; plain Keras layers count as "keras") agrees, "mixed" otherwise."""
    kinds = set()
    for layer in keras_internals.walk_layers(model):
        if isinstance(layer, keras.Model) or not layer.trainable_weights:
            continue
        kinds.add(getattr(layer, "parametrization", "keras"))
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")


def _check_version(version):
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be a positive int, got {version!r}.")


def export(posterior, base_dir, name, version=None):
    """Write a fitted `Laplace` or `NTKGP.empirical` as BASE/NAME/VERSION/, atomically.

    Args:
      posterior: a fitted keras_ntk.predictive.Laplace, or an NTKGP built by
        NTKGP.empirical (the server needs the network).
      base_dir: the server's model base directory (created if missing).
      name: model name (NAME_PATTERN).
      version: positive int; None takes one more than the largest version on disk.
    Returns:
      the pathlib.Path of the version directory.
    Raises:
      ValueError: bad name or version, or a posterior that cannot be served.
      FileExistsError: `version` exists already (versions are immutable).
    """
    from keras_ntk.predictive import NTKGP, Laplace

    check_name(name)
    _check_version(version)
    if not isinstance(posterior, (Laplace, NTKGP)):
        raise ValueError(f"Cannot export a {type(posterior).__name__}: expected a Laplace or an NTKGP.")
    if posterior.model is None:
        raise ValueError("Only NTK-GPs with an empirical NTK can be exported: build it with NTKGP.empirical.")
    model_dir = pathlib.Path(base_dir) / name
    if version is not None and (model_dir / str(version)).exists():
        raise FileExistsError(f"{model_dir / str(version)} exists; versions are immutable, export a new version.")
    serving_entries = {
        "parametrization": parametrization(posterior.model),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with atomic.staging_directory(model_dir, "export") as staging:
        content = staging / "version"
        posterior.save(content, metadata=serving_entries)
        return _rename_into_place(content, model_dir, version)


def export_saved(source_dir, base_dir, name, version=None):
    """Export a directory written by Laplace.save or NTKGP.save (with model.keras):
    it is loaded first (safe mode, checked) and then exported as `export` does."""
    check_name(name)
    posterior, _ = loading.load_posterior(pathlib.Path(source_dir))
    return export(posterior, base_dir, name, version)


def _rename_into_place(content, model_dir, version):
    if version is not None:
        target = model_dir / str(version)
        try:
            return atomic.rename_new_directory(content, target)
        except FileExistsError:
            raise FileExistsError(f"{target} exists; versions are immutable, export a new version.") from None
    for _ in range(100):  # another exporter may take the same number first
        target = model_dir / str((versions_on_disk(model_dir) or [0])[-1] + 1)
        try:
            return atomic.rename_new_directory(content, target)
        except FileExistsError:
            continue
    raise RuntimeError(f"Could not find a free version number under {model_dir}.")
