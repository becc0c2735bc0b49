"""Import TensorFlow without its C++ start-up noise on machines without a GPU.

TensorFlow writes "Could not find cuda drivers", oneDNN and cuInit lines straight
to file descriptor 2 before its logging is configured, so TF_CPP_MIN_LOG_LEVEL
cannot hide them. While TensorFlow, Keras and TFP are first imported (and the
devices are enumerated) descriptor 2 points at /dev/null; Python exceptions are
unaffected because they are printed after it is restored. Set
KERAS_NTK_SHOW_TF_STARTUP=1 to see those lines.

Importing this module does both (quiet import, tracing-noise filter) once; every
keras_ntk module that needs TensorFlow imports it first.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly():
    """Import tensorflow, keras and tensorflow_probability once, quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ.get("KERAS_NTK_SHOW_TF_STARTUP"):
        return
    with _stderr_to_devnull():
        import keras  # noqa: F401
        import tensorflow as tf
        import tensorflow_probability  # noqa: F401

        tf.config.list_physical_devices()


# Compiled closures created per model (the NTK engine's, compiled predictives, the
# experiments' training loop).
_OWN_FUNCTIONS = ("keras_ntk", "FeatureMap", "NTK.", "train_full_batch", "_for_laplace", "_for_gp")


class _OwnTracingNoise:
    """Logging filter for TF warnings about keras_ntk's own compiled functions.

    Each NTK / FeatureMap / training loop compiles its own closures and traces
    them once per model and input shape; TF counts traces per code location across instances and warns
    about "retracing". pfor's "uses a while_loop. Fix that!" notes address TF's
    developers. Neither is actionable for a user; other warnings pass.
    """

    def filter(self, record):
        message = record.getMessage()
        if "triggered tf.function retracing" in message:
            return not any(own in message for own in _OWN_FUNCTIONS)
        return "uses a while_loop. Fix that!" not in message


def filter_own_tracing_warnings():
    import tensorflow as tf

    tf.get_logger().addFilter(_OwnTracingNoise())


import_tensorflow_quietly()
filter_own_tracing_warnings()
