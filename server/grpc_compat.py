"""What ganserve's gRPC servicers share beyond grpc's public API, kept in one place.

``SendFailed`` is grpc's own error for a send on a call the client has already left
(``grpc._cython.cygrpc.ExecuteBatchError``): not public API, so it may move or vanish
in a grpc release. The servicers catch it to turn such a send into the cancellation it
is instead of an ERROR traceback in grpc's log; imported here only, a grpc that drops
it changes one module, and ``SEND_FAILED_IS_GRPCS`` (pinned by a test) says so at once.

The helpers both servicers (``ganserve.v1`` and KServe's) use: request parsers that
answer undecodable bytes with INVALID_ARGUMENT, the call's deadline, status codes by
name.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from .errors import InvalidArgument

__all__ = [
    "CODES",
    "NO_DEADLINE_S",
    "SEND_FAILED_IS_GRPCS",
    "SendFailed",
    "Undecodable",
    "add_health_servicer",
    "deadline",
    "deadline_passed",
    "lenient_parser",
    "when_call_ends",
]

try:
    from grpc._cython.cygrpc import ExecuteBatchError as SendFailed

    SEND_FAILED_IS_GRPCS = True
except ImportError:  # pragma: no cover - a grpc without it: nothing to translate

    class SendFailed(Exception):  # type: ignore[no-redef]
        """Never raised: stands in for grpc's class so that ``except`` clauses still work."""

    SEND_FAILED_IS_GRPCS = False

# gRPC status codes by name (``ServeError.code_name``).
CODES = {code.name: code for code in grpc.StatusCode}
# time_remaining() of a call without a deadline is None or effectively infinite.
NO_DEADLINE_S = 1e7


class Undecodable:
    """Request bytes that are not a valid message: the handler answers INVALID_ARGUMENT."""

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name, self.error = type_name, error

    def invalid(self) -> InvalidArgument:
        return InvalidArgument(f"request: not a valid {self.type_name} message ({self.error})")


def lenient_parser(cls: Any) -> Callable[[bytes], Any]:
    """A request deserializer for message class ``cls`` that returns an ``Undecodable``
    instead of raising: grpc answers a parser's exception with UNKNOWN and logs it."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return Undecodable(cls.DESCRIPTOR.full_name, str(exc) or "undecodable bytes")

    return parse


def deadline(context: aio.ServicerContext) -> float | None:
    """The RPC deadline as a ``time.monotonic()`` instant, or None."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


# A cancel this close to the call's deadline is its expiry on the client's clock: the
# server's copy of the deadline starts when it has read the call's headers, later than
# the client's (under load, while the call waited to be read), so the client gives up
# first and its cancel arrives while the server's deadline still runs.
DEADLINE_SLACK_S = 0.25


def deadline_passed(context: aio.ServicerContext) -> bool:
    """Whether the RPC has a deadline and it has passed, or all but ``DEADLINE_SLACK_S``
    of it (a cancel then is its expiry, counted DEADLINE_EXCEEDED, not CANCELLED)."""
    with contextlib.suppress(Exception):  # the call may be torn down already
        remaining = context.time_remaining()
        return remaining is not None and remaining <= DEADLINE_SLACK_S
    return False


def when_call_ends(context: aio.ServicerContext) -> Callable[[Callable[[], None]], None]:
    """A registrar of callables to run when the call ends (sent, cancelled or expired):
    the engine's ``on_sent`` for a unary call. gRPC serializes and sends a unary reply
    after the handler has returned, and a client that reads nothing keeps it in gRPC
    core until then, so a reply's bytes stay counted in the response budget until the
    call ends."""

    def register(release: Callable[[], None]) -> None:
        context.add_done_callback(lambda _context: release())

    return register


def add_health_servicer(servicer: Any, server: aio.Server) -> None:
    """Register grpc's standard health servicer (``grpc_health.v1``) with a request
    parser that answers undecodable bytes with INVALID_ARGUMENT, as every other service
    here does: with grpc's generated registration a parser error is UNKNOWN and an
    ERROR traceback in the log, once per probe."""
    from grpc_health.v1 import health_pb2

    parse = lenient_parser(health_pb2.HealthCheckRequest)
    serialize = health_pb2.HealthCheckResponse.SerializeToString

    async def refuse_undecodable(request: Any, context: aio.ServicerContext) -> None:
        if type(request) is Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.invalid()))

    async def check(request: Any, context: aio.ServicerContext) -> Any:
        await refuse_undecodable(request, context)
        return await servicer.Check(request, context)

    async def watch(request: Any, context: aio.ServicerContext) -> None:
        await refuse_undecodable(request, context)
        await servicer.Watch(request, context)  # writes its replies with context.write

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=parse, response_serializer=serialize
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=parse, response_serializer=serialize
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
