"""The serving engine (``server/engine.py``) without a network: real tiny ONNX models in a
real repository, plans from the real planners; what comes back, what is refused, and
what the response-bytes budget and the stream limit hold while it runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_onnx import make_tiny_generator, model_path

from ganserve.contract.encodings import Encoding
from ganserve.contract.limits import Limits
from ganserve.contract.sizes import response_bytes
from ganserve.imaging import to_uint8
from ganserve.seeds import latents_from_seeds
from ganserve.server.batcher import BatchingConfig
from ganserve.server.budget import ServerBudgets
from ganserve.server.calls import Call
from ganserve.server.encode import encode_images
from ganserve.server.engine import Engine
from ganserve.server.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from ganserve.server.generation import OFFLOAD_IMAGES, encode, sample_image_bytes
from ganserve.server.latent import one_hot
from ganserve.server.metrics import Metrics
from ganserve.server.plan import SamplePlan, plan_arithmetic, plan_interpolate, plan_sample
from ganserve.server.repository import LoadedModel, ModelRepository
from ganserve.server.runtime import RuntimeConfig
from ganserve.v1 import generator_pb2 as pb

RUNTIME = RuntimeConfig(device="cpu", intra_op_threads=1, warmup_batch_sizes=(1,), tuning="off")
LIMITS = Limits()
FLOAT32_IMAGE = 28 * 28 * 4  # one tiny image's float32 bytes


def _nan_generator(path: Path) -> None:
    """The tiny generator with Sqrt where Tanh was: NaN for every negative
    pre-activation, so for nearly every latent, but finite at z = 0, where the warm-up
    runs (a model that is NaN there fails to load)."""
    make_tiny_generator(path, name="nan")
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "Tanh":
            node.op_type = "Sqrt"
    onnx.save(model, str(path))


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def repo(tmp_path: Path, metrics: Metrics) -> AsyncIterator[ModelRepository]:
    make_tiny_generator(model_path(tmp_path, "tiny"), name="tiny")
    make_tiny_generator(model_path(tmp_path, "cond"), num_classes=3, name="cond")
    _nan_generator(model_path(tmp_path, "nan"))
    repository = ModelRepository(tmp_path, RUNTIME, BatchingConfig(max_batch_size=16), metrics)
    await repository.start()
    yield repository
    await repository.close()


def _engine(
    repo: ModelRepository,
    metrics: Metrics,
    budgets: ServerBudgets | None = None,
    limits: Limits = LIMITS,
) -> Engine:
    return Engine(repo, limits, metrics, budgets)


def _budgets(capacity: int, max_streams: int = 4) -> ServerBudgets:
    return ServerBudgets(capacity, 64, max_streams, adaptive=False)


def _plan(model: LoadedModel, streaming: bool = False, **fields: object) -> SamplePlan:
    request = pb.SampleRequest(model=model.spec.name, **fields)  # type: ignore[arg-type]
    return plan_sample(request, model.spec, LIMITS, streaming=streaming)


def _rejected(metrics: Metrics, model: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "ganserve_rejected_total", {"model": model, "reason": reason}
    )
    return value or 0.0


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("encoding", list(Encoding))
async def test_sample_generates_the_seed_rules_images_and_encodes_them(
    repo: ModelRepository, metrics: Metrics, encoding: Encoding
) -> None:
    engine, model = _engine(repo, metrics), repo.get("tiny")
    plan = _plan(model, count=5, seed=42, encoding=encoding.number)  # type: ignore[arg-type]
    out = await engine.sample(model, plan, time.monotonic() + 30, lambda: False)
    z = latents_from_seeds(42, 5, 8)  # the contract's seed rule: (5, 8)
    expected = await model.generate(z)
    np.testing.assert_array_equal(out.images, expected)
    np.testing.assert_array_equal(out.latents, z)
    assert out.labels is None and out.offset == 0
    if encoding is Encoding.PNG:
        assert out.raw == b"" and len(out.pngs) == 5
    else:
        assert out.pngs == []
        assert out.raw == (expected.astype("<f4") if encoding is Encoding.FLOAT32
                           else to_uint8(expected)).tobytes()  # fmt: skip


async def test_sample_of_a_conditional_model_returns_each_images_class(
    repo: ModelRepository, metrics: Metrics
) -> None:
    engine, model = _engine(repo, metrics), repo.get("cond")
    out = await engine.sample(model, _plan(model, count=4, seed=7, labels=[2]), None, None)
    assert out.labels is not None and out.labels.tolist() == [2, 2, 2, 2]
    z = latents_from_seeds(7, 4, 8)
    np.testing.assert_array_equal(out.images, await model.generate(z, one_hot([2] * 4, 3)))


async def test_interpolate_and_arithmetic_return_their_plans_latents(
    repo: ModelRepository, metrics: Metrics
) -> None:
    engine, model = _engine(repo, metrics), repo.get("tiny")
    keys = [pb.Keyframe(seed=1), pb.Keyframe(seed=2)]
    request = pb.InterpolateRequest(
        model="tiny", keyframes=keys, steps=6, encoding=pb.ENCODING_UINT8
    )
    path = plan_interpolate(request, model.spec, LIMITS)
    out = await engine.interpolate(model, path, None, None)
    assert out.latents is path.z and out.images.shape == (6, 1, 28, 28)
    assert out.raw == to_uint8(out.images).tobytes()
    terms = [
        pb.ArithmeticTerm(weight=w, seeds=pb.SeedList(seeds=[s])) for w, s in ((1, 3), (-1, 4))
    ]
    request_a = pb.ArithmeticRequest(model="tiny", terms=terms, return_term_images=True)
    sums = plan_arithmetic(request_a, model.spec, LIMITS)
    out = await engine.arithmetic(model, sums, None, None)
    assert out.latents is sums.latents and out.images.shape == (3, 1, 28, 28)  # result, terms
    np.testing.assert_array_equal(out.images, await model.generate(sums.latents))


async def test_non_finite_output_is_refused_and_blames_huge_latents(
    repo: ModelRepository, metrics: Metrics
) -> None:
    budgets = _budgets(1 << 30)
    engine, model = _engine(repo, metrics, budgets), repo.get("nan")
    with pytest.raises(Internal, match="the model produced non-finite values"):
        await engine.sample(model, _plan(model, count=2, seed=0), None, None)
    assert budgets.buffered.used == 0  # given back on the way out
    huge = np.full((2, 8), 1e30, np.float32)
    with pytest.raises(InvalidArgument, match=r"^keyframes: the model's output is not finite"):
        await engine.images(model, huge, None, None, None, "keyframes")
    tiny = repo.get("tiny")  # a sane model's output passes
    assert (await engine.images(tiny, huge, None, None, None)).shape == (2, 1, 28, 28)


async def test_encode_gives_the_same_bytes_on_and_off_the_event_loop() -> None:
    rng = np.random.default_rng(0)
    for n in (OFFLOAD_IMAGES - 1, OFFLOAD_IMAGES):  # the last on the loop, the first in a thread
        images = rng.uniform(-1, 1, (n, 1, 4, 4)).astype(np.float32)
        assert await encode(images, Encoding.UINT8) == encode_images(images, Encoding.UINT8)
        assert await encode(images) == encode_images(images)


async def test_hold_holds_the_serving_version_for_the_call(
    repo: ModelRepository, metrics: Metrics
) -> None:
    engine, call = _engine(repo, metrics), Call()
    model = engine.hold("tiny", "", call)
    assert call.held is model and call.model == "tiny"
    model.release()
    with pytest.raises(NotFound):
        engine.hold("nope", "", Call())


# ------------------------------------------------------------ sizes and budget


async def test_a_response_over_the_message_limit_is_refused_before_any_work(
    repo: ModelRepository, metrics: Metrics
) -> None:
    budgets = _budgets(1 << 30)
    limits = Limits(max_message_bytes=100 * FLOAT32_IMAGE)
    engine, model = _engine(repo, metrics, budgets, limits), repo.get("tiny")
    with pytest.raises(InvalidArgument, match="use SampleStream"):
        await engine.sample(model, _plan(model, count=200, seed=0), None, None)
    stream = engine.sample_stream(model, _plan(model, True, count=400, chunk_size=200), None, None)
    with pytest.raises(InvalidArgument, match="lower chunk_size"):
        await anext(stream)
    assert budgets.buffered.used == 0 and engine.streams == 0
    assert metrics.registry.get_sample_value("ganserve_images_total", {"model": "tiny"}) == 0


async def test_a_sample_is_answered_while_its_bytes_are_held_and_refused_when_they_do_not_fit(
    repo: ModelRepository, metrics: Metrics
) -> None:
    model = repo.get("tiny")
    plan = _plan(model, count=4, seed=0)
    size = response_bytes(4, sample_image_bytes(plan, model.spec))
    budgets = _budgets(size + size // 2)
    budget, engine = budgets.buffered, _engine(repo, metrics, budgets)
    held: list[int] = []

    def respond(out: object) -> str:
        held.append(budget.used)
        return "the response"

    assert await engine.sample(model, plan, None, None, respond) == "the response"
    assert held == [size] and budget.used == 0
    budget.acquire_now(size, "another call")  # what is left is less than this response
    with pytest.raises(ResourceExhausted, match="does not fit now") as refused:
        await engine.sample(model, plan, None, None)
    assert refused.value.reason == "buffered_bytes" and refused.value.retry_after_s == 1.0
    assert _rejected(metrics, "tiny", "buffered_bytes") == 1
    assert budget.used == size  # the refused call held nothing


async def test_interpolations_and_arithmetic_hold_their_bytes_as_samples_do(
    repo: ModelRepository, metrics: Metrics
) -> None:
    """Every response reserves its bytes: interpolations and arithmetic too (a 4,096-frame
    interpolation is as large as the largest sample)."""
    budgets = _budgets(1 << 30)
    budget, engine, model = budgets.buffered, _engine(repo, metrics, budgets), repo.get("tiny")
    keys = [pb.Keyframe(seed=1), pb.Keyframe(seed=2)]
    path = plan_interpolate(
        pb.InterpolateRequest(model="tiny", keyframes=keys, steps=6), model.spec, LIMITS
    )
    terms = [pb.ArithmeticTerm(weight=1, seeds=pb.SeedList(seeds=[3]))]
    sums = plan_arithmetic(pb.ArithmeticRequest(model="tiny", terms=terms), model.spec, LIMITS)
    held: list[int] = []

    def respond(out: object) -> int:
        held.append(budget.used)
        return len(held)

    assert await engine.interpolate(model, path, None, None, respond) == 1
    assert await engine.arithmetic(model, sums, None, None, respond) == 2
    assert held[0] >= 6 * FLOAT32_IMAGE and 0 < held[1] < held[0] and budget.used == 0
    budget.acquire_now(budget.capacity - 100, "everything else")
    with pytest.raises(ResourceExhausted, match="does not fit now"):
        await engine.interpolate(model, path, None, None)
    with pytest.raises(ResourceExhausted, match="does not fit now"):
        await engine.arithmetic(model, sums, None, None)
    assert _rejected(metrics, "tiny", "buffered_bytes") == 2


async def test_a_response_holds_its_bytes_until_the_edge_says_it_was_sent(
    repo: ModelRepository, metrics: Metrics
) -> None:
    """With ``on_sent`` the bytes stay reserved after the response is built, until the
    edge's transport has taken it (gRPC sends a unary reply after its handler returns);
    a call that fails gives them back at once."""
    budgets = _budgets(1 << 30)
    budget, engine, model = budgets.buffered, _engine(repo, metrics, budgets), repo.get("tiny")
    releases: list[object] = []
    out = await engine.sample(
        model, _plan(model, count=4, seed=0), None, None, lambda g: g, releases.append
    )
    assert out.images.shape[0] == 4 and len(releases) == 1 and budget.used > 0
    releases.pop()()  # type: ignore[operator]
    assert budget.used == 0
    nan = repo.get("nan")
    with pytest.raises(Internal):
        await engine.sample(
            nan, _plan(nan, count=2, seed=0), None, None, lambda g: g, releases.append
        )
    assert releases == [] and budget.used == 0


async def test_a_paused_stream_keeps_its_message_not_the_float_images(
    repo: ModelRepository, metrics: Metrics
) -> None:
    """A stream whose reader stalls sits at its yield: its frame must not keep the chunk's
    float32 images (four times a UINT8 reply's bytes) besides the message it yielded."""
    import gc
    import weakref

    engine, model = _engine(repo, metrics, _budgets(1 << 30)), repo.get("tiny")
    plan = _plan(model, True, count=8, seed=1, chunk_size=4, encoding=pb.ENCODING_UINT8)
    seen: list[weakref.ref[np.ndarray]] = []

    def respond(chunk: object) -> bytes:
        seen.append(weakref.ref(chunk.images))  # type: ignore[attr-defined]
        return bytes(chunk.raw)  # type: ignore[attr-defined]

    stream = engine.sample_stream(model, plan, None, None, respond)
    message = await anext(stream)
    gc.collect()
    assert len(message) == 4 * 28 * 28 and seen[0]() is None
    await stream.aclose()


async def test_a_stream_holds_one_chunk_at_a_time_and_gives_it_back(
    repo: ModelRepository, metrics: Metrics
) -> None:
    budgets = _budgets(1 << 30)
    engine, model = _engine(repo, metrics, budgets), repo.get("tiny")
    plan = _plan(model, True, count=10, seed=5, chunk_size=4)
    per_image = sample_image_bytes(plan, model.spec)
    chunks = []
    async with asyncio.timeout(30):
        async for chunk in engine.sample_stream(model, plan, None, None):
            assert engine.streams == 1
            assert budgets.buffered.used == response_bytes(chunk.images.shape[0], per_image)
            chunks.append(chunk)
    assert [c.offset for c in chunks] == [0, 4, 8]
    assert [c.images.shape[0] for c in chunks] == [4, 4, 2]
    whole = await engine.sample(model, _plan(model, count=10, seed=5), None, None)
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole.images)
    assert budgets.buffered.used == 0 and engine.streams == 0


