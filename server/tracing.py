"""OpenTelemetry traces: a SERVER span per call, with queue, batch, inference and
encoding spans under it. Off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

The server owns its ``TracerProvider`` (the global one stays the application's):
``setup`` builds it from the standard ``OTEL_*`` variables, ``shutdown`` flushes it
in the drain. While off, ``active`` is False, every helper returns a shared no-op
at once and no span object is ever made: the batcher's hot path tests ``active``
and nothing else. grpc-free: the gRPC servicer, the HTTP and KServe edges and the
batcher all use the same helpers.

Batches run in worker threads, after their requests' RPC spans were made on the
event loop: a queued request carries its RPC span (``current()``), and the batcher
wraps its inference call (``batch_infer``), which records the spans of every traced
request of the batch with the batcher's own timestamps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    import numpy as np
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "NO_SPAN",
    "AsgiTracing",
    "batch_infer",
    "current",
    "enable",
    "encode_span",
    "end_server_span",
    "grpc_outcome",
    "http_outcome",
    "inline_infer",
    "rpc_attributes",
    "rpc_span",
    "server_span",
    "setup",
    "shutdown",
    "start_server_span",
]

log = logging.getLogger(__name__)

NO_SPAN: trace.Span = trace.INVALID_SPAN  # what the helpers yield while tracing is off
_NULL = contextlib.nullcontext(NO_SPAN)  # shared: no allocation per call while off

# Read by the batcher's hot path: True between enable() and shutdown().
active = False
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None
_epoch_offset_ns = 0  # time.time_ns() - time.monotonic_ns(): the batcher's clock to OTel's

_OTLP_PACKAGE = "opentelemetry-exporter-otlp"
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
# gRPC status codes by name (grpc itself is not imported here).
_GRPC_CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
_GRPC_CODES = {name: number for number, name in enumerate(_GRPC_CODE_NAMES)}
# The semantic conventions' server-side errors: a client's mistake (INVALID_ARGUMENT,
# NOT_FOUND, ...) is not the server's, and a span marked ERROR for it would be noise.
_GRPC_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_OUTCOME_KEYS = ("rpc.grpc.status_code", "http.response.status_code")
IMAGES = "ganserve.images"


# ------------------------------------------------------------------ set-up


def setup() -> TracerProvider | None:
    """Tracing as the standard variables ask: ``OTEL_TRACES_EXPORTER`` (``console``,
    ``otlp``, any installed exporter's name, a comma list; unset or ``none``: off),
    ``OTEL_SERVICE_NAME`` (default ``ganserve``), ``OTEL_TRACES_SAMPLER[_ARG]``,
    ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*`` (read by the SDK itself). Enables it and
    returns the provider, or None (off; a missing exporter package is one warning)."""
    env = os.environ
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    if not names or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.info("traces: off (OTEL_TRACES_EXPORTER names no exporter)")
        return None
    exporters: list[Any] = []
    for name in names:
        exporter = _exporter(name, env)
        if exporter is None:
            for made in exporters:
                made.shutdown()
            return None
        exporters.append(exporter)

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "ganserve"}))
    # sampler=None: the SDK reads OTEL_TRACES_SAMPLER / _ARG (default parentbased_always_on)
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* as well
    enable(provider)
    sampler = env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on"
    if env.get("OTEL_TRACES_SAMPLER_ARG"):
        sampler += f" {env['OTEL_TRACES_SAMPLER_ARG']}"
    log.info(
        "traces: exporting to %s as service %s (sampler %s)",
        ", ".join(names),
        resource.attributes.get(SERVICE_NAME),
        sampler,
    )
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    """The span exporter called ``name``, or None (after one warning) if not installed."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON object per line on stdout: log collectors and tests read it line by line.
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    entry = name
    if name == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        ).strip()
        if protocol not in _OTLP_BY_PROTOCOL:
            log.warning(
                "traces: off: OTEL_EXPORTER_OTLP_PROTOCOL=%s is not one of %s",
                protocol,
                ", ".join(_OTLP_BY_PROTOCOL),
            )
            return None
        entry = _OTLP_BY_PROTOCOL[protocol]
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_traces_exporter", name=entry))
    if not found:
        if name.startswith("otlp"):
            log.warning(
                "traces: off: OTEL_TRACES_EXPORTER=%s needs the package %s (pip install %s)",
                name,
                _OTLP_PACKAGE,
                _OTLP_PACKAGE,
            )
        else:
            log.warning("traces: off: no installed package provides the exporter %r", name)
        return None
    try:
        return found[0].load()()
    except Exception as exc:  # a bad OTEL_EXPORTER_* value: serve without traces
        log.warning("traces: off: the %s exporter failed to start: %s", name, exc)
        return None


