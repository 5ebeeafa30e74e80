"""Message-size limits: a 10,000-image float32 response fits when allowed; one that cannot
fit fails before compute with a message that says what to do."""

from __future__ import annotations

import asyncio
import collections
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import launch_server
from tiny_onnx import make_tiny_generator, model_path

from ganserve.clients import AsyncGanClient, GanClient, InvalidRequest
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

MIB = 2**20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * MIB)]


@pytest.fixture(scope="module")
def limits_proc(tiny_model_repo, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Tiny models plus a 3x64x64 RGB one (48 KiB a float32 image); 10,000 images allowed
    and requests of at most 1 MiB, set through the environment."""
    work = tmp_path_factory.mktemp("limits")
    repo = Path(shutil.copytree(tiny_model_repo, work / "models"))
    make_tiny_generator(model_path(repo, "tiny-rgb", "1"), name="tiny-rgb", image_shape=(3, 64, 64))
    env = {"GANSERVE_MAX_IMAGES_PER_REQUEST": "10000", "GANSERVE_MAX_REQUEST_BYTES": str(MIB)}
    proc = launch_server(repo, work_dir=work, env=env)
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def limits_server(limits_proc):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(limits_proc.target, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.GeneratorStub(channel)


def test_ten_thousand_float32_images_fit(limits_server) -> None:
    limits = limits_server.ListModels(pb.ListModelsRequest()).limits
    assert limits.max_images_per_request == 10_000 and limits.max_message_bytes == 64 * MIB
    assert limits.max_request_bytes == MIB  # the receive limit is its own
    response = limits_server.Sample(pb.SampleRequest(model="tiny-uncond", count=10_000, seed=0))
    assert len(response.images.data) == 10_000 * 28 * 28 * 4  # 31 MB


def test_too_large_response_says_to_stream(limits_server) -> None:
    with pytest.raises(grpc.RpcError) as info:
        limits_server.Sample(pb.SampleRequest(model="tiny-rgb", count=2000, seed=0))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SampleStream" in info.value.details() and "max_message_bytes" in info.value.details()
    stream = limits_server.SampleStream(
        pb.SampleRequest(model="tiny-rgb", count=2000, seed=0, chunk_size=2000)
    )
    with pytest.raises(grpc.RpcError) as chunk:
        list(stream)
    assert chunk.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_size" in chunk.value.details()
    # The same images in chunks that fit.
    request = pb.SampleRequest(model="tiny-rgb", count=2000, seed=0, chunk_size=500, encoding=2)
    counts = [c.images.count for c in limits_server.SampleStream(request)]
    assert counts == [500] * 4


def _keyframes(n: int) -> pb.InterpolateRequest:
    """An Interpolate request of ``n`` latent keyframes of the tiny models' 8 dimensions."""
    latent = pb.LatentVector(values=[0.0] * 8)
    return pb.InterpolateRequest(
        model="tiny-uncond", steps=2, keyframes=[pb.Keyframe(latent=latent)] * n
    )


def test_a_request_over_the_receive_limit_fails_in_the_transport(limits_server) -> None:
    """--max-request-bytes bounds requests (parsed on the event loop before any check)
    apart from the 64 MiB response limit; the server goes on serving."""
    under, over = _keyframes(20_000), _keyframes(30_000)
    assert under.ByteSize() < MIB < over.ByteSize()
    with pytest.raises(grpc.RpcError) as info:
        limits_server.Interpolate(under)  # parsed: our own check names the field
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "keyframes" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        limits_server.Interpolate(over)  # refused unparsed by gRPC
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    assert len(limits_server.Interpolate(_keyframes(2)).images.data) == 2 * 28 * 28 * 4


def test_the_client_refuses_a_request_over_the_receive_limit_before_sending(
    limits_proc,
) -> None:
    """The Python client learns the receive limit from ListModels and refuses a larger
    Interpolate / Arithmetic itself (INVALID_ARGUMENT, no send): gRPC's RESOURCE_EXHAUSTED
    would be retried by the channel's retry policy, and cannot succeed."""
    latents = np.zeros((30_000, 8), np.float32)
    with GanClient(limits_proc.target, timeout=20) as client:
        assert client.limits().max_request_bytes == MIB
        with pytest.raises(InvalidRequest, match=r"request limit 1048576.*fewer keyframes"):
            client.interpolate("tiny-uncond", list(latents), steps=2)
        with pytest.raises(InvalidRequest, match=r"request limit 1048576.*fewer terms"):
            client.arithmetic("tiny-uncond", [(1.0, z) for z in latents])
        # Explicit latents for Sample are split into requests that fit instead.
        many = np.random.default_rng(0).standard_normal((40_000, 8)).astype(np.float32)
        result = client.sample("tiny-uncond", latents=many, encoding="uint8", return_latents=True)
        np.testing.assert_array_equal(result.latents, many)

    async def refused_by_the_async_client() -> None:
        async with AsyncGanClient(limits_proc.target, timeout=20) as client:
            with pytest.raises(InvalidRequest, match="max_request_bytes"):
                await client.interpolate("tiny-uncond", list(latents), steps=2)

    asyncio.run(refused_by_the_async_client())


def _burst(target: str, n: int) -> collections.Counter[str]:
    """``n`` one-image Sample RPCs sent at once on one channel: their status codes."""

    async def run() -> collections.Counter[str]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.GeneratorStub(channel)

            async def one(seed: int) -> str:
                request = pb.SampleRequest(model="tiny-uncond", count=1, seed=seed)
                try:
                    await stub.Sample(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name
                return "OK"

            return collections.Counter(await asyncio.gather(*(one(i) for i in range(n))))

    return asyncio.run(run())


def test_a_burst_beyond_grpc_cores_backlog_is_served_or_refused_clearly(
    server, start_server, tiny_model_repo
) -> None:
    """gRPC core cancels calls beyond its pending backlog (default: randomly from 1,000)
    with a bare CANCELLED before any handler runs. The server raises that backlog, so a
    burst of 2,500 reaches the model queues: each RPC is served or refused with the
    batcher's RESOURCE_EXHAUSTED, none cancelled. --max-pending-rpcs is that backlog."""
    codes = _burst(server.target, 2500)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] > 0
    small = start_server(tiny_model_repo, "--max-pending-rpcs", "1")
    assert _burst(small.target, 300)["CANCELLED"] > 0


def test_with_grpc_fast_refusal_core_refuses_a_burst_with_resource_exhausted(
    start_server, tiny_model_repo
) -> None:
    """--grpc-fast-refusal: gRPC core's promise-based transport refuses calls beyond the
    pending queue itself, RESOURCE_EXHAUSTED (retried by clients), never CANCELLED."""
    small = start_server(tiny_model_repo, "--grpc-fast-refusal", "--max-pending-rpcs", "1")
    codes = _burst(small.target, 300)
    assert codes["CANCELLED"] == 0, codes
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, codes


def test_the_grpc_experiment_is_asked_for_by_flag_or_environment() -> None:
    from ganserve.server.main import (
        GRPC_EXPERIMENT,
        enable_grpc_experiment,
        wants_grpc_experiment,
    )

    assert wants_grpc_experiment(["serve", "--grpc-fast-refusal"], {})
    assert not wants_grpc_experiment(["serve", "--grpc-fast-refusal", "--no-grpc-fast-refusal"], {})
    assert wants_grpc_experiment(["serve"], {"GANSERVE_GRPC_FAST_REFUSAL": "true"})
    assert not wants_grpc_experiment(["serve"], {})
    environ: dict[str, str] = {"GRPC_EXPERIMENTS": "event_engine_client"}
    assert enable_grpc_experiment(environ)
    assert environ["GRPC_EXPERIMENTS"] == f"event_engine_client,{GRPC_EXPERIMENT}"
    off = {"GRPC_EXPERIMENTS": f"-{GRPC_EXPERIMENT}"}
    assert not enable_grpc_experiment(off)  # the user's explicit choice stands
    assert off["GRPC_EXPERIMENTS"] == f"-{GRPC_EXPERIMENT}"
