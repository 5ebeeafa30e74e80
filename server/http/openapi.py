"""The OpenAPI 3.1 document of the HTTP API, built from the routes the app serves."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Route

from ganserve import __version__

__all__ = ["openapi_document"]


def _summary(route: Route) -> str:
    doc = inspect.getdoc(route.endpoint) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """One operation per method of every ``Route`` (Mounts are not described)."""
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
            if params:
                operation["parameters"] = params
            paths.setdefault(route.path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ganserve HTTP API", "version": __version__},
        "paths": paths,
    }
