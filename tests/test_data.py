"""Tests for keras_ntk.data: loaders against files written here with numpy, task streams
against independent numpy / scipy references."""

import gzip
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from keras_ntk import data
from keras_ntk.data import images, sources


# ----------------------------------------------------------------- file writers


def _write_idx(filename, array):
    """Write an idx file independently of the parser: magic, big-endian dims, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    payload += struct.pack(">" + "I" * array.ndim, *array.shape)
    payload += array.tobytes()
    opener = gzip.open if str(filename).endswith(".gz") else open
    with opener(filename, "wb") as f:
        f.write(payload)


def _fake_mnist(rng, n_train=7, n_test=5):
    return (
        rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n_train).astype(np.uint8),
        rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n_test).astype(np.uint8),
    )


def _write_idx_dir(directory, arrays, gz):
    directory.mkdir(parents=True, exist_ok=True)
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    for name, array in zip(names, arrays):
        _write_idx(directory / (name + (".gz" if gz else "")), array)


def _assert_mnist_equal(result, arrays):
    (x_train, y_train), (x_test, y_test) = result
    xr, yr, xt, yt = arrays
    for x, ref in ((x_train, xr), (x_test, xt)):
        assert x.dtype == np.float32
        assert x.shape == (len(ref), 28, 28, 1)
        assert x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_array_equal(x[..., 0], ref.astype(np.float32) / np.float32(255))
    for y, ref in ((y_train, yr), (y_test, yt)):
        assert y.dtype == np.int64 and y.shape == (len(ref),)
        np.testing.assert_array_equal(y, ref.astype(np.int64))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Keras home: only explicit paths can be found."""
    calls = []

    def no_network(host, *args, **kwargs):
        calls.append(host)
        return False

    monkeypatch.setattr(sources, "network_available", no_network)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    return calls


# ------------------------------------------------------------------ idx / MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_through_path(tmp_path, offline, gz):
    arrays = _fake_mnist(np.random.default_rng(1))
    _write_idx_dir(tmp_path / "mnist", arrays, gz)
    _assert_mnist_equal(data.load_mnist(path=tmp_path / "mnist"), arrays)
    # a file inside the directory is accepted too
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    _assert_mnist_equal(data.load_mnist(path=str(tmp_path / "mnist" / name)), arrays)
    assert offline == []  # found locally: the network is never consulted


def test_fashion_mnist_idx_files_through_path(tmp_path, offline):
    arrays = _fake_mnist(np.random.default_rng(2), n_train=4, n_test=3)
    _write_idx_dir(tmp_path / "fm", arrays, gz=True)
    _assert_mnist_equal(data.load_fashion_mnist(path=str(tmp_path / "fm")), arrays)


def test_mnist_npz_through_path(tmp_path, offline):
    arrays = _fake_mnist(np.random.default_rng(3))
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
    _assert_mnist_equal(data.load_mnist(path=str(npz)), arrays)
    _assert_mnist_equal(data.load_mnist(path=str(tmp_path)), arrays)


def test_corrupt_idx_file_is_an_error_not_skipped(tmp_path, offline):
    arrays = _fake_mnist(np.random.default_rng(4))
    _write_idx_dir(tmp_path, arrays, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
        data.load_mnist(path=str(tmp_path))


def test_keras_cache_is_used_via_home(tmp_path, offline):
    arrays = _fake_mnist(np.random.default_rng(5))
    cache = tmp_path / "home" / ".keras" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", x_train=arrays[0], y_train=arrays[1],
             x_test=arrays[2], y_test=arrays[3])
    _assert_mnist_equal(data.load_mnist(), arrays)
    # an explicit path wins over the cache
    other = _fake_mnist(np.random.default_rng(6), n_train=3, n_test=2)
    _write_idx_dir(tmp_path / "explicit", other, gz=True)
    _assert_mnist_equal(data.load_mnist(path=str(tmp_path / "explicit")), other)
    # a path without the files falls through to the cache
    (tmp_path / "empty").mkdir()
    _assert_mnist_equal(data.load_mnist(path=str(tmp_path / "empty")), arrays)


