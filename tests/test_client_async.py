"""AsyncGanClient against the real session server, and retries on an asyncio server."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import numpy as np
import pytest

from ganserve.clients import (
    AsyncGanClient,
    DeadlineExceeded,
    GanClient,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
    latents_from_seeds,
)
from ganserve.v1 import generator_pb2 as pb

UNCOND, COND = "tiny-uncond", "tiny-cond"


async def test_every_method(server) -> None:
    async with AsyncGanClient(server.target, timeout=20) as client:
        assert {m.name for m in await client.list_models()} == {UNCOND, COND}
        assert (await client.limits()).max_images_per_request == 4096
        info = await client.get_model(COND)
        assert info.conditional and info.latent_dim == 8
        assert await client.model_info(COND, version="1") == info
        assert await client.health() == "SERVING"

        sample = await client.sample(COND, 4, seed=11, label=6, return_latents=True)
        assert sample.images.shape == (4, 28, 28) and list(sample.labels) == [6] * 4
        np.testing.assert_array_equal(sample.latents, latents_from_seeds(11, 4, 8))

        chunks = [c async for c in client.sample_stream(COND, 4, seed=11, label=6, chunk_size=3)]
        assert [c.offset for c in chunks] == [0, 3]
        np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), sample.images)

        morph = await client.interpolate(UNCOND, [1, 2, 3], steps=7, encoding="uint8")
        assert morph.images.shape == (7, 28, 28) and morph.images.dtype == np.uint8
        assert morph.class_weights is None

        sums = await client.arithmetic(
            COND, [(1, [1, 2]), (-1, 3)], label=1, return_term_images=True
        )
        assert sums.image.shape == (28, 28) and sums.term_images.shape == (2, 28, 28)


async def test_same_answers_as_the_sync_client(server) -> None:
    async with AsyncGanClient(server.target) as client:
        got = await client.sample(UNCOND, 3, seed=77, truncation=0.5)
    with GanClient(server.target) as sync_client:
        expected = sync_client.sample(UNCOND, 3, seed=77, truncation=0.5)
    np.testing.assert_array_equal(got.images, expected.images)


async def test_shared_across_tasks(server) -> None:
    async with AsyncGanClient(server.target) as client:
        results = await asyncio.gather(
            *(client.sample(COND, 2, seed=s, label=s) for s in range(10))
        )
    assert [int(r.labels[0]) for r in results] == list(range(10))
    assert [r.seed for r in results] == list(range(10))


async def test_leaving_a_stream_early_cancels_it(server) -> None:
    async with AsyncGanClient(server.target) as client:
        async for chunk in client.sample_stream(UNCOND, 10_000, seed=1, chunk_size=1):
            assert chunk.offset == 0
            break
        assert await client.health() == "SERVING"


async def test_count_over_the_stream_limit_is_split(start_server, tiny_model_repo, server) -> None:
    small = start_server(
        tiny_model_repo, "--max-images-per-request", "4", "--max-images-per-stream", "7",
        "--stream-chunk-max", "4", "--stream-chunk-default", "4",
    )  # fmt: skip
    z = np.random.default_rng(1).standard_normal((19, 8)).astype(np.float32)
    labels = [(7 * i) % 10 for i in range(19)]
    async with AsyncGanClient(small.target, timeout=20) as client:
        seeded, explicit = await asyncio.gather(
            client.sample(COND, 19, seed=3, encoding="uint8", return_latents=True),
            client.sample(COND, latents=z, labels=labels),
        )
        chunks = [c async for c in client.sample_stream(COND, 19, seed=3, chunk_size=4)]
    with GanClient(server.target) as sync_client:  # one call each: the limit there is 4096
        whole = sync_client.sample(COND, 19, seed=3, encoding="uint8", return_latents=True)
        expected = sync_client.sample(COND, latents=z, labels=labels)
        floats = sync_client.sample(COND, 19, seed=3)
    assert seeded.seed == 3 and seeded.images.tobytes() == whole.images.tobytes()
    np.testing.assert_array_equal(seeded.labels, whole.labels)
    np.testing.assert_array_equal(seeded.latents, latents_from_seeds(3, 19, 8))
    assert explicit.images.tobytes() == expected.images.tobytes()
    assert list(explicit.labels) == labels
    assert [c.offset for c in chunks] == [0, 4, 7, 11, 14, 18]
    assert np.concatenate([c.images for c in chunks]).tobytes() == floats.images.tobytes()


async def test_errors(server) -> None:
    async with AsyncGanClient(server.target) as client:
        with pytest.raises(InvalidRequest, match=r"use labels=\[\.\.\.\]"):
            await client.sample(COND, 2, label=[1, 2])  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="use label=1"):
            async for _ in client.sample_stream(COND, 2, labels=1):  # type: ignore[arg-type]
                pass
        with pytest.raises(ModelNotFound, match="no-such-model"):
            await client.sample("no-such-model", 1)
        with pytest.raises(InvalidRequest) as invalid:
            await client.interpolate(COND, [1], labels=[1], steps=4)  # one keyframe
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ModelNotFound):
            async for _ in client.sample_stream("no-such-model", 2):
                pass
    async with AsyncGanClient("127.0.0.1:1", retries=0) as client:
        with pytest.raises(Unavailable):
            await client.list_models()


class FlakyAioServer:
    """An asyncio grpc server: ListModels fails with ``code`` ``failures`` times, then
    answers; ``hang=True`` never answers (until the client's deadline)."""

    def __init__(self, failures: int, code: grpc.StatusCode, hang: bool = False) -> None:
        self.calls, self.failures, self.code, self.hang = 0, failures, code, hang
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self._list_models,
            request_deserializer=pb.ListModelsRequest.FromString,
            response_serializer=pb.ListModelsResponse.SerializeToString,
        )
        generic = grpc.method_handlers_generic_handler(
            "ganserve.v1.Generator", {"ListModels": handler}
        )
        self.server.add_generic_rpc_handlers((generic,))
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def _list_models(self, request, context: grpc.aio.ServicerContext):
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()  # cancelled when the deadline ends the call
        if self.calls <= self.failures:
            await context.abort(self.code, f"scripted failure {self.calls}")
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="ok")])

    async def __aenter__(self) -> FlakyAioServer:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)


