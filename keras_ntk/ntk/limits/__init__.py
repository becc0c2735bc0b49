"""Infinite-width NNGP and NTK of Keras models, composed from per-layer kernel maps.

    dual.py          dual activations (closed forms, Gauss-Hermite quadrature)
    spatial.py       position-pair operations (convolution, pooling, diagonals)
    initializers.py  moments of Keras initializers
    state.py         Layout (static) and Kernels (one tile) of a tensor
    maps.py          one kernel map per kind of layer
    registry.py      which maps a Keras layer stands for
    graph.py         the layer calls of a Keras model in execution order
    program.py       a network as a program of maps: modes, memory, evaluation
    kernel_fn.py     infinite_width_kernel_fn and the tiled KernelFn
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
from keras_ntk.ntk.limits.kernel_fn import KernelFn, infinite_width_kernel_fn

__all__ = ["KernelFn", "infinite_width_kernel_fn"]
