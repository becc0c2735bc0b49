"""keras-ntk: neural tangent kernels and the uncertainty they give, for Keras models.

Public API (imported on first use, so `import keras_ntk` and `keras-ntk --help`
do not load TensorFlow):
  keras_ntk.layers        Dense, Conv2D in NTK or standard parametrization
  keras_ntk.models        mlp, cnn, wide_resnet builders
  keras_ntk.data          MNIST, Fashion-MNIST, CIFAR, scikit-learn and UCI loaders, task streams
  keras_ntk.predictive    NTK-GP / NNGP posteriors, GD dynamics, linearized Laplace
  keras_ntk.optimizers    natural gradient (damped Gauss-Newton) steps and a Keras Model wrapper for fit
  keras_ntk.diagnostics   kernel distances, scaling fits, Gram spectra, Jacobian stability (C') and its callback
  keras_ntk.bandits       contextual bandits from classification data; NeuralUCB/TS, Laplace UCB/TS agents
  keras_ntk.continual     continual-learning metrics (accuracy matrix, forgetting), multi-head losses, callbacks
  keras_ntk.serving       gRPC service for exported posteriors
  keras_ntk.experiments   the paper's experiments as resumable sweeps
  LinearizedModel         f0 + J0 (theta - theta0) as a trainable Keras model
  empirical_ntk, NTK      empirical NTK of any Keras model, (N, M, K, K) or reduced
  ntk_vector_product      matrix-free Theta(x, x) v
  infinite_width_kernel   analytic infinite-width NTK / NNGP of an MLP, (N, M) float64
  infinite_width_cnn_kernel  the same for a CNN (flatten or global average pooling)
  InfiniteWidthKernel, EmpiricalNTKKernel  TFP PositiveSemidefiniteKernels
  NTKMemoryError          a request that does not fit the memory budget

Modules that need TensorFlow import it through keras_ntk._tf_quiet, which keeps
TensorFlow's C++ start-up lines off the screen.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "activations",
    "bandits",
    "continual",
    "data",
    "diagnostics",
    "experiments",
    "layers",
    "linearize",
    "optimizers",
    "models",
    "ntk",
    "predictive",
    "serving",
)

# Public name -> the module that defines it.
_ATTRIBUTES = {
    "LinearizedModel": "keras_ntk.linearize",
    "NTK": "keras_ntk.ntk",
    "NTKMemoryError": "keras_ntk.ntk",
    "EmpiricalNTKKernel": "keras_ntk.ntk",
    "InfiniteWidthKernel": "keras_ntk.ntk",
    "empirical_ntk": "keras_ntk.ntk",
    "infinite_width_cnn_kernel": "keras_ntk.ntk",
    "infinite_width_kernel": "keras_ntk.ntk",
    "infinite_width_kernel_fn": "keras_ntk.ntk",
    "ntk_vector_product": "keras_ntk.ntk",
}

__all__ = [*_ATTRIBUTES, *_SUBMODULES, "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
