"""keras-ntk: neural tangent kernels and the uncertainty they give, for Keras models.

Public API:
  keras_ntk.layers        Dense, Conv2D in NTK or standard parametrization
  keras_ntk.models        mlp, cnn, wide_resnet builders
  infinite_width_kernel   analytic infinite-width NTK / NNGP, (N, M) float64
  InfiniteWidthKernel     the same as a TFP PositiveSemidefiniteKernel
"""

from keras_ntk._tf_quiet import import_tensorflow_quietly

import_tensorflow_quietly()

from keras_ntk import layers, models  # noqa: E402
from keras_ntk.ntk import InfiniteWidthKernel, infinite_width_kernel  # noqa: E402

__version__ = "0.1.0"

__all__ = ["InfiniteWidthKernel", "infinite_width_kernel", "layers", "models", "__version__"]