@pytest.mark.parametrize(
    ("code", "failures", "calls", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, 2, 3, None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 1, 2, None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 99, 4, Overloaded),
    ],
)
async def test_retry_policy(code, failures, calls, error) -> None:
    async with (
        FlakyAioServer(failures, code) as fake,
        AsyncGanClient(fake.target, retries=3) as client,
    ):
        if error is None:
            assert [m.name for m in await client.list_models()] == ["ok"]
        else:
            with pytest.raises(error):
                await client.list_models()
    assert fake.calls == calls


async def test_deadline_exceeded() -> None:
    async with (
        FlakyAioServer(0, grpc.StatusCode.OK, hang=True) as fake,
        AsyncGanClient(fake.target, timeout=0.2) as client,
    ):
        with pytest.raises(DeadlineExceeded):
            await client.list_models()


async def test_a_stream_cut_by_a_server_restart_resumes(start_server, tiny_model_repo) -> None:
    proc = start_server(tiny_model_repo)
    async with AsyncGanClient(proc.target, timeout=20, retries=4) as client:
        chunks = client.sample_stream("tiny-cond", 1000, chunk_size=16, seed=3)
        got = [await chunks.__anext__() for _ in range(2)]
        proc.proc.kill()  # cut the stream, then a new server on the same port
        proc.wait()
        proc.close()
        await asyncio.to_thread(start_server, tiny_model_repo, "--port", str(proc.port))
        got += [chunk async for chunk in chunks]
        assert [c.offset for c in got] == list(range(0, 1000, 16))
        images = np.concatenate([c.images for c in got])
        # the images of an uncut request (500 per call; labels i % 10 restart in step)
        for k in (0, 500):
            part = await client.sample("tiny-cond", 500, seed=3 + k)
            assert np.array_equal(images[k : k + 500], part.images)
        labels = np.concatenate([c.labels for c in got])
        assert np.array_equal(labels, np.arange(1000) % 10)
