"""How the clients and the CLI take a ``SampleStream`` that goes wrong: one that ends OK
with images missing, one cut mid-way, one refused before its first chunk, one slower
than the caller's ``timeout``. The real GanClient, AsyncGanClient and ``ganserve sample``
against a real gRPC server whose ``SampleStream`` answers as scripted."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fake_generator import MODEL, start_fake_generator

from ganserve.cli import main
from ganserve.clients import (
    AsyncGanClient,
    DeadlineExceeded,
    GanClient,
    GanServeError,
    SampleResult,
    Unavailable,
)
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

SEED = 5
SIDE = 4  # images are (1, 4, 4)

# script(call number from 1, request, context) -> the call's responses
Script = Callable[[int, pb.SampleRequest, grpc.ServicerContext], Iterator[pb.SampleResponse]]


def images(request: pb.SampleRequest, first: int, n: int) -> pb.SampleResponse:
    """Images ``[first, first + n)`` of ``request``: every pixel of image i is
    ``(seed + i) % 256``, so a resumed stream shows which seeds it was given."""
    seed = request.seed if request.HasField("seed") else SEED
    values = np.repeat((seed + np.arange(first, first + n)) % 256, SIDE * SIDE).astype(np.uint8)
    return pb.SampleResponse(
        model=MODEL,
        version="1",
        images=pb.Images(
            encoding=pb.ENCODING_UINT8, count=n, shape=[1, SIDE, SIDE], data=values.tobytes()
        ),
        seed=seed,
        offset=first,
    )


class StreamServer:
    """A plain grpc server of one tiny unconditional model: ``ListModels`` and
    ``GetModel`` answer; ``SampleStream`` runs ``script``. ``requests`` has every
    ``SampleStream`` attempt the server got, gRPC's retries included."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[pb.SampleRequest] = []
        self._lock = threading.Lock()
        handler = grpc.unary_stream_rpc_method_handler(
            self._sample_stream,
            request_deserializer=pb.SampleRequest.FromString,
            response_serializer=pb.SampleResponse.SerializeToString,
        )
        self.server, self.target = start_fake_generator(
            {"SampleStream": handler}, side=SIDE, stream_chunk=4, workers=4
        )

    def _sample_stream(
        self, request: pb.SampleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SampleResponse]:
        with self._lock:
            self.requests.append(request)
            n = len(self.requests)
        yield from self.script(n, request, context)


@contextmanager
def stream_server(script: Script) -> Iterator[StreamServer]:
    server = StreamServer(script)
    try:
        yield server
    finally:
        server.server.stop(None)


def short(call: int, request: pb.SampleRequest, context: grpc.ServicerContext) -> Any:
    """4 images, then the end (status OK), whatever the count asked."""
    yield images(request, 0, 4)


def cut_after(delivered: int, then: str) -> Script:
    """The first call delivers ``delivered`` images and fails UNAVAILABLE; later calls
    deliver the rest (``then="rest"``), fail UNAVAILABLE before any (``"refuse"``), or
    deliver ``delivered`` more and fail again (``"again"``)."""

    def script(call: int, request: pb.SampleRequest, context: grpc.ServicerContext) -> Any:
        if call == 1 or then == "again":
            n = min(delivered, request.count)
            yield images(request, 0, n)
            if n < request.count:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the pod is draining")
        elif then == "rest":
            for first in range(0, request.count, 4):
                yield images(request, first, min(4, request.count - first))
        else:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the pod is draining")

    return script


def refuse(call: int, request: pb.SampleRequest, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAVAILABLE, "no capacity")
    yield  # a generator, as a stream handler is


def stream(
    kind: str, target: str, count: int, timeout: float | None = None, **options: Any
) -> list[SampleResult]:
    """Every chunk of ``sample_stream`` with the sync or the async client."""
    kwargs: dict[str, Any] = {"seed": SEED, "encoding": "uint8", "timeout": timeout}
    if kind == "sync":
        with GanClient(target, **options) as client:
            return list(client.sample_stream(MODEL, count, **kwargs))

    async def run() -> list[SampleResult]:
        async with AsyncGanClient(target, **options) as client:
            return [chunk async for chunk in client.sample_stream(MODEL, count, **kwargs)]

    return asyncio.run(run())


CLIENTS = ["sync", "async"]


