"""Image datasets: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from their standard files.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with

* ``x``: float32 scaled to [0, 1], shape ``(N, 28, 28, 1)`` or ``(N, 32, 32, 3)``
  (channels last);
* ``y``: int64, shape ``(N,)``.

Sources are tried in this order, and the first that has the files wins:

1. the explicit ``path`` argument (a file or a directory holding the standard files);
2. the Keras cache, ``$KERAS_HOME/datasets`` or ``~/.keras/datasets`` (or
   ``<cache_dir>/datasets`` when ``cache_dir`` is given), with the names keras.datasets
   uses (``mnist.npz``, ``fashion-mnist/``, ``cifar-10-batches-py/``,
   ``cifar-100-python/``, also inside the ``*-target/`` folders Keras 3 extracts to);
3. Fashion-MNIST only: the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``);
4. with ``download=True`` (the default), a download through ``keras.datasets``,
   attempted only if the download host accepts a TCP connection within 2 seconds.

If all fail a ``FileNotFoundError`` is raised within seconds; its message names the
files to fetch, the URL keras.datasets uses and where to put them. Files that are
found but malformed raise ``ValueError``.
"""

import os

import numpy as np

from . import formats, sources

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


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
            raise ValueError(f"{source}: {split} images have shape {x.shape}, expected (N, 28, 28).")
        if len(x) != len(np.asarray(y).reshape(-1)):
            raise ValueError(f"{source}: {split} has {len(x)} images but {np.size(y)} labels.")
        out.append((_images_to_float(x, (28, 28, 1)), _labels(y)))
    return tuple(out)


def _load_npz(filename):
    with np.load(filename, allow_pickle=False) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(
                f"{filename} lacks arrays {sorted(missing)}; expected the keras.datasets "
                "layout with x_train, y_train, x_test, y_test."
            )
        return _finish_mnist(f["x_train"], f["y_train"], f["x_test"], f["y_test"], filename)


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
        files = formats.find_idx_files(directory)
        if files is not None:
            arrays = {key: formats.read_idx(fname) for key, fname in files.items()}
            return _finish_mnist(
                arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], directory
            )
    return None


def _load_mnist_like(name, path, cache_dir, npz_name, cache_subdir, extra_dirs, keras_module,
                     download):
    cache = sources.keras_cache_dir(cache_dir)
    candidates = ([os.fspath(path)] if path is not None else []) + [cache, *extra_dirs]
    for location in candidates:
        result = _load_mnist_like_from(location, npz_name, cache_subdir)
        if result is not None:
            return result

    def keras_loader():
        import keras

        return getattr(keras.datasets, keras_module).load_data()

    def convert(data):
        (x_train, y_train), (x_test, y_test) = data
        return _finish_mnist(x_train, y_train, x_test, y_test, f"keras.datasets.{keras_module}")

    idx_names = ", ".join(formats.IDX_GZ_NAMES)
    base = sources.KERAS_BASE_URL
    if npz_name == "mnist.npz":
        how = (
            f"Fetch {base}mnist.npz (the file keras.datasets.mnist uses) and put it in "
            f"{cache}/ or pass its path (or its directory) as path=...; the idx files "
            f"{idx_names} in a directory passed as path= work too."
        )
    else:
        how = (
            f"Fetch {idx_names} from {base} (the URLs keras.datasets.{keras_module} uses) "
            f"and put them in {os.path.join(cache, cache_subdir)}/ or in a directory "
            "passed as path=...; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` "
            f"installs them in {DEBIAN_FASHION_MNIST_DIR}."
        )
    return sources.download_or_fail(
        name, "storage.googleapis.com", keras_loader, convert, candidates, how, download
    )


def load_mnist(path=None, cache_dir=None, download=True):
    """Load MNIST.

    Args:
      path: optional ``mnist.npz`` file, or a directory holding ``mnist.npz`` or the
        idx files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``.
      cache_dir: Keras home to search instead of ``$KERAS_HOME`` / ``~/.keras``
        (files are looked up in ``<cache_dir>/datasets``).
      download: False never touches the network (only local files count).

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: x float32 in [0, 1] of shape
      ``(60000, 28, 28, 1)`` / ``(10000, 28, 28, 1)``, y int64 of shape ``(N,)``
      with values 0..9.

    Raises:
      FileNotFoundError: no source has the files and no download could be made.
      ValueError: a file was found but is malformed.
    """
    return _load_mnist_like("MNIST", path, cache_dir, "mnist.npz", "mnist", [], "mnist", download)


def load_fashion_mnist(path=None, cache_dir=None, download=True):
    """Load Fashion-MNIST.

    Sources: ``path`` (a directory with the idx files
    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` or a ``fashion-mnist.npz``
    with keras.datasets' arrays), the Keras cache ``<keras home>/datasets/fashion-mnist/``,
    the Debian package directory ``/usr/share/datasets/fashion-mnist``, then (with
    ``download=True``) a download through keras.datasets when the network is reachable.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: x float32 in [0, 1] of shape
      ``(N, 28, 28, 1)`` (N = 60000 / 10000), y int64 ``(N,)`` with values 0..9.

    Raises:
      FileNotFoundError: no source has the files and no download could be made.
      ValueError: a file was found but is malformed.
    """
    return _load_mnist_like(
        "Fashion-MNIST", path, cache_dir, "fashion-mnist.npz", "fashion-mnist",
        [DEBIAN_FASHION_MNIST_DIR], "fashion_mnist", download,
    )


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


def _load_cifar(name, path, cache_dir, dirname, train_files, test_file, label_key, url,
                keras_loader, download):
    cache = sources.keras_cache_dir(cache_dir)
    candidates = ([os.fspath(path)] if path is not None else []) + [cache]
    for location in candidates:
        if not os.path.isdir(location):
            continue
        for directory in _cifar_dirs(location, dirname):
            files = [os.path.join(directory, f) for f in (*train_files, test_file)]
            if all(os.path.isfile(f) for f in files):
                train = [formats.read_cifar_batch(f, label_key) for f in files[:-1]]
                x_test, y_test = formats.read_cifar_batch(files[-1], label_key)
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
    return sources.download_or_fail(
        name, "www.cs.toronto.edu", keras_loader, convert, candidates, how, download
    )


def load_cifar10(path=None, cache_dir=None, download=True):
    """Load CIFAR-10 from the python-version pickled batches.

    Args:
      path: optional directory ``cifar-10-batches-py/`` (holding ``data_batch_1`` ..
        ``data_batch_5`` and ``test_batch``) or its parent.
      cache_dir: Keras home to search instead of ``$KERAS_HOME`` / ``~/.keras``.
      download: False never touches the network (only local files count).

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
        CIFAR10_URL, keras_loader, download,
    )


def load_cifar100(path=None, label_mode="fine", cache_dir=None, download=True):
    """Load CIFAR-100 from the python-version pickles.

    Args:
      path: optional directory ``cifar-100-python/`` (holding ``train`` and ``test``)
        or its parent.
      label_mode: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
      cache_dir: Keras home to search instead of ``$KERAS_HOME`` / ``~/.keras``.
      download: False never touches the network (only local files count).

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
        f"{label_mode}_labels", CIFAR100_URL, keras_loader, download,
    )
