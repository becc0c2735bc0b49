"""Dataset loaders and continual-learning task streams (numpy only).

Image loaders (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100) read the standard files and
return ``((x_train, y_train), (x_test, y_test))`` with

* ``x``: float32, scaled to [0, 1], shape ``(N, 28, 28, 1)`` or ``(N, 32, 32, 3)``;
* ``y``: int64, shape ``(N,)``.

Sources are tried in this order, and the first that has the files wins:

1. the explicit ``path`` argument (a file or a directory holding the standard files);
2. the Keras cache, ``$KERAS_HOME/datasets`` or ``~/.keras/datasets`` (or
   ``<cache_dir>/datasets`` when ``cache_dir`` is given), with the names keras.datasets
   uses (``mnist.npz``, ``fashion-mnist/``, ``cifar-10-batches-py/``,
   ``cifar-100-python/``, also inside the ``*-target/`` folders Keras 3 extracts to);
3. Fashion-MNIST only: the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``);
4. a download through ``keras.datasets``, attempted only if a 2-second TCP connection
   to the download host succeeds.

If all fail a ``FileNotFoundError`` is raised within seconds; its message names the
files to fetch, the URL keras.datasets uses and where to put them. Files that are
found but malformed raise ``ValueError`` (they are never silently skipped).

Offline tabular data: :func:`load_sklearn` (scikit-learn's bundled sets) and
:func:`load_uci_csv`. Helpers for the experiments: :func:`subset`,
:func:`regression_targets`, and the task streams :func:`permuted_tasks`,
:func:`rotated_tasks`, :func:`split_tasks`.
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import socket
import threading

import numpy as np

__all__ = [
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_sklearn",
    "load_uci_csv",
    "subset",
    "regression_targets",
    "permuted_tasks",
    "rotated_tasks",
    "split_tasks",
    "SKLEARN_DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
]

_KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_GZ_NAMES = [name + ".gz" for name in _IDX_FILES.values()]

_NETWORK_TIMEOUT = 2.0


# --------------------------------------------------------------------------- helpers


def _keras_cache_dir(cache_dir=None):
    """The directory keras.datasets stores downloads in: ``<keras home>/datasets``."""
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_HOME") or os.path.join(
            os.path.expanduser("~"), ".keras"
        )
    return os.path.join(os.path.expanduser(cache_dir), "datasets")


def _network_available(host, port=443, timeout=_NETWORK_TIMEOUT):
    """True if a TCP connection to ``host:port`` succeeds within ``timeout`` seconds.

    DNS resolution is not covered by socket timeouts, so the attempt runs in a daemon
    thread and is abandoned after ``timeout`` seconds whatever it is doing.
    """
    result = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx(filename):
    """Parse an idx file (optionally gzip-compressed) into a numpy array.

    Format: two zero bytes, a dtype code byte, the number of dimensions ``d``, then
    ``d`` big-endian uint32 sizes, then the data in big-endian C order.
    """
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{filename} is not an idx file (bad magic number {raw[:4]!r}); expected "
            "the MNIST idx format, e.g. train-images-idx3-ubyte.gz."
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{filename}: header announces shape {shape} ({count * dtype.itemsize} "
            f"bytes) but the file holds {len(raw) - header} data bytes; it is "
            "truncated or corrupt, fetch it again."
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def _find_idx_files(directory):
    """Map x_train/y_train/x_test/y_test to idx files in ``directory``, or None."""
    found = {}
    for key, base in _IDX_FILES.items():
        dotted = base.replace("-idx", ".idx", 1)  # e.g. train-images.idx3-ubyte
        for name in (base + ".gz", base, dotted + ".gz", dotted):
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                found[key] = candidate
                break
        else:
            return None
    return found


def _images_to_float(x, shape_tail):
    x = np.asarray(x)
    if x.dtype == np.uint8 or x.max(initial=0) > 1.0:
        x = x.astype(np.float32) / np.float32(255.0)
    else:
        x = x.astype(np.float32)
    return x.reshape((x.shape[0],) + shape_tail)


def _labels(y):
    return np.asarray(y).reshape(-1).astype(np.int64)


def _finish_mnist(x_train, y_train, x_test, y_test, source):
    out = []
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        x = np.asarray(x)
        if x.ndim not in (3, 4) or x.shape[1:3] != (28, 28):
            raise ValueError(
                f"{source}: {split} images have shape {x.shape}, expected (N, 28, 28)."
            )
        if len(x) != len(np.asarray(y).reshape(-1)):
            raise ValueError(f"{source}: {split} has {len(x)} images but {np.size(y)} labels.")
        out.append((_images_to_float(x, (28, 28, 1)), _labels(y)))
    return tuple(out)


def _load_mnist_like_from(location, npz_name, subdir):
    """Try ``location`` (file or directory); return the dataset or None if absent."""
    if location is None or not os.path.exists(location):
        return None
    if os.path.isfile(location):
        if location.endswith(".npz"):
            return _load_npz(location)
        location = os.path.dirname(location) or "."
    for directory in (location, os.path.join(location, subdir)):
        if not os.path.isdir(directory):
            continue
        npz = os.path.join(directory, npz_name)
        if os.path.isfile(npz):
            return _load_npz(npz)
        files = _find_idx_files(directory)
        if files is not None:
            arrays = {key: _read_idx(fname) for key, fname in files.items()}
            return _finish_mnist(
                arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                directory,
            )
    return None


def _load_npz(filename):
    with np.load(filename, allow_pickle=False) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(
                f"{filename} lacks arrays {sorted(missing)}; expected the keras.datasets "
                "layout with x_train, y_train, x_test, y_test."
            )
        return _finish_mnist(f["x_train"], f["y_train"], f["x_test"], f["y_test"], filename)


def _download_or_fail(name, host, keras_loader, convert, searched, how_to_fetch):
    """Download through keras.datasets if ``host`` is reachable, else FileNotFoundError."""
    if _network_available(host):
        try:
            return convert(keras_loader())
        except Exception as err:  # network flakiness, bad hash, ...
            reason = f"the download through keras.datasets failed: {err!r}"
    else:
        reason = (
            f"{host}:443 is not reachable within {_NETWORK_TIMEOUT:g} s, so no "
            "download was attempted"
        )
    raise FileNotFoundError(
        f"{name} not found. Looked in: {', '.join(searched)}; {reason}. "
        f"{how_to_fetch}"
    )


def _load_mnist_like(name, path, cache_dir, npz_name, cache_subdir, extra_dirs, keras_module):
    cache = _keras_cache_dir(cache_dir)
    candidates = ([path] if path is not None else []) + [cache, *extra_dirs]
    for location in candidates:
        result = _load_mnist_like_from(os.fspath(location), npz_name, cache_subdir)
        if result is not None:
            return result

    def keras_loader():
        import keras

        return getattr(keras.datasets, keras_module).load_data()

    def convert(data):
        (x_train, y_train), (x_test, y_test) = data
        return _finish_mnist(x_train, y_train, x_test, y_test, f"keras.datasets.{keras_module}")

    idx_names = ", ".join(_IDX_GZ_NAMES)
    if npz_name == "mnist.npz":
        how = (
            f"Fetch {_KERAS_BASE_URL}mnist.npz (the file keras.datasets.mnist uses) and "
            f"put it in {cache}/ or pass its path (or its directory) as path=...; the idx "
            f"files {idx_names} in a directory passed as path= work too."
        )
    else:
        how = (
            f"Fetch {idx_names} from {_KERAS_BASE_URL} (the URLs keras.datasets."
            f"{keras_module} uses) and put them in {os.path.join(cache, cache_subdir)}/ "
            "or in a directory passed as path=...; on Debian/Ubuntu "
            "`apt-get install dataset-fashion-mnist` installs them in "
            f"{DEBIAN_FASHION_MNIST_DIR}."
        )
    searched = [os.fspath(c) for c in candidates]
    return _download_or_fail(name, "storage.googleapis.com", keras_loader, convert, searched, how)


# --------------------------------------------------------------------- image loaders


def load_mnist(path=None, cache_dir=None):
    """Load MNIST.

    Args:
      path: optional ``mnist.npz`` file, or a directory holding ``mnist.npz`` or the
        idx files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``.
      cache_dir: Keras home to search instead of ``$KERAS_HOME`` / ``~/.keras``
        (files are looked up in ``<cache_dir>/datasets``).

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: x float32 in [0, 1] of shape
      ``(60000, 28, 28, 1)`` / ``(10000, 28, 28, 1)``, y int64 of shape ``(N,)``
      with values 0..9.

    Raises:
      FileNotFoundError: no source has the files and the network is unreachable.
      ValueError: a file was found but is malformed.
    """
    return _load_mnist_like("MNIST", path, cache_dir, "mnist.npz", "mnist", [], "mnist")


def load_fashion_mnist(path=None, cache_dir=None):
    """Load Fashion-MNIST.

    Sources: ``path`` (a directory with the idx files
    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` or a ``fashion-mnist.npz``
    with keras.datasets' arrays), the Keras cache ``<keras home>/datasets/fashion-mnist/``,
    the Debian package directory ``/usr/share/datasets/fashion-mnist``, then a
    download through keras.datasets when the network is reachable.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: x float32 in [0, 1] of shape
      ``(N, 28, 28, 1)`` (N = 60000 / 10000), y int64 ``(N,)`` with values 0..9.
    """
    return _load_mnist_like(
        "Fashion-MNIST", path, cache_dir, "fashion-mnist.npz", "fashion-mnist",
        [DEBIAN_FASHION_MNIST_DIR], "fashion_mnist",
    )


def _read_cifar_batch(filename, label_key):
    """Read one python-version CIFAR pickle; returns (x uint8 (N, 32, 32, 3), y (N,))."""
    with open(filename, "rb") as f:
        try:
            batch = pickle.load(f, encoding="bytes")
        except Exception as err:
            raise ValueError(f"{filename} is not a CIFAR python pickle: {err!r}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{filename}: expected a pickled dict, got {type(batch).__name__}.")
    batch = {(k.decode("utf8") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(
            f"{filename}: expected keys 'data' and {label_key!r}, found {sorted(batch)}."
        )
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key]).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{filename}: data has shape {data.shape} for {len(labels)} labels; expected "
            "(N, 3072) uint8 rows (1024 red, 1024 green, 1024 blue values)."
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_result(x_train, y_train, x_test, y_test):
    return (
        (_images_to_float(x_train, (32, 32, 3)), _labels(y_train)),
        (_images_to_float(x_test, (32, 32, 3)), _labels(y_test)),
    )


def _cifar_dirs(location, dirname):
    """Directories under ``location`` that may be the extracted ``dirname``."""
    return [
        location,
        os.path.join(location, dirname),
        os.path.join(location, dirname + "-target", dirname),  # Keras 3 get_file(extract)
    ]


def _load_cifar(name, path, cache_dir, dirname, train_files, test_file, label_key,
                url, keras_loader):
    cache = _keras_cache_dir(cache_dir)
    candidates = ([os.fspath(path)] if path is not None else []) + [cache]
    for location in candidates:
        if not os.path.isdir(location):
            continue
        for directory in _cifar_dirs(location, dirname):
            files = [os.path.join(directory, f) for f in (*train_files, test_file)]
            if all(os.path.isfile(f) for f in files):
                train = [_read_cifar_batch(f, label_key) for f in files[:-1]]
                x_test, y_test = _read_cifar_batch(files[-1], label_key)
                return _cifar_result(
                    np.concatenate([b[0] for b in train]),
                    np.concatenate([b[1] for b in train]),
                    x_test,
                    y_test,
                )

    def convert(data):
        (x_train, y_train), (x_test, y_test) = data
        return _cifar_result(x_train, y_train, x_test, y_test)

    how = (
        f"Fetch {url} (the archive keras.datasets uses), extract it (tar xzf) to get "
        f"the directory {dirname}/ with {', '.join((*train_files, test_file))}, and put "
        f"that directory in {cache}/ or pass it (or its parent) as path=...."
    )
    return _download_or_fail(name, "www.cs.toronto.edu", keras_loader, convert, candidates, how)


def load_cifar10(path=None, cache_dir=None):
    """Load CIFAR-10 from the python-version pickled batches.

    Args:
      path: optional directory ``cifar-10-batches-py/`` (holding ``data_batch_1`` ..
        ``data_batch_5`` and ``test_batch``) or its parent.
      cache_dir: Keras home to search instead of ``$KERAS_HOME`` / ``~/.keras``.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: x float32 in [0, 1] of shape
      ``(50000, 32, 32, 3)`` / ``(10000, 32, 32, 3)`` (channels last), y int64
      ``(N,)`` with values 0..9.
    """

    def keras_loader():
        import keras

        return keras.datasets.cifar10.load_data()

    return _load_cifar(
        "CIFAR-10", path, cache_dir, "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels",
        _CIFAR10_URL, keras_loader,
    )


def load_cifar100(path=None, label_mode="fine", cache_dir=None):
    """Load CIFAR-100 from the python-version pickles.

    Args:
      path: optional directory ``cifar-100-python/`` (holding ``train`` and ``test``)
        or its parent.
      label_mode: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
      cache_dir: Keras home to search instead of ``$KERAS_HOME`` / ``~/.keras``.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: x float32 in [0, 1] of shape
      ``(50000, 32, 32, 3)`` / ``(10000, 32, 32, 3)``, y int64 ``(N,)`` with values
      0..99 (fine) or 0..19 (coarse).
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}.")

    def keras_loader():
        import keras

        return keras.datasets.cifar100.load_data(label_mode=label_mode)

    return _load_cifar(
        "CIFAR-100", path, cache_dir, "cifar-100-python", ["train"], "test",
        f"{label_mode}_labels", _CIFAR100_URL, keras_loader,
    )


# ----------------------------------------------------------------------- tabular data

SKLEARN_DATASETS = ("digits", "wine", "breast_cancer", "diabetes", "iris")


def _standardize(x):
    """Zero mean / unit variance per column (constant columns become exactly 0)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return ((x - mean) / std).astype(np.float32)


def load_sklearn(name):
    """Load one of scikit-learn's bundled datasets (no download).

    Args:
      name: one of ``"digits"``, ``"wine"``, ``"breast_cancer"``, ``"diabetes"``,
        ``"iris"``.

    Returns:
      ``(x, y)``: x float32 ``(N, d)``, each feature standardized to zero mean and
      unit variance (features that are constant, e.g. digits' border pixels, become
      0); y int64 ``(N,)`` class labels 0..C-1, or for ``"diabetes"`` the float32
      ``(N,)`` regression target (unscaled).
    """
    if name not in SKLEARN_DATASETS:
        raise ValueError(
            f"Unknown scikit-learn dataset {name!r}; expected one of {', '.join(SKLEARN_DATASETS)}."
        )
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    if name == "diabetes":
        y = np.asarray(y, dtype=np.float32)
    else:
        y = np.asarray(y).astype(np.int64)
    return _standardize(x), y


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_uci_csv(path, target_column=-1, header="infer", delimiter=None, max_classes=20):
    """Load a numeric CSV (UCI style) into features and targets.

    Args:
      path: the CSV file. Blank lines are ignored.
      target_column: index (negative counts from the end) or, with a header, the
        name of the target column.
      header: ``"infer"`` (the first row is a header if some column is non-numeric
        there and numeric in the second row), ``True`` or ``False``/``None``.
      delimiter: field separator; ``None`` sniffs among ``,`` ``;`` tab, and falls
        back to whitespace-separated fields when the file has none of them.
      max_classes: integral numeric targets with at most this many distinct values
        are treated as class labels.

    Returns:
      ``(x, y)``: x float32 ``(N, d)`` (the other columns, in file order, not
      standardized); y int64 ``(N,)`` labels 0..C-1 (classes numbered in sorted
      order of their original values) when the target is non-numeric or integral
      with at most ``max_classes`` values, else float32 ``(N,)``.

    Raises:
      ValueError: a feature cell is not a number (the message names row and column),
        rows have different lengths, or the file has no data rows.
    """
    with open(path, newline="") as f:
        text = f.read()
    lines = [line for line in text.splitlines() if line.strip()]
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = None if not any(c in text for c in ",;\t") else ","
    if delimiter is None:
        rows = [line.split() for line in lines]
    else:
        rows = [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    if header == "infer":
        header = len(rows) > 1 and any(
            not _is_number(a) and _is_number(b) for a, b in zip(rows[0], rows[1])
        )
    names = rows[0] if header else None
    data = rows[1:] if header else rows
    if not data:
        raise ValueError(f"{path} has a header but no data rows.")
    width = len(data[0])
    for i, row in enumerate(data):
        if len(row) != width:
            raise ValueError(
                f"{path}: data row {i + 1} has {len(row)} fields, the first has {width}."
            )
    if width < 2:
        raise ValueError(f"{path}: need at least one feature and one target column.")
    if isinstance(target_column, str):
        if names is None or target_column not in names:
            raise ValueError(f"{path}: no column named {target_column!r} (header: {names}).")
        target_column = names.index(target_column)
    if not -width <= target_column < width:
        raise ValueError(f"target_column={target_column} out of range for {width} columns.")
    target_column %= width
    feature_cols = [j for j in range(width) if j != target_column]
    x = np.empty((len(data), len(feature_cols)), dtype=np.float64)
    for i, row in enumerate(data):
        for k, j in enumerate(feature_cols):
            try:
                x[i, k] = float(row[j])
            except ValueError:
                col = f"{j} ({names[j]!r})" if names else str(j)
                raise ValueError(
                    f"{path}: non-numeric feature {row[j]!r} in data row {i + 1}, column "
                    f"{col}. load_uci_csv expects numeric features; encode categorical "
                    "features or missing values ('?') before loading."
                ) from None
    raw_y = [row[target_column] for row in data]
    if all(_is_number(v) for v in raw_y):
        values = np.array([float(v) for v in raw_y])
        uniques = np.unique(values)
        if np.all(values == np.round(values)) and len(uniques) <= max_classes:
            y = np.searchsorted(uniques, values).astype(np.int64)
        else:
            y = values.astype(np.float32)
    else:
        _, y = np.unique(np.array(raw_y), return_inverse=True)
        y = y.reshape(-1).astype(np.int64)
    return x.astype(np.float32), y


# --------------------------------------------------------------------- experiment aids


def subset(x, y, size, seed=0):
    """A deterministic random subset of ``size`` examples, drawn without replacement.

    The indices are the first ``size`` entries of
    ``np.random.default_rng(seed).permutation(N)``, so the same seed gives the same
    subset, and a smaller subset is a prefix of a larger one with the same seed.

    Args:
      x: array ``(N, ...)``; y: array ``(N, ...)`` or None.
    Returns:
      ``(x[idx], y[idx])`` with ``size`` rows, dtypes unchanged (``y`` None stays None).
    """
    x = np.asarray(x)
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}.")
    if int(size) != size or not 0 <= size <= n:
        raise ValueError(
            f"size must be an integer in [0, {n}] (the number of examples), got {size}."
        )
    idx = np.random.default_rng(seed).permutation(n)[: int(size)]
    return x[idx], (None if y is None else np.asarray(y)[idx])


def regression_targets(y, num_classes):
    """Centered one-hot targets for classification as regression (experiment E2).

    Args:
      y: integer labels ``(N,)`` in ``0..num_classes-1``.
    Returns:
      float32 ``(N, num_classes)``: ``one_hot(y) - 1/num_classes`` (rows sum to 0).
    """
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be integer labels of shape (N,), got {y.dtype} {y.shape}.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}.")
    targets = np.full((len(y), num_classes), -1.0 / num_classes, dtype=np.float32)
    targets[np.arange(len(y)), y] += 1.0
    return targets


def permuted_tasks(x, y, num_tasks, seed=0):
    """Permuted-MNIST style task stream.

    Task 0 is ``(x, y)`` unchanged; task ``t >= 1`` applies one fixed random
    permutation of the pixel positions to every example. For images ``(N, H, W, C)``
    the ``H*W`` positions are permuted (channels move together); for ``(N, H, W)`` or
    flat ``(N, d)`` inputs, all positions/features. The permutations depend only on
    ``seed`` and the number of positions, so calling this once on the training split
    and once on the test split with the same ``seed`` gives the same tasks.

    Returns:
      list of ``num_tasks`` pairs ``(x_t, y)``, ``x_t`` with the shape and dtype of
      ``x``; ``y`` is passed through unchanged.
    """
    x = np.asarray(x)
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
    if x.ndim < 2:
        raise ValueError(f"x must be (N, ...) with at least one feature axis, got {x.shape}.")
    n = len(x)
    channels_last = x.ndim == 4
    flat = x.reshape(n, -1, x.shape[-1]) if channels_last else x.reshape(n, -1)
    rng = np.random.default_rng(seed)
    tasks = [(x, y)]
    for _ in range(1, num_tasks):
        perm = rng.permutation(flat.shape[1])
        tasks.append((flat[:, perm].reshape(x.shape), y))
    return tasks


def _rotate(x, angle):
    """Rotate images ``(N, H, W[, C])`` counterclockwise by ``angle`` degrees about the
    image centre (bilinear, zero outside); ``np.rot90`` for 90 degrees on square images."""
    h, w = x.shape[1], x.shape[2]
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
    di, dj = np.meshgrid(np.arange(h) - ci, np.arange(w) - cj, indexing="ij")
    src_i = cos * di + sin * dj + ci
    src_j = -sin * di + cos * dj + cj
    for c in (src_i, src_j):  # make multiples of 90 degrees exact
        near = np.abs(c - np.round(c)) < 1e-6
        c[near] = np.round(c[near])
    i0, j0 = np.floor(src_i).astype(int), np.floor(src_j).astype(int)
    fi, fj = src_i - i0, src_j - j0
    out = np.zeros(x.shape, dtype=np.result_type(x.dtype, np.float32))
    for ii, wi in ((i0, 1 - fi), (i0 + 1, fi)):
        for jj, wj in ((j0, 1 - fj), (j0 + 1, fj)):
            weight = wi * wj * ((ii >= 0) & (ii < h) & (jj >= 0) & (jj < w))
            if not np.any(weight):
                continue
            vals = x[:, np.clip(ii, 0, h - 1), np.clip(jj, 0, w - 1)]
            weight = weight.reshape((1, h, w) + (1,) * (x.ndim - 3))
            out += (weight * vals).astype(out.dtype)
    return out


def rotated_tasks(x, y, angles):
    """Rotated-MNIST style task stream: one task per angle.

    Args:
      x: images ``(N, H, W)`` or ``(N, H, W, C)``.
      angles: rotation angles in degrees, counterclockwise (the direction of
        ``np.rot90``), about the image centre; bilinear interpolation, zero fill.
    Returns:
      list of ``(x_angle, y)``: ``x_angle`` has the shape of ``x`` and dtype float32
      (float64 if ``x`` is float64); ``y`` is passed through unchanged.
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be images (N, H, W) or (N, H, W, C), got shape {x.shape}.")
    return [(_rotate(x, float(a)), y) for a in angles]


def split_tasks(x, y, classes_per_task, remap_labels=False):
    """Split-MNIST / Split-CIFAR task stream: consecutive groups of classes.

    The sorted distinct labels of ``y`` are cut into consecutive groups of
    ``classes_per_task`` (e.g. CIFAR-100 with 10 -> 10 tasks of 10 classes); task
    ``k`` holds the examples whose label is in group ``k``, in their original order.

    Args:
      x: array ``(N, ...)``; y: integer labels ``(N,)``.
      remap_labels: False (default) keeps the global labels; True maps group ``k``'s
        classes to ``0..classes_per_task-1`` (multi-head setting).
    Returns:
      list of ``(x_k, y_k)``; ``y_k`` int64.
    Raises:
      ValueError: the number of classes is not a multiple of ``classes_per_task``.
    """
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}.")
    classes = np.unique(y)
    if classes_per_task < 1 or len(classes) % classes_per_task:
        raise ValueError(
            f"{len(classes)} classes cannot be split into groups of {classes_per_task}; "
            "choose classes_per_task dividing the number of classes."
        )
    tasks = []
    for start in range(0, len(classes), classes_per_task):
        group = classes[start : start + classes_per_task]
        mask = np.isin(y, group)
        y_k = np.searchsorted(group, y[mask]) if remap_labels else y[mask]
        tasks.append((x[mask], y_k.astype(np.int64)))
    return tasks
