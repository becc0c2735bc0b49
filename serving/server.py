"""The gRPC server: KernelService, grpc.health.v1 and (optionally) reflection over one registry.

An asyncio gRPC server on its own event-loop thread (transport.py): no thread
waits on a client, so callers that send headers and never a body, or read their
answers slowly, stall nothing; the work runs on two pools, `max_workers`
threads for small requests and `large_workers` for large ones (by the request's
estimated cost), so a few long kernels never delay small calls behind them.
At most `max_concurrent_rpcs` KernelService calls run at once (more:
RESOURCE_EXHAUSTED at once); health is not counted and answers under
overload. Binds 127.0.0.1 unless told otherwise; any other address needs TLS
and bearer tokens, or `insecure=True`.

Health: the overall service "" is NOT_SERVING until every version found at
start has loaded or failed (an empty base directory is ready at once), then
SERVING; the service named after each model is SERVING while its latest version
resolves (readiness), NOT_SERVING otherwise. `stop` first reports NOT_SERVING,
then lets in-flight calls finish within `grace` seconds while refusing new ones.
"""

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import ssl
import tempfile
import threading

import grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection

from keras_ntk.ntk import memory
from . import validation
from .auth import BearerTokenAuth, Tokens
from .health import HealthService
from .health import SERVICE as HEALTH_SERVICE
from .registry import Registry
from .servable import Servable
from .servicer import KernelServicer
from .transport import SERVICE as KERNEL_SERVICE
from .transport import Admission, KernelTransport

log = logging.getLogger("keras_ntk.serving")

LOOPBACK_NAMES = ("localhost",)
MIN_POLL_INTERVAL = 0.01  # seconds; shorter polls make the scanner a busy loop


def is_loopback(host):
    """Whether `host` names this machine's loopback interface only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tls(cert, key):
    """ValueError unless `cert` (PEM chain) and `key` (PEM private key, unencrypted)
    load together, checked the way a TLS server would load them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="keras-ntk-tls-") as directory:
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(data)
            paths.append(path)
        try:
            context.load_cert_chain(*paths, password=lambda: b"")
        except (ssl.SSLError, OSError) as error:
            raise ValueError(
                f"the TLS certificate and key do not load together ({error.args[-1] if error.args else error}); "
                "give a PEM certificate chain and the unencrypted PEM private key of its first certificate."
            ) from None


def _positive(name, value, minimum=1, kind=int):
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value < minimum:
        expected = f">= {minimum:g}" if kind is float else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


