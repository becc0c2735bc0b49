"""Continual-learning task streams: Permuted, Rotated and Split datasets.

A stream is a list of tasks ``(x_t, y_t)``. :func:`task_stream` builds the training
and the test stream together, so that task ``t`` applies the same permutation or
rotation, or holds the same classes, in both.
"""

import numpy as np

STREAMS = ("permuted", "rotated", "split")


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
    flat = x.reshape(n, -1, x.shape[-1]) if x.ndim == 4 else x.reshape(n, -1)
    rng = np.random.default_rng(seed)
    tasks = [(x, y)]
    for _ in range(1, num_tasks):
        perm = rng.permutation(flat.shape[1])
        tasks.append((flat[:, perm].reshape(x.shape), y))
    return tasks


def _rotate(x, angle):
    """Rotate images ``(N, H, W[, C])`` counterclockwise by ``angle`` degrees about the
    image centre: bilinear interpolation, zero outside; exact for multiples of 90
    degrees on square images."""
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


def task_stream(kind, train, test, num_tasks, *, seed=0, rotation_step=22.5,
                classes_per_task=2, remap_labels=False):
    """The training and the test stream of one continual-learning benchmark.

    Args:
      kind: ``"permuted"`` (task 0 the original inputs, task t one fixed pixel
        permutation drawn from ``seed``), ``"rotated"`` (task t rotated by
        ``t * rotation_step`` degrees counterclockwise) or ``"split"`` (task t the
        t-th group of ``classes_per_task`` consecutive classes; the first
        ``num_tasks`` groups are used).
      train, test: ``(x, y)`` with x ``(N, ...)`` (images ``(N, H, W[, C])`` for
        "rotated") and integer labels y ``(N,)``.
      remap_labels: "split" only: labels ``0..classes_per_task-1`` within each task
        instead of the global class labels.
    Returns:
      ``(train_tasks, test_tasks)``: two lists of ``num_tasks`` pairs ``(x_t, y_t)``;
      task t transforms the training and the test inputs in the same way.
    Raises:
      ValueError: unknown ``kind``, too few classes for ``num_tasks`` split tasks,
        or training and test labels with different classes.
    """
    if kind not in STREAMS:
        raise ValueError(f"Unknown task stream {kind!r}; expected one of {', '.join(STREAMS)}.")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
    if kind == "permuted":
        return tuple(permuted_tasks(x, y, num_tasks, seed=seed) for x, y in (train, test))
    if kind == "rotated":
        angles = [t * rotation_step for t in range(num_tasks)]
        return tuple(rotated_tasks(x, y, angles) for x, y in (train, test))
    train_classes, test_classes = (np.unique(np.asarray(y)) for _, y in (train, test))
    if not np.array_equal(train_classes, test_classes):
        raise ValueError(
            f"Split tasks need the same classes in training and test labels, got "
            f"{train_classes.tolist()} and {test_classes.tolist()}."
        )
    available = len(train_classes) // max(int(classes_per_task), 1)
    if num_tasks > available:
        raise ValueError(
            f"{len(train_classes)} classes give at most {available} split tasks of "
            f"{classes_per_task} classes, got num_tasks={num_tasks}; lower num_tasks or "
            "classes_per_task."
        )
    return tuple(
        split_tasks(x, y, classes_per_task, remap_labels=remap_labels)[:num_tasks]
        for x, y in (train, test)
    )
