"""grpc.health.v1.Health on the server's event loop: an open overall status,
authenticated per-model status, and bounded Watches that leave nothing behind.

Service "" is the whole server and answers anyone (load balancers probe it
without credentials). A named service is a model; with bearer tokens on, its
status needs a valid token like every KernelService call, and a caller without
one gets UNAUTHENTICATED whether the model exists or not, so model names cannot
be enumerated. Names that cannot be a model name (export.NAME_PATTERN) are
INVALID_ARGUMENT. Check of an unknown name is NOT_FOUND; Watch of it answers
SERVICE_UNKNOWN and then follows the model if it appears (the standard
behaviour). At most `max_watches` Watches run at once (RESOURCE_EXHAUSTED
beyond) and a Watch's name is forgotten when its stream ends. Requests are read
with the client timeout (transport.read_request): a Watch that never sends its
body ends after it and blocks no other call meanwhile. Health calls are not
counted by the KernelService admission, so health answers under overload.
"""

import asyncio
import threading

import grpc
from grpc_health.v1 import health_pb2

from .auth import DENIED
from .errors import InvalidArgument, shown
from .export import NAME_PATTERN
from .transport import decode, read_request

SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
MAX_REQUEST_BYTES = 1024  # a HealthCheckRequest holds one service name
Status = health_pb2.HealthCheckResponse


class HealthService:
    """Args:
    loop: the asyncio event loop the server runs on.
    tokens: an auth.Tokens, or None (no authentication).
    max_watches: Watch streams at once.
    client_timeout: seconds a client may take to send its request or take an update.
    """

    def __init__(self, loop, tokens=None, max_watches=64, client_timeout=10.0):
        if max_watches < 1:
            raise ValueError(f"max_watches must be >= 1, got {max_watches}.")
        self._loop, self._tokens = loop, tokens
        self.max_watches, self.client_timeout = max_watches, client_timeout
        self._statuses = {"": Status.NOT_SERVING}
        self._lock = threading.Lock()
        self._shutdown = False
        self._watchers = {}  # name -> set of asyncio.Event, on the loop only
        self.watches = 0  # Watch streams open

    def set(self, name, serving):
        """Set the status of `name` ("" for the server) from any thread."""
        with self._lock:
            if self._shutdown:
                return
            self._statuses[name] = Status.SERVING if serving else Status.NOT_SERVING
        self._notify_soon(name)

    def enter_graceful_shutdown(self):
        """Report NOT_SERVING for everything from now on."""
        with self._lock:
            self._shutdown = True
            names = list(self._statuses)
            for name in names:
                self._statuses[name] = Status.NOT_SERVING
        for name in names:
            self._notify_soon(name)

    def _notify_soon(self, name):
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._notify, name)

    def _notify(self, name):
        for event in self._watchers.get(name, ()):
            event.set()

    def _status(self, name):
        with self._lock:
            return self._statuses.get(name)

    def handler(self):
        """The grpc.GenericRpcHandler of grpc.health.v1.Health."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Check": grpc.stream_unary_rpc_method_handler(self._check),
                "Watch": grpc.stream_stream_rpc_method_handler(self._watch),
            },
        )

    async def _service(self, context):
        """The requested service name, read, checked and authorized (else the call aborts)."""
        body = await read_request(context, self.client_timeout, MAX_REQUEST_BYTES)
        try:
            name = decode(health_pb2.HealthCheckRequest, body).service
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if name and not NAME_PATTERN.match(name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"service {shown(name)} is not a model name; ask for \"\" (the server) or a model name.",
            )
        if name and self._tokens is not None and not self._tokens.valid(context.invocation_metadata()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        return name

    async def _check(self, request_iterator, context):
        name = await self._service(context)
        status = self._status(name)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No model {name!r} is known to this server.")
        return Status(status=status).SerializeToString()

    async def _watch(self, request_iterator, context):
        if self.watches >= self.max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"The server has {self.max_watches} health Watches open, its limit; use Check, or retry later.",
            )
        self.watches += 1
        try:
            name = await self._service(context)
            changed = asyncio.Event()
            self._watchers.setdefault(name, set()).add(changed)
            try:
                sent = None
                while True:
                    status = self._status(name)
                    status = Status.SERVICE_UNKNOWN if status is None else status
                    if status != sent:
                        update = Status(status=status).SerializeToString()
                        try:
                            async with asyncio.timeout(self.client_timeout):
                                await context.write(update)
                        except TimeoutError:
                            return
                        sent = status
                    await changed.wait()
                    changed.clear()
            finally:
                watchers = self._watchers[name]
                watchers.discard(changed)
                if not watchers:
                    del self._watchers[name]
        finally:
            self.watches -= 1
