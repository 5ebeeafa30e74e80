"""The server core's failure vocabulary.

The core never imports grpc; the service maps each class 1:1 to the gRPC
status code named by ``code_name``. Messages are for users: they name the
offending field or thing and say what to change. (The client library's errors are
``ganserve.clients.errors``; ``ServeError`` is the server's base, a different class.)
"""

from __future__ import annotations

import math

__all__ = [
    "NO_RETRY",
    "PUSHBACK_KEY",
    "Cancelled",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "ServeError",
    "Unavailable",
    "pushback_trailer",
    "retry_after",
]

# gRPC's standard trailer telling a client when to retry (gRFC A6): gRPC's own retries
# wait this long before the next attempt.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
# The shortest hint given: an estimate of 0 (nothing measured yet) still asks for a pause.
_MIN_PUSHBACK_MS = 10
# ``retry_after_s`` of a failure that a retry cannot mend before someone acts (a model
# whose file failed to load): a negative pushback, which stops gRPC's own retries (gRFC
# A6), and no ``Retry-After`` on HTTP.
NO_RETRY = -1.0


class ServeError(Exception):
    """Base class; ``code_name`` is the name of a ``grpc.StatusCode`` member.
    ``retry_after_s``: when a retry should find things changed, if known (seconds;
    ``NO_RETRY``: not before someone acts)."""

    code_name: str = "UNKNOWN"
    retry_after_s: float | None = None

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidArgument(ServeError):
    code_name = "INVALID_ARGUMENT"


class NotFound(ServeError):
    code_name = "NOT_FOUND"


class ResourceExhausted(ServeError):
    """Refused for want of capacity, never for what the request says: worth a retry.

    ``reason`` labels ``ganserve_rejected_total``; ``retry_after_s``, when known, is
    when there should be room again (gRPC: the ``grpc-retry-pushback-ms`` trailer,
    which gRPC's own retries honour; HTTP: ``Retry-After``)."""

    code_name = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, reason: str = "other", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServeError):
    code_name = "DEADLINE_EXCEEDED"


class Unavailable(ServeError):
    """Not serving now: shutting down, still loading (worth a retry), or failed to load
    (``retry_after_s=NO_RETRY``: a retry would fail the same way until the file is
    fixed and reloaded)."""

    code_name = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Cancelled(ServeError):
    code_name = "CANCELLED"


class Internal(ServeError):
    code_name = "INTERNAL"


def retry_after(exc: BaseException) -> float | None:
    """Seconds after which a retry of the refused request should find room, if known
    (``NO_RETRY``: a retry is futile)."""
    return exc.retry_after_s if isinstance(exc, ServeError) else None


def pushback_trailer(retry_after_s: float | None) -> tuple[tuple[str, str], ...]:
    """The gRPC trailing metadata carrying ``retry_after_s`` (none when unknown; a
    negative pushback, "do not retry", for ``NO_RETRY``)."""
    if retry_after_s is None:
        return ()
    if retry_after_s < 0:
        return ((PUSHBACK_KEY, "-1"),)
    return ((PUSHBACK_KEY, str(max(_MIN_PUSHBACK_MS, math.ceil(retry_after_s * 1000)))),)