def enable(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (``setup`` calls it; tests pass their own)."""
    global active, _tracer, _provider, _epoch_offset_ns
    _epoch_offset_ns = time.time_ns() - time.monotonic_ns()
    _provider = provider
    _tracer = provider.get_tracer("ganserve.server")
    active = True


def shutdown(timeout_s: float = 5.0) -> None:
    """Stop tracing and flush what is queued, waiting at most ``timeout_s`` (an
    unreachable collector must not hold the server's exit)."""
    global active, _tracer, _provider
    provider = _provider
    active, _tracer, _provider = False, None, None
    if provider is None:
        return
    flusher = threading.Thread(target=provider.shutdown, name="traces-shutdown", daemon=True)
    flusher.start()
    flusher.join(timeout_s)
    if flusher.is_alive():
        log.warning("traces: the exporter did not finish within %.1f s; spans were lost", timeout_s)


# ------------------------------------------------------------------ server spans


class _CarrierGetter(Getter[Any]):
    """Reads a header from a mapping (HTTP headers) or from (key, value) pairs (gRPC
    metadata); keys compared in lower case, binary values skipped."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        if isinstance(carrier, Mapping):
            value = carrier.get(key)
            return None if value is None else [value]
        values = [v for k, v in carrier if k.lower() == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        if isinstance(carrier, Mapping):
            return list(carrier.keys())
        return [k for k, _ in carrier]


_GETTER = _CarrierGetter()


def server_span(
    name: str, carrier: Any = None, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[trace.Span]:
    """``with server_span(name, carrier, attributes) as span:``: a SERVER span, current
    inside the block, child of the W3C ``traceparent`` in ``carrier`` (HTTP headers, a
    gRPC servicer context or its metadata; None: a new trace). Yields ``NO_SPAN``
    (every method a no-op) while tracing is off. Record the result with
    ``grpc_outcome`` / ``http_outcome``; an exception that leaves the block without
    one marks the span ERROR."""
    if _tracer is None:
        return _NULL
    return _server_span(_tracer, name, carrier, attributes)


@contextlib.contextmanager
def _server_span(
    tracer: trace.Tracer, name: str, carrier: Any, attributes: Mapping[str, Any] | None
) -> Iterator[trace.Span]:
    span, token = _start(tracer, name, carrier, attributes)
    try:
        yield span
    except Exception as exc:
        if span.is_recording() and not _has_outcome(span):
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        end_server_span(span, token)


def start_server_span(
    name: str, carrier: Any = None, attributes: Mapping[str, Any] | None = None
) -> tuple[trace.Span, object]:
    """``server_span`` in two calls, for a caller that already has a ``try/finally``:
    the span, made current, and the token to pass to ``end_server_span`` (in the same
    task or thread). Only while tracing is on (``active``)."""
    assert _tracer is not None, "tracing is off"
    return _start(_tracer, name, carrier, attributes)


def end_server_span(span: trace.Span, token: object) -> None:
    """End a span of ``start_server_span``; its caller's context is current again."""
    otel_context.detach(token)  # type: ignore[arg-type]
    span.end()


def _start(
    tracer: trace.Tracer, name: str, carrier: Any, attributes: Mapping[str, Any] | None
) -> tuple[trace.Span, object]:
    parent = None
    if carrier is not None:
        if hasattr(carrier, "invocation_metadata"):  # a gRPC servicer context
            carrier = carrier.invocation_metadata() or ()
        parent = propagate.extract(carrier, getter=_GETTER)
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span))


def _has_outcome(span: trace.Span) -> bool:
    attributes = getattr(span, "attributes", None) or {}
    return any(key in attributes for key in _OUTCOME_KEYS)


