"""One loaded model version: its posterior, compiled predictive, batcher and kernels."""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import concurrent.futures
import threading
import time

import numpy as np

from keras_ntk.predictive import compile_predictive
from . import loading
from .batching import MicroBatcher
from .errors import DeadlineExceeded


class Servable:
    """A loaded BASE/NAME/VERSION directory, ready to answer requests.

    Args:
      name, version, path: where it came from.
      batching: answer concurrent marginal predictions with one pass (MicroBatcher).
      max_batch_examples, max_batch_wait: the batcher's limits (examples, seconds).
    Raises:
      loading.CorruptModel (or any error of the posterior code) when it cannot load.
    """

    def __init__(self, name, version, path, batching=True, max_batch_examples=256, max_batch_wait=0.0):
        self.name, self.version, self.path = name, version, path
        self.metadata = loading.read_metadata(path)
        self.metadata_json = (path / "metadata.json").read_text()
        self.posterior, self.model = loading.load_posterior(path)
        # Everything that traces this model (warm-up, kernels) holds this lock: the
        # engine's probed forward pass patches the model's layers while it traces.
        self._model_lock = threading.Lock()
        self.predictive = compile_predictive(self.posterior, self._model_lock)
        self.input_shape = self.predictive.input_shape
        self.input_dtype = self.predictive.input_dtype
        self.output_dtype = np.dtype(self.model.outputs[0].dtype)
        self.output_shape = tuple(self.model.output_shape[1:])
        self.num_outputs = self.predictive.num_outputs
        self.likelihood = self.predictive.likelihood
        self._kernels = {}
        self.batcher = None
        if batching:
            self.batcher = MicroBatcher(
                self.predictive.marginal, max_batch_examples, max_batch_wait, name=f"batcher-{name}-{version}"
            )

    def marginal(self, x, deadline=None):
        """(mean (n, K), covariance blocks (n, K, K)) float64; `deadline` in time.monotonic() seconds."""
        if self.batcher is None:
            return self.predictive.marginal(x)
        future = self.batcher.submit(x, deadline)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded("The deadline passed before the prediction was computed.") from None

    def joint(self, x):
        """(mean (n, K), joint covariance (n K, n K)) float64."""
        return self.predictive.joint(x)

    def kernel(self, x1, x2, output, per_layer, dtype):
        """keras_ntk.NTK(model, output, per_layer, dtype)(x1, x2) as numpy (dict with per_layer).

        Kernel computations of one model run one at a time (under the model's lock).
        """
        from keras_ntk import NTK

        key = (output, per_layer, np.dtype(dtype).name)
        with self._model_lock:
            if key not in self._kernels:
                self._kernels[key] = NTK(self.model, output=output, per_layer=per_layer, dtype=dtype, progress=False)
            value = self._kernels[key](x1, x2)
        if per_layer:
            return {name: v.numpy() for name, v in value.items()}
        return value.numpy()

    def close(self):
        if self.batcher is not None:
            self.batcher.close()
