"""Classification datasets for bandits, as (x (N, d) float32, y (N,) int64 labels 0..A-1).

Bundled (no download): scikit-learn's "digits" (10 arms, d = 64), "wine" (3, 13),
"breast_cancer" (2, 30), through `keras_ntk.data.load_sklearn` (standardized
features). Images: "mnist" and "fashion_mnist" (10 arms) through
`keras_ntk.data.load_mnist` / `load_fashion_mnist` (the Keras cache, the Debian
Fashion-MNIST package, or a download when the network is reachable), flattened to
784 pixels in [0, 1], or to (28 / p)^2 means of p x p blocks with `image_pool` p.

The UCI suite of the neural-bandit papers, read from local files (searched in
`data_dir`, then the Keras cache ``~/.keras/datasets`` and its ``uci/``
folder; a missing file raises FileNotFoundError naming it and where to get it):

  covertype  covtype.data            7 arms, 54 numeric features
  shuttle    shuttle.trn (statlog)   7 arms, 9 numeric features
  magic      magic04.data            2 arms, 10 numeric features
  mushroom   agaricus-lepiota.data   2 arms, 22 categorical features, one-hot (117)
  adult      adult.data              2 arms, 6 numeric + 8 categorical features, one-hot

Numeric features are standardized per column; a categorical feature becomes one
indicator per value seen (a missing "?" is a value of its own).
"""

import os

import numpy as np

import keras_ntk

SKLEARN = ("digits", "wine", "breast_cancer")
IMAGES = ("mnist", "fashion_mnist")
_UCI_BASE = "https://archive.ics.uci.edu/ml/machine-learning-databases/"

# name -> (file, download URL, how to unpack, label column, categorical columns or None for all-numeric)
UCI = {
    "covertype": ("covtype.data", _UCI_BASE + "covtype/covtype.data.gz", "gunzip covtype.data.gz", -1, ()),
    "shuttle": ("shuttle.trn", _UCI_BASE + "statlog/shuttle/shuttle.trn.Z", "uncompress shuttle.trn.Z", -1, ()),
    "magic": ("magic04.data", _UCI_BASE + "magic/magic04.data", None, -1, ()),
    "mushroom": ("agaricus-lepiota.data", _UCI_BASE + "mushroom/agaricus-lepiota.data", None, 0, "all"),
    "adult": ("adult.data", _UCI_BASE + "adult/adult.data", None, -1, (1, 3, 5, 6, 7, 8, 9, 13)),
}
DATASETS = SKLEARN + IMAGES + tuple(UCI)


def _find(file, data_dir):
    cache = keras_ntk.data.sources.keras_cache_dir()
    places = ([data_dir] if data_dir else []) + [cache, os.path.join(cache, "uci")]
    for place in places:
        path = os.path.join(os.path.expanduser(place), file)
        if os.path.isfile(path):
            return path
    return places


def _uci_path(name, data_dir):
    file, url, unpack, _, _ = UCI[name]
    found = _find(file, data_dir)
    if isinstance(found, str):
        return found
    unpacking = f", unpack it ({unpack})" if unpack else ""
    raise FileNotFoundError(
        f"The {name} bandit needs the UCI file {file}, not found in {', '.join(found)}. "
        f"Fetch {url}{unpacking} and put {file} in one of those directories "
        f"(or pass its directory as data_dir / --data-dir)."
    )


def _one_hot_table(path, label_column, categorical):
    """Features of a delimited table with categorical columns: numeric ones
    standardized, categorical ones as indicators; labels numbered in sorted order."""
    _, rows = keras_ntk.data.formats.read_delimited(path, header=False, delimiter=",")
    table = np.array(rows, dtype=object)
    label_column %= table.shape[1]
    _, y = np.unique(table[:, label_column].astype(str), return_inverse=True)
    columns = [j for j in range(table.shape[1]) if j != label_column]
    categorical = set(columns) if categorical == "all" else set(categorical)
    parts = []
    for j in columns:
        values = table[:, j].astype(str)
        if j in categorical:
            levels = np.unique(values)
            parts.append((values[:, None] == levels[None, :]).astype(np.float32))
        else:
            try:
                numbers = values.astype(np.float64)[:, None]
            except ValueError:
                raise ValueError(f"{path}: column {j} should be numeric, found e.g. {values[0]!r}.") from None
            parts.append(keras_ntk.data.tabular.standardize(numbers))
    return np.concatenate(parts, axis=1).astype(np.float32), y.astype(np.int64)


def _pool(images, pool):
    n, h, w = images.shape[:3]
    if h % pool or w % pool:
        raise ValueError(f"image_pool {pool} must divide the image size {h} x {w}.")
    return images[..., 0].reshape(n, h // pool, pool, w // pool, pool).mean(axis=(2, 4)).reshape(n, -1)


def load(name, data_dir=None, image_pool=1):
    """The dataset `name` (module docstring) as (x (N, d) float32, y (N,) int64).

    Args:
      name: one of DATASETS.
      data_dir: where the UCI files are (searched first).
      image_pool: images only, the side p of the pixel blocks averaged (1 keeps 784 pixels).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown bandit dataset {name!r}; expected one of {', '.join(DATASETS)}.")
    if isinstance(image_pool, bool) or not isinstance(image_pool, int) or image_pool < 1:
        raise ValueError(f"image_pool must be a positive int, got {image_pool!r}.")
    if name in SKLEARN:
        return keras_ntk.data.load_sklearn(name)
    if name in IMAGES:
        (x, y), _ = getattr(keras_ntk.data, f"load_{name}")()
        return _pool(x, image_pool).astype(np.float32), y.astype(np.int64)
    path = _uci_path(name, data_dir)
    _, _, _, label_column, categorical = UCI[name]
    if categorical:
        return _one_hot_table(path, label_column, categorical)
    x, y = keras_ntk.data.load_uci_csv(path, target_column=label_column, header=False)
    return keras_ntk.data.tabular.standardize(x), y