def test_keras_cache_dir_argument_and_fashion_subdir(tmp_path, offline):
    arrays = _fake_mnist(np.random.default_rng(7), n_train=2, n_test=2)
    _write_idx_dir(tmp_path / "kh" / "datasets" / "fashion-mnist", arrays, gz=True)
    _assert_mnist_equal(data.load_fashion_mnist(cache_dir=str(tmp_path / "kh")), arrays)


# ------------------------------------------------------------------------ CIFAR


def _cifar_batch(rng, n, label_key, num_classes):
    return {
        b"batch_label": b"test",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
    }


def _cifar_images_reference(rows):
    """Channel-major rows -> (N, 32, 32, 3) by explicit per-channel reshaping."""
    red, green, blue = (rows[:, k * 1024 : (k + 1) * 1024].reshape(-1, 32, 32) for k in range(3))
    return np.stack([red, green, blue], axis=-1).astype(np.float32) / np.float32(255)


def test_cifar10_pickles_through_path(tmp_path, offline):
    rng = np.random.default_rng(8)
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    batches = [_cifar_batch(rng, 2 + i, b"labels", 10) for i in range(5)]
    for i, batch in enumerate(batches, start=1):
        with open(directory / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f)
    test_batch = _cifar_batch(rng, 3, b"labels", 10)
    with open(directory / "test_batch", "wb") as f:
        pickle.dump(test_batch, f)

    for path in (directory, tmp_path):  # the batches directory or its parent
        (x_train, y_train), (x_test, y_test) = data.load_cifar10(path=str(path))
        rows = np.concatenate([b[b"data"] for b in batches])
        assert x_train.shape == (20, 32, 32, 3) and x_train.dtype == np.float32
        assert x_test.shape == (3, 32, 32, 3) and x_test.dtype == np.float32
        np.testing.assert_array_equal(x_train, _cifar_images_reference(rows))
        np.testing.assert_array_equal(x_test, _cifar_images_reference(test_batch[b"data"]))
        assert 0.0 <= x_train.min() and x_train.max() <= 1.0
        assert y_train.dtype == np.int64 and y_test.dtype == np.int64
        np.testing.assert_array_equal(y_train, sum((b[b"labels"] for b in batches), []))
        np.testing.assert_array_equal(y_test, test_batch[b"labels"])


def test_cifar100_pickles_fine_and_coarse_from_keras3_cache_layout(tmp_path, offline):
    rng = np.random.default_rng(9)
    cache = tmp_path / "home" / ".keras" / "datasets"
    directory = cache / "cifar-100-python-target" / "cifar-100-python"
    directory.mkdir(parents=True)
    splits = {}
    for name, n in (("train", 6), ("test", 4)):
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"fine_labels": [int(v) for v in rng.integers(0, 100, size=n)],
            b"coarse_labels": [int(v) for v in rng.integers(0, 20, size=n)],
        }
        splits[name] = batch
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    for mode in ("fine", "coarse"):
        (x_train, y_train), (x_test, y_test) = data.load_cifar100(label_mode=mode)
        np.testing.assert_array_equal(x_train, _cifar_images_reference(splits["train"][b"data"]))
        np.testing.assert_array_equal(x_test, _cifar_images_reference(splits["test"][b"data"]))
        np.testing.assert_array_equal(y_train, splits["train"][f"{mode}_labels".encode()])
        np.testing.assert_array_equal(y_test, splits["test"][f"{mode}_labels".encode()])
        assert y_train.dtype == np.int64
    with pytest.raises(ValueError, match="label_mode"):
        data.load_cifar100(label_mode="medium")


# --------------------------------------------------------- missing files, no network


