"""Traces: the span helpers and the batcher's spans in-process (SDK in-memory exporter),
then real servers exporting to their log (``OTEL_TRACES_EXPORTER=console``: one JSON
line per span) with a client whose span is current."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from tiny_onnx import make_tiny_generator, model_path, write_broken_file

from ganserve.clients import AsyncGanClient, GanClient, ModelNotFound, Unavailable
from ganserve.clients._tracing import with_trace_context
from ganserve.server import tracing
from ganserve.server.batcher import Batcher, BatchingConfig
from ganserve.server.errors import Internal
from ganserve.server.metrics import Metrics

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


# ------------------------------------------------------------------ in-process


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into an in-memory exporter; off again afterwards."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.enable(provider)
    yield memory
    tracing.shutdown()


def by_name(spans: Any, name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: Any, parent: ReadableSpan) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        if s.parent is not None and s.parent.span_id == parent.context.span_id:
            found.setdefault(s.name, []).append(s)
    return found


def duration_s(span: ReadableSpan) -> float:
    """Seconds from its start to its end."""
    assert span.start_time is not None and span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


class HeldInfer:
    """Trivial images; ``hold()`` keeps the worker inside its next inference until
    ``release()``, so requests pile up behind it deterministically."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds  # how long every inference lasts at least
        self.entered = threading.Semaphore(0)
        self._gate = threading.Event()
        self._gate.set()
        self.fail = False

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def __call__(self, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        self.entered.release()
        assert self._gate.wait(timeout=30)
        if self.seconds:
            threading.Event().wait(self.seconds)  # the inference's own duration
        if self.fail:
            raise RuntimeError("model exploded")
        return np.zeros((z.shape[0], 1, 2, 2), np.float32)  # (N, 1, 2, 2)


async def traced_submit(batcher: Batcher, name: str, n: int) -> np.ndarray:
    with tracing.server_span(name):
        return await batcher.submit(np.zeros((n, 8), np.float32), None)


async def test_off_by_default_makes_no_span(monkeypatch, caplog) -> None:
    for key in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(key, raising=False)
    with caplog.at_level(logging.INFO, "ganserve.server.tracing"):
        assert tracing.setup() is None
    assert "traces: off" in caplog.text
    for env in ({"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "}):
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", env["OTEL_TRACES_EXPORTER"])
        assert tracing.setup() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.setup() is None
    assert not tracing.active

    # Off, nothing of OpenTelemetry is even looked at: any use of the API would raise.
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"opentelemetry.trace.{name} used while tracing is off")

    monkeypatch.setattr(tracing, "trace", Untouchable())
    with tracing.server_span("x", {"traceparent": TRACEPARENT}, {"a": 1}) as span:
        assert span is tracing.NO_SPAN
        assert tracing.encode_span("png", 3).__enter__() is tracing.NO_SPAN
    infer = HeldInfer()
    batcher = Batcher(infer, BatchingConfig(inline_max_images=0), Metrics(), "m")
    await batcher.start()
    try:
        out = await asyncio.gather(*(batcher.submit(np.zeros((2, 8), np.float32), None)
                                     for _ in range(3)))  # fmt: skip
        assert [o.shape for o in out] == [(2, 1, 2, 2)] * 3
        out = await batcher.submit(np.zeros((1, 8), np.float32), None)  # inline path off too
    finally:
        await batcher.stop()


def test_setup_reads_the_standard_variables(monkeypatch, caplog) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    with caplog.at_level(logging.INFO, "ganserve.server.tracing"):
        provider = tracing.setup()
    try:
        assert provider is not None and tracing.active
        assert provider.resource.attributes["service.name"] == "ganserve"
        assert "0.25" in provider.sampler.get_description()
        assert "exporting to console as service ganserve" in caplog.text
    finally:
        tracing.shutdown()
    assert not tracing.active
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gan-eu")
    provider = tracing.setup()
    try:
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "gan-eu"
    finally:
        tracing.shutdown()


@pytest.mark.parametrize("name", ["otlp", "zipkin_json_nonexistent"])
def test_a_missing_exporter_is_one_warning_and_tracing_stays_off(monkeypatch, caplog, name) -> None:
    from importlib.metadata import entry_points

    if name == "otlp" and list(entry_points(group="opentelemetry_traces_exporter", name="otlp")):
        pytest.skip("opentelemetry-exporter-otlp is installed here")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", f"console,{name}")
    with caplog.at_level(logging.INFO, "ganserve.server.tracing"):
        assert tracing.setup() is None
    assert not tracing.active
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    if name == "otlp":
        assert "opentelemetry-exporter-otlp" in warnings[0].getMessage()
    else:
        assert name in warnings[0].getMessage()


