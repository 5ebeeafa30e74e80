"""The ``ganserve.v1.Generator`` servicer: protobuf -> plan -> engine -> protobuf.

Each RPC holds the model, turns the request into a plan (``plan.py``) and hands it to
the serving engine (``engine.py``), which checks the response size, keeps the
server-wide budgets, generates and encodes; the servicer fills the response message
from what comes back. What stays here is gRPC's: counting and tracing the call,
refusing calls beyond the in-flight limit or too late to answer, and mapping errors
of the core (``ServeError``) 1:1 to status codes with a pushback trailer; anything
else is logged and becomes INTERNAL without a traceback reaching the client.
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
from google.protobuf import json_format
from grpc import aio

from ganserve.contract.encodings import Encoding
from ganserve.contract.limits import Limits
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

from . import tracing
from .budget import ServerBudgets
from .calls import Call, CallCounter
from .engine import Engine, Generated
from .errors import InvalidArgument, ResourceExhausted, ServeError, pushback_trailer, retry_after
from .generation import plan_offloaded
from .grpc_compat import (
    CODES,
    SendFailed,
    Undecodable,
    deadline,
    deadline_passed,
    lenient_parser,
    when_call_ends,
)
from .metrics import Metrics
from .plan import (
    ArithmeticPlan,
    InterpolatePlan,
    SamplePlan,
    plan_arithmetic,
    plan_interpolate,
    plan_sample,
)
from .repository import LoadedModel, ModelRepository, ModelSpec, ModelStatus

__all__ = ["GeneratorService", "add_to_server", "model_info"]

log = logging.getLogger(__name__)

_SERVICE = pb.DESCRIPTOR.services_by_name["Generator"].full_name  # names the trace spans
# A request message at least this large is held in the buffer budget while its call
# runs (keyframe or term latents, up to --max-request-bytes); smaller ones, nearly all,
# are bounded by the in-flight limit and cost the hot path nothing.
_HELD_REQUEST_BYTES = 1 << 16


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
            request_deserializer=lenient_parser(getattr(pb, method.input_type.name)),
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
                    if type(request) is Undecodable:
                        raise request.invalid()
                    if self._inflight > self._budgets.inflight_limit:
                        raise self._refuse_inflight()
                    left = context.time_remaining()
                    if left is not None and self._budgets.too_late(
                        left, time.monotonic(), self._inflight
                    ):
                        raise self._refuse_late(left)
                    held = self._hold_request(request)
                    try:
                        response = await fn(self, request, context, call)
                    finally:
                        if held:
                            self._budgets.buffered.release(held)
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
                    if type(request) is Undecodable:
                        raise request.invalid()
                    if self._inflight > self._budgets.inflight_limit:
                        raise self._refuse_inflight()
                    stall = self._budgets.stream_stall_s
                    # a stream's request (its latents) is held as long as the stream
                    held = self._hold_request(request)
                    try:
                        chunks = fn(self, request, context, call)
                        async with contextlib.aclosing(chunks) as responses:
                            async for response in responses:
                                try:
                                    if stall:
                                        await asyncio.wait_for(context.write(response), stall)
                                    else:
                                        await context.write(response)
                                except SendFailed:
                                    why = "the client left mid-send"
                                    raise asyncio.CancelledError(why) from None
                                except TimeoutError:
                                    raise self._refuse_stalled(call, stall) from None
                                # gRPC has its own copy now: hold nothing while the next
                                # chunk is computed (the budget counts one chunk a stream)
                                response = None
                    finally:
                        if held:
                            self._budgets.buffered.release(held)
                except BaseException as exc:
                    await self._fail(method, exc, context, call)

        return functools.wraps(fn)(stream if streaming else unary)

    return decorate


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


def _sample_response(spec: ModelSpec, plan: SamplePlan, out: Generated) -> pb.SampleResponse:
    """Images [out.offset, out.offset + N) of a sample plan as one response message."""
    response = pb.SampleResponse(model=spec.name, version=spec.version, offset=out.offset)
    _fill_images(response.images, out.images, out.raw, out.pngs, plan.encoding)
    if plan.seed is not None:
        response.seed = plan.seed
    if out.labels is not None:
        response.labels.extend(out.labels.tolist())
    if plan.return_latents:
        response.latents.CopyFrom(_latent_batch(out.latents))
    return response


def _interpolate_response(
    spec: ModelSpec, plan: InterpolatePlan, out: Generated
) -> pb.InterpolateResponse:
    response = pb.InterpolateResponse(model=spec.name, version=spec.version)
    _fill_images(response.images, out.images, out.raw, out.pngs, plan.encoding)
    if plan.y is not None:
        response.class_weights.extend(plan.y.ravel().tolist())
    if plan.return_latents:
        response.latents.CopyFrom(_latent_batch(out.latents))
    return response


def _arithmetic_response(
    spec: ModelSpec, plan: ArithmeticPlan, out: Generated
) -> pb.ArithmeticResponse:
    images, raw, pngs = out.images, out.raw, out.pngs
    # One encode for the result and the term images: split the bytes afterwards.
    per_image = len(raw) // images.shape[0]
    response = pb.ArithmeticResponse(model=spec.name, version=spec.version)
    _fill_images(response.result, images[:1], raw[:per_image], pngs[:1], plan.encoding)
    if plan.n_images > 1:
        _fill_images(response.term_images, images[1:], raw[per_image:], pngs[1:], plan.encoding)
    if plan.return_latents:
        response.latents.CopyFrom(_latent_batch(out.latents))
    return response


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
    if status.plan is not None:
        json_format.ParseDict(status.plan.as_fields(), info.runtime)
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
        engine: Engine,
    ):
        self._repo = repository
        self._metrics = metrics
        self._limits = limits
        # The server's one engine (shared with the other edges) and the budgets it holds
        # calls to; the servicer adds the server-wide in-flight limit of those budgets.
        if engine.budgets is None:
            raise ValueError("the gRPC servicer needs an engine with the server's budgets")
        self._engine = engine
        self._budgets: ServerBudgets = engine.budgets
        self._inflight = 0  # RPCs of this service being handled
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
            call.code = "DEADLINE_EXCEEDED" if deadline_passed(context) else "CANCELLED"
            raise exc
        # Counted before the status goes out: a client that reads /metrics right after
        # its error must find it there (the abort sends first and raises after).
        self._record(method, call, message)
        try:
            await context.abort(CODES.get(call.code, grpc.StatusCode.UNKNOWN), message, trailer)
        except SendFailed:  # the client left as the status went out: no ERROR traceback
            raise asyncio.CancelledError("the client left before the status was sent") from None
        raise AssertionError("unreachable: abort raises")

    def _refuse_stalled(self, call: Call, stall: float) -> ResourceExhausted:
        """A stream whose reader took nothing for ``stall`` seconds: ended, so that it
        gives back its place among the streams, its call in flight and its chunk."""
        self._engine.refused("stream_stalled", call.model or "")
        return ResourceExhausted(
            f"the client read nothing of this stream for {stall:g} s "
            "(--stream-stall-timeout-s): it was ended to free its place; read the chunks "
            "as they come, or ask for smaller ones",
            "stream_stalled",
        )

    def _hold_request(self, request: Any) -> int:
        """A large request's bytes, reserved in the buffer budget for its call (0: a
        small one, not held); RESOURCE_EXHAUSTED, counted, when they do not fit."""
        size = request.ByteSize()
        if size < _HELD_REQUEST_BYTES:
            return 0
        self._engine.reserve_now(
            self._budgets.buffered, size, "this request", "",
            buffer="request buffer", smaller="send fewer latents per request",
        )  # fmt: skip
        return size

    def _refuse_inflight(self) -> ResourceExhausted:
        self._engine.refused("in_flight", "")
        return self._budgets.inflight_refusal(self._inflight - 1, "calls", 0.05)

    def _refuse_late(self, left: float) -> ResourceExhausted:
        self._engine.refused("deadline", "")
        return ResourceExhausted(
            f"the server is overloaded: the call reached it with {max(left, 0) * 1e3:.0f} ms "
            f"of its deadline left, less than answering takes now "
            f"({self._budgets.late_s * 1e3:.0f} ms); retry later",
            "deadline",
            self._budgets.late_s,
        )

    def _model(self, request: Any, call: Call) -> LoadedModel:
        if not request.model:
            raise InvalidArgument("model: give a model name (ListModels lists them)")
        return self._engine.hold(request.model, request.version, call)

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
        respond = functools.partial(_sample_response, model.spec, plan)
        return await self._engine.sample(
            model, plan, deadline(context), context.done, respond, when_call_ends(context)
        )

    @_rpc("SampleStream", streaming=True)
    def SampleStream(
        self, request: Any, context: Any, call: Call
    ) -> AsyncIterator[pb.SampleResponse]:
        # The engine's chunks, each computed once the previous one has been written
        # (``_rpc`` asks for the next only then: see ``Engine.sample_stream``).
        model = self._model(request, call)
        plan = plan_sample(request, model.spec, self._limits, streaming=True)
        respond = functools.partial(_sample_response, model.spec, plan)
        return self._engine.sample_stream(model, plan, deadline(context), context.done, respond)

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
        respond = functools.partial(_interpolate_response, model.spec, plan)
        return await self._engine.interpolate(
            model, plan, deadline(context), context.done, respond, when_call_ends(context)
        )

    @_rpc("Arithmetic")
    async def Arithmetic(self, request: Any, context: Any, call: Call) -> pb.ArithmeticResponse:
        model = self._model(request, call)
        # As in Interpolate: plan_arithmetic rejects more terms than the limit at once.
        terms = request.terms
        seeds = 0
        if len(terms) <= self._limits.max_images_per_request:
            seeds = sum(len(t.seeds.seeds) for t in terms)
        plan = await plan_offloaded(plan_arithmetic, request, model.spec, self._limits, seeds)
        respond = functools.partial(_arithmetic_response, model.spec, plan)
        return await self._engine.arithmetic(
            model, plan, deadline(context), context.done, respond, when_call_ends(context)
        )
