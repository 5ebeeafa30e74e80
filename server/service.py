"""The ``ganserve.v1.Generator`` servicer: a thin translation onto the server core.

Each RPC resolves the model, turns the request into a plan (``plan.py``), awaits
the model's batched ``generate`` and encodes once per response. Errors of the core
(``ServeError``) map 1:1 to gRPC status codes; anything else is logged and
becomes INTERNAL without a traceback reaching the client. Response sizes are
estimated by ``ganserve.contract.sizes``, the client's planner's estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc import aio

from ganserve.contract.encodings import Encoding
from ganserve.contract.limits import Limits
from ganserve.contract.sizes import (
    FLOAT_BYTES,
    per_image_bytes,
    response_bytes,
    response_too_large,
    sample_per_image_bytes,
)
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

from . import tracing
from .budget import ServerBudgets, default_buffered_bytes
from .calls import Call, CallCounter, hold_model
from .encode import encode_images
from .errors import InvalidArgument, ResourceExhausted, ServeError, pushback_trailer, retry_after
from .generation import (
    OFFLOAD_IMAGES,
    generate_checked,
    plan_offloaded,
    sample_latents,
)
from .latent import one_hot
from .metrics import Metrics
from .plan import SamplePlan, plan_arithmetic, plan_interpolate, plan_sample
from .repository import LoadedModel, ModelRepository, ModelSpec, ModelStatus

__all__ = ["GeneratorService", "add_to_server", "model_info"]

log = logging.getLogger(__name__)

_CODES = {code.name: code for code in grpc.StatusCode}
_SERVICE = pb.DESCRIPTOR.services_by_name["Generator"].full_name  # names the trace spans
# time_remaining() of a call without a deadline is None or effectively infinite.
_NO_DEADLINE_S = 1e7
try:  # grpc's own error for a send on a call the client has left; not public API
    from grpc._cython.cygrpc import ExecuteBatchError as _SendFailed
except ImportError:  # pragma: no cover - a grpc without it: nothing to translate

    class _SendFailed(Exception):  # type: ignore[no-redef]
        pass


def _sample_image_bytes(plan: SamplePlan, spec: ModelSpec) -> int:
    """Response bytes of one image of a Sample / SampleStream plan."""
    return sample_per_image_bytes(
        spec.image_shape, plan.encoding, spec.latent_dim, spec.num_classes, plan.return_latents
    )


class _Undecodable:
    """Request bytes that are not a valid message: the handler answers INVALID_ARGUMENT."""

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name, self.error = type_name, error

    def invalid(self) -> InvalidArgument:
        return InvalidArgument(f"request: not a valid {self.type_name} message ({self.error})")


def _lenient_parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Undecodable(cls.DESCRIPTOR.full_name, str(exc) or "undecodable bytes")

    return parse


def add_to_server(servicer: GeneratorService, server: aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_GeneratorServicer_to_server``, but
    with request parsers that turn undecodable bytes into INVALID_ARGUMENT, counted like
    any other bad input (grpc answers a parser's exception with UNKNOWN and logs it)."""
    service = pb.DESCRIPTOR.services_by_name["Generator"]
    handlers = {}
    for method in service.methods:
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lenient_parser(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _rpc(method: str, streaming: bool = False) -> Callable[[Any], Any]:
    """Wrap a handler with in-flight/latency/status metrics and error-to-status mapping."""

    def decorate(fn: Any) -> Any:
        async def unary(self: GeneratorService, request: Any, context: aio.ServicerContext) -> Any:
            with self._track(method, context) as call:
                try:
                    if type(request) is _Undecodable:
                        raise request.invalid()
                    if self._inflight > self._budgets.inflight_limit:
                        raise self._refuse_inflight()
                    left = context.time_remaining()
                    if left is not None and left < self._budgets.late_s:
                        raise self._refuse_late(left)
                    response = await fn(self, request, context, call)
                    self._budgets.call_done(time.perf_counter() - call.start, self._inflight)
                    return response
                except BaseException as exc:
                    await self._fail(method, exc, context, call)

        async def stream(
            self: GeneratorService, request: Any, context: aio.ServicerContext
        ) -> None:
            # A coroutine that writes, not an async generator that yields: grpc sends what
            # a generator yields itself, and a send that fails because the client left
            # mid-write (a stalled reader that cancels) reaches its log as an ERROR
            # traceback. Here it becomes the cancellation it is.
            with self._track(method, context) as call:
                try:
                    if type(request) is _Undecodable:
                        raise request.invalid()
                    if self._inflight > self._budgets.inflight_limit:
                        raise self._refuse_inflight()
                    async with contextlib.aclosing(fn(self, request, context, call)) as responses:
                        async for response in responses:
                            try:
                                await context.write(response)
                            except _SendFailed:
                                raise asyncio.CancelledError("the client left mid-send") from None
                except BaseException as exc:
                    await self._fail(method, exc, context, call)

        return functools.wraps(fn)(stream if streaming else unary)

    return decorate


def _deadline_passed(context: aio.ServicerContext) -> bool:
    """Whether the RPC has a deadline and it has passed (a cancel then is its expiry)."""
    with contextlib.suppress(Exception):  # the call may be torn down already
        remaining = context.time_remaining()
        return remaining is not None and remaining <= 0
    return False


def _deadline(context: aio.ServicerContext) -> float | None:
    """The RPC deadline as a ``time.monotonic()`` instant, or None."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


def _latent_batch(z: np.ndarray) -> pb.LatentBatch:
    return pb.LatentBatch(count=z.shape[0], dim=z.shape[1], data=z.astype("<f4").tobytes())


def _fill_images(
    msg: pb.Images, images: np.ndarray, raw: bytes, pngs: list[bytes], encoding: Encoding
) -> None:
    """Fill a response's Images field in place: building a separate pb.Images and
    assigning it would copy the (possibly large) message once more."""
    # the proto enum fields take the contract's numbers (their stubs want their own type)
    msg.encoding = encoding.number  # type: ignore[assignment]
    msg.count = images.shape[0]
    msg.shape.extend(images.shape[1:])
    msg.data = raw
    if pngs:
        msg.png.extend(pngs)


def model_info(status: ModelStatus) -> pb.ModelInfo:
    """A repository status entry as the contract's ModelInfo."""
    info = pb.ModelInfo(
        name=status.name,
        version=status.version,
        versions=status.versions,
        state=status.state.number,  # type: ignore[arg-type]
        state_message=status.message or "",
        device=status.device or "",
    )
    spec: ModelSpec | None = status.spec
    if spec is not None:
        info.kind = spec.kind.number  # type: ignore[assignment]
        info.latent_dim = spec.latent_dim
        info.class_names.extend(spec.class_names)
        info.image_shape.extend(spec.image_shape)
        info.value_min, info.value_max = (float(v) for v in spec.value_range)
        info.dataset = spec.dataset
        info.architecture = spec.architecture
        info.quality.update({k: float(v) for k, v in spec.quality.items()})
        info.metadata.update(spec.metadata)
    return info


class GeneratorService(pb_grpc.GeneratorServicer):
    """gRPC servicer over a ``ModelRepository``."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics,
        limits: Limits,
        budgets: ServerBudgets | None = None,
    ):
        self._repo = repository
        self._metrics = metrics
        self._limits = limits
        self._budgets = budgets or ServerBudgets(
            default_buffered_bytes(limits.max_message_bytes), 4096, 256
        )
        self._inflight = 0  # RPCs of this service being handled
        self._streams = 0  # SampleStreams open
        methods = ("ListModels", "GetModel", "Sample", "SampleStream", "Interpolate", "Arithmetic")
        self._calls = CallCounter(metrics, methods)
        self._spans = {
            m: (f"{_SERVICE}/{m}", tracing.rpc_attributes("grpc", _SERVICE, m)) for m in methods
        }

    # ------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _track(self, method: str, context: Any = None) -> Iterator[Call]:
        """Count the RPC in flight (and trace it); on exit record its status and latency."""
        call = self._calls.started(method)
        self._inflight += 1
        if tracing.active and context is not None:  # a child of the caller's traceparent
            span_name, attributes = self._spans[method]
            call.span, call.span_token = tracing.start_server_span(span_name, context, attributes)
        try:
            yield call
        finally:
            self._inflight -= 1
            if call.held is not None:
                call.held.release()
            self._record(method, call)
            if call.span_token is not None:
                tracing.end_server_span(call.span, call.span_token)

    def _record(self, method: str, call: Call, message: str = "") -> None:
        """The RPC is over: out of the in-flight gauge, its status and latency counted (once)."""
        if self._calls.finished(method, call) and call.span_token is not None:  # traced
            version = call.held.spec.version if call.held is not None else ""
            tracing.grpc_outcome(call.span, call.code, message, call.model, version)

    async def _fail(
        self, method: str, exc: BaseException, context: aio.ServicerContext, call: Call
    ) -> NoReturn:
        """Abort the RPC with the status of ``exc``; cancellation and aborts propagate as is."""
        trailer: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, ServeError):
            call.code, message = exc.code_name, exc.message
            trailer = pushback_trailer(retry_after(exc))
        elif isinstance(exc, aio.AbortError):
            code = context.code()
            call.code = code.name if code else "UNKNOWN"
            raise exc
        elif isinstance(exc, Exception):
            log.exception("%s failed", method)
            call.span.record_exception(exc)
            call.code, message = "INTERNAL", f"internal error in {method}: see the server log"
        else:  # CancelledError / GeneratorExit: the client went away or its deadline passed
            call.code = "DEADLINE_EXCEEDED" if _deadline_passed(context) else "CANCELLED"
            raise exc
        # Counted before the status goes out: a client that reads /metrics right after
        # its error must find it there (the abort sends first and raises after).
        self._record(method, call, message)
        try:
            await context.abort(_CODES.get(call.code, grpc.StatusCode.UNKNOWN), message, trailer)
        except _SendFailed:  # the client left as the status went out: no ERROR traceback
            raise asyncio.CancelledError("the client left before the status was sent") from None
        raise AssertionError("unreachable: abort raises")

    def _refused(self, reason: str, model: str = "") -> None:
        self._metrics.rejected_total.labels(model, reason).inc()

    def _refuse_inflight(self) -> ResourceExhausted:
        self._refused("in_flight")
        budgets = self._budgets
        limit = budgets.inflight_limit
        why = (
            f"--max-inflight-rpcs {limit}"
            if limit == budgets.max_inflight_rpcs
            else f"adapted to its latency, at most --max-inflight-rpcs {budgets.max_inflight_rpcs}"
        )
        return ResourceExhausted(
            f"the server is overloaded: it is handling {self._inflight - 1} calls, its limit "
            f"({why}); retry later",
            "in_flight",
            0.05,
        )

    def _refuse_late(self, left: float) -> ResourceExhausted:
        self._refused("deadline")
        return ResourceExhausted(
            f"the server is overloaded: the call reached it with {max(left, 0) * 1e3:.0f} ms "
            f"of its deadline left, less than answering takes now "
            f"({self._budgets.late_s * 1e3:.0f} ms); retry later",
            "deadline",
            self._budgets.late_s,
        )

    @contextlib.asynccontextmanager
    async def _buffered(
        self, size: int, what: str, model: str, wait_s: float | None = None
    ) -> AsyncIterator[None]:
        """Hold ``size`` bytes of the response budget while the response is built and
        handed to gRPC: refused at once (``wait_s`` None) or after waiting that long."""
        budget = self._budgets.buffered
        try:
            if wait_s is None:
                budget.acquire_now(size, what)
            else:
                await budget.acquire(size, wait_s)
        except ResourceExhausted as exc:
            self._refused(exc.reason, model)
            raise
        try:
            yield
        finally:
            budget.release(size)

    def _model(self, request: Any, call: Call) -> LoadedModel:
        if not request.model:
            raise InvalidArgument("model: give a model name (ListModels lists them)")
        return hold_model(self._repo, request.model, request.version, call)

    def _check_size(
        self,
        spec: ModelSpec,
        n: int,
        encoding: Encoding,
        per_image: int,
        hint: str,
        extra: int = 0,
    ) -> int:
        """Fail before computing if ``n`` images of ``per_image`` bytes (and ``extra``
        bytes besides) cannot fit in one message: ``contract.sizes``' estimate, which
        is returned."""
        size = response_bytes(n, per_image, extra)
        limit = self._limits.max_message_bytes
        if size > limit:
            # Deterministic for this request: INVALID_ARGUMENT, so retry policies skip it.
            raise InvalidArgument(response_too_large(n, encoding, spec.name, size, limit, hint))
        return size

    async def _run(
        self,
        model: LoadedModel,
        z: np.ndarray,
        y: np.ndarray | None,
        deadline: float | None,
        context: aio.ServicerContext,
        encoding: str,
        field: str = "latents",
    ) -> tuple[np.ndarray, bytes, list[bytes]]:
        """Generate and encode: (images (N, C, H, W), raw bytes, pngs); ``field`` names
        the request field of ``z`` in the error for non-finite output."""
        images = await generate_checked(model, z, y, deadline, context.done, field)
        with tracing.encode_span(encoding, images.shape[0]):  # a no-op while tracing is off
            if images.shape[0] >= OFFLOAD_IMAGES:
                raw, pngs = await asyncio.to_thread(encode_images, images, encoding)
            else:
                raw, pngs = encode_images(images, encoding)
        return images, raw, pngs

    async def _sample_chunk(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        start: int,
        stop: int,
        deadline: float | None,
        context: aio.ServicerContext,
    ) -> pb.SampleResponse:
        """Images [start, stop) of a sample plan as one response message."""
        z = await sample_latents(plan, start, stop)  # (stop - start, D)
        labels = plan.image_labels(start, stop)
        y = None if labels is None else one_hot(labels, plan.num_classes)  # (n, C)
        images, raw, pngs = await self._run(model, z, y, deadline, context, plan.encoding)
        response = pb.SampleResponse(
            model=model.spec.name, version=model.spec.version, offset=start
        )
        _fill_images(response.images, images, raw, pngs, plan.encoding)
        if plan.seed is not None:
            response.seed = plan.seed
        if labels is not None:
            response.labels.extend(labels.tolist())
        if plan.return_latents:
            response.latents.CopyFrom(_latent_batch(z))
        return response

    # ------------------------------------------------------------------ RPCs

    @_rpc("ListModels")
    async def ListModels(self, request: Any, context: Any, call: Call) -> pb.ListModelsResponse:
        lim = self._limits
        return pb.ListModelsResponse(
            models=[model_info(s) for s in self._repo.statuses()],
            limits=pb.ServerLimits(
                max_images_per_request=lim.max_images_per_request,
                max_images_per_stream=lim.max_images_per_stream,
                max_stream_chunk=lim.stream_chunk_max,
                max_message_bytes=lim.max_message_bytes,
                max_request_bytes=lim.max_request_bytes,
            ),
        )

    @_rpc("GetModel")
    async def GetModel(self, request: Any, context: Any, call: Call) -> pb.ModelInfo:
        if not request.model:
            raise InvalidArgument("model: give a model name (ListModels lists them)")
        status = self._repo.status(request.model, request.version)
        call.model = status.name
        return model_info(status)

    @_rpc("Sample")
    async def Sample(self, request: Any, context: Any, call: Call) -> pb.SampleResponse:
        model = self._model(request, call)
        plan = plan_sample(request, model.spec, self._limits, streaming=False)
        size = self._check_size(
            model.spec,
            plan.count,
            plan.encoding,
            _sample_image_bytes(plan, model.spec),
            "use SampleStream",
        )
        async with self._buffered(size, "the response", call.model):
            return await self._sample_chunk(model, plan, 0, plan.count, _deadline(context), context)

    @_rpc("SampleStream", streaming=True)
    async def SampleStream(
        self, request: Any, context: Any, call: Call
    ) -> AsyncIterator[pb.SampleResponse]:
        model = self._model(request, call)
        plan = plan_sample(request, model.spec, self._limits, streaming=True)
        per_image = _sample_image_bytes(plan, model.spec)
        self._check_size(model.spec, plan.chunk_size, plan.encoding, per_image, "lower chunk_size")
        if self._streams >= self._budgets.max_streams:
            self._refused("streams", call.model)
            raise ResourceExhausted(
                f"the server has {self._streams} streams open, its limit (--max-streams "
                f"{self._budgets.max_streams}); retry later",
                "streams",
                1.0,
            )
        deadline = _deadline(context)
        self._streams += 1
        try:
            # A chunk is computed only once the previous one has left: gRPC's write of a
            # chunk completes when the transport takes it, so a client that does not read
            # stops the stream after what HTTP/2 flow control lets through, and each
            # stream holds at most one chunk. The first chunk is refused at once when the
            # response budget is full; later ones wait for room (within the deadline).
            start = 0
            while start < plan.count:
                stop = min(start + plan.chunk_size, plan.count)
                size = response_bytes(stop - start, per_image)
                wait_s = None  # the first chunk: refused at once when it does not fit
                if start:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    wait_s = _NO_DEADLINE_S if left is None else left
                async with self._buffered(size, "the first chunk", call.model, wait_s):
                    yield await self._sample_chunk(model, plan, start, stop, deadline, context)
                start = stop
        finally:
            self._streams -= 1

    @_rpc("Interpolate")
    async def Interpolate(self, request: Any, context: Any, call: Call) -> pb.InterpolateResponse:
        model = self._model(request, call)
        # Counted only under the limit: millions of (empty) keyframes fit in one message,
        # and a Python loop over them would stall the event loop for seconds;
        # plan_interpolate rejects more keyframes than steps (<= the limit) at once.
        keys = request.keyframes
        seeds = 0
        if len(keys) <= self._limits.max_images_per_request:
            seeds = sum(k.WhichOneof("source") == "seed" for k in keys)
        plan = await plan_offloaded(plan_interpolate, request, model.spec, self._limits, seeds)
        spec = model.spec
        per_image = per_image_bytes(
            spec.image_shape,
            plan.encoding,
            spec.latent_dim if plan.return_latents else 0,
            FLOAT_BYTES * spec.num_classes,  # class_weights, conditional only
        )
        self._check_size(spec, plan.z.shape[0], plan.encoding, per_image, "request fewer steps")
        images, raw, pngs = await self._run(
            model, plan.z, plan.y, _deadline(context), context, plan.encoding, "keyframes"
        )
        response = pb.InterpolateResponse(model=model.spec.name, version=model.spec.version)
        _fill_images(response.images, images, raw, pngs, plan.encoding)
        if plan.y is not None:
            response.class_weights.extend(plan.y.ravel().tolist())
        if plan.return_latents:
            response.latents.CopyFrom(_latent_batch(plan.z))
        return response

    @_rpc("Arithmetic")
    async def Arithmetic(self, request: Any, context: Any, call: Call) -> pb.ArithmeticResponse:
        model = self._model(request, call)
        # As in Interpolate: plan_arithmetic rejects more terms than the limit at once.
        terms = request.terms
        seeds = 0
        if len(terms) <= self._limits.max_images_per_request:
            seeds = sum(len(t.seeds.seeds) for t in terms)
        plan = await plan_offloaded(plan_arithmetic, request, model.spec, self._limits, seeds)
        spec = model.spec
        latent_dim = spec.latent_dim if plan.return_latents else 0
        self._check_size(
            spec,
            plan.n_images,
            plan.encoding,
            per_image_bytes(spec.image_shape, plan.encoding, latent_dim),
            "use fewer terms",
            # the result's and every term's latent are returned, with or without their images
            extra=(plan.latents.shape[0] - plan.n_images) * FLOAT_BYTES * latent_dim,
        )
        z = plan.latents[: plan.n_images]  # (1 [+ T], D)
        images, raw, pngs = await self._run(
            model, z, plan.y, _deadline(context), context, plan.encoding, "terms"
        )
        # One encode for the result and the term images: split the bytes afterwards.
        per_image = len(raw) // images.shape[0]
        response = pb.ArithmeticResponse(model=model.spec.name, version=model.spec.version)
        _fill_images(response.result, images[:1], raw[:per_image], pngs[:1], plan.encoding)
        if plan.n_images > 1:
            _fill_images(response.term_images, images[1:], raw[per_image:], pngs[1:], plan.encoding)
        if plan.return_latents:
            response.latents.CopyFrom(_latent_batch(plan.latents))
        return response
