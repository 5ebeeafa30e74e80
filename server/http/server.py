"""uvicorn on the running event loop: the HTTP API shares the loop of grpc.aio.

One loop for both protocols: the batchers, the repository and the metrics are used
from one thread, as the gRPC servicer uses them. The socket is bound here, before
uvicorn starts, so that a port in use is a clear start-up error (exit 1, as for the
gRPC port) and port 0 reports the port it got. The ganserve server owns SIGTERM and
SIGINT (its drain covers both protocols): uvicorn's own signal capture is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

__all__ = ["HttpServer", "bind_socket"]

log = logging.getLogger(__name__)

# Startup of uvicorn on an already bound socket takes milliseconds; the wait for it
# polls at this interval (uvicorn offers no event for "started").
_STARTUP_POLL_S = 0.005


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port); ``OSError`` if it cannot be.
    ``reuse_port``: shared with the other workers of a ``--workers`` supervisor."""
    host = host.strip("[]")  # "[::1]" as gRPC writes it
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Rebinding right after a restart (TIME_WAIT) is fine; a live listener still
        # holds the port (no SO_REUSEPORT: sharing a port must fail, as for gRPC).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The ganserve server's handlers drain gRPC and HTTP together: uvicorn must not
        # replace them (it would, from the main thread) nor re-raise signals on exit.
        yield


class HttpServer:
    """An ASGI app served by uvicorn as a task of the running loop."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        log_level: str = "INFO",
        access_log: bool = False,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
    ) -> None:
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        tls: dict[str, Any] = {}
        if tls_cert is not None:
            tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
            if tls_client_ca is not None:  # mutual TLS, as for gRPC
                tls.update(ssl_ca_certs=str(tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            app,
            loop="none",  # the running loop: this server never makes one
            lifespan="off",  # the ganserve server starts and stops what the app uses
            ws="none",
            log_config=None,  # records go to ganserve's logging set-up
            log_level=log_level.lower(),
            access_log=access_log,
            server_header=False,
            **tls,
        )
        config.load()  # TLS files are read here: a bad one fails the start, not a request
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._server.config.is_ssl else "http"

    async def start(self) -> None:
        """Serve; returns once the socket accepts connections."""
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self._sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(_STARTUP_POLL_S)
        if self._task.done():  # startup failed: its exception
            self._task.result()
            raise RuntimeError("the HTTP server stopped during startup")

    async def stop(self, grace_period_s: float) -> None:
        """Stop accepting, let in-flight requests finish within ``grace_period_s``, then
        cancel what is left; idempotent."""
        if self._task is None:
            self._sock.close()
            return
        self._server.config.timeout_graceful_shutdown = math.ceil(grace_period_s)
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def force_stop(self) -> None:
        """A second SIGTERM: stop without waiting for in-flight requests."""
        self._server.should_exit = True
        self._server.force_exit = True
