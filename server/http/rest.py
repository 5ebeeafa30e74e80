"""ganserve's REST API for people: models as JSON, samples as pictures.

Each endpoint turns its query into the gRPC request message and plans it with the
gRPC servicer's own planners (``plan.py``, ``validate.py``), so a mistake gets the
same message (and status) over both protocols; it generates on the same serving
engine (``engine.py``: the seed rule's latents, the model's batcher, the non-finite
output check). Pictures are checked against PIL's pixel limit before anything is
generated, as the CLI checks them, and drawn in a thread; ``.npy`` answers (the
float32 images as they are) against ``max_message_bytes``, as gRPC's and KServe's.

Every request is counted like an RPC: ``ganserve_requests_total`` and
``ganserve_request_seconds`` with the method ``http_<endpoint>``, and
``ganserve_inflight_requests``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ganserve.clients.images import (
    GIF_MAX_FRAME_MS,
    GIF_MIN_FRAME_MS,
    MAX_GIF_FPS,
    MIN_GIF_FPS,
    GifTooSlow,
)
from ganserve.contract import labels as label_rule
from ganserve.contract.limits import Limits
from ganserve.imaging import to_uint8
from ganserve.v1 import generator_pb2 as pb

from .. import tracing
from ..calls import Call, CallCounter
from ..engine import Engine
from ..errors import InvalidArgument, ServeError, retry_after
from ..generation import plan_offloaded, sample_inputs
from ..latent import one_hot
from ..metrics import Metrics
from ..plan import plan_arithmetic, plan_interpolate, plan_sample
from ..repository import LoadedModel, ModelRepository, ModelSpec, ModelStatus
from ..validate import check_label
from . import pictures
from .budgets import reserve_reply
from .errors import error_response
from .openapi import documented
from .params import ARITHMETIC, INTERPOLATE, SAMPLE, VERSION, Query, parse_terms, version_of

__all__ = ["METHODS", "RestApi", "model_json"]

log = logging.getLogger(__name__)


async def _drawn(fmt: str, images: np.ndarray, draw: Callable[[], bytes]) -> bytes:
    """``draw()``'s picture of ``images``, made in a thread and traced as
    ``ganserve.encode`` (as gRPC's encoding is)."""
    with tracing.encode_span(fmt, images.shape[0]):  # a no-op while tracing is off
        return await asyncio.to_thread(draw)


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
        "runtime": status.plan.as_fields() if status.plan is not None else None,
    }


def _endpoint(method: str) -> Callable[[Any], Any]:
    """Count the request (in flight, status, latency) and turn failures into the API's
    error responses: ``ServeError`` as its status, anything else logged and INTERNAL."""

    def decorate(fn: Any) -> Any:
        @functools.wraps(fn)
        async def handle(self: RestApi, request: Request) -> Response:
            with self._calls.track(method) as call:
                try:
                    response = await fn(self, request, call)
                    reserve_reply(self._engine, request.scope, response, call.model)
                    return response
                except ServeError as exc:
                    call.code = exc.code_name
                    return error_response(
                        exc.code_name, exc.message, retry_after_s=retry_after(exc)
                    )
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


METHODS = (
    "http_list_models",
    "http_get_model",
    "http_sample",
    "http_interpolate",
    "http_arithmetic",
)
PNG, GIF, NPY, JSON = "image/png", "image/gif", "application/octet-stream", "application/json"
_METHOD_NUMBER = {"slerp": pb.INTERPOLATION_METHOD_SLERP, "lerp": pb.INTERPOLATION_METHOD_LERP}


def _picture(body: bytes, media: str, spec: ModelSpec, **headers: Any) -> Response:
    extra = {"X-Ganserve-Model": spec.name, "X-Ganserve-Version": spec.version}
    extra.update({f"X-Ganserve-{k.title()}": str(v) for k, v in headers.items() if v is not None})
    return Response(body, media_type=media, headers=extra)


def _head(request: Request, media: str, spec: ModelSpec, **headers: Any) -> Response | None:
    """A HEAD request's answer once its request is checked, or None for GET: the
    headers a GET would carry, without computing the picture (a monitor or a link
    checker that sends HEAD costs no generator run). No Content-Length: the picture's
    size is known only once it is drawn."""
    if request.method != "HEAD":
        return None
    response = _picture(b"", media, spec, **headers)
    del response.headers["content-length"]
    return response


def _blend(query: Query, labels: list[int], spec: ModelSpec) -> tuple[int, float] | None:
    """``blend_label`` and ``blend`` of a sample: (class, weight) or None."""
    other = query.label("blend_label", spec)
    weight = query.number("blend")  # its default, 0.5, when not given
    if other is None:
        if query.raw("blend") is not None:
            raise InvalidArgument("blend: needs blend_label, the class to blend in")
        return None
    check_label("blend_label", other, spec)
    if len(labels) != 1:
        raise InvalidArgument(
            f"blend_label: needs one label to blend from, got {len(labels) or 'none'}"
        )
    assert weight is not None  # the parameter's default
    if not 0.0 <= weight <= 1.0:
        raise InvalidArgument(f"blend: must be in [0, 1], got {weight}")
    return other, weight


