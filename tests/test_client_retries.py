"""The clients do not amplify overload: gRPC's retry token bucket (``retryThrottling``)
and the server's pushback (``grpc-retry-pushback-ms``), with the real GanClient and
AsyncGanClient against a real gRPC server whose ``Sample`` answers as scripted."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from fake_generator import MODEL, start_fake_generator

from ganserve.clients import (
    AsyncGanClient,
    DeadlineExceeded,
    GanClient,
    Overloaded,
    Unavailable,
    errors,
)
from ganserve.clients._channel import ChannelConfig
from ganserve.clients._sampling import PartFetch
from ganserve.clients.results import ModelInfo
from ganserve.v1 import generator_pb2 as pb

PUSHBACK = "grpc-retry-pushback-ms"
CALL_TIMEOUT_S = 30.0  # bounds every call; no test waits for it
TIMER_SLACK_S = 0.01  # a timer may fire a hair early; no upper bounds anywhere


class OverloadedServer:
    """A plain grpc server: ``ListModels`` and ``GetModel`` answer for one tiny model;
    ``Sample`` fails with ``code`` and, unless ``pushback`` is None, the trailing metadata
    ``grpc-retry-pushback-ms: <pushback>``. ``attempts`` has the time of every ``Sample``
    attempt (``time.monotonic()``, taken as the server gets it)."""

    def __init__(
        self,
        pushback: str | None = None,
        code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED,
    ) -> None:
        self.pushback, self.code = pushback, code
        self.attempts: list[float] = []
        self._lock = threading.Lock()
        handler = grpc.unary_unary_rpc_method_handler(
            self._sample,
            request_deserializer=pb.SampleRequest.FromString,
            response_serializer=pb.SampleResponse.SerializeToString,
        )
        self.server, self.target = start_fake_generator(
            {"Sample": handler}, side=4, stream_chunk=16, workers=2
        )

    def _sample(self, request: pb.SampleRequest, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.attempts.append(time.monotonic())
        if self.pushback is not None:
            context.set_trailing_metadata(((PUSHBACK, self.pushback),))
        context.abort(self.code, "model 'tiny' queue is full")

    def count(self) -> int:
        with self._lock:
            return len(self.attempts)


@contextmanager
def overloaded(pushback: str | None = None, **kwargs: Any) -> Iterator[OverloadedServer]:
    server = OverloadedServer(pushback, **kwargs)
    try:
        yield server
    finally:
        server.server.stop(None)


def sample_attempts(client: GanClient, server: OverloadedServer, calls: int) -> list[int]:
    """``Sample`` attempts the server saw for each of ``calls`` failing ``sample`` calls."""
    seen = []
    for _ in range(calls):
        before = server.count()
        with pytest.raises(Overloaded):
            client.sample(MODEL, 1, seed=0)
        seen.append(server.count() - before)
    return seen


async def async_sample_attempts(
    client: AsyncGanClient, server: OverloadedServer, calls: int
) -> list[int]:
    seen = []
    for _ in range(calls):
        before = server.count()
        with pytest.raises(Overloaded):
            await client.sample(MODEL, 1, seed=0)
        seen.append(server.count() - before)
    return seen


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# ------------------------------------------------------------- the service config
def test_the_service_config_has_the_token_bucket_while_retries_are_on() -> None:
    default = ChannelConfig().service_config()
    assert default["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    assert "retryPolicy" in default["methodConfig"][0]
    tuned = ChannelConfig(retry_max_tokens=40, retry_token_ratio=0.25).service_config()
    assert tuned["retryThrottling"] == {"maxTokens": 40, "tokenRatio": 0.25}
    # gRPC reads 3 decimals of the ratio; the client sends it rounded to them
    rounded = ChannelConfig(retry_token_ratio=0.12345).service_config()
    assert rounded["retryThrottling"]["tokenRatio"] == 0.123
    whole = ChannelConfig(retry_max_tokens=7.0)  # type: ignore[arg-type]
    assert whole.service_config()["retryThrottling"]["maxTokens"] == 7  # core cannot parse 7.0
    off = ChannelConfig(retries=0).service_config()
    assert "retryThrottling" not in off and "methodConfig" not in off
    unthrottled = ChannelConfig(retry_max_tokens=None).service_config()
    assert "retryThrottling" not in unthrottled and "methodConfig" in unthrottled
    with GanClient("127.0.0.1:1", retry_max_tokens=6, retry_token_ratio=0.5) as client:
        built = client._config.service_config()
    assert built["retryThrottling"] == {"maxTokens": 6, "tokenRatio": 0.5}


@pytest.mark.parametrize(
    ("max_tokens", "ratio", "match"),
    [
        (0, 0.1, "retry_max_tokens"),
        (1001, 0.1, "retry_max_tokens"),
        (10.5, 0.1, "retry_max_tokens"),
        (math.inf, 0.1, "retry_max_tokens"),
        (10, 0, "retry_token_ratio"),
        (10, -1, "retry_token_ratio"),
        (10, 0.0004, "retry_token_ratio"),  # 0.000 to gRPC
        (10, 1e-5, "retry_token_ratio"),
        (10, 1000.5, "retry_token_ratio"),
        (10, math.nan, "retry_token_ratio"),
    ],
)
def test_a_token_bucket_grpc_would_refuse_is_refused_at_once(
    max_tokens: float, ratio: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ChannelConfig(retry_max_tokens=max_tokens, retry_token_ratio=ratio)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        GanClient("127.0.0.1:1", retry_max_tokens=max_tokens, retry_token_ratio=ratio)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_tokens", "ratio"), [(1000, 0.001), (1, 1000.0), (10, 0.1), (3, 0.12345), (None, 0.1)]
)
def test_grpc_takes_the_service_config_at_the_bounds(max_tokens: int | None, ratio: float) -> None:
    """gRPC core fails every call of a channel whose service config it cannot parse
    (``INVALID_ARGUMENT``): the calls here reach the server and fail as it answers."""
    with (
        overloaded(pushback="-1") as server,
        GanClient(
            server.target, retries=2, retry_max_tokens=max_tokens, retry_token_ratio=ratio
        ) as client,
    ):
        with pytest.raises(Overloaded, match="queue is full"):
            client.sample(MODEL, 1, seed=0, timeout=CALL_TIMEOUT_S)
        assert server.count() == 1


# ----------------------------------------------------------------- server pushback
def test_pushback_spaces_every_retry_and_reaches_the_caller() -> None:
    with overloaded(pushback="400") as server, GanClient(server.target, retries=2) as client:
        with pytest.raises(Overloaded) as info:
            client.sample(MODEL, 1, seed=0, timeout=CALL_TIMEOUT_S)
        assert len(server.attempts) == 3
        # the backoff alone would wait at most ~0.1 s, then ~0.2 s
        assert all(gap >= 0.4 - TIMER_SLACK_S for gap in gaps(server.attempts))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.retry_after_s == 0.4


async def test_pushback_spaces_every_retry_and_reaches_the_caller_async() -> None:
    with overloaded(pushback="400") as server:
        async with AsyncGanClient(server.target, retries=2) as client:
            with pytest.raises(Overloaded) as info:
                await client.sample(MODEL, 1, seed=0, timeout=CALL_TIMEOUT_S)
        assert len(server.attempts) == 3
        assert all(gap >= 0.4 - TIMER_SLACK_S for gap in gaps(server.attempts))
    assert info.value.retry_after_s == 0.4


@pytest.mark.parametrize("pushback", ["-1", "soon"])
def test_a_negative_or_unreadable_pushback_stops_the_retries(pushback: str) -> None:
    with overloaded(pushback) as server, GanClient(server.target, retries=4) as client:
        with pytest.raises(Overloaded) as info:
            client.sample(MODEL, 1, seed=0, timeout=CALL_TIMEOUT_S)
        assert server.count() == 1
    assert info.value.retry_after_s is None


@pytest.mark.parametrize("pushback", ["-1", "soon"])
async def test_a_negative_or_unreadable_pushback_stops_the_retries_async(pushback: str) -> None:
    with overloaded(pushback) as server:
        async with AsyncGanClient(server.target, retries=4) as client:
            with pytest.raises(Overloaded) as info:
                await client.sample(MODEL, 1, seed=0, timeout=CALL_TIMEOUT_S)
        assert server.count() == 1
    assert info.value.retry_after_s is None


def test_without_retries_the_pushback_is_the_callers_to_honour() -> None:
    with overloaded(pushback="250") as server, GanClient(server.target, retries=0) as client:
        with pytest.raises(Overloaded) as info:
            client.sample(MODEL, 1, seed=0, timeout=CALL_TIMEOUT_S)
        assert server.count() == 1
    assert info.value.retry_after_s == 0.25


def test_a_pushback_past_the_deadline_ends_in_deadline_exceeded() -> None:
    """gRPC waits for the pushback within the call's deadline: the caller sees the
    deadline, not the server's answer."""
    with overloaded(pushback="60000") as server, GanClient(server.target, retries=2) as client:
        with pytest.raises(DeadlineExceeded) as info:
            client.sample(MODEL, 1, seed=0, timeout=1.0)
        assert server.count() == 1
    assert info.value.retry_after_s is None


