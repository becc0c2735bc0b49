"""gRPC service answering kernel and predictive-uncertainty queries for exported models.

  export.py      export(posterior, base, name) -> BASE/NAME/VERSION/ (atomic)
  loading.py     safe loading of one version directory (Keras safe_mode, metadata checked against the files)
  batching.py    MicroBatcher: concurrent predictions of one model in one pass
  servable.py    one loaded version: posterior, predictive, batcher, kernels
  registry.py    every version under the base directory, hot-loaded by polling
  validation.py  request checks, size limits and work estimates
  tensors.py     numpy <-> Tensor messages
  errors.py      errors carrying their gRPC status code, bounded echoes of request fields
  servicer.py    the KernelService handlers (status codes, deadlines)
  transport.py   calls over grpc.aio: admission, worker pools, deadlines, slow clients
  health.py      grpc.health.v1: open overall status, authenticated per-model status, bounded Watches
  auth.py        bearer-token check and the server interceptor
  server.py      Server: KernelService + grpc.health.v1 + reflection
  client.py      Client: numpy in, numpy out
  cli.py         `keras-ntk export | serve | query`
  generate_protos.py  regenerates v1/ from the .proto files
  v1/            generated code of protos/keras_ntk/serving/v1/serving.proto
                 (python -m keras_ntk.serving.generate_protos)

Importing this package imports nothing heavy; the modules import TensorFlow as they need it.
"""
