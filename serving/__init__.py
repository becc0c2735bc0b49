"""gRPC service answering kernel and predictive-uncertainty queries for exported models.

  export.py      export(posterior, base, name) -> BASE/NAME/VERSION/ (atomic)
  loading.py     safe loading of one version directory (Keras safe_mode, checked metadata)
  batching.py    MicroBatcher: concurrent predictions of one model in one pass
  servable.py    one loaded version: posterior, predictive, batcher, kernels
  registry.py    every version under the base directory, hot-loaded by polling
  validation.py  request checks and size limits
  tensors.py     numpy <-> Tensor messages
  servicer.py    the KernelService handlers (status codes, deadlines)
  auth.py        bearer-token server interceptor
  server.py      Server: KernelService + grpc.health.v1 + reflection
  client.py      Client: numpy in, numpy out
  cli.py         `keras-ntk export | serve | query`
  v1/            generated code of protos/keras_ntk/serving/v1/serving.proto
                 (python -m keras_ntk.serving.generate_protos)

Importing this package imports nothing heavy; the modules import TensorFlow as they need it.
"""