# ---------------------------------------------------------------- the token bucket
def test_the_token_bucket_stops_retries_and_successes_refill_it() -> None:
    # 6 tokens: retries only while more than 3 are left after a failed attempt.
    with (
        overloaded() as server,
        GanClient(server.target, retries=4, retry_max_tokens=6, retry_token_ratio=1.0) as client,
    ):
        # 6 -> 5, 4 (retried), 3 (not); then 2 and 1: one attempt per call
        assert sample_attempts(client, server, 3) == [3, 1, 1]
        for _ in range(5):  # each success gives back 1 token: 1 -> 6
            client.list_models()
        assert sample_attempts(client, server, 1) == [3]


async def test_the_token_bucket_stops_retries_async() -> None:
    with overloaded() as server:
        async with AsyncGanClient(
            server.target, retries=4, retry_max_tokens=6, retry_token_ratio=1.0
        ) as client:
            assert await async_sample_attempts(client, server, 3) == [3, 1, 1]


def test_without_the_token_bucket_every_call_spends_every_retry() -> None:
    with (
        overloaded(pushback="1") as server,  # 1 ms: to keep the test short
        GanClient(server.target, retries=4, retry_max_tokens=None) as client,
    ):
        assert sample_attempts(client, server, 3) == [5, 5, 5]
    with (
        overloaded(pushback="1") as server,
        GanClient(server.target, retries=4) as client,  # the default bucket: 10 tokens
    ):
        # 10 -> 9, 8, 7, 6 (retried), 5 (the 5th attempt: the last one allowed); then
        # 4 and 3, not retried
        assert sample_attempts(client, server, 3) == [5, 1, 1]


