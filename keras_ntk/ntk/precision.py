"""Full-precision float32 matmuls while a kernel is computed.

TensorFlow runs float32 matmuls and convolutions on Ampere and newer GPUs in
TensorFloat-32 by default (tf.config.experimental.enable_tensor_float_32_execution):
10 mantissa bits, relative errors near 1e-3 in every Gram entry, which the linear
solves of GP and Laplace predictions then amplify. `full_float32` turns TF32 off
for the calls inside it and restores the user's setting when the last of them
leaves (calls from several threads share one save and one restore). On CPUs the
setting has no effect on results.

TensorFlow reads the setting when a kernel runs, so this covers eager calls of
the engine; a kernel traced into the caller's own tf.function runs under the
setting in force when that function runs.
"""

import contextlib
import threading

import tensorflow as tf

PRECISIONS = ("highest", "default")

_lock = threading.Lock()
_active = 0
_saved = None


@contextlib.contextmanager
def full_float32(precision="highest"):
    """Inside: TF32 off if precision == "highest"; "default" leaves TensorFlow's setting."""
    if precision == "default":
        yield
        return
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = tf.config.experimental.tensor_float_32_execution_enabled()
            tf.config.experimental.enable_tensor_float_32_execution(False)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                tf.config.experimental.enable_tensor_float_32_execution(_saved)