async def test_streams_beyond_the_limit_are_refused_and_closing_one_frees_its_place(
    repo: ModelRepository, metrics: Metrics
) -> None:
    budgets = _budgets(1 << 30, max_streams=1)
    engine, model = _engine(repo, metrics, budgets), repo.get("tiny")
    plan = _plan(model, True, count=100, chunk_size=10)
    first = engine.sample_stream(model, plan, None, lambda: False, lambda c: c.offset)
    assert await anext(first) == 0
    second = engine.sample_stream(model, plan, None, None)
    with pytest.raises(ResourceExhausted, match=r"1 streams open.*--max-streams 1") as refused:
        await anext(second)
    assert refused.value.reason == "streams" and _rejected(metrics, "tiny", "streams") == 1
    await first.aclose()
    assert engine.streams == 0 and budgets.buffered.used == 0
    third = engine.sample_stream(model, plan, None, None)
    assert (await anext(third)).offset == 0
    await third.aclose()


async def test_a_streams_first_chunk_is_refused_at_once_and_later_ones_wait_for_the_deadline(
    repo: ModelRepository, metrics: Metrics
) -> None:
    model = repo.get("tiny")
    plan = _plan(model, True, count=12, chunk_size=4)
    chunk = response_bytes(4, sample_image_bytes(plan, model.spec))
    budgets = _budgets(chunk + chunk // 2)
    budget, engine = budgets.buffered, _engine(repo, metrics, budgets)
    stream = engine.sample_stream(model, plan, time.monotonic() + 0.2, None)
    await anext(stream)  # holds one chunk
    other = asyncio.create_task(budget.acquire(chunk, 30))  # another call's, for a chunk
    await asyncio.sleep(0)  # one turn of the loop: the task queues its request
    assert not budget.try_acquire(0)  # it waits (and newcomers wait behind it)
    late = engine.sample_stream(model, plan, None, None)
    with pytest.raises(ResourceExhausted, match="does not fit now"):  # a new stream: no wait
        await anext(late)
    # The stream's next chunk gives its last one back, which goes to the call queued
    # before it; it then waits for room until its deadline.
    with pytest.raises(DeadlineExceeded, match="waited for response buffer"):
        await anext(stream)
    await other
    assert budget.used == chunk and engine.streams == 0
    assert _rejected(metrics, "tiny", "buffered_bytes") == 1  # the new stream only