# ------------------------------------------------ a stream that ends OK too early
@pytest.mark.parametrize("kind", CLIENTS)
def test_a_stream_that_ends_ok_with_images_missing_is_data_loss(kind: str) -> None:
    """It was taken as the whole answer by ``sample_stream`` (``sample`` refused it)."""
    with stream_server(short) as server, pytest.raises(GanServeError) as info:
        stream(kind, server.target, 32)
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    assert info.value.details == "stream ended after 4 of 32 images"


def test_sample_refuses_a_short_stream_alike() -> None:
    with (
        stream_server(short) as server,
        GanClient(server.target) as client,
        pytest.raises(GanServeError) as info,
    ):
        client.sample(MODEL, 32, seed=SEED)  # over max_images_per_request: streamed
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    assert info.value.details == "stream ended after 4 of 32 images"


@pytest.mark.parametrize("out", ["short.npy", "short.png"])
def test_the_cli_writes_nothing_from_a_short_stream(
    out: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It renamed a .npy of 28 rows of zeros into place and exited 0."""
    with stream_server(short) as server:
        args = ["--target", server.target, "sample", "--model", MODEL, "--count", "32"]
        assert main([*args, "--out", str(tmp_path / out)]) == 1
    stderr = capsys.readouterr().err
    assert stderr == "ganserve: error: stream ended after 4 of 32 images\n"
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- resumption
@pytest.mark.parametrize("kind", CLIENTS)
def test_a_stream_cut_mid_way_resumes_with_the_missing_seeds(kind: str) -> None:
    with stream_server(cut_after(4, then="rest")) as server:
        chunks = stream(kind, server.target, 16)
    assert [c.offset for c in chunks] == [0, 4, 8, 12]
    pixels = np.concatenate([c.images for c in chunks])[:, 0, 0]
    assert pixels.tolist() == list(range(SEED, SEED + 16))
    resumed = server.requests[1]
    assert (resumed.seed, resumed.count) == (SEED + 4, 12)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_stream_refused_before_its_first_chunk_gets_grpcs_retries_only(kind: str) -> None:
    """It was resumed ``retries`` times as well, each call with gRPC's retries:
    (retries + 1) ** 2 attempts without the token bucket."""
    with stream_server(refuse) as server, pytest.raises(Unavailable):
        stream(kind, server.target, 16, retries=2, retry_max_tokens=None)
    assert len(server.requests) == 3  # 1 call + gRPC's 2 retries


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_cut_stream_is_resumed_by_one_call_per_cut(kind: str) -> None:
    """The resume call, refused before its first chunk, has gRPC's retries and ends the
    stream; it was called ``retries`` times in a row, each with gRPC's retries."""
    with stream_server(cut_after(4, then="refuse")) as server, pytest.raises(Unavailable):
        stream(kind, server.target, 16, retries=2, retry_max_tokens=None)
    assert len(server.requests) == 1 + 3


@pytest.mark.parametrize("kind", CLIENTS)
def test_every_cut_after_progress_is_resumed(kind: str) -> None:
    with stream_server(cut_after(1, then="again")) as server:
        chunks = stream(kind, server.target, 6, retries=1)
    assert [c.offset for c in chunks] == list(range(6))
    assert len(server.requests) == 6


def test_without_retries_a_cut_stream_is_not_resumed() -> None:
    with stream_server(cut_after(4, then="rest")) as server, pytest.raises(Unavailable):
        stream("sync", server.target, 16, retries=0)
    assert len(server.requests) == 1


# ------------------------------------------------------------------ deadlines
@pytest.mark.parametrize("kind", CLIENTS)
def test_the_timeout_of_a_stream_bounds_it_whole_resumes_included(kind: str) -> None:
    """Each call delivers one image and is cut: 15 resumes, 0.1 s of backoff before
    each. The timeout was each call's: every call ended in time, the stream did not."""
    with stream_server(cut_after(1, then="again")) as server:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            stream(kind, server.target, 16, timeout=0.5)
        assert time.monotonic() - start < 1.4  # the backoff alone is 1.5 s
    assert len(server.requests) < 16


PAUSE_S = 0.8  # of ListModels and of GetModel each


@contextmanager
def slow_metadata_server() -> Iterator[tuple[str, list[float]]]:
    """The fake generator with ``ListModels`` and ``GetModel`` answering after
    ``PAUSE_S``; ``Sample`` and ``SampleStream`` note the time left of their deadline."""
    quick, quick_target = start_fake_generator({}, side=SIDE, stream_chunk=4, workers=1)
    with grpc.insecure_channel(quick_target) as channel:
        stub = pb_grpc.GeneratorStub(channel)
        listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
        info = stub.GetModel(pb.GetModelRequest(model=MODEL), timeout=10)
    quick.stop(None)
    left: list[float] = []

    def after_a_pause(answer: Any) -> Any:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            time.sleep(PAUSE_S)  # the slow metadata the test is about
            return answer

        return handler

    def sample(request: pb.SampleRequest, context: grpc.ServicerContext) -> Any:
        left.append(context.time_remaining())
        return images(request, 0, request.count)

    def sample_stream(request: pb.SampleRequest, context: grpc.ServicerContext) -> Any:
        left.append(context.time_remaining())
        for first in range(0, request.count, 4):
            yield images(request, first, min(4, request.count - first))

    unary = grpc.unary_unary_rpc_method_handler
    handlers = {
        "ListModels": unary(
            after_a_pause(listed),
            request_deserializer=pb.ListModelsRequest.FromString,
            response_serializer=pb.ListModelsResponse.SerializeToString,
        ),
        "GetModel": unary(
            after_a_pause(info),
            request_deserializer=pb.GetModelRequest.FromString,
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
        "Sample": unary(
            sample,
            request_deserializer=pb.SampleRequest.FromString,
            response_serializer=pb.SampleResponse.SerializeToString,
        ),
        "SampleStream": grpc.unary_stream_rpc_method_handler(
            sample_stream,
            request_deserializer=pb.SampleRequest.FromString,
            response_serializer=pb.SampleResponse.SerializeToString,
        ),
    }
    server, target = start_fake_generator(handlers, side=SIDE, stream_chunk=4, workers=4)
    try:
        yield target, left
    finally:
        server.stop(None)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("count", [4, 32])  # one Sample; a SampleStream
def test_the_timeout_of_sample_is_one_deadline_for_the_whole_call(kind: str, count: int) -> None:
    """``sample(timeout=T)`` gave T to the limits fetch, T again to the model's metadata,
    and T once more to the Sample or the stream."""
    timeout = 5.0
    with slow_metadata_server() as (target, left):
        if kind == "sync":
            with GanClient(target) as client:
                client.sample(MODEL, count, seed=SEED, encoding="uint8", timeout=timeout)
        else:

            async def run() -> None:
                async with AsyncGanClient(target) as client:
                    await client.sample(MODEL, count, seed=SEED, encoding="uint8", timeout=timeout)

            asyncio.run(run())
    assert len(left) == 1
    assert left[0] < timeout - 2 * PAUSE_S + 0.4  # both pauses came off the one deadline


def test_the_cli_timeout_is_one_deadline_for_the_model_lookup_and_the_stream(
    tmp_path: Path,
) -> None:
    """``sample --timeout T`` gave T to GetModel and T again to the stream."""
    timeout = 5.0
    with slow_metadata_server() as (target, left):
        args = ["--target", target, "sample", "--model", MODEL, "--count", "32"]
        assert main([*args, "--timeout", str(timeout), "--out", str(tmp_path / "a.npy")]) == 0
    assert len(left) == 1
    assert left[0] < timeout - 2 * PAUSE_S + 0.4  # GetModel's pause came off it too


def test_the_cli_timeout_is_the_deadline_of_samples_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--timeout`` was not passed to the stream: the stream ran as long as it took."""
    with stream_server(cut_after(1, then="again")) as server:
        args = ["--target", server.target, "sample", "--model", MODEL, "--count", "16"]
        assert main([*args, "--timeout", "0.5", "--out", str(tmp_path / "a.npy")]) == 4
        assert capsys.readouterr().err == "ganserve: error: Deadline Exceeded\n"
        assert not list(tmp_path.iterdir())
        # without --timeout the stream has no deadline (unary calls have 30 s)
        assert main([*args, "--out", str(tmp_path / "b.npy")]) == 0
    assert np.load(tmp_path / "b.npy").shape == (16, SIDE, SIDE)
