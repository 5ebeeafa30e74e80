"""The server core's failure vocabulary.

The core never imports grpc; the service maps each class 1:1 to the gRPC
status code named by ``code_name``. Messages are for users: they name the
offending field or thing and say what to change. (The client library's errors are
``ganserve.clients.errors``; ``ServeError`` is the server's base, a different class.)
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "ServeError",
    "Unavailable",
]


class ServeError(Exception):
    """Base class; ``code_name`` is the name of a ``grpc.StatusCode`` member."""

    code_name: str = "UNKNOWN"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidArgument(ServeError):
    code_name = "INVALID_ARGUMENT"


class NotFound(ServeError):
    code_name = "NOT_FOUND"


class ResourceExhausted(ServeError):
    code_name = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServeError):
    code_name = "DEADLINE_EXCEEDED"


class Unavailable(ServeError):
    code_name = "UNAVAILABLE"


class Cancelled(ServeError):
    code_name = "CANCELLED"


class Internal(ServeError):
    code_name = "INTERNAL"
