"""Neural tangent kernels of Keras models: empirical (tiled, structured) and infinite-width."""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
from keras_ntk.ntk.empirical import NTK, empirical_ntk
from keras_ntk.ntk.infinite import infinite_width_cnn_kernel, infinite_width_kernel
from keras_ntk.ntk.limits import KernelFn, infinite_width_kernel_fn
from keras_ntk.ntk.memory import NTKMemoryError
from keras_ntk.ntk.tfp_kernels import EmpiricalNTKKernel, InfiniteWidthKernel
from keras_ntk.ntk.vector_products import ntk_vector_product

__all__ = [
    "NTK",
    "NTKMemoryError",
    "EmpiricalNTKKernel",
    "InfiniteWidthKernel",
    "empirical_ntk",
    "infinite_width_cnn_kernel",
    "infinite_width_kernel",
    "infinite_width_kernel_fn",
    "KernelFn",
    "ntk_vector_product",
]
