"""Server-wide budgets (``server/budget.py``): response bytes held, calls in flight, open
streams; the pure budget, then a real server refusing what does not fit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from ganserve.server import budget as budget_module
from ganserve.server.budget import ByteBudget, ServerBudgets, default_buffered_bytes
from ganserve.server.errors import DeadlineExceeded, ResourceExhausted
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

MIB = 1024 * 1024


def test_default_budget_fits_the_largest_messages() -> None:
    assert default_buffered_bytes(64 * MIB) >= 256 * MIB
    assert default_buffered_bytes(1024 * MIB) == 2048 * MIB
    with pytest.raises(ValueError):
        ServerBudgets(100, 0, 1)


def test_acquire_now_refuses_what_does_not_fit() -> None:
    budget = ByteBudget(100)
    budget.acquire_now(60, "a reply")
    with pytest.raises(ResourceExhausted, match="does not fit now") as info:
        budget.acquire_now(50, "a reply")
    assert info.value.reason == "buffered_bytes" and info.value.retry_after_s == 1.0
    with pytest.raises(ResourceExhausted, match="more than the server's whole budget"):
        budget.acquire_now(101, "a reply")
    budget.release(60)
    budget.acquire_now(100, "a reply")
    assert budget.used == 100


async def test_waiters_get_room_in_order_and_time_out_with_deadline_exceeded() -> None:
    budget = ByteBudget(100)
    budget.acquire_now(90, "held")
    first = asyncio.create_task(budget.acquire(50, 5.0))
    second = asyncio.create_task(budget.acquire(10, 5.0))
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()  # FIFO: 10 would fit, but waits its turn
    assert not budget.try_acquire(5)  # nor do newcomers jump the queue
    budget.release(90)
    await asyncio.gather(first, second)
    assert budget.used == 60
    with pytest.raises(DeadlineExceeded):
        await budget.acquire(50, 0.05)
    assert budget.used == 60  # the timed-out waiter holds nothing
    cancelled = asyncio.create_task(budget.acquire(50, 5.0))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    budget.release(60)
    assert budget.used == 0 and budget.try_acquire(100)


@pytest.fixture
def stalled_streams() -> Iterator[Callable[[str, int, int], list[grpc.Future]]]:
    """Open SampleStreams whose clients read nothing; cancelled at the end."""
    channels: list[grpc.Channel] = []
    calls: list[grpc.Future] = []

    def open_(target: str, n: int, chunk: int) -> list[grpc.Future]:
        made = []
        for i in range(n):
            channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            request = pb.SampleRequest(
                model="tiny-uncond",
                count=1_000_000,
                seed=i,
                chunk_size=chunk,
                encoding=pb.ENCODING_FLOAT32,
            )
            made.append(pb_grpc.GeneratorStub(channel).SampleStream(request))
        calls.extend(made)
        return made

    yield open_
    for call in calls:
        call.cancel()
    for channel in channels:
        channel.close()


def _sample(target: str, count: int) -> str:
    options = [("grpc.max_receive_message_length", 64 * MIB)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            pb_grpc.GeneratorStub(channel).Sample(
                pb.SampleRequest(model="tiny-uncond", count=count, encoding=pb.ENCODING_FLOAT32),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return "OK"


def _call(target: str, request: pb.SampleRequest) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            pb_grpc.GeneratorStub(channel).Sample(request, timeout=30)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return "OK"


def _until(condition: Callable[[], str], want: str, timeout: float = 20.0) -> str:
    """Poll ``condition`` until its result starts with ``want`` (bounded); the last one."""
    until = time.monotonic() + timeout
    while True:
        got = condition()
        if got.startswith(want) or time.monotonic() > until:
            return got
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("flags", "reason", "says"),
    [
        (("--max-streams", "2"), "streams", "--max-streams 2"),
        (("--max-inflight-rpcs", "2"), "in_flight", "--max-inflight-rpcs 2"),
    ],
)
def test_streams_and_calls_in_flight_beyond_their_limits_are_refused(
    start_server, tiny_model_repo, stalled_streams, scrape, wait_until, flags, reason, says
) -> None:
    """Two unread streams hang in flight: a third stream (and, at the in-flight limit,
    any call) is refused at once and counted; closing them makes room again."""
    server = start_server(tiny_model_repo, *flags)
    held = stalled_streams(server.target, 2, 256)
    streaming = ("ganserve_inflight_requests", (("method", "SampleStream"),))
    wait_until(lambda: scrape(server).get(streaming) == 2, "two open streams", timeout=20)
    third = stalled_streams(server.target, 1, 256)[0]
    with pytest.raises(grpc.RpcError) as info:
        next(third)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert says in info.value.details()
    sample = _sample(server.target, 4)
    if reason == "in_flight":
        assert sample.startswith("RESOURCE_EXHAUSTED") and says in sample
    else:
        assert sample == "OK"  # the stream limit leaves unary calls alone
    model = "" if reason == "in_flight" else "tiny-uncond"
    refused = scrape(server)[("ganserve_rejected_total", (("model", model), ("reason", reason)))]
    assert refused == (2 if reason == "in_flight" else 1)
    for call in held:
        call.cancel()
    wait_until(lambda: scrape(server).get(streaming) == 0, "the streams to close", timeout=20)
    assert _sample(server.target, 4) == "OK"


def test_a_stream_whose_reader_takes_nothing_is_ended_and_frees_its_place(
    start_server, tiny_model_repo, stalled_streams, scrape, wait_until
) -> None:
    """An unread stream would hold its place among --max-streams, a call in flight and a
    chunk of the budget for as long as its client stays connected: after
    --stream-stall-timeout-s without a chunk taken it ends RESOURCE_EXHAUSTED (what the
    client sees once it reads) and is counted; the place is free again."""
    server = start_server(tiny_model_repo, "--max-streams", "1", "--stream-stall-timeout-s", "1")
    stalled = stalled_streams(server.target, 1, 1024)[0]
    streaming = ("ganserve_inflight_requests", (("method", "SampleStream"),))
    wait_until(lambda: scrape(server).get(streaming) == 1, "an open stream", timeout=20)
    wait_until(lambda: scrape(server).get(streaming) == 0, "the stalled stream ended", timeout=20)
    stalled_key = (
        "ganserve_rejected_total",
        (("model", "tiny-uncond"), ("reason", "stream_stalled")),
    )
    assert scrape(server)[stalled_key] == 1
    held = ("ganserve_buffered_bytes", ())
    wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)
    with pytest.raises(grpc.RpcError) as info:
        for _ in stalled:  # the chunks sent before it stalled, then its status
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--stream-stall-timeout-s" in info.value.details()
    reader = stalled_streams(server.target, 1, 256)[0]  # its place is free again
    assert next(reader).images.count == 256


def test_response_bytes_held_by_unread_streams_bound_other_calls(
    start_server, tiny_model_repo, stalled_streams, scrape, wait_until
) -> None:
    """Unread streams hold their chunk's bytes (a 12.8 MB chunk of 4,096 float32 images
    cannot leave while nobody reads); a reply that does not fit beside them is refused
    at once, and fits again once they are cancelled."""
    server = start_server(
        tiny_model_repo, "--max-buffered-bytes", str(16 * MIB), "--max-message-bytes", str(16 * MIB)
    )
    streams = stalled_streams(server.target, 1, 4096)
    # The stream's chunk is held (it cannot leave while nobody reads) before the probe:
    # a probe first would hold the budget and the stream's first chunk be refused.
    held = ("ganserve_buffered_bytes", ())
    wait_until(lambda: scrape(server).get(held, 0) >= 12 * MIB, "a held chunk", timeout=20)
    refused = _until(lambda: _sample(server.target, 2000), "RESOURCE_EXHAUSTED")
    assert refused.startswith("RESOURCE_EXHAUSTED"), refused
    assert "--max-buffered-bytes" in refused
    # a request's own bytes: 4.2 MB of latents do not fit in the 3.9 MB left, refused
    # before anything else is looked at (it asks for more images than allowed, too)
    latents = pb.LatentBatch(count=131_072, dim=8, data=bytes(131_072 * 8 * 4))
    big = pb.SampleRequest(model="tiny-uncond", count=131_072, latents=latents)
    refused = _call(server.target, big)
    assert refused.startswith("RESOURCE_EXHAUSTED") and "request buffer" in refused, refused
    for call in streams:
        call.cancel()
    assert _until(lambda: _sample(server.target, 2000), "OK") == "OK"
    assert _call(server.target, big).startswith("INVALID_ARGUMENT")  # fits: looked at
    metrics = scrape(server)
    key = ("ganserve_rejected_total", (("model", "tiny-uncond"), ("reason", "buffered_bytes")))
    assert metrics[key] >= 1


async def test_a_waiter_given_up_just_before_a_release_ends_with_its_own_status() -> None:
    """wait_for cancels a waiter at once but resumes the waiting task a loop turn later;
    a release in that turn drops the cancelled waiter from the queue. The task must end
    with its cancellation or DeadlineExceeded (a ValueError here once became INTERNAL)."""
    budget = ByteBudget(10)
    budget.acquire_now(10, "held")
    cancelled = asyncio.create_task(budget.acquire(5, None))
    await asyncio.sleep(0)
    cancelled.cancel()
    budget.release(10)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    budget.acquire_now(10, "held")
    expired = asyncio.create_task(budget.acquire(5, 0.0))  # a stream past its deadline
    await asyncio.sleep(0)
    budget.release(10)
    with pytest.raises(DeadlineExceeded):
        await expired
    assert budget.used == 0 and not budget._waiters
    budget.acquire_now(10, "all of it again")


@pytest.mark.skipif(budget_module._TRIM is None, reason="no glibc malloc_trim here")
def test_freed_memory_is_handed_back_once_large_responses_are_gone() -> None:
    """glibc keeps freed blocks for reuse: after holding megabytes of responses the
    budget calls malloc_trim when it falls to empty (at most once per second), so the
    server's RSS returns towards its baseline when clients leave."""
    budget = ByteBudget(64 * MIB)
    budget.acquire_now(MIB, "small")
    budget.release(MIB)
    assert budget.trims == 0  # small holdings: nothing worth a trim
    budget.acquire_now(8 * MIB, "a")
    budget.acquire_now(8 * MIB, "b")
    budget.release(8 * MIB)
    assert budget.trims == 0  # not empty yet
    budget.release(8 * MIB)
    assert budget.trims == 1
    budget.acquire_now(8 * MIB, "again")
    budget.release(8 * MIB)
    assert budget.trims == 1  # within the second: no second trim


