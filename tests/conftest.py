import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_ntk  # noqa: E402,F401  (imports TensorFlow quietly before any test module)
