"""``AsyncGanClient``: the asyncio client, safe to share across tasks of one loop.

The same methods as ``GanClient``, as coroutines; ``sample_stream`` is an
async iterator. The channel is opened on first use inside the running loop.

    async with AsyncGanClient("localhost:50051") as client:
        results = await asyncio.gather(
            *(client.sample("mnist-cdcgan", count=8, label=d, seed=1) for d in range(10))
        )
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc.aio

from ganserve.clients._base import ClientBase
from ganserve.clients._requests import (
    Source,
    arithmetic_request,
    interpolate_request,
    sample_request,
)
from ganserve.clients._sampling import (
    SampleAccumulator,
    check_request_size,
    plan_sample,
    split_sample,
)
from ganserve.clients.errors import typed_errors
from ganserve.clients.results import (
    ArithmeticResult,
    InterpolateResult,
    ModelInfo,
    SampleResult,
    ServerLimits,
)
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

__all__ = ["AsyncGanClient"]

T = TypeVar("T")


class AsyncGanClient(ClientBase):
    """asyncio client of ``ganserve.v1.Generator``; arguments as in ``ClientBase``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.GeneratorStub | None = None
        self._limits_lock = asyncio.Lock()

    @property
    def _stub(self) -> pb_grpc.GeneratorStub:
        # Created lazily: an aio channel belongs to the loop running when it is made.
        if self._stub_ is None:
            self._channel = self._config.aio_channel()
            self._stub_ = pb_grpc.GeneratorStub(self._channel)
        return self._stub_

    # ------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub_ = None, None

    async def __aenter__(self) -> AsyncGanClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --------------------------------------------------------------- models
    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model in the server's repository (also refreshes ``limits()``)."""
        msg = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        self._remember_limits(msg)
        return [ModelInfo.from_proto(m) for m in msg.models]

    async def limits(self, *, timeout: float | None = None) -> ServerLimits:
        """The server's limits (fetched once with ``ListModels`` under ``timeout``, then
        cached)."""
        async with self._limits_lock:  # concurrent first calls share one fetch
            if self._limits is None:
                await self.list_models(timeout=timeout)
        assert self._limits is not None
        return self._limits

    async def model_info(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelInfo:
        """One model (latest ready version unless ``version``); ``ModelNotFound`` if unknown."""
        req = pb.GetModelRequest(model=model, version=version)
        return self._remember_info(await self._unary(self._stub.GetModel, req, timeout), version)

    async def _cached_info(
        self, model: str, version: str, timeout: float | None = None
    ) -> ModelInfo:
        info = self._infos.get((model, version))
        if info is not None:
            return info
        return await self.model_info(model, version, timeout=timeout)

    # --------------------------------------------------------------- sample
    async def sample(
        self,
        model: str,
        count: int | None = None,
        *,
        progress: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> SampleResult:
        """``count`` images; keywords, streams and parts as in ``GanClient.sample``."""
        req = sample_request(model, count, **kwargs)
        limits = await self.limits(timeout=timeout)
        plan = plan_sample(req, limits, await self._cached_info(model, req.version, timeout))
        if not plan.stream:
            return SampleResult.from_proto(await self._unary(self._stub.Sample, req, timeout))
        req.chunk_size = plan.chunk_size
        with SampleAccumulator(req.count, progress=progress, desc=model) as acc:
            async for chunk in self._stream(req, timeout):
                acc.add(chunk)
        return acc.result()

    def sample_stream(
        self, model: str, count: int | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[SampleResult]:
        """The chunks of ``SampleStream`` as they arrive; leave the loop to cancel."""
        return self._stream(sample_request(model, count, **kwargs), timeout)

    async def _stream(
        self, req: pb.SampleRequest, timeout: float | None
    ) -> AsyncIterator[SampleResult]:
        limits = await self.limits(timeout=timeout)
        info = await self._cached_info(req.model, req.version, timeout)
        for offset, part in split_sample(req, limits, info):
            fetch = self._part_fetch(part, offset, info)
            while True:
                call = self._stub.SampleStream(
                    fetch.request(), **self._call_kwargs(timeout, stream=True)
                )
                try:
                    async for msg in call:
                        yield fetch.place(msg)
                    break
                except grpc.RpcError as exc:
                    delay = fetch.resume_delay(exc)  # or raises the typed error
                finally:
                    call.cancel()  # no-op after the end; stops the server when the consumer quits
                await asyncio.sleep(delay)  # then resume the cut stream where it stopped

    # ---------------------------------------------------- latent operations
    async def interpolate(
        self,
        model: str,
        keyframes: Sequence[Source],
        *,
        labels: Sequence[int | None] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> InterpolateResult:
        """Frames through ``keyframes``; keywords as in ``GanClient.interpolate``."""
        req = interpolate_request(model, keyframes, labels=labels, **kwargs)
        if (size := self._large_request(req)) is not None:
            check_request_size(req, size, await self.limits(timeout=timeout))
        msg = await self._unary(self._stub.Interpolate, req, timeout)
        return InterpolateResult.from_proto(msg)

    async def arithmetic(
        self,
        model: str,
        terms: Sequence[tuple[float, Source]],
        *,
        label: int | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> ArithmeticResult:
        """``G(sum_k weight_k * term_k)``; keywords as in ``GanClient.arithmetic``."""
        req = arithmetic_request(model, terms, label=label, **kwargs)
        if (size := self._large_request(req)) is not None:
            check_request_size(req, size, await self.limits(timeout=timeout))
        msg = await self._unary(self._stub.Arithmetic, req, timeout)
        return ArithmeticResult.from_proto(msg)

    # --------------------------------------------------------------- health
    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard health check: "SERVING", "NOT_SERVING", ... of ``service``."""
        health_pb2, health_pb2_grpc = self._health_modules()
        self._stub  # noqa: B018 - opens the channel
        stub = health_pb2_grpc.HealthStub(self._channel)
        req = health_pb2.HealthCheckRequest(service=service)
        msg = await self._unary(stub.Check, req, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status))

    async def _unary(
        self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None
    ) -> T:
        with typed_errors():
            return await method(request, **self._call_kwargs(timeout))