@pytest.mark.parametrize(
    "loader, filename, url",
    [
        (data.load_mnist, "mnist.npz",
         "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"),
        (data.load_cifar10, "cifar-10-batches-py",
         "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        (data.load_cifar100, "cifar-100-python",
         "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ],
)
def test_missing_files_without_network_fail_fast(tmp_path, offline, loader, filename, url):
    empty = tmp_path / "empty"
    empty.mkdir()
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        loader(path=str(empty))
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert filename in message and url in message
    assert str(tmp_path / "home" / ".keras" / "datasets") in message  # where to put it
    assert len(offline) == 1  # the network was checked once, no download attempted


def test_fashion_mnist_missing_names_idx_files(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist(path=str(tmp_path))
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "https://storage.googleapis.com/tensorflow/tf-keras-datasets/" in message
    assert "dataset-fashion-mnist" in message


def test_download_false_fails_without_probing_the_network(tmp_path, offline):
    with pytest.raises(FileNotFoundError, match=r"download=False.*mnist\.npz"):
        data.load_mnist(path=str(tmp_path), download=False)
    assert offline == []


@pytest.fixture
def no_threads(monkeypatch):
    """Starting a thread fails: the code under test must not need one."""

    def refuse(self):
        raise AssertionError("the network probe started a thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)


@pytest.fixture
def listener():
    """A TCP socket listening on 127.0.0.1; yields its port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def _closed_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


def test_network_probe_without_a_thread(no_threads, listener, monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert sources.network_available("127.0.0.1", port=listener, timeout=1.0) is True
    start = time.monotonic()
    assert sources.network_available("127.0.0.1", port=_closed_port(), timeout=1.0) is False
    assert time.monotonic() - start < 3.0


def test_network_probe_goes_to_the_https_proxy(no_threads, listener, monkeypatch):
    """With a proxy configured the download would connect to it, so the probe does too:
    an unresolvable host counts as reachable through a listening proxy."""
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{listener}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert sources.network_available("host.invalid", timeout=1.0) is True
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{_closed_port()}")
    assert sources.network_available("host.invalid", timeout=1.0) is False


def test_importing_the_data_package_loads_no_tensorflow():
    code = (
        "import sys, keras_ntk.data, keras_ntk.data.formats, keras_ntk.data.sources, "
        "keras_ntk.data.images, keras_ntk.data.tabular, keras_ntk.data.streams, "
        "keras_ntk.data.subsets; "
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# ---------------------------------------------------------- Debian Fashion-MNIST


def test_fashion_mnist_from_the_debian_directory_layout(tmp_path, offline, monkeypatch):
    """The Debian package's layout (gzip idx files in one directory), written here."""
    arrays = _fake_mnist(np.random.default_rng(13), n_train=6, n_test=4)
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    _write_idx_dir(debian, arrays, gz=True)
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST_DIR", str(debian))
    _assert_mnist_equal(data.load_fashion_mnist(), arrays)
    _assert_mnist_equal(data.load_fashion_mnist(download=False), arrays)
    # the Keras cache comes before the Debian directory
    cached = _fake_mnist(np.random.default_rng(14), n_train=3, n_test=2)
    _write_idx_dir(tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist", cached, gz=False)
    _assert_mnist_equal(data.load_fashion_mnist(), cached)
    assert offline == []


@pytest.mark.debian_data
def test_debian_fashion_mnist_package(offline):
    """The real files of the Debian package dataset-fashion-mnist (CI installs it)."""
    directory = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(directory):
        pytest.fail(
            f"{directory} is missing: install the Debian package with "
            "`apt-get install -y dataset-fashion-mnist` (the CI script .ci/run does)."
        )
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist(download=False)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # independent reading of two files with gzip + numpy (idx headers are 8 and 16 bytes)
    with gzip.open(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"), "rb") as f:
        raw = f.read()
    np.testing.assert_array_equal(y_test, np.frombuffer(raw[8:], dtype=np.uint8))
    with gzip.open(os.path.join(directory, "t10k-images-idx3-ubyte.gz"), "rb") as f:
        raw = f.read()
    pixels = np.frombuffer(raw[16:], dtype=np.uint8).reshape(10000, 28, 28)
    np.testing.assert_array_equal(x_test[..., 0], pixels.astype(np.float32) / np.float32(255))


# ------------------------------------------------------------------- tabular data


@pytest.mark.parametrize(
    "name, shape, classes",
    [("digits", (1797, 64), 10), ("wine", (178, 13), 3), ("breast_cancer", (569, 30), 2),
     ("diabetes", (442, 10), None), ("iris", (150, 4), 3)],
)
def test_load_sklearn(name, shape, classes):
    import sklearn.datasets

    x, y = data.load_sklearn(name)
    raw_x, raw_y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    assert x.shape == shape and x.dtype == np.float32 and y.shape == (shape[0],)
    varying = raw_x.std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0, dtype=np.float64)[varying], 1.0, atol=1e-5)
    np.testing.assert_array_equal(x[:, ~varying], 0.0)
    # standardization is an affine map per feature of the raw data
    col = int(np.argmax(varying))
    ref = (raw_x[:, col] - raw_x[:, col].mean()) / raw_x[:, col].std()
    np.testing.assert_allclose(x[:, col], ref, rtol=1e-5, atol=1e-5)
    if classes is None:
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, raw_y, rtol=1e-6)
    else:
        assert y.dtype == np.int64 and set(np.unique(y)) == set(range(classes))


def test_load_sklearn_unknown_name():
    with pytest.raises(ValueError, match="digits.*iris"):
        data.load_sklearn("mnist")


def test_load_uci_csv_string_labels(tmp_path):
    rows = [("1.5", "2", "setosa"), ("3", "-4.25", "virginica"), ("0", "1e-3", "setosa"),
            ("7", "8", "versicolor")]
    path = tmp_path / "iris.csv"
    path.write_text("a,b,species\n" + "\n".join(",".join(r) for r in rows) + "\n\n")
    x, y = data.load_uci_csv(str(path))
    assert x.dtype == np.float32 and x.shape == (4, 2)
    expected = np.array([[float(a), float(b)] for a, b, _ in rows], np.float32)
    np.testing.assert_array_equal(x, expected)
    names = sorted({r[2] for r in rows})
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [names.index(r[2]) for r in rows])
    # target in the first column, no header, semicolons
    path2 = tmp_path / "first.csv"
    path2.write_text("\n".join(";".join((r[2], r[0], r[1])) for r in rows))
    x2, y2 = data.load_uci_csv(str(path2), target_column=0)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    # by name
    x3, y3 = data.load_uci_csv(str(path), target_column="species")
    np.testing.assert_array_equal(y3, y)


def test_load_uci_csv_numeric_targets_and_errors(tmp_path):
    ints = tmp_path / "ints.csv"
    ints.write_text("1,2,5\n3,4,9\n5,6,5\n")
    _, y = data.load_uci_csv(str(ints))
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 1, 0])
    floats = tmp_path / "floats.csv"
    floats.write_text("1,2,0.5\n3,4,1.25\n")
    _, y = data.load_uci_csv(str(floats))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.array([0.5, 1.25], np.float32))
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,a\n3,?,b\n")
    with pytest.raises(ValueError, match=r"non-numeric feature '\?'.*row 2"):
        data.load_uci_csv(str(bad))