def test_each_client_has_its_own_bucket() -> None:
    """grpcio >= 1.74 keeps the bucket per channel (gRPC core #39659), not per target."""
    with (
        overloaded() as server,
        GanClient(server.target, retries=4, retry_max_tokens=6) as first,
        GanClient(server.target, retries=4, retry_max_tokens=6) as second,
    ):
        assert sample_attempts(first, server, 2) == [3, 1]
        assert sample_attempts(second, server, 1) == [3]  # the same target: its own 6


# ------------------------------------------------------------ the error's pushback
class StatusError(grpc.RpcError):
    """What grpc raises for a failed call, reduced to the accessors the client reads."""

    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, Any], ...]) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "busy"

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1500", 1.5),
        ("0", 0.0),
        (b"20", 0.02),
        ("-1", None),  # do not retry
        ("-9223372036854775808", None),  # what gRPC core hands on for a value it cannot read
        ("soon", None),
        ("1.5", None),
        ("99999999999999999999", None),  # beyond gRPC's int64
    ],
)
def test_retry_after_s_is_the_pushback_in_seconds(
    value: str | bytes, seconds: float | None
) -> None:
    trailing = (("x-other", "1"), (PUSHBACK, value))
    error = errors.from_rpc_error(StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, trailing))
    assert type(error) is Overloaded and error.retry_after_s == seconds


