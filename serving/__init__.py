"""gRPC service answering kernel and predictive-uncertainty queries for exported models."""
