"""Dynamic batcher on a real tiny ONNX generator: merging, splitting, limits, failures."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import make_tiny_generator

from ganserve.server.batcher import Batcher, BatchingConfig
from ganserve.server.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
)
from ganserve.server.metrics import Metrics
from ganserve.server.repository import read_spec
from ganserve.server.runtime import OrtRunner, RuntimeConfig

POISON = 99.0  # a latent whose first entry is this makes GatedInfer raise


class GatedInfer:
    """The real runner, recording batch sizes; ``close()`` holds the worker inside
    its current inference until ``open()``, so requests pile up deterministically."""

    def __init__(self, runner: OrtRunner):
        self.runner = runner
        self.batches: list[int] = []
        self.threads: list[str] = []  # name of the thread that ran each batch
        self.delay = 0.0  # seconds each inference takes at least
        self.entered = threading.Semaphore(0)
        self._gate = threading.Event()
        self._gate.set()

    def close(self) -> None:
        self.entered = threading.Semaphore(0)  # forget entries of earlier inferences
        self._gate.clear()

    def open(self) -> None:
        self._gate.set()

    def __call__(self, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        self.entered.release()
        assert self._gate.wait(timeout=30)
        self.batches.append(z.shape[0])
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        if np.any(z[:, 0] == POISON):
            raise RuntimeError("poisoned latent")
        return self.runner.run(z, y)


@pytest.fixture
def runner(tmp_path: Path) -> OrtRunner:
    path = make_tiny_generator(tmp_path / "model.onnx", latent_dim=8)
    return OrtRunner(path, read_spec(path, "tiny", "1"), RuntimeConfig(device="cpu"))


@pytest.fixture
def infer(runner: OrtRunner) -> GatedInfer:
    return GatedInfer(runner)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def make_batcher(infer: GatedInfer, metrics: Metrics) -> AsyncIterator[Callable]:
    made: list[Batcher] = []

    async def make(**config: object) -> Batcher:
        # The gated tests park the worker; the inline path (own tests below) would park the loop.
        config.setdefault("inline_max_images", 0)
        batcher = Batcher(infer, BatchingConfig(**config), metrics, "tiny")  # type: ignore[arg-type]
        await batcher.start()
        made.append(batcher)
        return batcher

    yield make
    infer.open()
    for b in made:
        await b.stop()


def _z(n: int, start: float = 0.0) -> np.ndarray:
    """(n, 8) latents, distinct per row so results can be told apart."""
    return (np.arange(n * 8, dtype=np.float32).reshape(n, 8) / 100.0 + start).astype(np.float32)


async def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll (yielding to the loop) until ``condition`` holds."""
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "condition not reached in time"
        await asyncio.sleep(0.001)


async def _hold_worker(batcher: Batcher, infer: GatedInfer) -> asyncio.Task[np.ndarray]:
    """Park the worker inside an inference of one request; returns that request's task."""
    infer.close()
    first = asyncio.create_task(batcher.submit(_z(1, 5.0), None))
    await asyncio.to_thread(infer.entered.acquire)
    return first


async def test_concurrent_requests_merge(make_batcher, infer, runner, metrics) -> None:  # type: ignore[no-untyped-def]
    batcher = await make_batcher(max_batch_size=64)
    first = await _hold_worker(batcher, infer)
    zs = [_z(n, i) for i, n in enumerate((1, 2, 3, 1, 1))]
    tasks = [asyncio.create_task(batcher.submit(z, None)) for z in zs]
    await _wait_for(lambda: batcher.queue_depth == 5)
    infer.open()
    results = await asyncio.gather(*tasks)
    await first
    assert infer.batches == [1, 8]
    for z, out in zip(zs, results, strict=True):  # each waiter gets its own rows
        np.testing.assert_array_equal(out, runner.run(z, None))
    value = metrics.registry.get_sample_value
    assert value("ganserve_batch_size_images_sum", {"model": "tiny"}) == 9
    assert value("ganserve_batch_size_images_count", {"model": "tiny"}) == 2
    assert value("ganserve_batch_size_images_bucket", {"model": "tiny", "le": "1.0"}) == 1
    assert value("ganserve_images_total", {"model": "tiny"}) == 9
    assert value("ganserve_queue_wait_seconds_count", {"model": "tiny"}) == 6