def grpc_outcome(
    span: trace.Span, code: str, message: str = "", model: str = "", version: str = ""
) -> None:
    """The gRPC status ``code`` (its name, e.g. ``"NOT_FOUND"``) of the call of ``span``,
    and the model it used; server-side errors (INTERNAL, UNAVAILABLE, ...) mark it ERROR."""
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", _GRPC_CODES.get(code, _GRPC_CODES["UNKNOWN"]))
    span.set_attribute("ganserve.status", code)
    _set_model(span, model, version)
    if message and code != "OK":
        span.set_attribute("ganserve.status_message", message)
    if code in _GRPC_SERVER_ERRORS:
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if message else code))


def http_outcome(
    span: trace.Span, status: int, message: str = "", model: str = "", version: str = ""
) -> None:
    """The HTTP response ``status`` of the call of ``span``, and the model it used;
    5xx marks it ERROR."""
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    _set_model(span, model, version)
    if message and status >= 400:
        span.set_attribute("ganserve.status_message", message)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR, message or str(status)))


def client_left(span: trace.Span | None) -> None:
    """The HTTP client of ``span`` closed its connection before an answer: there is no
    response status to record, so the outcome is gRPC's name for it (not an error)."""
    if span is not None and span.is_recording():
        span.set_attribute("ganserve.status", "CANCELLED")


def _set_model(span: trace.Span, model: str, version: str) -> None:
    if model:
        span.set_attribute("ganserve.model", model)
    if version:
        span.set_attribute("ganserve.model.version", version)


def rpc_attributes(system: str, service: str, method: str) -> dict[str, str]:
    """The semantic conventions' attributes of an RPC span (made once per method)."""
    return {"rpc.system": system, "rpc.service": service, "rpc.method": method}


def rpc_span(
    service: str, method: str, context: Any, call: Any
) -> contextlib.AbstractContextManager[trace.Span]:
    """``with rpc_span(service, method, context, call):`` inside an edge's per-call
    bookkeeping: the gRPC call's SERVER span, whose outcome is read from ``call`` as
    the block ends (its ``code`` name, ``model`` and ``held`` model's version) and
    the status message from ``context``."""
    if _tracer is None:
        return _NULL
    return _rpc_span(_tracer, service, method, context, call)


@contextlib.contextmanager
def _rpc_span(
    tracer: trace.Tracer, service: str, method: str, context: Any, call: Any
) -> Iterator[trace.Span]:
    attributes = rpc_attributes("grpc", service, method)
    span, token = _start(tracer, f"{service}/{method}", context, attributes)
    try:
        yield span
    finally:
        message = ""
        if call.code != "OK":
            with contextlib.suppress(Exception):  # the call may be torn down already
                details = context.details()
                message = details if isinstance(details, str) else ""
        version = call.held.spec.version if call.held is not None else ""
        grpc_outcome(span, call.code, message, call.model, version)
        end_server_span(span, token)


_HTTP_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


class AsgiTracing:
    """ASGI middleware: a SERVER span per HTTP request, child of its ``traceparent``
    header, named ``METHOD /route/{template}`` once the router has matched (Starlette
    leaves the route in the scope), with the response's status and the route's
    ``name`` / ``version`` path parameters as the model. Passes through while off."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if _tracer is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Span names come from a known set (OpenTelemetry's HTTP conventions): a client
        # must not mint new ones with made-up methods or paths.
        method = scope["method"] if scope["method"] in _HTTP_METHODS else "_OTHER"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
        }
        status: list[int] = []

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        with server_span(method, headers, attributes) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                matched = scope.get("route")
                route = getattr(matched, "path", None)
                # The static files' catch-all mount is no route of the API: unknown paths
                # keep the bare method as their name.
                if route is not None and getattr(matched, "name", "") != "static":
                    span.update_name(f"{method} {route or '/'}")
                    span.set_attribute("http.route", route or "/")
                if status:
                    params = scope.get("path_params") or {}
                    model, version = params.get("name", ""), params.get("version", "")
                    http_outcome(span, status[0], model=str(model), version=str(version))


def encode_span(encoding: Any, images: int) -> contextlib.AbstractContextManager[trace.Span]:
    """``with encode_span(encoding, n):`` around encoding ``n`` images of the current
    call: a child span, and the call's ``ganserve.images`` grows by ``n``."""
    if _tracer is None:
        return _NULL
    parent = trace.get_current_span()
    if not parent.is_recording():
        return _NULL
    counted = (getattr(parent, "attributes", None) or {}).get(IMAGES, 0)
    parent.set_attribute(IMAGES, counted + images)
    return _tracer.start_as_current_span(
        "ganserve.encode", attributes={"ganserve.encoding": str(encoding), IMAGES: images}
    )


