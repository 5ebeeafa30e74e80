"""The HTTP API beside gRPC: one Starlette app, served by uvicorn on the gRPC server's loop.

``create_app`` assembles ganserve's REST API for people (``/v1``, see docs/http.md),
its OpenAPI document (``/openapi.json``), the routes of other protocols passed in as
``extra_routes`` (the KServe v2 REST routes) and the playground page (``static_dir``,
served at ``/``). In front of them, one gate:

- during the drain of a shutdown every request but ``/v2/health/*`` is refused with
  503 UNAVAILABLE (the gRPC server refuses new RPCs then too);
- with an auth token, ``/v1/...`` and ``/v2/...`` need ``Authorization: Bearer <token>``
  (the gRPC interceptor's check and messages), except ``/v2/health/...``: probes carry
  no token. The page, its files and ``/openapi.json`` are open: the page asks for the
  token and sends it with its API calls. Refusals are counted in
  ``ganserve_requests_total`` with the matched route's name as the method label
  (``http_sample``, ...; ``http_other`` when no route matches), so labels stay bounded.

Inside the gate, the routes that generate images are held to the server's budgets
(``http/budgets.py``) and cancelled when their client disconnects
(``http/disconnect.py``).

Routes of other modules find the server's state at ``request.app.state.ganserve``
(:class:`HttpState`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ganserve.contract.limits import Limits

from . import tracing
from .engine import Engine
from .http.budgets import HttpBudgets
from .http.disconnect import CancelOnDisconnect
from .http.errors import HTTP_STATUS, error_response
from .http.openapi import openapi_document
from .http.rest import RestApi
from .metrics import Metrics
from .repository import ModelRepository

__all__ = [
    "HTTP_STATUS",
    "OPEN_PREFIXES",
    "PROTECTED_PREFIXES",
    "HttpState",
    "create_app",
    "error_response",
]

log = logging.getLogger(__name__)

# Paths under these need the token (when one is set), except under OPEN_PREFIXES.
PROTECTED_PREFIXES = ("/v1", "/v2")
OPEN_PREFIXES = ("/v2/health/",)
OTHER_ROUTE = "http_other"  # the method label of a refused request that matches no route
# The routes that generate images: held to the server's budgets (``http/budgets.py``).
INFERENCE_ROUTES = (
    "http_sample",
    "http_interpolate",
    "http_arithmetic",
    "http_v2_infer",
    "http_v2_version_infer",
)


class HttpState:
    """What the HTTP routes need to know about the server beyond the repository."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        # The drain of a shutdown (after --shutdown-delay-s): new requests get 503.
        self.draining = False


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes)


