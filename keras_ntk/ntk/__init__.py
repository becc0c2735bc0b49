"""Neural tangent kernels of Keras models: empirical and infinite-width."""

from keras_ntk.ntk.infinite import infinite_width_kernel
from keras_ntk.ntk.tfp_kernels import InfiniteWidthKernel

__all__ = ["InfiniteWidthKernel", "infinite_width_kernel"]
