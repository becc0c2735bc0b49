"""KernelService calls over grpc.aio: admission, pools, deadlines and slow clients.

Every call runs as a coroutine on the server's event loop; no thread waits on a
client. A call

  1. reads its one request message as raw bytes within `client_timeout`
     seconds (a caller that sends headers and never a body is ended with
     DEADLINE_EXCEEDED; it held nothing but the coroutine meanwhile);
  2. is admitted or shed at once: at most `limit` calls run, and apart from
     them at most 4 `limit` wait for their request message (RESOURCE_EXHAUSTED
     beyond; health is not counted, see health.py);
  3. decodes the bytes itself: an undecodable body is INVALID_ARGUMENT, without
     a traceback in the log;
  4. runs on the pool its size calls for. GetModelMetadata, GetModelStatus and
     ListModels read the registry only and answer on the event loop; Predict and
     ComputeKernel are validated and estimated on the pool of small requests and
     run there, or, when their estimate is large (validation.Estimate.large), on
     the pool of large requests, so that small calls never wait behind them;
  5. when the deadline passes or the client goes away, the worker is told
     (CallContext.is_active) and stops at its next chunk of work;
  6. streams kernel tiles to a client that must take each one within
     `client_timeout` seconds; a client that reads slower is ended with
     DEADLINE_EXCEEDED, and while it is slow it holds no worker.
"""

import asyncio
import threading
import time

import grpc
from google.protobuf.message import DecodeError

from . import servicer as servicer_lib
from .errors import InvalidArgument, details
from .v1 import serving_pb2 as pb

SERVICE = "keras_ntk.serving.v1.KernelService"
LIGHT_REQUEST_BYTES = 64 << 10  # a metadata, status or list request names one model at most
TILES_PER_HOP = 64  # kernel tiles taken from the worker at once (when they are small)


