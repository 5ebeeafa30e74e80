"""The OpenAPI 3.1 document of the HTTP API, built from the routes the app serves."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Route

from ganserve import __version__

from .errors import HTTP_STATUS
from .params import Param

JSON = "application/json"

__all__ = ["ERROR_SCHEMA", "documented", "openapi_document"]


def documented(params: Sequence[Param], *media: str) -> Callable[[Any], Any]:
    """Attach the OpenAPI description of an endpoint: its query ``params``, the
    ``media`` types of its 200 answer, the API's error body for its failures."""

    def decorate(fn: Any) -> Any:
        errors = {
            str(status): {"description": code, "content": {JSON: {"schema": ERROR_SCHEMA}}}
            for code, status in sorted(HTTP_STATUS.items(), key=lambda kv: kv[1])
            if code in ("INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND", "UNIMPLEMENTED",
                        "UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "DEADLINE_EXCEEDED")
        }  # fmt: skip
        fn.openapi = {
            "parameters": [p.schema() for p in params],
            "responses": {
                "200": {"description": "OK", "content": {m: {} for m in media}},
                **errors,
            },
        }
        return fn

    return decorate


ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what to change (the gRPC status message)"},
        "code": {"type": "string", "description": "the gRPC status code's name"},
    },
    "required": ["error", "code"],
}


def _summary(route: Route) -> str:
    doc = inspect.getdoc(route.endpoint) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """One operation per method of every ``Route`` (Mounts are not described): its
    summary is the endpoint's docstring's first paragraph; an endpoint with an
    ``openapi`` attribute (``{"parameters": [...], "responses": {...}}``, OpenAPI
    objects) adds its query parameters and responses."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            operation: dict[str, Any] = {
                "operationId": f"{route.name}_{method.lower()}",
                "summary": _summary(route),
                "responses": {"200": {"description": "OK"}},
            }
            params = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in route.param_convertors
            ]
            # what the endpoint says of itself: query parameters, media types, errors
            described = getattr(route.endpoint, "openapi", None) or {}
            params += described.get("parameters", [])
            if params:
                operation["parameters"] = params
            if "responses" in described:
                operation["responses"] = described["responses"]
            paths.setdefault(route.path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ganserve HTTP API",
            "version": __version__,
            "description": "Generated images over HTTP; see docs/http.md. With a token "
            "set, /v1 and /v2 (but /v2/health) need 'Authorization: Bearer <token>'.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