# --------------------------------------------------------------- experiment aids


def test_subset_deterministic():
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    xa, ya = data.subset(x, y, 10, seed=3)
    xb, yb = data.subset(x, y, 10, seed=3)
    xc, yc = data.subset(x, y, 10, seed=4)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    assert len(np.unique(ya)) == 10  # without replacement
    np.testing.assert_array_equal(xa, x[ya])  # pairs stay aligned
    with pytest.raises(ValueError, match="size"):
        data.subset(x, y, 51, seed=0)


def test_regression_targets():
    y = np.array([0, 2, 1, 2], dtype=np.int64)
    t = data.regression_targets(y, 3)
    assert t.dtype == np.float32 and t.shape == (4, 3)
    np.testing.assert_allclose(t.sum(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(t, np.eye(3)[y] - 1.0 / 3.0, atol=1e-7)
    with pytest.raises(ValueError):
        data.regression_targets(np.array([3]), 3)


def test_permuted_tasks():
    rng = np.random.default_rng(10)
    x = rng.random((6, 5, 5, 1)).astype(np.float32)
    y = np.arange(6)
    tasks = data.permuted_tasks(x, y, num_tasks=3, seed=0)
    assert len(tasks) == 3
    np.testing.assert_array_equal(tasks[0][0], x)
    flat = x.reshape(6, -1)
    perms = []
    for xt, yt in tasks[1:]:
        assert xt.shape == x.shape and xt.dtype == x.dtype
        np.testing.assert_array_equal(yt, y)
        ft = xt.reshape(6, -1)
        np.testing.assert_array_equal(np.sort(ft, axis=1), np.sort(flat, axis=1))
        # recover the permutation from example 0 (values are distinct) and check all
        perm = np.array([np.flatnonzero(flat[0] == v)[0] for v in ft[0]])
        np.testing.assert_array_equal(ft, flat[:, perm])
        assert not np.array_equal(perm, np.arange(25))
        perms.append(perm)
    assert not np.array_equal(perms[0], perms[1])
    # same seed on another split -> the same permutation
    x_test = rng.random((2, 5, 5, 1)).astype(np.float32)
    test_tasks = data.permuted_tasks(x_test, None, num_tasks=3, seed=0)
    np.testing.assert_array_equal(
        test_tasks[1][0].reshape(2, -1), x_test.reshape(2, -1)[:, perms[0]]
    )


def test_rotated_tasks():
    rng = np.random.default_rng(11)
    x = rng.random((3, 9, 9, 2)).astype(np.float32)
    tasks = data.rotated_tasks(x, np.arange(3), [0, 90, 180, 33])
    np.testing.assert_array_equal(tasks[0][0], x)
    np.testing.assert_allclose(tasks[1][0], np.rot90(x, 1, axes=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(tasks[2][0], np.rot90(x, 2, axes=(1, 2)), atol=1e-6)
    assert tasks[3][0].dtype == np.float32 and tasks[3][0].shape == x.shape
    from scipy import ndimage

    ref = ndimage.rotate(x.astype(np.float64), 33, axes=(1, 2), reshape=False,
                               order=1, mode="grid-constant")
    np.testing.assert_allclose(tasks[3][0], ref, atol=1e-5)


@pytest.mark.parametrize("remap", [False, True])
def test_split_tasks(remap):
    rng = np.random.default_rng(12)
    y = 3 * rng.permutation(np.repeat(np.arange(100), 3))  # classes 0, 3, ..., 297
    x = np.arange(len(y) * 2).reshape(len(y), 2)
    tasks = data.split_tasks(x, y, classes_per_task=10, remap_labels=remap)
    assert len(tasks) == 10
    seen_rows = []
    for k, (xk, yk) in enumerate(tasks):
        assert yk.dtype == np.int64
        original = y[xk[:, 0] // 2]  # recover the source rows from x
        assert set(original) == set(range(30 * k, 30 * k + 30, 3))
        np.testing.assert_array_equal(yk, (original - 30 * k) // 3 if remap else original)
        seen_rows.extend(xk[:, 0] // 2)
    assert sorted(seen_rows) == list(range(len(y)))  # every example exactly once
    with pytest.raises(ValueError, match="groups of 7"):
        data.split_tasks(x, y, classes_per_task=7)


def test_load_sklearn_raw_values():
    import sklearn.datasets

    x, y = data.load_sklearn("digits", standardized=False)
    raw_x, raw_y = sklearn.datasets.load_digits(return_X_y=True)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, raw_x.astype(np.float32))
    np.testing.assert_array_equal(y, raw_y)


def _recover_permutation(original, permuted):
    """The permutation p with permuted[:, i] == original[:, p[i]], by matching columns."""
    columns = {tuple(col): j for j, col in enumerate(original.T)}
    assert len(columns) == original.shape[1], "columns must be distinct to recover the permutation"
    return np.array([columns[tuple(col)] for col in permuted.T])


def test_task_stream_permuted_applies_each_permutation_to_train_and_test_alike():
    rng = np.random.default_rng(15)
    train = (rng.random((20, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, 20))
    test = (rng.random((9, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, 9))
    train_tasks, test_tasks = data.task_stream("permuted", train, test, 3, seed=5)
    assert len(train_tasks) == len(test_tasks) == 3
    perms = []
    for (xa, ya), (xb, yb) in zip(train_tasks, test_tasks):
        p_train = _recover_permutation(train[0].reshape(20, -1), xa.reshape(20, -1))
        p_test = _recover_permutation(test[0].reshape(9, -1), xb.reshape(9, -1))
        np.testing.assert_array_equal(p_train, p_test)
        np.testing.assert_array_equal(ya, train[1])
        np.testing.assert_array_equal(yb, test[1])
        perms.append(p_train)
    np.testing.assert_array_equal(perms[0], np.arange(16))
    assert len({tuple(p) for p in perms}) == 3
    again, _ = data.task_stream("permuted", train, test, 3, seed=5)
    np.testing.assert_array_equal(again[2][0], train_tasks[2][0])  # fixed by the seed


def test_task_stream_rotated_by_multiples_of_the_step_against_scipy():
    from scipy import ndimage

    rng = np.random.default_rng(16)
    train = (rng.random((4, 10, 10, 1)).astype(np.float32), np.arange(4))
    test = (rng.random((3, 10, 10, 1)).astype(np.float32), np.arange(3))
    train_tasks, test_tasks = data.task_stream("rotated", train, test, 4, rotation_step=22.5)
    for t, ((xa, ya), (xb, yb)) in enumerate(zip(train_tasks, test_tasks)):
        for (x, _), rotated in ((train, xa), (test, xb)):
            reference = ndimage.rotate(x.astype(np.float64), 22.5 * t, axes=(1, 2), reshape=False,
                                       order=1, mode="grid-constant")
            np.testing.assert_allclose(rotated, reference, atol=1e-5)
        np.testing.assert_array_equal(ya, train[1])
        np.testing.assert_array_equal(yb, test[1])


@pytest.mark.parametrize("remap", [False, True])
def test_task_stream_split_is_disjoint_and_covers_the_chosen_classes(remap):
    rng = np.random.default_rng(17)
    y_train, y_test = rng.permutation(np.repeat(np.arange(10), 5)), rng.permutation(np.repeat(np.arange(10), 2))
    train = (np.arange(50)[:, None] * 1.0, y_train)
    test = (np.arange(20)[:, None] * 1.0, y_test)
    train_tasks, test_tasks = data.task_stream("split", train, test, 4, classes_per_task=2, remap_labels=remap)
    assert len(train_tasks) == len(test_tasks) == 4
    for (x, y), tasks in ((train, train_tasks), (test, test_tasks)):
        rows = [int(r) for xk, _ in tasks for r in xk[:, 0]]
        assert len(rows) == len(set(rows))  # disjoint
        assert sorted(rows) == sorted(np.flatnonzero(y < 8).tolist())  # covers classes 0..7
        for k, (xk, yk) in enumerate(tasks):
            original = y[xk[:, 0].astype(int)]
            assert set(original) == {2 * k, 2 * k + 1}
            np.testing.assert_array_equal(yk, original - 2 * k if remap else original)
    with pytest.raises(ValueError, match="at most 5 split tasks"):
        data.task_stream("split", train, test, 6, classes_per_task=2)
    with pytest.raises(ValueError, match="same classes"):
        data.task_stream("split", train, (test[0][:1], test[1][:1]), 2, classes_per_task=2)
    with pytest.raises(ValueError, match="permuted, rotated, split"):
        data.task_stream("shuffled", train, test, 2)
