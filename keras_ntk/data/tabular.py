"""Tabular datasets: scikit-learn's bundled sets and numeric (UCI-style) CSV files."""

import numpy as np

from . import formats

SKLEARN_DATASETS = ("digits", "wine", "breast_cancer", "diabetes", "iris")


def standardize(x):
    """Zero mean / unit variance per column of ``x`` ``(N, d)``, as float32.

    Constant columns become exactly 0.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return ((x - mean) / std).astype(np.float32)


def load_sklearn(name, standardized=True):
    """Load one of scikit-learn's bundled datasets (no download).

    Args:
      name: one of ``"digits"``, ``"wine"``, ``"breast_cancer"``, ``"diabetes"``,
        ``"iris"``.
      standardized: True (default) scales each feature to zero mean and unit
        variance (features that are constant, e.g. digits' border pixels, become
        0); False keeps scikit-learn's raw values (digits: pixel counts 0..16).

    Returns:
      ``(x, y)``: x float32 ``(N, d)``; y int64 ``(N,)`` class labels 0..C-1, or for
      ``"diabetes"`` the float32 ``(N,)`` regression target (unscaled).
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
    return (standardize(x) if standardized else np.asarray(x, dtype=np.float32)), y


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
    names, data = formats.read_delimited(path, header=header, delimiter=delimiter)
    width = len(data[0])
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
    if all(formats.is_number(v) for v in raw_y):
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