class Server:
    """A KernelService server over the models of `base_dir`.

    Args:
      base_dir: model base directory, BASE/NAME/VERSION/ (may be empty).
      host, port: where to listen; port 0 picks a free port (see `port`).
      max_workers: threads running small requests.
      large_workers: threads running large requests (validation.Limits.large_cost).
      max_concurrent_rpcs: KernelService calls admitted at once (and, apart from them,
        four times as many waiting for their request message).
      poll_interval: seconds between scans of base_dir (>= 0.01).
      tokens: accepted bearer tokens; None or empty: no authentication.
      tls_cert, tls_key: PEM bytes of the server certificate chain and key; both or neither.
      batching: batch concurrent marginal predictions of one model into one pass.
      max_batch_examples, max_batch_wait: the batcher's limits (examples, seconds).
      limits: validation.Limits for request sizes.
      max_message_bytes: largest request and response message.
      load_workers: model versions loaded at once.
      client_timeout: seconds a client may take to send its request or to take the
        next message of an answer; slower calls are ended.
      max_watches: health Watch streams at once.
      memory_budget: bytes of working memory shared by the requests in flight
        (default: half of the memory available at construction).
      reflection: serve grpc.reflection (default: only when `host` is loopback).
      insecure: allow a non-loopback `host` without both TLS and tokens.
    Raises:
      ValueError for bad settings (what was wrong and what is expected), OSError
      when the address cannot be bound.
    """

    def __init__(
        self,
        base_dir,
        *,
        host="127.0.0.1",
        port=8500,
        max_workers=8,
        large_workers=2,
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
        client_timeout=10.0,
        max_watches=64,
        memory_budget=None,
        reflection=None,
        insecure=False,
    ):
        _positive("port", port, 0)
        if port > 65535:
            raise ValueError(f"port must be from 0 to 65535 (0: any free port), got {port}.")
        for name, value in (
            ("max_workers", max_workers),
            ("large_workers", large_workers),
            ("max_concurrent_rpcs", max_concurrent_rpcs),
            ("max_batch_examples", max_batch_examples),
            ("load_workers", load_workers),
            ("max_watches", max_watches),
        ):
            _positive(name, value)
        _positive("poll_interval", poll_interval, MIN_POLL_INTERVAL, float)
        _positive("max_batch_wait", max_batch_wait, 0, float)
        _positive("client_timeout", client_timeout, 1e-3, float)
        _positive("max_message_bytes", max_message_bytes, 1 << 16)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and its key (or neither).")
        if tls_cert is not None:
            check_tls(tls_cert, tls_key)
        tokens = [t for t in tokens or () if t]
        if not is_loopback(host) and not (tls_cert is not None and tokens) and not insecure:
            missing = " and ".join(w for w, on in (("TLS", tls_cert is not None), ("bearer tokens", tokens)) if not on)
            raise ValueError(
                f"listening on {host} without {missing} would let anyone who can reach it query the models; "
                "add them, or pass insecure=True (--insecure) to accept that."
            )
        limits = limits or validation.Limits()
        if limits.max_tile_bytes > max_message_bytes // 2:
            raise ValueError("limits.max_tile_bytes must be at most half of max_message_bytes.")
        self.base_dir, self.host, self.requested_port = base_dir, host, port
        self.tls = tls_cert is not None
        self.reflection = is_loopback(host) if reflection is None else bool(reflection)
        self.memory = validation.MemoryBudget(memory_budget or memory.default_budget())

        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="keras-ntk-serving-loop", daemon=True)
        self._loop_thread.start()
        self.health = HealthService(self._loop, Tokens(tokens) if tokens else None, max_watches, client_timeout)

        def load(name, version, path):
            return Servable(name, version, path, batching, max_batch_examples, max_batch_wait)

        self.registry = Registry(base_dir, load, poll_interval, self.health.set, load_workers)
        self._small = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="keras-ntk-small")
        self._large = concurrent.futures.ThreadPoolExecutor(large_workers, thread_name_prefix="keras-ntk-large")
        self.admission = Admission(max_concurrent_rpcs)
        servicer = KernelServicer(self.registry, limits, max_message_bytes, self.memory)
        transport = KernelTransport(servicer, self._small, self._large, self.admission, client_timeout)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        interceptors = [BearerTokenAuth(Tokens(tokens))] if tokens else []
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credentials = grpc.ssl_server_credentials([(tls_key, tls_cert)]) if self.tls else None

        async def build():
            server = grpc.aio.server(interceptors=interceptors, options=options)
            server.add_generic_rpc_handlers((transport.handler(), self.health.handler()))
            if self.reflection:
                grpc_reflection.enable_server_reflection(
                    (KERNEL_SERVICE, HEALTH_SERVICE, grpc_reflection.SERVICE_NAME), server
                )
            if credentials is None:
                return server, server.add_insecure_port(address)
            return server, server.add_secure_port(address, credentials)

        try:
            self._server, self.port = self._run(build())
        except RuntimeError:
            self._close()
            raise OSError(f"Could not bind {address} (in use, or not an address of this machine).") from None
        self._stopped = False

    def _run(self, coroutine, timeout=None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _close(self):
        self._small.shutdown(wait=True, cancel_futures=True)
        self._large.shutdown(wait=True, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()

    @property
    def address(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self):
        """Start answering and polling the base directory; returns self."""
        self._run(self._server.start())
        self.registry.start()
        log.info("serving %s on %s%s", self.base_dir, self.address, " (TLS)" if self.tls else "")
        return self

    def stop(self, grace=10.0):
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish within
        `grace` seconds (then cancel them), stop polling and unload the models."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self._run(self._server.stop(grace))
        self.registry.stop()
        self._close()

    def wait_for_termination(self, timeout=None):
        """Block until the server stops (or `timeout` seconds pass); True if it stopped."""
        return self._run(self._server.wait_for_termination(timeout))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)
