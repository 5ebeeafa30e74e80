"""``GanClient``: the blocking client, safe to share across threads.

One gRPC channel per client (channels are thread-safe and multiplex calls);
use it as a context manager, or call ``close()``.

    with GanClient("localhost:50051") as client:
        result = client.sample("mnist-cdcgan", count=16, label=7, seed=1)
        result.save_grid("sevens.png", scale=4)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

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

__all__ = ["GanClient"]

T = TypeVar("T")


class GanClient(ClientBase):
    """Blocking client of ``ganserve.v1.Generator``; arguments as in ``ClientBase``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = self._config.channel()
        self._stub = pb_grpc.GeneratorStub(self._channel)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> GanClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --------------------------------------------------------------- models
    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model in the server's repository (also refreshes ``limits()``)."""
        msg = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        with self._lock:
            self._remember_limits(msg)
        return [ModelInfo.from_proto(m) for m in msg.models]

    def limits(self, *, timeout: float | None = None) -> ServerLimits:
        """The server's limits (fetched once with ``ListModels`` under ``timeout``, then
        cached)."""
        with self._lock:
            cached = self._limits
        if cached is None:
            self.list_models(timeout=timeout)
            with self._lock:
                cached = self._limits
        assert cached is not None
        return cached

    def model_info(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelInfo:
        """One model (latest ready version unless ``version``); ``ModelNotFound`` if unknown."""
        req = pb.GetModelRequest(model=model, version=version)
        msg = self._unary(self._stub.GetModel, req, timeout)
        with self._lock:
            return self._remember_info(msg, version)

    def _cached_info(self, model: str, version: str, timeout: float | None = None) -> ModelInfo:
        with self._lock:
            info = self._infos.get((model, version))
        return info if info is not None else self.model_info(model, version, timeout=timeout)

    # --------------------------------------------------------------- sample
    def sample(
        self,
        model: str,
        count: int | None = None,
        *,
        progress: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> SampleResult:
        """``count`` images (default ``len(latents)`` or 1).

        Keywords: ``version``, ``seed`` (image i uses ``seed + i``; absent: the
        server picks one and returns it), ``latents`` ``(N, latent_dim)``,
        ``truncation``, ``labels`` (one per image) or ``label`` (for all),
        ``encoding`` ("float32" | "uint8" | "png"), ``return_latents``,
        ``chunk_size``. Counts beyond one response go through ``SampleStream``
        transparently, and counts beyond one stream through several consecutive
        streams (the client then picks a missing seed itself); ``timeout``
        applies to each call; ``progress=True`` shows a progress bar then.
        """
        req = sample_request(model, count, **kwargs)
        limits = self.limits(timeout=timeout)
        plan = plan_sample(req, limits, self._cached_info(model, req.version, timeout))
        if not plan.stream:
            return SampleResult.from_proto(self._unary(self._stub.Sample, req, timeout))
        req.chunk_size = plan.chunk_size
        with SampleAccumulator(req.count, progress=progress, desc=model) as acc:
            for chunk in self._stream(req, timeout):
                acc.add(chunk)
        return acc.result()

    def sample_stream(
        self, model: str, count: int | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[SampleResult]:
        """The chunks of ``SampleStream`` as they arrive (``chunk.offset`` places them).

        Same keywords as ``sample``; a count beyond one stream is fetched as
        consecutive streams, with offsets in the whole request. Stop iterating
        (or ``close()`` the iterator) to cancel the call and the server's work.
        """
        return self._stream(sample_request(model, count, **kwargs), timeout)

    def _stream(self, req: pb.SampleRequest, timeout: float | None) -> Iterator[SampleResult]:
        # A generator: the calls start at the first next(), like the async client's.
        info = self._cached_info(req.model, req.version, timeout)
        for offset, part in split_sample(req, self.limits(timeout=timeout), info):
            fetch = self._part_fetch(part, offset, info)
            while True:
                call = self._stub.SampleStream(
                    fetch.request(), **self._call_kwargs(timeout, stream=True)
                )
                try:
                    for msg in call:
                        yield fetch.place(msg)
                    break
                except grpc.RpcError as exc:
                    delay = fetch.resume_delay(exc)  # or raises the typed error
                finally:
                    call.cancel()  # no-op after the end; stops the server when the consumer quits
                time.sleep(delay)  # then resume the cut stream where it stopped

    # ---------------------------------------------------- latent operations
    def interpolate(
        self,
        model: str,
        keyframes: Sequence[Source],
        *,
        labels: Sequence[int | None] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> InterpolateResult:
        """``steps`` frames (default 16) through ``keyframes`` (seeds or latent vectors).

        Keywords: ``labels`` (one per keyframe, conditional models), ``steps``,
        ``method`` ("slerp" | "lerp"), ``truncation``, ``encoding``,
        ``return_latents``, ``version``.
        """
        req = interpolate_request(model, keyframes, labels=labels, **kwargs)
        if (size := self._large_request(req)) is not None:
            check_request_size(req, size, self.limits(timeout=timeout))
        return InterpolateResult.from_proto(self._unary(self._stub.Interpolate, req, timeout))

    def arithmetic(
        self,
        model: str,
        terms: Sequence[tuple[float, Source]],
        *,
        label: int | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> ArithmeticResult:
        """``G(sum_k weight_k * term_k)``; a term is ``(weight, seed | seeds | vector)``.

        Keywords: ``label`` (conditional models), ``truncation``, ``encoding``,
        ``return_term_images``, ``return_latents``, ``version``.
        """
        req = arithmetic_request(model, terms, label=label, **kwargs)
        if (size := self._large_request(req)) is not None:
            check_request_size(req, size, self.limits(timeout=timeout))
        return ArithmeticResult.from_proto(self._unary(self._stub.Arithmetic, req, timeout))

    # --------------------------------------------------------------- health
    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard health check: "SERVING", "NOT_SERVING", ... of ``service``."""
        health_pb2, health_pb2_grpc = self._health_modules()
        stub = health_pb2_grpc.HealthStub(self._channel)
        req = health_pb2.HealthCheckRequest(service=service)
        msg = self._unary(stub.Check, req, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status))

    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        with typed_errors():
            return method(request, **self._call_kwargs(timeout))
