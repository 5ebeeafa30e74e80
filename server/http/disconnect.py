"""A client that leaves cancels its request's work (the inference routes on HTTP).

A gRPC client that gives up cancels its call, and the batcher drops the request before
computing it. Over HTTP the only sign is the connection closing: uvicorn tells the app
through ``receive()`` (an ``http.disconnect`` message), which a handler that awaits its
images never calls. Without a listener a request whose client had gone (a timeout in
its HTTP library, a proxy's upstream timeout, Ctrl-C on curl) was computed and encoded
to its end, for nobody, while the clients still there waited behind it.

This ASGI middleware runs the route in a task of its own and, once the route has read
the request's body, listens for the disconnect beside it; when it comes the route's
task is cancelled. The route's handler then counts the request ``CANCELLED`` (as a
gRPC cancel is counted) and the batcher drops it if it has not run yet. Reading the
body stays the route's own (its size limit, ``ClientDisconnect`` while it uploads): the
listener starts only after the last part of the body was delivered, or at once for a
request that has none, keeping that empty part for the route should it ask.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import tracing

__all__ = ["CancelOnDisconnect"]


def _has_body(scope: Scope) -> bool:
    """Does the request announce a body (a length other than 0, or a chunked one)?"""
    for key, value in scope["headers"]:
        if key == b"transfer-encoding":
            return True
        if key == b"content-length" and value.strip() not in (b"0", b""):
            return True
    return False


class _Listener:
    """``receive`` for the route, and the wait for the client's disconnect beside it."""

    def __init__(self, receive: Receive, has_body: bool) -> None:
        self._receive = receive
        self._kept: Message | None = None  # read by the listener, not yet by the route
        self._body_read = asyncio.Event()
        if not has_body:
            self._body_read.set()

    async def receive(self) -> Message:
        if self._kept is not None:
            message, self._kept = self._kept, None
            return message
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._body_read.set()
        return message

    async def disconnected(self) -> None:
        """Return when the client has gone (after the route has read the body)."""
        await self._body_read.wait()
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            # the empty body of a request without one, read before the route asked
            self._kept = message


class CancelOnDisconnect:
    """Cancel the routes named in ``routes`` when their client disconnects."""

    def __init__(
        self, app: ASGIApp, routes: Collection[str], route_name: Callable[[Scope], str]
    ) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.route_name = route_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.route_name(scope) not in self.routes:
            await self.app(scope, receive, send)
            return
        listener = _Listener(receive, _has_body(scope))
        answered = started = False

        async def sent(message: Message) -> None:
            nonlocal answered, started
            started = True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True

        route = asyncio.ensure_future(self.app(scope, listener.receive, sent))
        gone = asyncio.ensure_future(listener.disconnected())
        try:
            await asyncio.wait((route, gone), return_when=asyncio.FIRST_COMPLETED)
            # Once the response is complete uvicorn answers receive() with a disconnect
            # too: that one is no client leaving.
            if not route.done() and not answered:
                route.cancel()
                await asyncio.wait((route,))  # its clean-up done (a cancel here is ours)
                if not route.cancelled():
                    route.exception()  # retrieved: nobody is there to answer
                if not started:  # else the span has the status it started to send
                    tracing.client_left(tracing.current())
                return
            await route  # done, or finishing after its response: its own error, if any
        finally:
            # Also when this task is cancelled (the server stopping): the route goes
            # with it, its clean-up done before the request is over.
            for task in (gone, route):
                task.cancel()
            await asyncio.gather(route, gone, return_exceptions=True)
