"""Dataset loaders and continual-learning task streams (numpy only, no TensorFlow).

One module per concern:

* ``images``: :func:`load_mnist`, :func:`load_fashion_mnist`, :func:`load_cifar10`,
  :func:`load_cifar100` return ``((x_train, y_train), (x_test, y_test))``, x float32
  in [0, 1] ``(N, H, W, C)`` and y int64 ``(N,)``, from a path, the Keras cache, the
  Debian Fashion-MNIST package, or a download when the network is reachable;
* ``tabular``: :func:`load_sklearn` (scikit-learn's bundled sets) and
  :func:`load_uci_csv` (numeric CSV files);
* ``streams``: the task streams :func:`permuted_tasks`, :func:`rotated_tasks`,
  :func:`split_tasks` and :func:`task_stream` (training and test streams together);
* ``subsets``: :func:`subset` and :func:`regression_targets`;
* ``formats`` (IDX, CIFAR pickles, delimited text) and ``sources`` (Keras cache,
  network probe, download) serve the loaders.
"""

from .images import (
    DEBIAN_FASHION_MNIST_DIR,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_mnist,
)
from .streams import STREAMS, permuted_tasks, rotated_tasks, split_tasks, task_stream
from .subsets import regression_targets, subset
from .tabular import SKLEARN_DATASETS, load_sklearn, load_uci_csv

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
    "task_stream",
    "STREAMS",
    "SKLEARN_DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
]