class FakeContext:
    """What server_span reads of a gRPC servicer context."""

    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Any:
        return self._metadata


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": TRACEPARENT},  # HTTP headers (a mapping)
        (("user-agent", "x"), ("traceparent", TRACEPARENT), ("bin-bin", b"\x00")),  # metadata
        FakeContext((("traceparent", TRACEPARENT),)),  # a gRPC servicer context
    ],
    ids=["headers", "metadata", "servicer-context"],
)
def test_server_span_continues_the_callers_trace(exporter, carrier) -> None:
    with tracing.server_span("svc/M", carrier, {"rpc.method": "M"}) as span:
        assert trace.get_current_span() is span
        for n in (3, 4):  # two chunks of a stream
            with tracing.encode_span("png", n):
                pass
    assert trace.get_current_span() is not span
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "svc/M")
    assert server.kind is SpanKind.SERVER
    assert format_trace_id(server.context.trace_id) == TRACE_ID
    assert server.parent is not None and format_span_id(server.parent.span_id) == PARENT_ID
    assert server.parent.is_remote
    assert server.attributes["rpc.method"] == "M"
    assert server.attributes["ganserve.images"] == 7  # summed over the encoded chunks
    encodes = by_name(spans, "ganserve.encode")
    assert [e.attributes["ganserve.images"] for e in encodes] == [3, 4]
    assert {e.attributes["ganserve.encoding"] for e in encodes} == {"png"}
    assert server.status.status_code is StatusCode.UNSET


def test_server_span_without_traceparent_starts_a_trace(exporter) -> None:
    with tracing.server_span("root", {"user-agent": "x"}):
        pass
    (root,) = exporter.get_finished_spans()
    assert root.parent is None


def test_outcomes_follow_the_semantic_conventions(exporter) -> None:
    with tracing.server_span("a") as span:
        tracing.grpc_outcome(span, "NOT_FOUND", "no model 'x'", model="x")
    with tracing.server_span("b") as span:
        tracing.grpc_outcome(span, "UNAVAILABLE", "model 'm' is loading", "m", "2")
    with tracing.server_span("c") as span:
        tracing.http_outcome(span, 503, "draining")
    with pytest.raises(KeyError), tracing.server_span("d"):
        raise KeyError("boom")  # no outcome recorded: the exception marks it
    with pytest.raises(RuntimeError), tracing.server_span("e") as span:
        tracing.grpc_outcome(span, "INVALID_ARGUMENT", "count: must be > 0")
        raise RuntimeError("the abort that sends the status")  # the outcome stands
    spans = {s.name: s for s in exporter.get_finished_spans()}
    a, b, c, d, e = (spans[k] for k in "abcde")
    # a client's mistake is not the server's error: status stays UNSET
    assert a.status.status_code is StatusCode.UNSET
    assert a.attributes["rpc.grpc.status_code"] == 5
    assert a.attributes["ganserve.status"] == "NOT_FOUND"
    assert a.attributes["ganserve.status_message"] == "no model 'x'"
    assert a.attributes["ganserve.model"] == "x"
    assert b.status.status_code is StatusCode.ERROR
    assert b.status.description == "UNAVAILABLE: model 'm' is loading"
    assert b.attributes["rpc.grpc.status_code"] == 14
    assert b.attributes["ganserve.model.version"] == "2"
    assert c.status.status_code is StatusCode.ERROR
    assert c.attributes["http.response.status_code"] == 503
    assert d.status.status_code is StatusCode.ERROR and "KeyError" in d.status.description
    assert [ev.name for ev in d.events] == ["exception"]
    assert e.status.status_code is StatusCode.UNSET and not e.events