def test_retry_after_s_without_a_pushback() -> None:
    no_pushback = StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, (("x-other", "1"),))
    assert errors.from_rpc_error(no_pushback).retry_after_s is None
    assert errors.from_rpc_error(StatusError(grpc.StatusCode.UNAVAILABLE, ())).retry_after_s is None
    unavailable = StatusError(grpc.StatusCode.UNAVAILABLE, ((PUSHBACK, "300"),))
    assert errors.from_rpc_error(unavailable).retry_after_s == 0.3  # on every code
    assert errors.from_rpc_error(grpc.RpcError()).retry_after_s is None  # not a call
    assert errors.Overloaded("queue is full").retry_after_s is None


def test_a_resume_waits_until_the_restarted_server_lists_the_model_loaded() -> None:
    """Found in review: a restarted server answers ListModels while it still loads its
    models; a resume sent then failed NOT_FOUND for a model not reached yet. The resume
    waits until the model is listed READY (or FAILED: then the call says why)."""
    info = ModelInfo.from_proto(pb.ModelInfo(name=MODEL, latent_dim=8, image_shape=[1, 4, 4]))
    fetch = PartFetch(pb.SampleRequest(model=MODEL, count=4, seed=1), 0, info, 3, 0.1, 2.0)

    def listing(*models: tuple[str, int]) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=n, state=s) for n, s in models])

    assert not fetch.settled(listing())
    assert not fetch.settled(listing(("other", pb.LOAD_STATE_READY)))
    assert not fetch.settled(listing((MODEL, pb.LOAD_STATE_LOADING)))
    assert fetch.settled(listing(("other", pb.LOAD_STATE_LOADING), (MODEL, pb.LOAD_STATE_READY)))
    assert fetch.settled(listing((MODEL, pb.LOAD_STATE_FAILED)))


def test_a_cut_stream_is_resumed_after_the_pushback() -> None:
    info = ModelInfo.from_proto(pb.ModelInfo(name=MODEL, latent_dim=8, image_shape=[1, 4, 4]))
    part = pb.SampleRequest(model=MODEL, count=4, seed=1)
    unavailable = grpc.StatusCode.UNAVAILABLE
    one_image = pb.SampleResponse(
        images=pb.Images(encoding=pb.ENCODING_UINT8, count=1, shape=[1, 4, 4], data=bytes(16)),
        seed=1,
    )

    def cut_after_a_chunk() -> PartFetch:
        fetch = PartFetch(part, 0, info, 3, 0.1, 2.0)
        fetch.request()
        fetch.place(one_image)
        return fetch

    assert cut_after_a_chunk().resume_delay(StatusError(unavailable, ())) == 0.1  # the backoff
    pushback = StatusError(unavailable, ((PUSHBACK, "700"),))
    assert cut_after_a_chunk().resume_delay(pushback) == 0.7
    shorter = StatusError(unavailable, ((PUSHBACK, "50"),))
    assert cut_after_a_chunk().resume_delay(shorter) == 0.1  # never less than the backoff
    with pytest.raises(Unavailable) as raised:  # the server says: do not retry
        cut_after_a_chunk().resume_delay(StatusError(unavailable, ((PUSHBACK, "-1"),)))
    assert raised.value.retry_after_s is None
    # a call that delivered nothing has had gRPC's own retries: not resumed on top
    with pytest.raises(Unavailable):
        PartFetch(part, 0, info, 3, 0.1, 2.0).resume_delay(StatusError(unavailable, ()))
