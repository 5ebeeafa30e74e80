"""The server-wide budgets on the HTTP edges (``/v1`` pictures, KServe ``infer``).

The gRPC edge holds every call to ``budget.ServerBudgets``: calls in flight, response
bytes held, and a time limit on a reader that takes nothing. Without the same on HTTP,
clients there could hold any number of requests and replies (a 12.8 MB ``.npy`` each,
for a reader that never reads) while gRPC clients were refused. This ASGI middleware,
in front of the inference routes only, holds them to the same limits:

- **requests in flight**: at most the server's in-flight limit (the adaptive one, at
  most ``--max-inflight-rpcs``) at once on HTTP; more get 429 with ``Retry-After``;
- **response bytes**: each body message reserves its bytes in the server's response
  budget (``--max-buffered-bytes``, shared with gRPC) until the server has handed it
  to the connection. A handler reserves its whole reply before it returns
  (``reserve_reply``), so one that does not fit is refused and counted there; a reply
  that no handler reserved and that does not fit is replaced by a 429 (its headers are
  held back until its body is known, so the status can still change);
- **a reader that takes nothing** for ``--stream-stall-timeout-s``: the connection is
  closed and its bytes given back.

Refusals are counted in ``ganserve_rejected_total{reason}`` and, when no handler ran
(the in-flight limit), in ``ganserve_requests_total`` (``RESOURCE_EXHAUSTED``, under the
route's name); a reply its handler reserved is counted by its handler, refused or not.
Pure ASGI: bodies pass through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..budget import ServerBudgets
from ..engine import Engine
from ..errors import ResourceExhausted
from ..metrics import Metrics
from .errors import error_response

__all__ = ["HttpBudgets", "reserve_reply"]

log = logging.getLogger(__name__)


# Body pieces a reply is sent in: uvicorn waits for the client between them once its
# socket buffer is past its high-water mark (64 KiB), so this much more stays queued.
_PIECE = 256 * 1024


# Scope keys: the request is held to the budgets here, and the bytes its handler has
# reserved for its reply (``reserve_reply``), which the first body message then uses.
_HELD = "ganserve.budgets"
_RESERVED = "ganserve.reply_bytes"


def reserve_reply(engine: Engine | None, scope: Scope, response: Any, model: str) -> None:
    """Reserve ``response``'s body in the response budget from its handler, while the
    request is still counted there: a reply that does not fit raises RESOURCE_EXHAUSTED
    (counted as such, and in ``ganserve_rejected_total``) instead of leaving as a 429
    after the handler has counted it OK. Only where ``HttpBudgets`` holds the request,
    which then sends the reply on this reservation."""
    body = getattr(response, "body", None)
    if engine is None or engine.budgets is None or not scope.get(_HELD):
        return
    if not isinstance(body, bytes | bytearray):
        return
    engine.reserve_now(engine.budgets.buffered, len(body), "this reply", model)
    scope[_RESERVED] = scope.get(_RESERVED, 0) + len(body)


class StalledReader(Exception):
    """The client took no part of a reply for ``seconds``: give up on the connection."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the client took nothing of a reply for {seconds:g} s")
        self.seconds = seconds


