"""Admission control: the pure policy (``server/admission.py``), the batcher's use of it,
and what a real server's client sees when it refuses (status, pushback trailer, counts)."""

from __future__ import annotations

import asyncio
import collections
import time

import grpc
import numpy as np
import pytest

from ganserve.server.admission import Admission, AdmissionConfig, CostEstimate, GradientLimit
from ganserve.server.batcher import Batcher, BatchingConfig
from ganserve.server.errors import PUSHBACK_KEY, ResourceExhausted, pushback_trailer
from ganserve.server.metrics import Metrics
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc


def test_cost_estimate_follows_the_per_image_cost_of_batches() -> None:
    cost = CostEstimate(alpha=0.5)
    assert cost.per_image_s is None
    cost.observe(10, 0.010)
    assert cost.per_image_s == pytest.approx(0.001)
    cost.observe(10, 0.030)
    assert cost.per_image_s == pytest.approx(0.002)
    cost.observe(0, 1.0)  # nothing computed: no sample
    assert cost.per_image_s == pytest.approx(0.002)


def test_gradient_limit_grows_while_latency_holds_and_shrinks_when_it_climbs() -> None:
    limit = GradientLimit(min_limit=10, max_limit=1000, long_window=100)
    for _ in range(200):  # steady latency, the limit in use: it grows
        limit.sample(0.010, inflight=int(limit.limit))
    grown = limit.limit
    assert grown > 100
    for _ in range(50):  # latency x4 (a standing queue): it falls
        limit.sample(0.040, inflight=int(limit.limit))
    assert limit.limit < grown / 2
    assert limit.limit >= 10


def test_gradient_limit_does_not_grow_when_app_limited_and_stays_in_bounds() -> None:
    limit = GradientLimit(min_limit=10, max_limit=50)
    for _ in range(100):
        limit.sample(0.01, inflight=1)  # far below half the limit
    assert limit.limit == 10
    for _ in range(500):
        limit.sample(0.01, inflight=int(limit.limit))
    assert limit.limit == 50
    with pytest.raises(ValueError):
        GradientLimit(min_limit=5, max_limit=4)


def test_gradient_limit_drift_resets_to_probe_for_a_shorter_queue() -> None:
    limit = GradientLimit(min_limit=4, max_limit=100, initial=80, long_window=1000, drift=20)
    rtt = 0.01
    for _ in range(40):  # a slow creep: the short average stays above the long one
        rtt *= 1.02
        limit.sample(rtt, inflight=int(limit.limit))
    assert limit.limit < 80


def _admission(**kw: object) -> Admission:
    config = AdmissionConfig(**kw)  # type: ignore[arg-type]
    adm = Admission(config, max_queue=100, max_batch_size=8)
    adm.batch_done(10, 0.010)  # 1 ms per image
    return adm


def test_admission_refuses_a_full_queue_and_the_concurrency_limit() -> None:
    adm = _admission()
    full = adm.admit("m", 1, queued=100, inflight=100, images_ahead=100, now=0.0, deadline=None)
    assert full is not None and full.reason == "queue_full"
    assert full.retry_after_s == pytest.approx(0.1)  # 100 images ahead at 1 ms
    assert adm.limit == 16  # two batches of one-image requests
    over = adm.admit("m", 1, queued=5, inflight=16, images_ahead=16, now=0.0, deadline=None)
    assert over is not None and over.reason == "concurrency"
    assert "concurrency limit (16" in over.message
    assert adm.admit("m", 1, queued=5, inflight=15, images_ahead=15, now=0.0, deadline=None) is None
    fixed = _admission(adaptive_limit=False)
    assert fixed.limit == 108  # the queue and a running batch


def test_admission_sheds_what_cannot_finish_before_its_deadline() -> None:
    adm = _admission()
    # 10 images ahead + 5 own at 1 ms each: done in ~15 ms
    late = adm.admit("m", 5, queued=2, inflight=3, images_ahead=10, now=100.0, deadline=100.012)
    assert late is not None and late.reason == "deadline"
    assert "deadline" in late.message and late.retry_after_s == pytest.approx(0.010)
    ok = adm.admit("m", 5, queued=2, inflight=3, images_ahead=10, now=100.0, deadline=100.020)
    assert ok is None
    # Too slow even alone: a deadline problem, not an overload (DEADLINE_EXCEEDED).
    alone = adm.admit("m", 5, queued=0, inflight=0, images_ahead=0, now=100.0, deadline=100.003)
    assert alone is not None and alone.reason == "too_late"