@pytest.mark.skipif(budget_module._TRIM is None, reason="no glibc malloc_trim here")
def test_on_the_event_loop_the_trim_waits_for_the_last_frees_and_is_never_dropped() -> None:
    """On the loop the trim runs a little after the budget empties (gRPC core and the
    handler's frame free the last message after the release); a second emptying
    within the second moves the next trim later instead of dropping it, and a budget
    in use again when the timer fires is not trimmed."""

    async def scenario() -> list[int]:
        budget = ByteBudget(64 * MIB)
        seen = []
        budget.acquire_now(8 * MIB, "a")
        budget.release(8 * MIB)
        seen.append(budget.trims)  # 0: not at once
        await asyncio.sleep(budget_module._TRIM_DELAY_S + 0.2)
        seen.append(budget.trims)  # 1
        budget.acquire_now(8 * MIB, "b")
        budget.release(8 * MIB)  # within the second of the first trim
        await asyncio.sleep(budget_module._TRIM_DELAY_S + 0.2)
        seen.append(budget.trims)  # still 1: moved to a second after the first
        await asyncio.sleep(budget_module._TRIM_EVERY_S)
        seen.append(budget.trims)  # 2: moved, not dropped
        budget.acquire_now(8 * MIB, "c")
        budget.release(8 * MIB)
        budget.acquire_now(MIB, "d")  # in use again before the timer fires
        await asyncio.sleep(budget_module._TRIM_EVERY_S + 0.3)
        seen.append(budget.trims)  # 2
        budget.release(MIB)  # empty again after the 8 MiB peak: trimmed
        await asyncio.sleep(budget_module._TRIM_DELAY_S + 0.2)
        seen.append(budget.trims)  # 3
        return seen

    assert asyncio.run(scenario()) == [0, 1, 1, 2, 2, 3]


