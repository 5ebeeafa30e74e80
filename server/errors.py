"""The server core's failure vocabulary.

The core never imports grpc; the service maps each class 1:1 to the gRPC
status code named by ``code_name``. Messages are for users: they name the
offending field or thing and say what to change.
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "GanServeError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Unavailable",
]


class GanServeError(Exception):
    """Base class; ``code_name`` is the name of a ``grpc.StatusCode`` member."""

    code_name: str = "UNKNOWN"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidArgument(GanServeError):
    code_name = "INVALID_ARGUMENT"


class NotFound(GanServeError):
    code_name = "NOT_FOUND"


class ResourceExhausted(GanServeError):
    code_name = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(GanServeError):
    code_name = "DEADLINE_EXCEEDED"


class Unavailable(GanServeError):
    code_name = "UNAVAILABLE"


class Cancelled(GanServeError):
    code_name = "CANCELLED"


class Internal(GanServeError):
    code_name = "INTERNAL"
