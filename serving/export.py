"""Export a fitted posterior as one versioned model directory for the server.

Layout (DESIGN.md): BASE/NAME/VERSION/ with VERSION a positive integer, holding
  model.keras      the trained network
  posterior.npz    the posterior state (prior precision, noise, the factors to predict)
  metadata.json    versions, shapes and dtypes, likelihood, parametrization,
                   parameter count, posterior type and structure
The directory is written under BASE/NAME/.export-* and renamed into place, so the
server (which ignores names that are not positive integers) never sees it half
written. NAME must match NAME_PATTERN, so it cannot leave BASE.
"""

import json
import os
import pathlib
import re
import shutil
import tempfile
import time

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")
FILES = ("model.keras", "posterior.npz", "metadata.json")
FORMAT = "keras-ntk posterior"
POSTERIORS = ("laplace", "ntk_gp")


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
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not layer.trainable_weights:
            continue
        kinds.add(getattr(layer, "parametrization", "keras"))
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")


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
    if isinstance(posterior, NTKGP) and posterior.model is None:
        raise ValueError("Only NTK-GPs with an empirical NTK can be exported: build it with NTKGP.empirical.")
    if not isinstance(posterior, (Laplace, NTKGP)):
        raise ValueError(f"Cannot export a {type(posterior).__name__}: expected a Laplace or an NTKGP.")
    model_dir = pathlib.Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        content = staging / "version"
        posterior.save(content)
        model = posterior.model
        _complete_metadata(content, model)
        return _rename_into_place(content, model_dir, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_saved(source_dir, base_dir, name, version=None):
    """Export a directory written by Laplace.save or NTKGP.save (with model.keras):
    it is loaded first (safe mode) to check it, then copied into place atomically."""
    from . import loading

    check_name(name)
    source_dir = pathlib.Path(source_dir)
    posterior, model = loading.load_posterior(source_dir)
    del posterior
    model_dir = pathlib.Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        content = staging / "version"
        content.mkdir()
        for file in FILES:
            shutil.copyfile(source_dir / file, content / file)
        _complete_metadata(content, model)
        return _rename_into_place(content, model_dir, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _complete_metadata(directory, model):
    """Add what the server reports and the save formats do not hold."""
    path = directory / "metadata.json"
    meta = json.loads(path.read_text())
    meta["parametrization"] = parametrization(model)
    meta["input_dtype"] = str(model.inputs[0].dtype)
    meta["output_dtype"] = str(model.outputs[0].dtype)
    meta["parameters"] = int(sum(int(v.numpy().size) for v in model.trainable_variables))
    meta["exported_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(meta, indent=2))
    for file in FILES:
        if not (directory / file).is_file():
            raise ValueError(f"The saved posterior lacks {file}; an exported model needs {', '.join(FILES)}.")


def _rename_into_place(content, model_dir, version):
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be a positive int, got {version!r}.")
        target = model_dir / str(version)
        if target.exists():
            raise FileExistsError(f"{target} exists; versions are immutable, export a new version.")
        os.rename(content, target)
        return target
    for _ in range(100):  # another exporter may take the same number first
        target = model_dir / str((versions_on_disk(model_dir) or [0])[-1] + 1)
        try:
            os.rename(content, target)  # fails on an existing non-empty directory
            return target
        except OSError:
            if not target.exists():
                raise
    raise RuntimeError(f"Could not find a free version number under {model_dir}.")
