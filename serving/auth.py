"""Bearer-token authentication: the token check and an asyncio server interceptor.

Calls must carry the metadata `authorization: Bearer <token>` with one of the
configured tokens (compared in constant time). The interceptor answers every
other KernelService call UNAUTHENTICATED from the call's headers alone: its
handler neither waits for the request body nor decodes it, so a caller without
a token holds no worker, cannot stall the server by never sending a body and
cannot make it log. The standard health service passes the interceptor: its
overall status "" stays open for load balancers, and it checks the token itself
for the status of a named model (see health.py). Reflection, when enabled, only
describes the public schema of protos/ and stays open.
"""

import hmac
import os
import stat

import grpc

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
DENIED = "Missing or invalid bearer token: send metadata 'authorization: Bearer <token>'."


def read_tokens(path):
    """Tokens from a file, one per line (blank lines and # comments ignored).

    Raises ValueError when the file cannot be read or holds no token.
    """
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the token file {path}: {error}") from None
    if not tokens:
        raise ValueError(f"the token file {path} holds no token; write one token per line.")
    return tokens


def exposure(path):
    """A warning when the token file can be read by other users of the machine, else None."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"the token file {path} is readable by other users (mode {stat.filemode(mode)}); chmod 600 it."
    return None


class Tokens:
    """Args: tokens, a non-empty list of accepted tokens (str)."""

    def __init__(self, tokens):
        tokens = [t for t in tokens if t]
        if not tokens:
            raise ValueError("Bearer-token authentication needs at least one non-empty token.")
        self._tokens = [t.encode() for t in tokens]

    def valid(self, metadata):
        """Whether the call's invocation metadata carries one of the tokens."""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                given = value[len("Bearer ") :].encode()
                return any(hmac.compare_digest(given, token) for token in self._tokens)
        return False


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    """Answers KernelService calls without a valid token UNAUTHENTICATED, before the
    request body. Args: tokens, a `Tokens`."""

    def __init__(self, tokens):
        self.tokens = tokens

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method.startswith(OPEN_PREFIXES)
            or self.tokens.valid(handler_call_details.invocation_metadata)
        ):
            return handler
        return _denial(handler.response_streaming)


async def _deny(request_iterator, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


def _denial(response_streaming):
    """A handler that never reads its request: declared request-streaming, so that
    gRPC hands it the call before any body arrives."""
    if response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny)
    return grpc.stream_unary_rpc_method_handler(_deny)
