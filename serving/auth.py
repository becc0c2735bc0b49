"""Bearer-token authentication as a gRPC server interceptor.

Calls must carry the metadata `authorization: Bearer <token>` with one of the
configured tokens (compared in constant time), else they are answered
UNAUTHENTICATED before any handler runs. The standard health and reflection
services stay open: load balancers and orchestrators probe health without
credentials, and reflection only describes the public schema of protos/.
"""

import hmac

import grpc

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def read_tokens(path):
    """Tokens from a file, one per line (blank lines and # comments ignored)."""
    with open(path, encoding="utf-8") as f:
        tokens = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ValueError(f"{path} holds no token; write one token per line.")
    return tokens


class BearerTokenAuth(grpc.ServerInterceptor):
    """Args: tokens, a non-empty list of accepted tokens (str)."""

    def __init__(self, tokens):
        tokens = [t for t in tokens if t]
        if not tokens:
            raise ValueError("BearerTokenAuth needs at least one non-empty token.")
        self._tokens = [t.encode() for t in tokens]

    def _valid(self, metadata):
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                given = value[len("Bearer ") :].encode()
                return any(hmac.compare_digest(given, token) for token in self._tokens)
        return False

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIXES) or self._valid(
            handler_call_details.invocation_metadata
        ):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        return None if handler is None else _unauthenticated(handler)


def _unauthenticated(handler):
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""

    def deny(request, context):
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "Missing or invalid bearer token: send metadata 'authorization: Bearer <token>'.",
        )

    kwargs = dict(
        request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
