"""Generated gRPC code for keras_ntk.serving.v1 (python -m serving.generate_protos)."""
