"""Typed exceptions for gRPC status codes, shared by the sync and async clients.

The server maps every failure to one status code with a message naming the
offending field (see the proto). Callers catch the class that says what to do
(``ModelNotFound``: fix the name; ``Overloaded``: back off; ...) and still have
the raw ``code`` and ``details`` for logs, and ``retry_after_s`` when the server
asked callers to wait (gRPC's ``grpc-retry-pushback-ms`` trailing metadata).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import grpc

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "GanServeError",
    "InvalidRequest",
    "ModelNotFound",
    "Overloaded",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "server_pushback_s",
    "typed_errors",
]

PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRPC's standard key (gRFC A6)
_MAX_PUSHBACK_MS = 2**63 - 1  # gRPC core parses the value as an int64


class GanServeError(Exception):
    """Base of every error raised by the ganserve clients.

    ``code`` is the ``grpc.StatusCode`` of the failed call (``INVALID_ARGUMENT``
    for requests the client rejects before sending); ``details`` is the
    server's (or client's) message. ``retry_after_s`` is the server's pushback of
    the last attempt (``grpc-retry-pushback-ms`` trailing metadata) in seconds: how
    long it asks before the next try; ``None`` when it sent none, a negative one
    (do not retry) or one that is not a number.
    """

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        code: grpc.StatusCode | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(details)
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.details = details
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class ModelNotFound(GanServeError):
    """Unknown model name or version (``NOT_FOUND``)."""

    default_code = grpc.StatusCode.NOT_FOUND


class InvalidRequest(GanServeError, ValueError):
    """A field has a bad value (``INVALID_ARGUMENT``); the message names it."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(GanServeError):
    """The server's queue is full or the request too large (``RESOURCE_EXHAUSTED``).

    When the server says how long to back off, ``retry_after_s`` has it (seconds).
    """

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(GanServeError):
    """Server unreachable, shutting down, or model not loaded (``UNAVAILABLE``)."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(GanServeError):
    """The call took longer than its timeout (``DEADLINE_EXCEEDED``)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(GanServeError):
    """Missing or wrong bearer token (``UNAUTHENTICATED`` / ``PERMISSION_DENIED``)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class Cancelled(GanServeError):
    """The call was cancelled (``CANCELLED``)."""

    default_code = grpc.StatusCode.CANCELLED


_BY_CODE: dict[grpc.StatusCode, type[GanServeError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
    grpc.StatusCode.CANCELLED: Cancelled,
}


# gRPC core's words when the client itself refuses an answer over its receive limit (a
# server's refusal of a request says "SERVER: ...", or nothing before "Received")
_TOO_LARGE = re.compile(r"CLIENT: Received message larger than max \((\d+) vs\. (\d+)\)")


def from_rpc_error(error: grpc.RpcError) -> GanServeError:
    """The typed exception for a failed call (sync ``grpc.RpcError`` or ``AioRpcError``)."""
    # A sync RpcError that is also a grpc.Call carries code()/details(); be
    # defensive for the rare RpcError that does not (e.g. raised by an interceptor).
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else None
    if not details:  # str() of a grpc.Call is its multi-line repr, not a message
        details = f"{code.name} (no message)" if callable(code_fn) else str(error) or code.name
    cls = _BY_CODE.get(code, GanServeError)
    too_large = _TOO_LARGE.search(details) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
    if too_large:
        # gRPC's own refusal of an answer over this client's receive limit: not the
        # server's overload (``Overloaded`` says its queue is full), and no retry mends it
        return GanServeError(
            f"the server's answer ({too_large[1]} bytes) is larger than this client's "
            f"max_message_bytes ({too_large[2]}): make the client with a larger "
            "max_message_bytes, or ask for less",
            code,
        )
    pushback = server_pushback_s(error)
    retry_after = pushback if pushback is not None and pushback >= 0 else None
    return cls(details, code, retry_after)


def server_pushback_s(error: grpc.RpcError) -> float | None:
    """The server's ``grpc-retry-pushback-ms`` of a failed call, in seconds.

    ``None``: the trailing metadata has none. Negative: do not retry (the server sent
    a negative value, or one that is not a whole number of milliseconds: gRPC core,
    which reads the value before the application does, treats both the same).
    """
    trailing = getattr(error, "trailing_metadata", None)
    try:
        metadata = trailing() if callable(trailing) else None
    except Exception:  # an RpcError that is not a finished call; no metadata to read
        return None
    return _pushback_s(metadata)


def _pushback_s(metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    for key, value in metadata or ():
        if key != PUSHBACK_KEY:
            continue
        text = (value.decode("ascii", "replace") if isinstance(value, bytes) else value).strip()
        if not (text.isascii() and text.isdigit()) or int(text) > _MAX_PUSHBACK_MS:
            return -1.0
        return int(text) / 1000
    return None


@contextmanager
def typed_errors() -> Iterator[None]:
    """Raise the typed exception for a failed call inside the block (sync or async code)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