def test_late_refusals_trust_only_an_estimate_answers_keep_confirming() -> None:
    """Calls that take 0.4 s make a 1 s deadline too short (3 x 0.4 > 1): refused while
    answers confirm it. Once all are refused none is answered: after the estimate's own
    span without an answer it is stale, calls are let in again, and the first answer
    replaces it (an idle server once refused every call this way for good)."""
    b = ServerBudgets(1 << 20, 1000, 10)
    t = 1000.0
    busy = 8  # calls in flight, this one included
    assert not b.too_late(0.001, t, busy)  # no estimate yet
    for i in range(200):  # a slow-down reaches the estimate within a hundred answers
        b.call_done(0.4, busy, now=t + i * 0.01)
    t += 2.0
    assert 1.0 < b.late_s < 1.3
    assert b.too_late(1.0, t, busy)  # answered 0.01 s ago: fresh
    assert not b.too_late(1.0, t, 1)  # alone it waits for nobody: let in
    assert not b.too_late(1.5, t, busy)  # enough deadline left
    assert b.too_late(1.0, t + 0.3, busy)  # no answer for 0.31 s < its 0.4 s: still trusted
    assert not b.too_late(1.0, t + 0.5, busy)  # none for 0.51 s: stale, let it in
    b.call_done(0.002, 1, now=t + 0.502)  # answered in 2 ms: replaces the estimate
    assert b.latency_s == 0.002
    assert not b.too_late(0.1, t + 0.51, busy)
    b.call_done(0.004, 1, now=t + 0.52)  # fresh answers blend in again
    assert 0.002 < b.latency_s < 0.004