async def test_instances_run_batches_side_by_side(make_batcher, infer, runner, metrics) -> None:  # type: ignore[no-untyped-def]
    """instances=2: while one worker is parked inside an inference, the other takes the
    queued requests once they are a batch's worth (here: 2 requests, more than the
    parked batch's 1), so two batches are in flight at once on two threads; each
    waiter gets its own rows, and stop() (the fixture's) waits for both workers."""
    batcher = await make_batcher(max_batch_size=64, instances=2)
    first = await _hold_worker(batcher, infer)
    zs = [_z(3, 1.0), _z(2, 2.0)]
    tasks = [asyncio.create_task(batcher.submit(z, None)) for z in zs]
    # With one worker this second entry never comes while the gate is closed.
    assert await asyncio.to_thread(infer.entered.acquire, True, 10)
    assert batcher.queue_depth == 0
    infer.open()
    results = await asyncio.gather(*tasks)
    await first
    for z, out in zip(zs, results, strict=True):
        np.testing.assert_array_equal(out, runner.run(z, None))
    assert sorted(infer.batches) == [1, 5]
    assert len(set(infer.threads)) == 2
    assert metrics.registry.get_sample_value("ganserve_images_total", {"model": "tiny"}) == 6


async def test_idle_instance_leaves_a_lone_small_request_to_merge(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    """instances=2: one small request that arrives while a worker is busy is not run
    alone by the idle worker (greedy, two workers would split the queue into batches of
    one); it waits, and a full batch's worth of images does not."""
    batcher = await make_batcher(max_batch_size=8, instances=2)
    first = await _hold_worker(batcher, infer)
    small = asyncio.create_task(batcher.submit(_z(1, 1.0), None))
    assert not await asyncio.to_thread(infer.entered.acquire, True, 0.5)
    assert batcher.queue_depth == 1
    big = asyncio.create_task(batcher.submit(_z(8, 2.0), None))  # 9 images queued >= 8
    assert await asyncio.to_thread(infer.entered.acquire, True, 10)
    infer.open()
    await asyncio.gather(first, small, big)
    assert sorted(infer.batches) == [1, 1, 8]  # the gate releases parked workers in any order


async def test_instances_with_batching_off_run_lone_requests_side_by_side(
    make_batcher, infer
) -> None:  # type: ignore[no-untyped-def]
    """Batching off: nothing can merge, so an idle worker takes a lone request at once."""
    batcher = await make_batcher(enabled=False, instances=2)
    first = await _hold_worker(batcher, infer)
    second = asyncio.create_task(batcher.submit(_z(1, 1.0), None))
    assert await asyncio.to_thread(infer.entered.acquire, True, 10)
    infer.open()
    await asyncio.gather(first, second)
    assert infer.batches == [1, 1]


async def _side_batcher(infer: GatedInfer, side: GatedInfer, metrics: Metrics) -> Batcher:
    config = BatchingConfig(max_batch_size=4, inline_max_images=0)
    batcher = Batcher(infer, config, metrics, "tiny", infer_side=side)  # type: ignore[arg-type]
    await batcher.start()
    return batcher


async def test_a_full_batch_queued_behind_a_running_one_runs_beside_it(
    infer, runner, metrics
) -> None:  # type: ignore[no-untyped-def]
    """Side batches (one instance plus a single-threaded twin): a lone batch runs on the
    main session; while it runs, a partial batch waits (to merge), and a full batch
    starts at once on the second worker, on the twin."""
    side = GatedInfer(runner)
    batcher = await _side_batcher(infer, side, metrics)
    try:
        first = await _hold_worker(batcher, infer)  # alone: the main session
        small = asyncio.create_task(batcher.submit(_z(2, 1.0), None))
        assert not await asyncio.to_thread(side.entered.acquire, True, 0.5)
        assert batcher.queue_depth == 1
        side.close()
        more = asyncio.create_task(batcher.submit(_z(2, 2.0), None))  # 4 queued: a full batch
        assert await asyncio.to_thread(side.entered.acquire, True, 10)
        assert batcher.queue_depth == 0
        infer.open()
        side.open()
        out_small, out_more = await asyncio.gather(small, more)
        await first
        assert infer.batches == [1] and side.batches == [4]
        side_total = metrics.registry.get_sample_value
        assert side_total("ganserve_side_batches_total", {"model": "tiny"}) == 1
        np.testing.assert_array_equal(out_small, runner.run(_z(2, 1.0), None))
        np.testing.assert_array_equal(out_more, runner.run(_z(2, 2.0), None))
        # Both idle again (a worker clears its flag just after posting its results): a
        # lone full batch runs on the main session.
        await _wait_for(lambda: batcher.running_batches == 0)
        await batcher.submit(_z(4, 3.0), None)
        assert infer.batches == [1, 4] and side.batches == [4]
    finally:
        infer.open()
        side.open()
        await batcher.stop()


async def test_a_split_request_runs_on_both_workers_and_reassembles(infer, runner, metrics) -> None:  # type: ignore[no-untyped-def]
    """A request of several full batches: the first take leaves full batches queued, so
    both workers take pieces side by side (each on the twin; the first take wakes the
    other worker, as the request was one submit) and fill one buffer; every row lands
    where it belongs, request after request."""
    side = GatedInfer(runner)
    batcher = await _side_batcher(infer, side, metrics)
    try:
        side.close()
        one = _z(16, 9.0)
        task = asyncio.create_task(batcher.submit(one, None))
        for _ in range(2):  # two pieces of the one request in inference at once
            assert await asyncio.to_thread(side.entered.acquire, True, 10)
        side.open()
        np.testing.assert_array_equal(await task, runner.run(one, None))
        # the last piece may find the other worker done already and run alone, on main
        assert side.batches[:3] == [4, 4, 4] and sum(side.batches + infer.batches) == 16
        infer.delay = side.delay = 0.002  # let the two workers overlap
        for i in range(5):
            big = _z(100, float(i))
            np.testing.assert_array_equal(await batcher.submit(big, None), runner.run(big, None))
        assert len(set(side.threads)) == 2  # pieces ran on both workers
        assert sum(side.batches) + sum(infer.batches) == 516
    finally:
        await batcher.stop()


async def test_a_crashed_worker_fails_its_own_batch_too(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    """A bug in the worker (here: latents of two widths cannot be concatenated) fails
    the requests of the batch in hand as well as the queued ones; none waits forever."""
    batcher = await make_batcher(max_batch_size=64)
    first = await _hold_worker(batcher, infer)
    bad = [
        asyncio.create_task(batcher.submit(z, None)) for z in (_z(1), np.zeros((1, 4), np.float32))
    ]
    await _wait_for(lambda: batcher.queue_depth == 2)
    infer.open()
    await first
    for task in bad:
        with pytest.raises(Internal, match="crashed"):
            await asyncio.wait_for(task, timeout=10)
    assert not batcher.accepting


async def test_one_worker_never_takes_a_second_batch_while_parked(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    """The counterpart of the test above: with instances=1 the request waits in the queue."""
    batcher = await make_batcher(max_batch_size=64)
    first = await _hold_worker(batcher, infer)
    second = asyncio.create_task(batcher.submit(_z(3, 1.0), None))
    assert not await asyncio.to_thread(infer.entered.acquire, True, 0.5)
    assert batcher.queue_depth == 1
    infer.open()
    await asyncio.gather(first, second)
    assert infer.batches == [1, 3]


async def test_large_requests_split_and_reassemble_in_order(  # type: ignore[no-untyped-def]
    make_batcher, infer, runner
) -> None:
    batcher = await make_batcher(max_batch_size=4)
    first = await _hold_worker(batcher, infer)
    a, b = _z(3, 1.0), _z(6, 2.0)
    tasks = [asyncio.create_task(batcher.submit(z, None)) for z in (a, b)]
    await _wait_for(lambda: batcher.queue_depth == 2)
    infer.open()
    out_a, out_b = await asyncio.gather(*tasks)
    await first
    # a (3) shares a batch with the first piece of b; b's other pieces follow
    assert infer.batches == [1, 4, 4, 1]
    np.testing.assert_array_equal(out_a, runner.run(a, None))
    np.testing.assert_array_equal(out_b, runner.run(b, None))
    big = _z(10, 3.0)
    np.testing.assert_array_equal(await batcher.submit(big, None), runner.run(big, None))
    assert infer.batches[-3:] == [4, 4, 2]


async def test_full_queue_is_rejected_at_once(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    batcher = await make_batcher(max_queue_size=2)
    first = await _hold_worker(batcher, infer)
    queued = [asyncio.create_task(batcher.submit(_z(1), None)) for _ in range(2)]
    await _wait_for(lambda: batcher.queue_depth == 2)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit(_z(1), None)
    infer.open()
    await asyncio.gather(first, *queued)


async def test_expired_and_cancelled_requests_are_dropped_before_compute(  # type: ignore[no-untyped-def]
    make_batcher, infer
) -> None:
    batcher = await make_batcher()
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(_z(2), None, deadline=time.monotonic() - 1.0)
    with pytest.raises(Cancelled):
        await batcher.submit(_z(2), None, is_cancelled=lambda: True)
    assert infer.batches == []
    # a waiter whose task is cancelled while queued is skipped too
    first = await _hold_worker(batcher, infer)
    gone = asyncio.create_task(batcher.submit(_z(3), None))
    kept = asyncio.create_task(batcher.submit(_z(2), None))
    await _wait_for(lambda: batcher.queue_depth == 2)
    gone.cancel()
    infer.open()
    await asyncio.gather(first, kept)
    assert infer.batches == [1, 2]
    assert gone.cancelled()


async def test_inference_error_reaches_every_waiter_and_worker_goes_on(  # type: ignore[no-untyped-def]
    make_batcher, infer, runner
) -> None:
    batcher = await make_batcher(max_batch_size=4)
    first = await _hold_worker(batcher, infer)
    poisoned = _z(1)
    poisoned[0, 0] = POISON
    zs = [_z(1), poisoned, _z(5)]  # the 5-image request is split: its rest is dropped too
    tasks = [asyncio.create_task(batcher.submit(z, None)) for z in zs]
    await _wait_for(lambda: batcher.queue_depth == 3)
    infer.open()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await first
    assert all(isinstance(r, Internal) for r in results), results
    assert "poisoned latent" in str(results[0])
    assert infer.batches == [1, 4]
    z = _z(2)
    np.testing.assert_array_equal(await batcher.submit(z, None), runner.run(z, None))


async def test_batching_off_runs_each_request_alone(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    batcher = await make_batcher(enabled=False, max_batch_size=4)
    first = await _hold_worker(batcher, infer)
    tasks = [asyncio.create_task(batcher.submit(_z(n), None)) for n in (1, 2, 6)]
    await _wait_for(lambda: batcher.queue_depth == 3)
    infer.open()
    await asyncio.gather(first, *tasks)
    assert infer.batches == [1, 1, 2, 4, 2]


async def test_idle_model_does_not_wait_for_a_batch(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    # A one-hour max delay: any wait for a batch to fill would time the test out.
    batcher = await make_batcher(max_queue_delay_ms=3_600_000.0)
    for _ in range(20):
        await batcher.submit(_z(1), None)
    assert infer.batches == [1] * 20


async def test_stop_drains_or_fails_queued_requests(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    drained = await make_batcher()
    first = await _hold_worker(drained, infer)
    queued = asyncio.create_task(drained.submit(_z(2), None))
    await _wait_for(lambda: drained.queue_depth == 1)
    stopping = asyncio.create_task(drained.stop(drain=True))
    await _wait_for(lambda: not drained.accepting)
    with pytest.raises(Unavailable):
        await drained.submit(_z(1), None)
    infer.open()
    await stopping
    assert (await queued).shape == (2, 1, 28, 28) and (await first).shape == (1, 1, 28, 28)

    dropped = await make_batcher()
    first = await _hold_worker(dropped, infer)
    queued = asyncio.create_task(dropped.submit(_z(2), None))
    await _wait_for(lambda: dropped.queue_depth == 1)
    stopping = asyncio.create_task(dropped.stop(drain=False))
    with pytest.raises(Unavailable, match="shutting down"):
        await queued
    infer.open()
    await asyncio.gather(stopping, first)


async def test_wrong_output_count_is_an_internal_error(runner, metrics) -> None:  # type: ignore[no-untyped-def]
    batcher = Batcher(lambda z, y: runner.run(z[:1], y), BatchingConfig(), metrics, "tiny")
    await batcher.start()
    with pytest.raises(Internal, match="returned 1 images for a batch of 3"):
        await batcher.submit(_z(3), None)
    await batcher.stop()


# ------------------------------------------------------------------ inline path


async def test_lone_small_request_runs_inline_on_the_loop(  # type: ignore[no-untyped-def]
    make_batcher, infer, runner, metrics
) -> None:
    batcher = await make_batcher(inline_max_images=4)
    z = _z(3, 1.0)
    out = await batcher.submit(z, None)
    np.testing.assert_array_equal(out, runner.run(z, None))
    assert infer.threads == [threading.current_thread().name]  # no worker hand-off
    value = metrics.registry.get_sample_value
    assert value("ganserve_batch_size_images_sum", {"model": "tiny"}) == 3
    assert value("ganserve_images_total", {"model": "tiny"}) == 3
    assert value("ganserve_queue_wait_seconds_count", {"model": "tiny"}) == 1
    assert value("ganserve_inference_seconds_count", {"model": "tiny"}) == 1


async def test_requests_larger_than_the_inline_limit_go_to_the_worker(  # type: ignore[no-untyped-def]
    make_batcher, infer
) -> None:
    batcher = await make_batcher(inline_max_images=4)
    await batcher.submit(_z(5), None)
    assert infer.threads == ["batcher-tiny"]


async def test_back_to_back_arrivals_after_an_inline_run_are_batched(  # type: ignore[no-untyped-def]
    make_batcher, infer, runner
) -> None:
    """Arrivals that queued while an inline inference blocked the loop must batch."""
    infer.delay = 0.05  # far longer than the gap between the tasks below
    batcher = await make_batcher(inline_max_images=4, max_queue_delay_ms=200)
    start = time.perf_counter()
    await batcher.submit(_z(1), None)  # sets the inline inference time
    took = time.perf_counter() - start  # that inference and then some
    # A pause longer than that inference as measured: the next one is "idle". (A fixed
    # 0.06 s left 10 ms of slack: a first run slowed by more went to the worker.)
    await asyncio.sleep(2 * took)
    zs = [_z(1, i) for i in range(4)]
    results = await asyncio.gather(*(batcher.submit(z, None) for z in zs))
    # The first of them would find the model idle, but the other three wait for the
    # loop (their tasks are ready): it goes to the worker too, and they all batch.
    assert infer.threads[0] == threading.current_thread().name
    assert infer.threads[1:] == ["batcher-tiny"] * (len(infer.threads) - 1)
    assert sum(infer.batches[1:]) == 4 and len(infer.batches) < 5
    for z, out in zip(zs, results, strict=True):
        np.testing.assert_array_equal(out, runner.run(z, None))


async def test_no_inline_while_other_work_waits_for_the_loop(  # type: ignore[no-untyped-def]
    make_batcher, infer, runner
) -> None:
    """An idle model, but other callbacks are ready on the loop (under load: other RPCs'
    reads and writes): an inline inference would hold them up, so the worker runs it."""
    batcher = await make_batcher(inline_max_images=4)
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    z = _z(2, 3.0)
    out = await batcher.submit(z, None)
    assert infer.threads == ["batcher-tiny"] and ran == [True]
    np.testing.assert_array_equal(out, runner.run(z, None))
    await asyncio.sleep(0.05)  # a pause longer than that inference: idle again
    await batcher.submit(z, None)
    assert infer.threads[1:] == [threading.current_thread().name]


def test_the_event_loop_exposes_its_ready_queue() -> None:
    """The inline path's loop check reads asyncio's ``loop._ready``; on a Python whose
    loop lacks it the check would read every loop as idle (the check off): fail here."""
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop._ready, collections.deque)  # type: ignore[attr-defined]
    finally:
        loop.close()


async def test_no_inline_while_the_worker_is_busy(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    batcher = await make_batcher(inline_max_images=4)
    infer.close()
    first = asyncio.create_task(batcher.submit(_z(5), None))  # too big: to the worker
    await asyncio.to_thread(infer.entered.acquire)
    second = asyncio.create_task(batcher.submit(_z(1), None))
    await _wait_for(lambda: batcher.queue_depth == 1)  # queued, not run on the loop
    infer.open()
    await asyncio.gather(first, second)
    assert infer.threads == ["batcher-tiny", "batcher-tiny"]


async def test_inline_errors_and_deadlines(make_batcher, infer) -> None:  # type: ignore[no-untyped-def]
    batcher = await make_batcher(inline_max_images=4)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(_z(1), None, deadline=time.monotonic() - 1)
    with pytest.raises(Cancelled):
        await batcher.submit(_z(1), None, is_cancelled=lambda: True)
    poisoned = _z(1)
    poisoned[0, 0] = POISON
    with pytest.raises(Internal, match="poisoned"):
        await batcher.submit(poisoned, None)
    assert (await batcher.submit(_z(2), None)).shape[0] == 2  # goes on serving
    assert infer.batches == [1, 2]  # expired/cancelled never reached the model