def test_admission_bounds_the_wait_of_requests_without_deadline() -> None:
    adm = _admission(max_wait_s=0.05)
    wait = adm.admit("m", 1, queued=2, inflight=3, images_ahead=60, now=0.0, deadline=None)
    assert wait is not None and wait.reason == "queue_wait"
    assert adm.admit("m", 1, queued=2, inflight=3, images_ahead=40, now=0.0, deadline=None) is None
    with pytest.raises(ValueError):
        AdmissionConfig(max_wait_s=0)


def test_pushback_trailer_is_grpcs_standard_key_in_whole_milliseconds() -> None:
    assert pushback_trailer(None) == ()
    assert pushback_trailer(0.0) == ((PUSHBACK_KEY, "10"),)  # a floor: still a pause
    assert pushback_trailer(0.2504) == ((PUSHBACK_KEY, "251"),)


async def test_batcher_refuses_by_deadline_before_any_work_and_counts_it() -> None:
    """A parked worker and a known cost: a request that cannot finish in time is refused
    at once (RESOURCE_EXHAUSTED, reason deadline, a retry hint), counted by reason."""
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    computed: list[int] = []

    def infer(z: np.ndarray, y: object) -> np.ndarray:
        computed.append(z.shape[0])
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=30)
        return np.zeros((z.shape[0], 1, 2, 2), np.float32)

    metrics = Metrics()
    batcher = Batcher(infer, BatchingConfig(inline_max_images=0), metrics, "m")
    await batcher.start()
    try:
        batcher._admission.batch_done(1, 0.05)  # 50 ms per image, as if measured
        running = asyncio.create_task(batcher.submit(np.zeros((4, 8), np.float32), None))
        while not computed:
            await asyncio.sleep(0.001)
        with pytest.raises(ResourceExhausted) as info:
            # 4 images ahead + 1 own at 50 ms: 250 ms, with 100 ms left
            await batcher.submit(np.zeros((1, 8), np.float32), None, time.monotonic() + 0.1)
        assert info.value.reason == "deadline"
        assert info.value.retry_after_s == pytest.approx(0.2)
        roomy = asyncio.create_task(
            batcher.submit(np.zeros((1, 8), np.float32), None, time.monotonic() + 30)
        )
        gate.set()
        await asyncio.gather(running, roomy)
        assert computed == [4, 1]  # the refused request never reached the model
        counted = metrics.registry.get_sample_value(
            "ganserve_rejected_total", {"model": "m", "reason": "deadline"}
        )
        assert counted == 1.0
        limit = metrics.registry.get_sample_value("ganserve_concurrency_limit", {"model": "m"})
        assert limit == 128
    finally:
        gate.set()
        await batcher.stop()


def test_a_real_server_refuses_overload_with_a_pushback_trailer_and_counts_it(
    start_server, tiny_model_repo, scrape
) -> None:
    """Against ``ganserve serve`` with a one-request queue: a burst is served or refused
    with RESOURCE_EXHAUSTED whose trailer carries ``grpc-retry-pushback-ms``; every
    refusal is counted in ganserve_requests_total and ganserve_rejected_total."""
    server = start_server(tiny_model_repo, "--max-queue-size", "1", "--inline-max-images", "0")

    async def burst() -> list[tuple[str, dict[str, str]]]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.GeneratorStub(channel)

            async def one(seed: int) -> tuple[str, dict[str, str]]:
                call = stub.Sample(pb.SampleRequest(model="tiny-uncond", count=256, seed=seed))
                try:
                    await call
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name, dict(exc.trailing_metadata() or ())
                return "OK", {}

            return await asyncio.gather(*(one(i) for i in range(200)))

    results: list[tuple[str, dict[str, str]]] = []
    for _ in range(5):  # a burst on a busy machine may arrive slowly enough to fit
        results += asyncio.run(burst())
        codes = collections.Counter(code for code, _ in results)
        if codes["RESOURCE_EXHAUSTED"]:
            break
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    for code, trailer in results:
        if code == "RESOURCE_EXHAUSTED":
            assert int(trailer[PUSHBACK_KEY]) >= 10
    metrics = scrape(server)
    refused = sum(
        v for (name, labels), v in metrics.items()
        if name == "ganserve_rejected_total" and ("model", "tiny-uncond") in labels
    )  # fmt: skip
    counted = metrics[
        (
            "ganserve_requests_total",
            (("code", "RESOURCE_EXHAUSTED"), ("method", "Sample"), ("model", "tiny-uncond")),
        )
    ]
    assert refused == counted == codes["RESOURCE_EXHAUSTED"]
