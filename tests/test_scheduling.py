"""The batcher's scheduling policy on its own: no threads, no event loop, time passed in."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ganserve.server.errors import Cancelled, DeadlineExceeded
from ganserve.server.scheduling import (
    Batch,
    BatchingConfig,
    Request,
    SchedulingPolicy,
    gone,
)

T0 = 1000.0  # monotonic seconds of the first arrival in each test


class Waiter:
    """A caller's future as the policy sees it: ``done()`` early means it gave up."""

    def __init__(self) -> None:
        self.gave_up = False

    def done(self) -> bool:
        return self.gave_up


def policy(twin: bool = False, **config: object) -> SchedulingPolicy[Waiter]:
    config.setdefault("adaptive_limit", False)  # the admission tests below set it
    return SchedulingPolicy(BatchingConfig(**config), twin=twin)  # type: ignore[arg-type]


def request(
    n: int,
    at: float = T0,
    deadline: float | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> Request[Waiter]:
    z = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + at  # (n, 2), rows told apart
    return Request(z, None, Waiter(), deadline, is_cancelled, at)


def queue(p: SchedulingPolicy[Waiter], *sizes: int, at: float = T0) -> list[Request[Waiter]]:
    reqs = [request(n, at + i * 1e-3) for i, n in enumerate(sizes)]
    for r in reqs:
        p.enqueue(r)
    return reqs


def take(p: SchedulingPolicy[Waiter], worker: int = 0, now: float = T0 + 1.0) -> Batch[Waiter]:
    batch = p.take(worker, now)
    assert batch is not None, "the policy handed out nothing"
    return batch


def spans(batch: Batch[Waiter]) -> list[tuple[int, int, int]]:
    """(request size, first image, end image) of each piece, in batch-row order."""
    return [(r.n, a, b) for r, a, b in batch.pieces]


# ------------------------------------------------------------------ merging and splitting


def test_queued_requests_merge_up_to_max_batch_size() -> None:
    p = policy(max_batch_size=8)
    a, b, c, d, e = queue(p, 1, 2, 3, 1, 4)
    first = take(p, now=T0 + 0.010)
    assert [(r, lo, hi) for r, lo, hi in first.pieces] == [
        (a, 0, 1), (b, 0, 2), (c, 0, 3), (d, 0, 1), (e, 0, 1),
    ]  # fmt: skip
    assert first.waits == pytest.approx([0.010, 0.009, 0.008, 0.007, 0.006])
    assert p.queued_images == 3 and list(p.queue) == [e] and p.busy == [True]
    p.release(0)
    rest = take(p, now=T0 + 0.020)
    assert [(r, lo, hi) for r, lo, hi in rest.pieces] == [(e, 1, 4)]
    assert rest.waits == []  # e's wait was counted with its first piece
    assert p.queued_images == 0 and not p.queue and p.last_take == 1
    assert p.take(0, T0 + 0.030) is None  # nothing left


def test_a_large_request_is_split_in_order_and_shares_batches() -> None:
    p = policy(max_batch_size=4)
    a, b = queue(p, 3, 6)
    batches = [take(p), take(p), take(p)]
    assert [spans(x) for x in batches] == [[(3, 0, 3), (6, 0, 1)], [(6, 1, 5)], [(6, 5, 6)]]
    assert p.take(0, T0 + 1) is None
    # Rows of b's pieces, in the order the batches ran, are b's rows in order.
    rows = [r.z[lo:hi] for x in batches for r, lo, hi in x.pieces if r is b]
    np.testing.assert_array_equal(np.concatenate(rows), b.z)
    assert (a.taken, b.taken) == (3, 6)


def test_batching_off_takes_one_request_or_one_piece_at_a_time() -> None:
    p = policy(enabled=False, max_batch_size=4)
    queue(p, 1, 2, 6)
    assert [spans(take(p)) for _ in range(4)] == [
        [(1, 0, 1)], [(2, 0, 2)], [(6, 0, 4)], [(6, 4, 6)],
    ]  # fmt: skip


# ------------------------------------------------------------------ when to run a batch


def test_an_idle_model_takes_a_lone_request_at_once() -> None:
    p = policy(max_queue_delay_ms=3_600_000.0)
    queue(p, 1)
    assert p.ready(0)
    assert p.fill_until(1) is None  # the last batch answered one request: no wait


def test_expect_k_waits_for_k_requests_but_never_past_max_queue_delay() -> None:
    p = policy(max_batch_size=8, max_queue_delay_ms=5.0)
    queue(p, 1)
    until = p.fill_until(3)  # the last batch answered 3 requests: expect them back
    assert until == pytest.approx(T0 + 0.005)  # the oldest arrival plus the delay
    assert p.should_wait(3, until, T0 + 0.001) == pytest.approx(0.004)
    p.enqueue(request(1, T0 + 0.002))
    assert p.should_wait(3, until, T0 + 0.003) == pytest.approx(0.002)
    assert p.should_wait(3, until, T0 + 0.006) is None  # the delay is up: take 2
    assert p.should_wait(2, until, T0 + 0.003) is None  # 2 expected, 2 queued
    p.enqueue(request(1, T0 + 0.004))
    assert p.should_wait(3, until, T0 + 0.004) is None  # all 3 are back


def test_a_full_batch_of_images_ends_the_wait() -> None:
    p = policy(max_batch_size=8, max_queue_delay_ms=5.0)
    queue(p, 8)
    until = p.fill_until(5)
    assert until is not None and p.should_wait(5, until, T0) is None


def test_greedy_batching_off_and_stopping_never_wait() -> None:
    greedy = policy()  # max_queue_delay_ms 0
    queue(greedy, 1)
    until = greedy.fill_until(10)
    assert until == T0 and greedy.should_wait(10, until, T0) is None
    off = policy(enabled=False, max_queue_delay_ms=5.0)
    queue(off, 1)
    assert off.fill_until(10) is None
    stopping = policy(max_queue_delay_ms=5.0)
    queue(stopping, 1)
    until = stopping.fill_until(10)
    assert until is not None
    stopping.stopping = True
    assert stopping.fill_until(10) is None and stopping.should_wait(10, until, T0) is None


def test_stop_drains_then_the_workers_exit() -> None:
    p = policy()
    queue(p, 2, 3)
    p.stopping = True
    assert not p.drained and p.ready(0)
    assert spans(take(p)) == [(2, 0, 2), (3, 0, 3)]
    assert p.drained
    q = policy()
    held = queue(q, 2, 3)
    assert q.clear() == held and q.queued_images == 0 and not q.queue


# ------------------------------------------------------------------ several workers


def test_an_idle_instance_leaves_a_small_queue_to_the_busy_one() -> None:
    p = policy(instances=2, max_batch_size=8)
    assert p.enqueue(request(1)) is True  # every worker idle: wake one
    assert p.enqueue(request(1)) is True
    assert spans(take(p, 0)) == [(1, 0, 1), (1, 0, 1)]  # last_take 2
    assert p.enqueue(request(1)) is False  # one waiting request: left to worker 0
    assert not p.ready(1)
    assert p.enqueue(request(1)) is True  # as many as the last batch took: a batch
    assert p.ready(1) and spans(take(p, 1)) == [(1, 0, 1), (1, 0, 1)]
    assert p.busy == [True, True]


def test_an_idle_instance_takes_a_full_batch_of_images_at_once() -> None:
    p = policy(instances=2, max_batch_size=8)
    queue(p, 1, 1, 1)
    take(p, 0)  # last_take 3
    assert p.enqueue(request(3)) is False and not p.ready(1)
    assert p.enqueue(request(5)) is True and p.ready(1)  # 2 requests, but 8 images


def test_instances_with_batching_off_take_lone_requests_side_by_side() -> None:
    p = policy(instances=2, enabled=False)
    queue(p, 1)
    take(p, 0)
    assert p.enqueue(request(1)) is True and p.ready(1)


def test_side_batch_only_for_a_full_batch_queued_behind_a_running_one() -> None:
    p = policy(twin=True, max_batch_size=4)
    assert p.side and p.workers == 2
    queue(p, 1)
    lone = take(p, 0)
    assert not lone.beside  # alone: the main session, every thread
    assert p.enqueue(request(2)) is False and not p.ready(1)  # a partial batch waits
    assert p.enqueue(request(1)) is False and not p.ready(1)  # more requests: still partial
    assert p.enqueue(request(1)) is True and p.ready(1)  # 4 images: a full batch
    side = take(p, 1)
    assert side.beside and spans(side) == [(2, 0, 2), (1, 0, 1), (1, 0, 1)]
    # Both idle again: a lone full batch runs on the main session.
    p.release(0)
    p.release(1)
    queue(p, 4)
    assert not take(p, 0).beside


def test_side_batches_need_the_twin_and_one_instance() -> None:
    assert not policy(twin=False).side
    assert not policy(twin=True, instances=2).side
    assert not policy(twin=True, side_batches=False).side
    assert policy(twin=True, instances=2).workers == 2


def test_a_take_that_leaves_a_full_batch_queued_runs_beside_and_wakes_the_other() -> None:
    p = policy(twin=True, max_batch_size=4)
    queue(p, 10)
    first = take(p, 0)
    assert first.beside and first.wake  # 6 left: a full batch for worker 1
    second = take(p, 1)
    assert second.beside and not second.wake  # 2 left: for whichever finishes first
    assert spans(first) == [(10, 0, 4)] and spans(second) == [(10, 4, 8)]
    p.release(0)
    assert p.take(0, T0 + 1) is None  # a partial batch waits for worker 1's to merge
    p.release(1)
    last = take(p, 0)
    assert spans(last) == [(10, 8, 10)] and not last.beside


# ------------------------------------------------------------------ dropped before compute


def test_expired_and_cancelled_requests_are_dropped_before_compute() -> None:
    p = policy(max_batch_size=8)
    expired = request(2, deadline=T0 + 0.5)
    client_gone = request(3, is_cancelled=lambda: True)
    abandoned = request(1)
    abandoned.future.gave_up = True  # the awaiting task was cancelled
    kept = request(2, deadline=T0 + 5.0)
    for r in (expired, client_gone, abandoned, kept):
        p.enqueue(r)
    batch = take(p, now=T0 + 1.0)
    assert [r for r, _, _ in batch.pieces] == [kept]
    assert [(r, type(e)) for r, e in batch.dropped] == [
        (expired, DeadlineExceeded), (client_gone, Cancelled), (abandoned, Cancelled),
    ]  # fmt: skip
    assert batch.waits == [pytest.approx(1.0)]
    assert p.queued_images == 0 and not p.queue


def test_the_rest_of_a_failed_split_request_is_dropped_silently() -> None:
    p = policy(max_batch_size=4)
    (big,) = queue(p, 6)
    take(p)
    big.failed = True  # its first piece's inference failed: the waiter has been told
    p.release(0)
    batch = take(p)
    assert batch.pieces == [] and batch.dropped == [] and not p.busy[0]
    assert p.queued_images == 0 and not p.queue


def test_gone_names_the_reason() -> None:
    assert gone(None, None, T0) is None
    assert isinstance(gone(T0, None, T0), DeadlineExceeded)
    assert gone(T0 + 1, lambda: False, T0) is None
    assert isinstance(gone(T0 + 1, lambda: True, T0), Cancelled)


# ------------------------------------------------------------------ inline on the loop


def admitted(p: SchedulingPolicy[Waiter], n: int, now: float) -> None:
    assert p.admit("m", n, now, None) is None


def test_inline_only_for_a_lone_small_request_on_an_idle_model_and_loop() -> None:
    p = policy(inline_max_images=4, instances=2)
    admitted(p, 4, T0)
    assert p.may_run_inline(4, T0, loop_busy=False)
    assert not p.may_run_inline(5, T0, loop_busy=False)  # too big to block the loop
    assert not p.may_run_inline(4, T0, loop_busy=True)  # other callbacks wait for the loop
    p.busy[1] = True
    assert not p.may_run_inline(4, T0, loop_busy=False)  # a worker runs a batch
    p.busy[1] = False
    queue(p, 1)
    assert not p.may_run_inline(4, T0, loop_busy=False)  # requests queued: batch with them
    p.clear()
    admitted(p, 1, T0)
    assert not p.may_run_inline(1, T0, loop_busy=False)  # another request in flight
    assert not policy(inline_max_images=0).may_run_inline(1, T0, loop_busy=False)


def test_inline_needs_a_gap_longer_than_the_last_inline_inference() -> None:
    p = policy(inline_max_images=4)
    admitted(p, 1, T0)
    assert p.may_run_inline(1, T0, loop_busy=False)
    p.inline_ran(0.002)
    p.finished(1, T0, T0 + 0.002, ok=True)
    admitted(p, 1, T0 + 0.003)
    assert not p.may_run_inline(1, T0 + 0.003, loop_busy=False)  # back to back: to a worker
    assert p.may_run_inline(1, T0 + 0.0045, loop_busy=False)  # after a pause: alone


def test_the_gap_follows_the_latest_small_inference_on_a_worker_too() -> None:
    """One slow inline run must not send every later lone request to a worker for good:
    the worker's small batches keep the gap's "one inference" current."""
    p = policy(inline_max_images=4)
    admitted(p, 1, T0)
    p.inline_ran(0.010)  # a preempted loop: 10 ms
    p.finished(1, T0, T0 + 0.010, ok=True)
    admitted(p, 1, T0 + 0.012)
    assert not p.may_run_inline(1, T0 + 0.012, loop_busy=False)  # 2 ms < 10 ms: a worker
    p.small_batch_ran(1, 0.0005)  # where it took 0.5 ms
    p.finished(1, T0 + 0.012, T0 + 0.0125, ok=True)
    admitted(p, 1, T0 + 0.0135)
    assert p.may_run_inline(1, T0 + 0.0135, loop_busy=False)  # 1 ms > 0.5 ms: inline again
    p.small_batch_ran(64, 0.020)  # a large batch says nothing of a lone request's cost
    assert p.inline_s == 0.0005


def test_no_inline_while_inline_took_most_of_the_last_50_ms_window() -> None:
    p = policy(inline_max_images=4)
    admitted(p, 1, T0)
    assert p.may_run_inline(1, T0, loop_busy=False)  # opens a window at T0
    p.inline_ran(0.035)  # 35 of the window's 50 ms (each gap passes: last_done is old)
    assert p.may_run_inline(1, T0 + 0.04, loop_busy=False)  # the window is still open
    assert not p.may_run_inline(1, T0 + 0.06, loop_busy=False)  # 35 ms > half of 60 ms
    assert not p.may_run_inline(1, T0 + 0.09, loop_busy=False)  # refused all that window
    assert p.may_run_inline(1, T0 + 0.115, loop_busy=False)  # a window with no inline: free
    # Less than half a window is no overload (a closed loop at c=1 keeps near a third).
    p.inline_ran(0.025)
    assert p.may_run_inline(1, T0 + 0.17, loop_busy=False)


def test_the_inline_share_is_of_at_most_two_windows() -> None:
    """After a long quiet spell, one window's worth of inline work still counts as hot:
    a share over the whole pause would never be."""
    p = policy(inline_max_images=4)
    admitted(p, 1, T0)
    assert p.may_run_inline(1, T0, loop_busy=False)
    p.inline_ran(0.06)
    assert not p.may_run_inline(1, T0 + 10.0, loop_busy=False)  # 60 ms > half of 100 ms


# ------------------------------------------------------------------ admission


def test_admission_refusal_reasons() -> None:
    p = policy(max_queue_size=2, max_batch_size=4, max_queue_wait_ms=100.0)
    for _ in range(2):
        admitted(p, 1, T0)
    queue(p, 1, 1)
    refusal = p.admit("m", 1, T0, None)
    assert refusal is not None and refusal.reason == "queue_full"
    p.finished(1, T0, T0, ok=False)  # one gave up: it stays queued until a worker drops it
    assert p.admit("m", 1, T0, None) is None  # but it no longer fills the queue
    p.finished(1, T0, T0, ok=True)
    p.finished(1, T0, T0, ok=False)
    p.clear()
    p.admission.batch_done(1, 0.05)  # 50 ms per image, as if measured
    admitted(p, 3, T0)  # nothing ahead (its own compute is no wait)
    refusal = p.admit("m", 1, T0, None)  # 3 images ahead: 150 ms of waiting
    assert refusal is not None and refusal.reason == "queue_wait"
    assert refusal.retry_after_s == pytest.approx(0.15)
    refusal = p.admit("m", 1, T0, T0 + 0.18)  # 150 ms ahead + 50 own > 180 ms left
    assert refusal is not None and refusal.reason == "deadline"
    refusal = p.admit("m", 4, T0, T0 + 0.18)  # 200 ms own: too late even alone
    assert refusal is not None and refusal.reason == "too_late"
    assert (p.pending, p.pending_images) == (1, 3)  # refusals are not counted in flight
    assert p.admit("m", 1, T0, T0 + 1.0) is None  # with a deadline far enough away
    p.finished(3, T0, T0 + 0.04, ok=False)
    p.finished(1, T0, T0 + 0.05, ok=True)
    assert (p.pending, p.pending_images) == (0, 0) and p.last_done == T0 + 0.05


def test_admission_concurrency_limit_counts_requests_in_flight() -> None:
    p = policy(adaptive_limit=True, max_batch_size=1)  # floor: two batches of one image
    assert p.admission.limit == 2
    admitted(p, 1, T0)
    admitted(p, 1, T0)
    refusal = p.admit("m", 1, T0, None)
    assert refusal is not None and refusal.reason == "concurrency"
    p.finished(1, T0, T0 + 0.01, ok=True)
    admitted(p, 1, T0 + 0.01)