class RestApi:
    """The ``/v1`` endpoints over one repository."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics,
        limits: Limits,
        engine: Engine | None = None,
    ) -> None:
        self._repo = repository
        self._metrics = metrics
        self._limits = limits
        self._calls = CallCounter(metrics, METHODS)
        # The server's one engine; the pictures' bytes are held in the response budget
        # by the HTTP edge's middleware (``http/budgets.py``), which sees their size.
        self._engine = engine or Engine(repository, limits, metrics)

    def routes(self) -> list[Route]:
        """The endpoints; each route's name is its metrics method label."""
        return [
            Route("/v1/models", self.list_models, methods=["GET"], name="http_list_models"),
            Route("/v1/models/{name}", self.get_model, methods=["GET"], name="http_get_model"),
            Route("/v1/models/{name}/sample", self.sample, methods=["GET"], name="http_sample"),
            Route(
                "/v1/models/{name}/interpolate",
                self.interpolate,
                methods=["GET"],
                name="http_interpolate",
            ),
            Route(
                "/v1/models/{name}/arithmetic",
                self.arithmetic,
                methods=["GET"],
                name="http_arithmetic",
            ),
        ]

    def _model(self, request: Request, call: Call) -> LoadedModel:
        """The model of the path, held until the request is done (a reload closes it after)."""
        version = version_of(request.query_params)
        return self._engine.hold(request.path_params["name"], version, call)

    # ------------------------------------------------------------- endpoints

    @_endpoint("http_list_models")
    @documented((), JSON)
    async def list_models(self, request: Request, call: Call) -> Response:
        """The models (one entry each: the version served by default) and the limits."""
        Query(request.query_params, ())  # none taken: a typo is refused, as elsewhere
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
    @documented((VERSION,), JSON)
    async def get_model(self, request: Request, call: Call) -> Response:
        """One model: the version served by default, or ``?version=``."""
        query = Query(request.query_params, (VERSION,))
        status = self._repo.status(request.path_params["name"], query.raw("version") or "")
        call.model = status.name
        return JSONResponse(model_json(status))

    @_endpoint("http_sample")
    @documented(SAMPLE, PNG, NPY)
    async def sample(self, request: Request, call: Call) -> Response:
        """Images from seeds: a PNG grid, or the float32 images as .npy.

        The seeds, labels and truncation of gRPC ``Sample``: the same seed gives the
        same pixels (the grid's cells are the UINT8 encoding of the images).
        """
        model = self._model(request, call)
        spec = model.spec
        query = Query(request.query_params, SAMPLE)
        deadline = query.deadline("timeout")
        fmt = query.choice("format")
        labels = query.labels("label", spec)
        count = query.integer("count") or 0
        # the planner's check, in the query parameter's name (its own says "labels")
        problem = label_rule.label_count_problem(len(labels), count, "label")
        if count >= 1 and problem:
            raise InvalidArgument(problem)
        req = pb.SampleRequest(model=spec.name, version=spec.version, count=count, labels=labels)
        seed = query.seed("seed")
        if seed is not None:
            req.seed = seed
        self._truncation(query, req)
        plan = plan_sample(req, spec, self._limits, streaming=False)
        blend = _blend(query, labels, spec)
        cols = query.positive("cols")
        scale = query.positive("scale") or 1
        if fmt == "png":
            pictures.check_grid(plan.count, spec.image_shape, cols, scale)
        else:
            pictures.check_npy(self._limits, spec, plan.count, pictures.NPY_SAMPLE_HINT)
        given = plan.seed if seed is not None else None  # a random one no GET would use
        if head := _head(request, NPY if fmt == "npy" else PNG, spec, seed=given):
            return head
        z, _, y = await sample_inputs(plan, 0, plan.count)  # (N, D), y (N, C)
        if blend is not None and y is not None:
            other, weight = blend
            y = (1.0 - weight) * y + weight * one_hot(np.full(plan.count, other), spec.num_classes)
            y = y.astype(np.float32)
        images = await self._engine.images(model, z, y, deadline, None)  # (N, C, H, W)
        if fmt == "npy":
            body = await _drawn(fmt, images, lambda: pictures.npy(images))
        else:
            body = await _drawn(
                fmt, images, lambda: pictures.grid_png(to_uint8(images), cols, scale)
            )
        return _picture(body, NPY if fmt == "npy" else PNG, spec, seed=plan.seed)

    @_endpoint("http_interpolate")
    @documented(INTERPOLATE, GIF, PNG, NPY)
    async def interpolate(self, request: Request, call: Call) -> Response:
        """Frames from one seed to another: an animated GIF, a PNG strip or .npy.

        gRPC ``Interpolate`` with two keyframes (from = keyframes[0], to = keyframes[1]);
        on conditional models the class blends from one label to the other.
        """
        model = self._model(request, call)
        spec = model.spec
        query = Query(request.query_params, INTERPOLATE)
        deadline = query.deadline("timeout")
        fmt = query.choice("format")
        keyframes = []
        for end in ("from", "to"):
            key = pb.Keyframe(seed=query.seed(f"{end}_seed"))
            label = query.label(f"{end}_label", spec)
            if label is not None:
                key.label = label
            elif problem := label_rule.missing_label_problem(
                f"{end}_label", spec.num_classes, spec.name
            ):  # the planner's check, in the query parameter's name (its own: keyframes[0].label)
                raise InvalidArgument(problem)
            keyframes.append(key)
        req = pb.InterpolateRequest(
            model=spec.name,
            version=spec.version,
            keyframes=keyframes,
            steps=query.integer("steps"),
            method=_METHOD_NUMBER[query.choice("method")],  # type: ignore[arg-type]
        )
        self._truncation(query, req)
        scale = query.positive("scale") or 1
        fps = query.number("fps")
        # A GIF stores each frame's delay in hundredths of a second (16 bits: at most
        # 655.35 s); browsers play a delay under 20 ms at 100 ms, so a faster pace would
        # come out slower than asked, or be quietly slowed to 50 fps: it is refused.
        if fps is None or not (math.isfinite(fps) and MIN_GIF_FPS <= fps <= MAX_GIF_FPS):
            raise InvalidArgument(
                f"fps: must be a finite number in [{MIN_GIF_FPS:g}, {MAX_GIF_FPS:g}] (a GIF "
                f"frame lasts from {GIF_MIN_FRAME_MS} ms to {GIF_MAX_FRAME_MS / 1000} s), "
                f"got {fps:g}"
            )
        boomerang = query.flag("boomerang")
        plan = await plan_offloaded(plan_interpolate, req, spec, self._limits, 2)
        pictures.check_frames(plan.z.shape[0], spec.image_shape, scale, fmt, boomerang)
        if fmt == "npy":
            pictures.check_npy(self._limits, spec, plan.z.shape[0], "request fewer steps")
        if head := _head(request, {"gif": GIF, "png": PNG}.get(fmt, NPY), spec):
            return head
        images = await self._engine.images(model, plan.z, plan.y, deadline, None, "keyframes")
        if fmt == "npy":
            body = await _drawn(fmt, images, lambda: pictures.npy(images))
        elif fmt == "png":
            body = await _drawn(fmt, images, lambda: pictures.strip_png(to_uint8(images), scale))
        else:
            try:
                body = await _drawn(
                    fmt, images, lambda: pictures.gif(to_uint8(images), fps, scale, boomerang)
                )
            except GifTooSlow as exc:  # identical frames merged into one too long to store
                raise InvalidArgument(f"fps: {exc}") from None
        return _picture(body, {"gif": GIF, "png": PNG}.get(fmt, NPY), spec)

    @_endpoint("http_arithmetic")
    @documented(ARITHMETIC, PNG)
    async def arithmetic(self, request: Request, call: Call) -> Response:
        """Latent arithmetic: the terms and their weighted sum side by side, as PNG.

        gRPC ``Arithmetic`` with seed terms and ``return_term_images``; the picture is
        the CLI's ``ganserve arithmetic`` one.
        """
        model = self._model(request, call)
        spec = model.spec
        query = Query(request.query_params, ARITHMETIC)
        deadline = query.deadline("timeout")
        terms = parse_terms(query.raw("terms") or "")
        req = pb.ArithmeticRequest(
            model=spec.name,
            version=spec.version,
            terms=[pb.ArithmeticTerm(weight=w, seeds=pb.SeedList(seeds=s)) for w, s in terms],
            return_term_images=True,
        )
        label = query.label("label", spec)
        if label is not None:
            req.label = label
        self._truncation(query, req)
        scale = query.positive("scale") or 1
        seeds = (
            sum(len(s) for _, s in terms)
            if len(terms) <= self._limits.max_images_per_request
            else 0
        )
        plan = await plan_offloaded(plan_arithmetic, req, spec, self._limits, seeds)
        pictures.check_equation(len(terms), spec.image_shape, scale)
        if head := _head(request, PNG, spec):
            return head
        z = plan.latents[: plan.n_images]  # (1 + T, D): the result, then each term
        images = await self._engine.images(model, z, plan.y, deadline, None, "terms")
        weights = [float(t.weight) for t in req.terms]

        def draw() -> bytes:
            u8 = to_uint8(images)
            return pictures.equation_png(u8[1:], weights, u8[:1], scale)

        return _picture(await _drawn("png", images, draw), PNG, spec)

    @staticmethod
    def _truncation(query: Query, req: Any) -> None:
        psi = query.number("truncation")
        if psi is not None:
            req.truncation = psi
