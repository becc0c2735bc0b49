import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_ntk  # noqa: E402,F401  (imports TensorFlow quietly before any test module)


def pytest_collection_modifyitems(config, items):
    """Deselect the `gpu` checks on machines where TensorFlow sees no GPU."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    deselected = [item for item in items if item.get_closest_marker("gpu")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