async def test_queued_requests_get_queue_batch_and_inference_spans(exporter) -> None:
    infer = HeldInfer(seconds=0.005)
    batcher = Batcher(infer, BatchingConfig(inline_max_images=0), Metrics(), "m")
    await batcher.start()
    try:
        infer.hold()
        first = asyncio.ensure_future(traced_submit(batcher, "r0", 1))
        await asyncio.to_thread(infer.entered.acquire)  # r0's batch is running
        rest = [asyncio.ensure_future(traced_submit(batcher, f"r{i}", 2)) for i in (1, 2)]
        await asyncio.sleep(0)  # r1 and r2 run up to their wait: queued behind r0's batch
        assert batcher.queue_depth == 2
        infer.release()
        await asyncio.gather(first, *rest)
    finally:
        await batcher.stop()
    spans = exporter.get_finished_spans()
    for i in range(3):
        (request,) = by_name(spans, f"r{i}")
        kids = children(spans, request)
        (queue,), (batch,) = kids["ganserve.queue"], kids["ganserve.batch"]
        (inference,) = children(spans, batch)["ganserve.inference"]
        assert queue.context.trace_id == request.context.trace_id
        # in order (the batcher's clock is converted to OTel's: allow for rounding)
        times = [
            request.start_time, queue.start_time, queue.end_time, batch.start_time,
            inference.start_time, inference.end_time, batch.end_time, request.end_time,
        ]  # fmt: skip
        assert all(a <= b + 100_000 for a, b in itertools.pairwise(times)), times
        assert 0.005 <= duration_s(inference) < 5
        merged = i > 0  # r1 and r2 waited behind r0 and ran as one batch
        assert batch.attributes["ganserve.batch.requests"] == (2 if merged else 1)
        assert batch.attributes["ganserve.batch.images"] == (4 if merged else 1)
        assert batch.attributes["ganserve.request.images"] == (2 if merged else 1)
        assert batch.attributes["ganserve.batch.inline"] is False
        assert batch.attributes["ganserve.batch.side"] is False
        if merged:  # they queued for at least r0's whole inference
            assert duration_s(queue) >= 0.005


async def test_inline_split_and_failed_batches(exporter) -> None:
    infer = HeldInfer()
    batcher = Batcher(infer, BatchingConfig(max_batch_size=4), Metrics(), "m")
    await batcher.start()
    try:
        await traced_submit(batcher, "lone", 1)  # idle model: runs inline on the loop
        await traced_submit(batcher, "split", 10)  # 4 + 4 + 2 images
        infer.fail = True
        with pytest.raises(Internal):
            await traced_submit(batcher, "failed", 1)
    finally:
        await batcher.stop()
    spans = exporter.get_finished_spans()
    (lone,) = by_name(spans, "lone")
    kids = children(spans, lone)
    (queue,), (batch,) = kids["ganserve.queue"], kids["ganserve.batch"]
    assert batch.attributes["ganserve.batch.inline"] is True
    assert duration_s(queue) == 0
    (split,) = by_name(spans, "split")
    kids = children(spans, split)
    assert len(kids["ganserve.queue"]) == 1  # the wait before its first piece
    pieces = sorted(b.attributes["ganserve.request.images"] for b in kids["ganserve.batch"])
    assert pieces == [2, 4, 4]
    (failed,) = by_name(spans, "failed")
    (batch,) = children(spans, failed)["ganserve.batch"]
    (inference,) = children(spans, batch)["ganserve.inference"]
    assert inference.status.status_code is StatusCode.ERROR
    assert "model exploded" in inference.status.description
    assert failed.status.status_code is StatusCode.ERROR  # Internal left the server span


async def test_http_span_names_come_from_a_known_set(exporter) -> None:
    """Made-up methods and unknown paths (the static files' catch-all) mint no span names."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(
        routes=[
            Route("/v1/models/{name}", ok, methods=["GET"]),
            Mount("", app=PlainTextResponse("file"), name="static"),
        ]
    )
    app = tracing.AsgiTracing(inner)

    async def call(method: str, path: str) -> None:
        scope = {"type": "http", "method": method, "path": path, "headers": [],
                 "query_string": b"", "root_path": "", "scheme": "http"}  # fmt: skip
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await app(scope, receive, send)

    await call("GET", "/v1/models/m")
    await call("FOOBAR123", "/anything")
    await call("GET", "/no/such/page-4711")
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["GET /v1/models/{name}", "_OTHER", "GET"]


def test_client_adds_the_current_span_context(exporter, monkeypatch) -> None:
    base = (("authorization", "Bearer t"),)
    assert with_trace_context(base) is base  # no current span: unchanged, nothing built
    tracer = trace.get_tracer("test", tracer_provider=TracerProvider(shutdown_on_exit=False))
    with tracer.start_as_current_span("client") as span:
        headers = dict(with_trace_context(base))
        ctx = span.get_span_context()
        assert headers["authorization"] == "Bearer t"
        assert headers["traceparent"] == (
            f"00-{format_trace_id(ctx.trace_id)}-{format_span_id(ctx.span_id)}-{ctx.trace_flags:02x}"
        )
        # OpenTelemetry never imported by the application: no lookup at all
        monkeypatch.delitem(sys.modules, "opentelemetry.trace")
        assert with_trace_context(base) is base


# ------------------------------------------------------------------ real servers

TRACE_ENV = {
    "OTEL_TRACES_EXPORTER": "console",  # JSON lines on the server's stdout (its log)
    "OTEL_BSP_SCHEDULE_DELAY": "10",  # export within milliseconds, not every 5 s
    "OTEL_SERVICE_NAME": "ganserve-test",
}


def logged_spans(proc: Any) -> list[dict[str, Any]]:
    spans = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                spans.append(json.loads(line))
    return spans


def hex_id(value: int, width: int) -> str:
    return "0x" + format(value, f"0{width}x")


@pytest.fixture
def traced_server(start_server, tiny_model_repo) -> Any:
    # WARNING: the log holds the spans and little else between start-up and shutdown
    return start_server(tiny_model_repo, "--log-level", "WARNING", env=TRACE_ENV)


@pytest.fixture
def local_tracer() -> trace.Tracer:
    """The client application's own tracer (not the global one)."""
    return trace.get_tracer("app", tracer_provider=TracerProvider(shutdown_on_exit=False))


