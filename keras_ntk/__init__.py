"""keras-ntk: neural tangent kernels and the uncertainty they give, for Keras models.

Public API:
  keras_ntk.layers        Dense, Conv2D in NTK or standard parametrization
  keras_ntk.models        mlp, cnn, wide_resnet builders
  keras_ntk.data          MNIST, Fashion-MNIST, CIFAR, scikit-learn and UCI loaders, task streams
  keras_ntk.predictive    NTK-GP / NNGP posteriors, GD dynamics, linearized Laplace
  LinearizedModel         f0 + J0 (theta - theta0) as a trainable Keras model
  empirical_ntk, NTK      empirical NTK of any Keras model, (N, M, K, K) or reduced
  ntk_vector_product      matrix-free Theta(x, x) v
  infinite_width_kernel   analytic infinite-width NTK / NNGP of an MLP, (N, M) float64
  infinite_width_cnn_kernel  the same for a CNN (flatten or global average pooling)
  InfiniteWidthKernel     the same as a TFP PositiveSemidefiniteKernel
"""

from keras_ntk._tf_quiet import filter_own_tracing_warnings, import_tensorflow_quietly

import_tensorflow_quietly()
filter_own_tracing_warnings()

from keras_ntk import data, layers, models, predictive  # noqa: E402
from keras_ntk.linearize import LinearizedModel  # noqa: E402
from keras_ntk.ntk import (  # noqa: E402
    NTK,
    EmpiricalNTKKernel,
    InfiniteWidthKernel,
    NTKMemoryError,
    empirical_ntk,
    infinite_width_cnn_kernel,
    infinite_width_kernel,
    ntk_vector_product,
)

__version__ = "0.1.0"

__all__ = [
    "LinearizedModel",
    "NTK",
    "NTKMemoryError",
    "EmpiricalNTKKernel",
    "InfiniteWidthKernel",
    "empirical_ntk",
    "infinite_width_cnn_kernel",
    "infinite_width_kernel",
    "ntk_vector_product",
    "data",
    "layers",
    "models",
    "predictive",
    "__version__",
]
