"""The gRPC server: KernelService, grpc.health.v1 and reflection over one registry.

Binds 127.0.0.1 unless told otherwise. A bounded worker pool
(futures.ThreadPoolExecutor, `max_workers`) runs the handlers and at most
`max_concurrent_rpcs` calls are admitted (more: RESOURCE_EXHAUSTED). Health:
the overall service "" is SERVING from the start (an empty base directory is a
healthy server); the service named after each model is SERVING while at least
one of its versions is AVAILABLE (readiness), NOT_SERVING otherwise. `stop`
first reports NOT_SERVING, then lets in-flight calls finish within `grace`
seconds while refusing new ones.
"""

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import validation
from .auth import BearerTokenAuth
from .registry import Registry
from .servable import Servable
from .servicer import KernelServicer
from .v1 import serving_pb2, serving_pb2_grpc

log = logging.getLogger("keras_ntk.serving")


class Server:
    """A KernelService server over the models of `base_dir`.

    Args:
      base_dir: model base directory, BASE/NAME/VERSION/ (may be empty).
      host, port: where to listen; port 0 picks a free port (see `port` after start()).
      max_workers: handler threads.
      max_concurrent_rpcs: calls admitted at once (queued for a worker); None: unbounded.
      poll_interval: seconds between scans of base_dir.
      tokens: accepted bearer tokens; None or empty: no authentication.
      tls_cert, tls_key: PEM bytes of the server certificate chain and key; both or neither.
      batching: batch concurrent marginal predictions of one model into one pass.
      max_batch_examples, max_batch_wait: the batcher's limits (examples, seconds).
      limits: validation.Limits for request sizes.
      max_message_bytes: largest request and response message.
      load_workers: model versions loaded at once.
    """

    def __init__(
        self,
        base_dir,
        *,
        host="127.0.0.1",
        port=8500,
        max_workers=8,
        max_concurrent_rpcs=256,
        poll_interval=1.0,
        tokens=None,
        tls_cert=None,
        tls_key=None,
        batching=True,
        max_batch_examples=256,
        max_batch_wait=0.0,
        limits=None,
        max_message_bytes=64 << 20,
        load_workers=2,
    ):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and its key (or neither).")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}.")
        self.base_dir, self.host, self.requested_port = base_dir, host, port
        self.port = None
        self.tls = tls_cert is not None
        limits = limits or validation.Limits()
        if limits.max_tile_bytes > max_message_bytes // 2:
            raise ValueError("limits.max_tile_bytes must be at most half of max_message_bytes.")
        self.health = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1)
        )
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

        def load(name, version, path):
            return Servable(name, version, path, batching, max_batch_examples, max_batch_wait)

        self.registry = Registry(base_dir, load, poll_interval, self._set_health, load_workers)
        self._executor = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="keras-ntk-serving")
        self._server = grpc.server(
            self._executor,
            interceptors=[BearerTokenAuth(tokens)] if tokens else [],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        serving_pb2_grpc.add_KernelServiceServicer_to_server(KernelServicer(self.registry, limits), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        services = (
            serving_pb2.DESCRIPTOR.services_by_name["KernelService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.tls:
            credentials = grpc.ssl_server_credentials([(tls_key, tls_cert)])
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"Could not bind {address} (in use, or not an address of this machine).")
        if host not in ("127.0.0.1", "localhost", "::1") and not (self.tls and tokens):
            log.warning(
                "listening on %s without %s: anyone who can reach this address can query the models",
                address,
                " and ".join(w for w, on in (("TLS", self.tls), ("bearer tokens", bool(tokens))) if not on),
            )

    def _set_health(self, name, serving):
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(name, status)

    @property
    def address(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self):
        """Start answering and polling the base directory; returns self."""
        self._server.start()
        self.registry.start()
        log.info("serving %s on %s%s", self.base_dir, self.address, " (TLS)" if self.tls else "")
        return self

    def stop(self, grace=10.0):
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish within
        `grace` seconds (then cancel them), stop polling and unload the models."""
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.registry.stop()
        self._executor.shutdown(wait=True)

    def wait_for_termination(self, timeout=None):
        return self._server.wait_for_termination(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)