def find_spans(
    wait_until: Callable[..., Any], proc: Any, predicate: Callable[[dict[str, Any]], bool], n: int
) -> list[dict[str, Any]]:
    """The spans of ``proc``'s log that match, once there are ``n`` of them."""

    def found() -> list[dict[str, Any]] | None:
        spans = [s for s in logged_spans(proc) if predicate(s)]
        return spans if len(spans) >= n else None

    return wait_until(found, f"{n} span(s) in the server's log")  # type: ignore[no-any-return]


def test_client_span_is_the_parent_of_the_server_span(
    traced_server, local_tracer, wait_until
) -> None:
    with GanClient(traced_server.target) as client:
        with local_tracer.start_as_current_span("make-digits") as span:
            client.sample("tiny-uncond", count=3, seed=1, encoding="png")
        ctx = span.get_span_context()
    trace_id, span_id = hex_id(ctx.trace_id, 32), hex_id(ctx.span_id, 16)
    name = "ganserve.v1.Generator/Sample"
    (sample,) = find_spans(
        wait_until, traced_server, lambda s: s["name"] == name and s["parent_id"] == span_id, 1
    )
    assert sample["context"]["trace_id"] == trace_id
    assert sample["kind"] == "SpanKind.SERVER"
    attributes = sample["attributes"]
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "ganserve.v1.Generator"
    assert attributes["rpc.method"] == "Sample"
    assert attributes["ganserve.model"] == "tiny-uncond"
    assert attributes["ganserve.model.version"] == "1"
    assert attributes["ganserve.images"] == 3
    assert attributes["rpc.grpc.status_code"] == 0
    assert sample["status"]["status_code"] == "UNSET"
    assert sample["resource"]["attributes"]["service.name"] == "ganserve-test"
    own = sample["context"]["span_id"]
    kids = find_spans(wait_until, traced_server, lambda s: s["parent_id"] == own, 3)
    assert {k["name"] for k in kids} == {
        "ganserve.queue", "ganserve.batch", "ganserve.encode",
    }  # fmt: skip
    (encode,) = (k for k in kids if k["name"] == "ganserve.encode")
    assert encode["attributes"] == {"ganserve.encoding": "png", "ganserve.images": 3}
    assert all(k["context"]["trace_id"] == trace_id for k in kids)


def test_a_stream_counts_the_images_of_its_chunks(traced_server, local_tracer, wait_until) -> None:
    with GanClient(traced_server.target) as client:
        with local_tracer.start_as_current_span("stream") as span:
            got = sum(
                r.images.shape[0] for r in client.sample_stream("tiny-uncond", 5, chunk_size=2)
            )
        assert got == 5
    parent = hex_id(span.get_span_context().span_id, 16)
    name = "ganserve.v1.Generator/SampleStream"
    (stream,) = find_spans(
        wait_until, traced_server, lambda s: s["name"] == name and s["parent_id"] == parent, 1
    )
    assert stream["attributes"]["ganserve.images"] == 5
    assert stream["attributes"]["rpc.grpc.status_code"] == 0
    own = stream["context"]["span_id"]
    kids = find_spans(wait_until, traced_server, lambda s: s["parent_id"] == own, 9)
    encodes = sorted(
        k["attributes"]["ganserve.images"] for k in kids if k["name"] == "ganserve.encode"
    )
    assert encodes == [1, 2, 2]  # one per chunk
    assert sum(k["name"] == "ganserve.batch" for k in kids) == 3