def test_one_large_call_does_not_make_every_small_call_too_late() -> None:
    """Calls of every size share the latency estimate: an 8 s call of thousands of
    images, answered after a pause (the estimate stale) or among small calls, must not
    refuse the 1-image calls with 1 s deadlines that follow (it once refused them all for
    8 s on an idle server)."""
    b = ServerBudgets(1 << 20, 1000, 10)
    t = 1000.0
    for i in range(100):
        b.call_done(0.002, 4, now=t + i * 0.001)
    b.call_done(8.0, 1, now=t + 5.0)  # after a pause: the estimate was stale
    assert b.late_s < 0.1 and not b.too_late(1.0, t + 5.01, 4)
    b.call_done(0.002, 4, now=t + 5.02)
    b.call_done(8.0, 4, now=t + 5.03)  # among fresh small calls
    assert b.late_s < 0.1 and not b.too_late(1.0, t + 5.04, 4)


def test_a_streams_large_request_is_held_while_it_runs(
    start_server, tiny_model_repo, scrape, wait_until
) -> None:
    """A SampleStream of explicit latents keeps its request (6.4 MB here) for as long as
    it runs: held in the budget beside its chunk, given back when it ends. The server
    warns at start that a budget below the message and request limits together can
    refuse a call at both limits on an idle server."""
    server = start_server(
        tiny_model_repo, "--max-buffered-bytes", str(16 * MIB), "--max-message-bytes", str(16 * MIB)
    )
    held = ("ganserve_buffered_bytes", ())
    n = 200_000
    latents = pb.LatentBatch(count=n, dim=8, data=bytes(n * 8 * 4))
    request = pb.SampleRequest(model="tiny-uncond", count=n, latents=latents, chunk_size=64)
    size = request.ByteSize()
    with grpc.insecure_channel(server.target) as channel:
        stream = pb_grpc.GeneratorStub(channel).SampleStream(request)  # read nothing
        wait_until(lambda: scrape(server).get(held, 0) >= size, "the request held", timeout=20)
        assert scrape(server)[held] < size + MIB  # and a chunk of 64 images
        stream.cancel()
        wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)
    assert "is less than --max-message-bytes + --max-request-bytes" in server.log()
