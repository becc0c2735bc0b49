"""Errors that carry the gRPC status code they are answered with, and bounded echoes
of request fields in their messages."""

import grpc

MAX_DETAILS = 1000  # characters of a status message (a status trailer is small)
MAX_SHOWN = 64  # characters of one request field echoed in a message


class ServingError(Exception):
    """An error answered with `code` (a grpc.StatusCode) and its message."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServingError):
    """Known but not ready yet (a model still loading): the client should retry."""

    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(ServingError):
    """The client went away; nobody reads the answer."""

    code = grpc.StatusCode.CANCELLED


def shown(value, limit=MAX_SHOWN):
    """repr(value) for a message, cut to `limit` characters (saying how long it was)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(value)} characters)"


def details(message):
    """A status message of at most MAX_DETAILS characters."""
    message = str(message)
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 15] + " ... (truncated)"