class _Gate:
    """Shutdown and bearer-token checks in front of every route (pure ASGI: responses
    stream through untouched)."""

    def __init__(
        self,
        app: ASGIApp,
        state: HttpState,
        metrics: Metrics,
        auth_token: str | None,
        routes: Sequence[BaseRoute],
    ) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics
        self._names = _RouteNames(routes)
        self.checker: Any = None
        if auth_token:
            from .auth import BearerTokenInterceptor  # the gRPC check, reused as is

            self.checker = BearerTokenInterceptor(auth_token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.state.draining and not _under(path, OPEN_PREFIXES):
            response: Response = error_response("UNAVAILABLE", "the server is shutting down")
            await response(scope, receive, send)
            return
        if (
            self.checker is not None
            and _under(path, PROTECTED_PREFIXES)
            and not _under(path, OPEN_PREFIXES)
        ):
            # the interceptor reads gRPC metadata: (key, value) pairs, as the headers are
            headers = [("authorization", v) for k, v in scope["headers"] if k == b"authorization"]
            ok, reason = self.checker.authorized(headers)
            if not ok:
                log.debug("rejected %s %s: %s", scope["method"], path, reason)
                self.metrics.requests_total.labels(
                    model="", method=self._route_name(scope), code="UNAUTHENTICATED"
                ).inc()
                await error_response("UNAUTHENTICATED", reason)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _route_name(self, scope: Scope) -> str:
        return self._names(scope)


class _RouteNames:
    """The name of the route a request would reach: a fixed set, a safe label."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = routes

    def __call__(self, scope: Scope) -> str:
        for route in self.routes:
            if isinstance(route, Mount) and route.path == "":
                continue  # the static files at "/" match every path
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "name", None) or OTHER_ROUTE
        return OTHER_ROUTE


_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ganserve</title></head>
<body><h1>ganserve</h1>
<p>The playground page is not installed. The HTTP API is described by
<a href="/openapi.json">/openapi.json</a>; the models are listed at
<a href="/v1/models">/v1/models</a>.</p></body></html>
"""


async def _placeholder(request: Request) -> Response:
    return HTMLResponse(_PLACEHOLDER)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the API's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(
            "NOT_FOUND", f"{request.url.path}: no such endpoint; /openapi.json lists them"
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error_response(
            "UNIMPLEMENTED",
            f"{request.method} {request.url.path}: method not allowed; use {allowed}",
            {"Allow": allowed} if allowed else None,
        )
    code = next((c for c, s in HTTP_STATUS.items() if s == exc.status_code), "UNKNOWN")
    return error_response(code, str(exc.detail))


class _StaticFiles(StaticFiles):
    """The playground's files. Another method than GET or HEAD is refused 405 only where
    a file is: StaticFiles refuses it on every path, so a POST to a mistyped API path
    (``.../infre``) read "use GET, HEAD" where a GET read "no such endpoint"."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] in ("GET", "HEAD"):
            return await super().get_response(path, scope)
        # HEAD finds the file as GET would (index.html, the folder's 404.html) and reads
        # nothing; no file there raises 404
        found = await super().get_response(path, {**scope, "method": "HEAD"})
        if found.status_code == 404:
            raise HTTPException(404)
        raise HTTPException(405, headers={"Allow": "GET, HEAD"})


class _StaticMount(Mount):
    """The static files at ``/``, for paths no API route knows. A plain mount matches
    every path fully, so a known path with the wrong method (GET on ``.../infer``) would
    be served from the files (404) instead of answered 405 with its ``Allow``."""

    def __init__(self, api: tuple[BaseRoute, ...], *, app: ASGIApp, name: str) -> None:
        super().__init__("", app=app, name=name)
        self._api = api

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if any(route.matches(scope)[0] != Match.NONE for route in self._api):
            return Match.NONE, {}
        return super().matches(scope)


def create_app(
    repository: ModelRepository,
    metrics: Metrics,
    limits: Limits,
    *,
    auth_token: str | None,
    extra_routes: Sequence[BaseRoute] = (),
    static_dir: Path | None = None,
    engine: Engine | None = None,
) -> Starlette:
    """The HTTP API of one server (see the module docstring).

    ``extra_routes`` come after ganserve's ``/v1`` routes and ``/openapi.json`` and
    before the static files at ``/`` (which match any other path). ``static_dir``:
    the playground's folder; None or missing: a placeholder page at ``/``.
    """
    state = HttpState(repository)
    rest = RestApi(repository, metrics, limits, engine)
    routes: list[BaseRoute] = [*rest.routes(), *extra_routes]
    document = openapi_document(routes)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes.insert(0, Route("/openapi.json", openapi, methods=["GET"], name="http_openapi"))
    if static_dir is not None and static_dir.is_dir():
        files = _StaticFiles(directory=static_dir, html=True)
        routes.append(_StaticMount(tuple(routes), app=files, name="static"))
    else:
        routes.append(Route("/", _placeholder, methods=["GET"], name="http_page"))
    gate = Middleware(_Gate, state=state, metrics=metrics, auth_token=auth_token, routes=routes)
    middleware = [Middleware(tracing.AsgiTracing), gate]  # tracing outermost: refusals too
    names = _RouteNames(routes)
    budgets = None if engine is None else engine.budgets
    if budgets is not None:  # after the gate: unauthenticated requests hold nothing
        middleware.append(
            Middleware(
                HttpBudgets,
                budgets=budgets,
                metrics=metrics,
                routes=INFERENCE_ROUTES,
                route_name=names,
            )
        )
    # inside the budgets: a request it cancels still gives its place back there
    middleware.append(Middleware(CancelOnDisconnect, routes=INFERENCE_ROUTES, route_name=names))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.ganserve = state
    return app