class HttpBudgets:
    """Budgets for the routes named in ``routes`` (``route_name(scope)`` tells)."""

    def __init__(
        self,
        app: ASGIApp,
        budgets: ServerBudgets,
        metrics: Metrics,
        routes: Collection[str],
        route_name: Callable[[Scope], str],
    ) -> None:
        self.app = app
        self.budgets = budgets
        self.metrics = metrics
        self.routes = frozenset(routes)
        self.route_name = route_name
        self.inflight = 0  # inference requests being handled on HTTP

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_name(scope)
        if route not in self.routes:
            await self.app(scope, receive, send)
            return
        budgets = self.budgets
        if self.inflight >= budgets.inflight_limit:
            refusal = budgets.inflight_refusal(self.inflight, "HTTP inference requests", 1.0)
            await self._refuse(scope, receive, send, route, refusal)
            return
        self.inflight += 1
        scope[_HELD] = True
        try:
            await self.app(scope, receive, self._held(scope, receive, send, route))
        except StalledReader as exc:
            # Returning without completing the reply makes uvicorn close the connection
            # (one log line), which frees what it still buffered for this client.
            log.info("%s: %s (--stream-stall-timeout-s): closing it", route, exc)
            self.metrics.rejected_total.labels("", "stream_stalled").inc()
        finally:
            self.inflight -= 1
            unused = scope.pop(_RESERVED, 0)  # a reply its handler reserved, never sent
            if unused:
                budgets.buffered.release(unused)

    def _held(self, scope: Scope, receive: Receive, send: Send, route: str) -> Send:
        """``send`` with each body's bytes held in the response budget until the
        connection has taken them, the headers held back until the first body is known
        to fit. A body goes in pieces: uvicorn writes a message to the socket's buffer
        whole and waits for the client only before the next, so one message would leave
        the whole reply in memory, out of the budget, for a client that never reads."""
        buffered = self.budgets.buffered
        stall = self.budgets.stream_stall_s
        start: Message | None = None
        refused = False
        # An error reply (a status of 400 or more) goes outside the budget: its body is a
        # short JSON message, at most one per request in flight, and with the budget full
        # a 404 must still be a 404 (not a 429 counted twice).
        outside = False

        async def forward(message: Message) -> None:
            if not stall:
                await send(message)
                return
            try:
                await asyncio.wait_for(send(message), stall)
            except TimeoutError:
                raise StalledReader(stall) from None

        async def held(message: Message) -> None:
            nonlocal start, refused, outside
            if refused:  # the reply was replaced by a refusal: drop the rest of it
                return
            if message["type"] == "http.response.start":
                start = message
                outside = message.get("status", 200) >= 400
                return
            if message["type"] != "http.response.body":
                await forward(message)
                return
            body = message.get("body", b"")
            size = len(body)
            reserved = scope.pop(_RESERVED, 0)
            hold = 0  # what this message holds in the budget until it has left
            try:
                if outside:
                    if reserved:
                        buffered.release(reserved)
                elif reserved:  # its handler reserved the reply: the bytes are held already
                    hold = reserved
                    if size > reserved:
                        await buffered.acquire(size - reserved, stall or None)
                    elif size < reserved:
                        buffered.release(reserved - size)
                    hold = size
                elif start is None:  # a later part: wait for room
                    await buffered.acquire(size, stall or None)
                    hold = size
                else:  # nothing sent yet: the status can still change
                    try:
                        buffered.acquire_now(size, "this reply")
                    except ResourceExhausted as exc:
                        refused = True
                        # its handler has counted the request already
                        await self._refuse(scope, receive, send, route, exc, counted=True)
                        return
                    hold = size
                if start is not None:
                    first, start = start, None
                    await forward(first)
                more = message.get("more_body", False)
                at = 0
                while True:
                    piece, at = body[at : at + _PIECE], at + _PIECE
                    last = at >= size
                    await forward(
                        {"type": "http.response.body", "body": piece, "more_body": more or not last}
                    )
                    if last:
                        break
            finally:
                if hold:
                    buffered.release(hold)

        return held

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        refusal: ResourceExhausted,
        counted: bool = False,
    ) -> None:
        self.metrics.rejected_total.labels("", refusal.reason).inc()
        if not counted:  # no handler ran: the request is counted here
            labels = {"model": "", "method": route, "code": "RESOURCE_EXHAUSTED"}
            self.metrics.requests_total.labels(**labels).inc()
        response: Any = error_response(
            "RESOURCE_EXHAUSTED", refusal.message, retry_after_s=refusal.retry_after_s
        )
        await response(scope, receive, send)
