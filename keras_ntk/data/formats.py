"""Readers of the dataset file formats: IDX (MNIST), CIFAR python pickles, delimited text.

Each reader returns numpy arrays or plain rows and raises ``ValueError`` naming
the file when its content does not follow the format (a malformed file is never
silently skipped).
"""

import csv
import gzip
import os
import pickle

import numpy as np

# Dtype code byte of the IDX header -> element dtype (big-endian on disk).
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Split name -> base name of the standard MNIST / Fashion-MNIST IDX file.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_GZ_NAMES = tuple(name + ".gz" for name in IDX_FILES.values())


def read_idx(filename):
    """Parse an IDX file (optionally gzip-compressed, by its ``.gz`` suffix).

    Format: two zero bytes, a dtype code byte (see ``IDX_DTYPES``), the number of
    dimensions ``d``, then ``d`` big-endian uint32 sizes, then the data in
    big-endian C order.

    Returns:
      numpy array of the announced shape and dtype (read-only view of the bytes).
    Raises:
      ValueError: bad magic number, or a data size that disagrees with the header.
    """
    filename = os.fspath(filename)
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(
            f"{filename} is not an idx file (bad magic number {raw[:4]!r}); expected "
            "the MNIST idx format, e.g. train-images-idx3-ubyte.gz."
        )
    dtype = IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{filename}: truncated header ({len(raw)} bytes for {ndim} dimensions).")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{filename}: header announces shape {shape} ({count * dtype.itemsize} "
            f"bytes) but the file holds {len(raw) - header} data bytes; it is "
            "truncated or corrupt, fetch it again."
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def find_idx_files(directory):
    """The four standard IDX files in ``directory``, or None if any is missing.

    Accepts ``name``, ``name.gz`` and the dotted spelling ``train-images.idx3-ubyte``
    (with or without ``.gz``). Returns a dict x_train/y_train/x_test/y_test -> path.
    """
    found = {}
    for key, base in IDX_FILES.items():
        dotted = base.replace("-idx", ".idx", 1)
        for name in (base + ".gz", base, dotted + ".gz", dotted):
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                found[key] = candidate
                break
        else:
            return None
    return found


def read_cifar_batch(filename, label_key):
    """Read one python-version CIFAR pickle (a dict with ``data`` and labels).

    Args:
      filename: e.g. ``cifar-10-batches-py/data_batch_1`` or ``cifar-100-python/train``.
      label_key: ``"labels"`` (CIFAR-10), ``"fine_labels"`` or ``"coarse_labels"``.
    Returns:
      ``(x, y)``: x uint8 ``(N, 32, 32, 3)`` channels last (the pickle stores
      channel-major rows of 1024 red, 1024 green, 1024 blue values), y ``(N,)``.
    """
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


def is_number(text):
    """True if ``float(text)`` succeeds."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_delimited(path, header="infer", delimiter=None):
    """Read a delimited text table (CSV, semicolons, tabs or whitespace) as strings.

    Args:
      path: the file; blank lines are ignored.
      header: ``"infer"`` (the first row is a header if some column is non-numeric
        there and numeric in the second row), ``True`` or ``False``/``None``.
      delimiter: field separator; ``None`` sniffs among ``,`` ``;`` tab and falls
        back to whitespace-separated fields when the file has none of them.
    Returns:
      ``(names, rows)``: the header cells (None without a header) and the data
      rows as lists of stripped strings, all of one length.
    Raises:
      ValueError: no rows, a header without data, or rows of different lengths.
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
            not is_number(a) and is_number(b) for a, b in zip(rows[0], rows[1])
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
    return names, data