async def test_concurrent_calls_each_get_their_own_spans(
    traced_server, local_tracer, wait_until
) -> None:
    async with AsyncGanClient(traced_server.target) as client:
        await client.list_models()  # limits and model shapes cached: one RPC per call below

        async def one(i: int) -> trace.SpanContext:
            with local_tracer.start_as_current_span(f"call-{i}") as span:
                await client.sample("tiny-cond", count=2, seed=i, label=i % 10)
                return span.get_span_context()

        contexts = await asyncio.gather(*(one(i) for i in range(8)))
    name = "ganserve.v1.Generator/Sample"
    parents = {hex_id(c.span_id, 16): hex_id(c.trace_id, 32) for c in contexts}
    samples = find_spans(
        wait_until, traced_server, lambda s: s["name"] == name and s["parent_id"] in parents, 8
    )
    assert len({s["context"]["trace_id"] for s in samples}) == 8  # one trace per client call
    for sample in samples:
        assert sample["context"]["trace_id"] == parents[sample["parent_id"]]
        own = sample["context"]["span_id"]
        kids = find_spans(wait_until, traced_server, lambda s, own=own: s["parent_id"] == own, 3)
        names = sorted(k["name"] for k in kids)
        assert names == ["ganserve.batch", "ganserve.encode", "ganserve.queue"], names
        (batch,) = (k for k in kids if k["name"] == "ganserve.batch")
        assert 1 <= batch["attributes"]["ganserve.batch.requests"] <= 8
        assert batch["attributes"]["ganserve.request.images"] == 2
        bid = batch["context"]["span_id"]
        (inference,) = find_spans(
            wait_until, traced_server, lambda s, bid=bid: s["parent_id"] == bid, 1
        )
        assert inference["name"] == "ganserve.inference"


def test_errors_set_the_span_status(tmp_path: Path, start_server, local_tracer, wait_until) -> None:
    repo = tmp_path / "models"
    make_tiny_generator(model_path(repo, "tiny-uncond", "1"), latent_dim=8, name="tiny-uncond")
    write_broken_file(model_path(repo, "tiny-uncond", "2"))  # FAILED: calls get UNAVAILABLE
    proc = start_server(repo, "--log-level", "WARNING", env=TRACE_ENV)
    with GanClient(proc.target, retries=0) as client:
        with (
            local_tracer.start_as_current_span("missing") as missing,
            pytest.raises(ModelNotFound),
        ):
            client.get_model("no-such-model")
        with local_tracer.start_as_current_span("broken") as broken, pytest.raises(Unavailable):
            client.sample("tiny-uncond", count=1, version="2")
    found = {}
    for span, method in ((missing, "GetModel"), (broken, "Sample")):
        parent = hex_id(span.get_span_context().span_id, 16)
        name = f"ganserve.v1.Generator/{method}"
        (found[method],) = find_spans(
            wait_until, proc, lambda s, p=parent, n=name: s["parent_id"] == p and s["name"] == n, 1
        )
    not_found = found["GetModel"]
    assert not_found["attributes"]["rpc.grpc.status_code"] == 5
    assert not_found["status"]["status_code"] == "UNSET"  # the caller's mistake
    unavailable = found["Sample"]
    assert unavailable["attributes"]["rpc.grpc.status_code"] == 14
    assert unavailable["attributes"]["ganserve.model"] == "tiny-uncond"
    assert unavailable["status"]["status_code"] == "ERROR"
    assert unavailable["status"]["description"].startswith("UNAVAILABLE: ")


def traceparent(span_id: int) -> str:
    return f"00-{TRACE_ID}-{span_id:016x}-01"


