"""ganserve's REST API for people: models as JSON, samples as pictures.

Each endpoint turns its query into the gRPC request message and plans it with the
gRPC servicer's own planners (``plan.py``, ``validate.py``), so a mistake gets the
same message (and status) over both protocols; it generates through the same
shared path (``generation.py``) and the model's batcher. Pictures are checked
against PIL's pixel limit before anything is generated, as the CLI checks them.

Every request is counted like an RPC: ``ganserve_requests_total`` and
``ganserve_request_seconds`` with the method ``http_<endpoint>``, and
``ganserve_inflight_requests``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ganserve.contract.limits import Limits

from ..errors import ServeError, Unavailable
from ..metrics import Metrics
from ..repository import LoadedModel, ModelRepository, ModelStatus
from .errors import error_response

__all__ = ["METHODS", "RestApi", "model_json"]

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


def model_json(status: ModelStatus) -> dict[str, Any]:
    """A repository status entry as the API's model object (the gRPC ModelInfo's fields)."""
    spec = status.spec
    return {
        "name": status.name,
        "version": status.version,
        "versions": list(status.versions),
        "state": status.state.value,
        "state_message": status.message or "",
        "device": status.device or "",
        "kind": spec.kind.value if spec else None,
        "latent_dim": spec.latent_dim if spec else None,
        "num_classes": spec.num_classes if spec else None,
        "class_names": list(spec.class_names) if spec else [],
        "image_shape": list(spec.image_shape) if spec else [],
        "value_range": [float(v) for v in spec.value_range] if spec else [],
        "dataset": spec.dataset if spec else "",
        "architecture": spec.architecture if spec else "",
        "quality": {k: float(v) for k, v in spec.quality.items()} if spec else {},
        "metadata": dict(spec.metadata) if spec else {},
    }


class _Call:
    """Per-request bookkeeping: the labels of its metrics, filled in as it goes."""

    __slots__ = ("code", "held", "model", "start")

    def __init__(self) -> None:
        self.model = ""
        self.code = "OK"
        self.start = time.perf_counter()
        self.held: LoadedModel | None = None


def _endpoint(method: str) -> Callable[[Any], Any]:
    """Count the request (in flight, status, latency) and turn failures into the API's
    error responses: ``ServeError`` as its status, anything else logged and INTERNAL."""

    def decorate(fn: Any) -> Any:
        @functools.wraps(fn)
        async def handle(self: RestApi, request: Request) -> Response:
            with self._track(method) as call:
                try:
                    return await fn(self, request, call)
                except ServeError as exc:
                    call.code = exc.code_name
                    return error_response(exc.code_name, exc.message)
                except Exception:
                    log.exception("%s failed", method)
                    call.code = "INTERNAL"
                    message = f"internal error in {method}: see the server log"
                    return error_response("INTERNAL", message)
                except BaseException:
                    call.code = "CANCELLED"
                    raise

        return handle

    return decorate


METHODS = ("http_list_models", "http_get_model")


class RestApi:
    """The ``/v1`` endpoints over one repository."""

    def __init__(self, repository: ModelRepository, metrics: Metrics, limits: Limits) -> None:
        self._repo = repository
        self._metrics = metrics
        self._limits = limits
        self._inflight = {m: metrics.inflight_requests.labels(method=m) for m in METHODS}

    def routes(self) -> list[Route]:
        """The endpoints; each route's name is its metrics method label."""
        return [
            Route("/v1/models", self.list_models, methods=["GET"], name="http_list_models"),
            Route("/v1/models/{name}", self.get_model, methods=["GET"], name="http_get_model"),
        ]

    @contextlib.contextmanager
    def _track(self, method: str) -> Iterator[_Call]:
        call = _Call()
        self._inflight[method].inc()
        try:
            yield call
        finally:
            if call.held is not None:
                call.held.release()
            self._inflight[method].dec()
            labels = {"model": call.model, "method": method}
            self._metrics.requests_total.labels(code=call.code, **labels).inc()
            self._metrics.request_seconds.labels(**labels).observe(time.perf_counter() - call.start)

    def _model(self, request: Request, call: _Call) -> LoadedModel:
        """The model of the path, held until the request is done (a reload closes it after)."""
        name = request.path_params["name"]
        try:
            model = self._repo.get(name, request.query_params.get("version", ""))
        except Unavailable:
            call.model = name  # a name the repository holds: a bounded label value
            raise
        call.model = model.spec.name
        model.acquire()
        call.held = model
        return model

    # ------------------------------------------------------------- endpoints

    @_endpoint("http_list_models")
    async def list_models(self, request: Request, call: _Call) -> Response:
        """The models (one entry each: the version served by default) and the limits."""
        lim = self._limits
        return JSONResponse(
            {
                "models": [model_json(s) for s in self._repo.statuses()],
                "limits": {
                    "max_images_per_request": lim.max_images_per_request,
                    "max_images_per_stream": lim.max_images_per_stream,
                    "max_stream_chunk": lim.stream_chunk_max,
                    "max_message_bytes": lim.max_message_bytes,
                    "max_request_bytes": lim.max_request_bytes,
                },
            }
        )

    @_endpoint("http_get_model")
    async def get_model(self, request: Request, call: _Call) -> Response:
        """One model: the version served by default, or ``?version=``."""
        status = self._repo.status(
            request.path_params["name"], request.query_params.get("version", "")
        )
        call.model = status.name
        return JSONResponse(model_json(status))