# ------------------------------------------------------------------ batcher hooks

InferFn = Callable[["np.ndarray", "np.ndarray | None"], "np.ndarray"]
# One request's piece of a batch: (its RPC span or None, its enqueue time in
# time.monotonic() seconds, its first image in this batch, its images in this batch).
Part = tuple["trace.Span | None", float, int, int]


def current() -> trace.Span | None:
    """The current call's span if it records (a queued request keeps it), else None."""
    span = trace.get_current_span()
    return span if span.is_recording() else None


def batch_infer(infer: InferFn, parts: Sequence[Part], side: bool = False) -> InferFn:
    """``infer`` wrapped to record, for every traced request of the batch ``parts``,
    its ``ganserve.queue`` wait (enqueue to now, first piece only), ``ganserve.batch``
    and ``ganserve.inference`` spans. ``infer`` itself if no request is traced."""
    traced = [p for p in parts if p[0] is not None]
    if not traced or _tracer is None:
        return infer
    size = sum(p[3] for p in parts)
    return _Traced(_tracer, infer, traced, size, len(parts), side, False, time.monotonic())


def inline_infer(infer: InferFn, images: int) -> InferFn:
    """``infer`` wrapped like ``batch_infer`` for a request run inline on the event loop
    (no queue: its queue span is empty), or ``infer`` if the current call is not traced."""
    span = current()
    if span is None or _tracer is None:
        return infer
    now = time.monotonic()
    return _Traced(_tracer, infer, [(span, now, 0, images)], images, 1, False, True, now)


class _Traced:
    """An inference call that records its batch's spans when it returns or raises."""

    __slots__ = ("_infer", "_inline", "_parts", "_requests", "_side", "_size", "_start", "_tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        infer: InferFn,
        parts: list[Part],
        size: int,
        requests: int,
        side: bool,
        inline: bool,
        start: float,
    ) -> None:
        self._tracer, self._infer, self._parts = tracer, infer, parts
        self._size, self._requests, self._side, self._inline = size, requests, side, inline
        self._start = start  # time.monotonic() as the batch was taken off the queue

    def __call__(self, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        began = time.monotonic()
        error: Exception | None = None
        try:
            return self._infer(z, y)
        except Exception as exc:
            error = exc
            raise
        finally:
            self._record(began, time.monotonic(), error)

    def _record(self, began: float, ended: float, error: Exception | None) -> None:
        tracer, ns = self._tracer, _epoch_ns
        batch_attributes = {
            "ganserve.batch.images": self._size,
            "ganserve.batch.requests": self._requests,
            "ganserve.batch.side": self._side,
            "ganserve.batch.inline": self._inline,
        }
        for span, enqueued, first, images in self._parts:
            parent = trace.set_span_in_context(span)  # type: ignore[arg-type]
            if first == 0:
                queue = tracer.start_span("ganserve.queue", parent, start_time=ns(enqueued))
                queue.end(end_time=ns(self._start))
            batch = tracer.start_span(
                "ganserve.batch",
                parent,
                start_time=ns(self._start),
                attributes={**batch_attributes, "ganserve.request.images": images},
            )
            inference = tracer.start_span(
                "ganserve.inference", trace.set_span_in_context(batch), start_time=ns(began)
            )
            if error is not None:
                inference.record_exception(error)
                inference.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            inference.end(end_time=ns(ended))
            batch.end(end_time=ns(ended))


def _epoch_ns(monotonic_s: float) -> int:
    """A ``time.monotonic()`` instant as OTel's nanoseconds since the epoch."""
    return int(monotonic_s * 1e9) + _epoch_offset_ns