def http_get(proc: Any, path: str, headers: dict[str, str], body: bytes | None = None) -> int:
    """The status of a GET (a POST of ``body`` when one is given) to ``proc``'s HTTP port."""
    url = f"http://127.0.0.1:{proc.http_port}{path}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def test_kserve_and_http_calls_continue_the_trace(traced_server, wait_until) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    infer = service_pb2.ModelInferRequest(model_name="tiny-uncond")
    tensor = infer.inputs.add(name="z", datatype="FP32", shape=[2, 8])
    tensor.contents.fp32_contents.extend([0.5] * 16)
    with grpc.insecure_channel(traced_server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(infer, metadata=(("traceparent", traceparent(1)),), timeout=30)
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name="nope"),
                metadata=(("traceparent", traceparent(2)),),
                timeout=30,
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    sample = "/v1/models/tiny-uncond/sample?count=3&seed=1"
    assert http_get(traced_server, sample, {"traceparent": traceparent(3)}) == 200
    assert http_get(traced_server, "/v2/models/nope", {"traceparent": traceparent(4)}) == 404
    infer_json = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
    headers = {"traceparent": traceparent(5), "Content-Type": "application/json"}
    infer_path = "/v2/models/tiny-uncond/infer"
    assert http_get(traced_server, infer_path, headers, json.dumps(infer_json).encode()) == 200

    def child_of(parent: int) -> dict[str, Any]:
        want = hex_id(parent, 16)
        (span,) = find_spans(wait_until, traced_server, lambda s: s["parent_id"] == want, 1)
        assert span["context"]["trace_id"] == "0x" + TRACE_ID
        assert span["kind"] == "SpanKind.SERVER"
        return span

    def names_under(span: dict[str, Any], n: int) -> list[str]:
        own = span["context"]["span_id"]
        kids = find_spans(wait_until, traced_server, lambda s: s["parent_id"] == own, n)
        return sorted(k["name"] for k in kids)

    grpc_infer, grpc_missing, http_sample, http_missing, rest_infer = (
        child_of(i) for i in (1, 2, 3, 4, 5)
    )
    assert grpc_infer["name"] == "inference.GRPCInferenceService/ModelInfer"
    assert grpc_infer["attributes"]["ganserve.model"] == "tiny-uncond"
    assert grpc_infer["attributes"]["rpc.grpc.status_code"] == 0
    assert names_under(grpc_infer, 3) == ["ganserve.batch", "ganserve.encode", "ganserve.queue"]
    assert grpc_infer["attributes"]["ganserve.images"] == 2
    assert grpc_missing["name"] == "inference.GRPCInferenceService/ModelMetadata"
    assert grpc_missing["attributes"]["ganserve.status"] == "NOT_FOUND"
    assert "nope" in grpc_missing["attributes"]["ganserve.status_message"]
    assert grpc_missing["status"]["status_code"] == "UNSET"
    assert http_sample["name"] == "GET /v1/models/{name}/sample"
    assert http_sample["attributes"]["http.route"] == "/v1/models/{name}/sample"
    assert http_sample["attributes"]["http.response.status_code"] == 200
    assert http_sample["attributes"]["ganserve.model"] == "tiny-uncond"
    assert names_under(http_sample, 3) == ["ganserve.batch", "ganserve.encode", "ganserve.queue"]
    assert http_sample["attributes"]["ganserve.images"] == 3
    assert http_missing["name"] == "GET /v2/models/{name}"
    assert http_missing["attributes"]["http.response.status_code"] == 404
    assert http_missing["status"]["status_code"] == "UNSET"
    assert rest_infer["name"] == "POST /v2/models/{name}/infer"
    assert names_under(rest_infer, 3) == ["ganserve.batch", "ganserve.encode", "ganserve.queue"]
    assert rest_infer["attributes"]["ganserve.images"] == 1


async def test_a_request_whose_client_left_is_marked_cancelled(exporter) -> None:
    """An HTTP request cancelled because its client disconnected (no response status to
    record) ends its span with the outcome CANCELLED, not as an error; its route was
    cancelled and had finished its clean-up before the request ended."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ganserve.server.http.disconnect import CancelOnDisconnect

    cleaned: list[str] = []

    async def slow(request: Any) -> PlainTextResponse:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append("route")
        return PlainTextResponse("late")

    inner = Starlette(routes=[Route("/v1/models/{name}/sample", slow, name="http_sample")])
    app = tracing.AsgiTracing(CancelOnDisconnect(inner, {"http_sample"}, lambda s: "http_sample"))
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(0.05)  # then the client closes its connection
        return {"type": "http.disconnect"}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/models/m/sample", "headers": [],
             "query_string": b"", "root_path": "", "scheme": "http"}  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 5)
    assert cleaned == ["route"] and sent == []
    (span,) = exporter.get_finished_spans()
    assert span.attributes["ganserve.status"] == "CANCELLED"
    assert "http.response.status_code" not in span.attributes
    assert span.status.status_code.name != "ERROR"