class Aborted(Exception):
    """Raised by CallContext.abort: the call ends with `code` and `details`."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.details = code, details(message)


class CallContext:
    """The servicer's view of one asyncio call, safe to use from worker threads.

    Args:
      time_remaining: seconds to the call's deadline when it started (None: none).
    """

    def __init__(self, time_remaining):
        self._deadline = None if time_remaining is None else time.monotonic() + time_remaining
        self._cancelled = threading.Event()

    def time_remaining(self):
        return None if self._deadline is None else self._deadline - time.monotonic()

    def is_active(self):
        return not self._cancelled.is_set()

    def cancel(self):
        self._cancelled.set()

    def abort(self, code, message):
        raise Aborted(code, message)


async def read_request(context, timeout, max_bytes):
    """The call's request message as bytes. Aborts the call (DEADLINE_EXCEEDED) when
    the client sends none within `timeout` seconds, INVALID_ARGUMENT when it ends
    without one or sends more than `max_bytes`."""
    try:
        async with asyncio.timeout(timeout):  # not wait_for: in Python 3.11 it can swallow a cancel
            body = await context.read()
    except TimeoutError:
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"No request message arrived within the server's client timeout of {timeout:g} s.",
        )
    if body is grpc.aio.EOF:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The call ended without a request message.")
    if len(body) > max_bytes:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"The request message has {len(body)} bytes; this method takes at most {max_bytes}.",
        )
    return body


def decode(message_type, body):
    """The message of `message_type` in `body`, or InvalidArgument."""
    try:
        return message_type.FromString(body)
    except DecodeError:
        raise InvalidArgument(
            f"The request is not a valid {message_type.DESCRIPTOR.full_name} message ({len(body)} bytes "
            "that do not decode); send it with the protos of keras_ntk.serving.v1."
        ) from None


class Admission:
    """Counts of the calls in flight, touched on the event loop only.

    Attributes:
      limit: calls running at once; READING_FACTOR times as many may wait for
        their request message besides (a waiting call holds no worker).
      running, reading: the current counts.
      shed: calls answered RESOURCE_EXHAUSTED because a count was at its limit.
    """

    READING_FACTOR = 4

    def __init__(self, limit):
        if limit < 1:
            raise ValueError(f"The limit of concurrent calls must be >= 1, got {limit}.")
        self.limit = limit
        self.running = self.reading = self.shed = 0

    def refuse_reading(self):
        """A refusal message when no more calls may wait for their request, else None."""
        return self._refuse(self.reading, self.limit * self.READING_FACTOR, "waiting for their request message")

    def refuse_running(self):
        """A refusal message when no more calls may run, else None."""
        return self._refuse(self.running, self.limit, "running")

    def _refuse(self, count, limit, what):
        if count < limit:
            return None
        self.shed += 1
        return f"The server has {limit} calls {what}, its limit; retry with backoff (or raise --max-concurrent-rpcs)."


def _release_unrun_work(future):
    """Done callback of a prepare step whose caller stopped waiting: nobody will run
    the Work it may have returned."""
    if not future.cancelled() and future.exception() is None and isinstance(future.result(), servicer_lib.Work):
        future.result().release()


class KernelTransport:
    """The KernelService handlers of an asyncio server.

    Args:
      servicer: the servicer.KernelServicer.
      small_pool, large_pool: concurrent.futures executors of small and large requests.
      admission: an `Admission`.
      client_timeout: seconds a client may take to send its request or take a tile.
    """

    def __init__(self, servicer, small_pool, large_pool, admission, client_timeout):
        self.servicer = servicer
        self.small_pool, self.large_pool = small_pool, large_pool
        self.admission = admission
        self.client_timeout = client_timeout

    def handler(self):
        """The grpc.GenericRpcHandler of the service: every method declared
        request-streaming, so that the handler reads (and bounds) the request itself."""
        light = {
            "GetModelMetadata": (self.servicer.GetModelMetadata, pb.GetModelMetadataRequest),
            "GetModelStatus": (self.servicer.GetModelStatus, pb.GetModelStatusRequest),
            "ListModels": (self.servicer.ListModels, pb.ListModelsRequest),
        }
        handlers = {name: grpc.stream_unary_rpc_method_handler(self._light(*spec)) for name, spec in light.items()}
        handlers["Predict"] = grpc.stream_unary_rpc_method_handler(self._predict)
        handlers["ComputeKernel"] = grpc.stream_stream_rpc_method_handler(self._kernel)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def _call(self, context, max_bytes, run):
        """Read, admit and run one call: run(body, CallContext) -> response bytes or None."""
        admission = self.admission
        refusal = admission.refuse_reading()
        if refusal:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        admission.reading += 1
        try:
            body = await read_request(context, self.client_timeout, max_bytes)
        finally:
            admission.reading -= 1
        refusal = admission.refuse_running()
        if refusal:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        admission.running += 1
        call = CallContext(context.time_remaining())
        context.add_done_callback(lambda _: call.cancel())  # however the call ends, its work stops
        try:
            return await run(body, call)
        except Aborted as abort:
            await context.abort(abort.code, abort.details)
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            admission.running -= 1

    @staticmethod
    async def _wait(future, call):
        """The result of a concurrent future; the call is cancelled (so the worker
        stops) when this coroutine is."""
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            call.cancel()
            raise

    def _light(self, method, request_type):
        async def handle(request_iterator, context):
            async def run(body, call):
                with servicer_lib.answering(call, method.__name__):
                    request = decode(request_type, body)
                return method(request, call).SerializeToString()

            return await self._call(context, LIGHT_REQUEST_BYTES, run)

        return handle

    # -- Predict ----------------------------------------------------------------------
    async def _predict(self, request_iterator, context):
        async def run(body, call):
            future = self.small_pool.submit(self._prepare_predict, body, call)
            try:
                outcome = await self._wait(future, call)
            except asyncio.CancelledError:
                future.add_done_callback(_release_unrun_work)
                raise
            if isinstance(outcome, bytes):
                return outcome
            future = self.large_pool.submit(self._finish, outcome, call)
            future.add_done_callback(lambda _: outcome.release())
            return await self._wait(future, call)

        return await self._call(context, self.servicer.max_message_bytes, run)

    def _prepare_predict(self, body, call):
        """On the small pool: the serialized answer of a small request, the Work of a large one."""
        with servicer_lib.answering(call, "Predict"):
            work = self.servicer.prepare_predict(decode(pb.PredictRequest, body), call)
        return work if work.estimate.large else self._finish(work, call)

    @staticmethod
    def _finish(work, call):
        try:
            with servicer_lib.answering(call, "Predict"):
                return work.run().SerializeToString()
        finally:
            work.release()

    # -- ComputeKernel ------------------------------------------------------------------
    async def _kernel(self, request_iterator, context):
        async def run(body, call):
            future = self.small_pool.submit(self._prepare_kernel, body, call)
            try:
                work = await self._wait(future, call)
            except asyncio.CancelledError:
                future.add_done_callback(_release_unrun_work)
                raise
            pool = self.large_pool if work.estimate.large else self.small_pool
            tiles = work.run()
            future = None
            try:
                while True:
                    future = pool.submit(self._next_tiles, tiles, call)
                    batch = await self._wait(future, call)
                    if not batch:
                        return None
                    for tile in batch:
                        await self._write(context, tile, call)
            finally:
                if future is None or future.done():
                    work.release()
                else:  # the worker finishes its chunk first
                    future.add_done_callback(lambda _: work.release())

        return await self._call(context, self.servicer.max_message_bytes, run)

    def _prepare_kernel(self, body, call):
        with servicer_lib.answering(call, "ComputeKernel"):
            return self.servicer.prepare_kernel(decode(pb.ComputeKernelRequest, body), call)

    def _next_tiles(self, tiles, call):
        """The next serialized tiles (up to TILES_PER_HOP or one tile budget); [] at the end."""
        batch, size = [], 0
        with servicer_lib.answering(call, "ComputeKernel"):
            for tile in tiles:
                batch.append(tile.SerializeToString())
                size += len(batch[-1])
                if len(batch) >= TILES_PER_HOP or size >= self.servicer.limits.max_tile_bytes:
                    break
        return batch

    async def _write(self, context, message, call):
        try:
            async with asyncio.timeout(self.client_timeout):
                await context.write(message)
        except TimeoutError:
            call.cancel()
            raise Aborted(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"The client did not take the next tile within the server's client timeout of "
                f"{self.client_timeout:g} s; the call was ended to free the server.",
            ) from None

