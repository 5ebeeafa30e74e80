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
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc.aio
import numpy as np

from ganserve.clients._base import ClientBase, check_label, check_labels
from ganserve.clients._requests import (
    Source,
    arithmetic_request,
    interpolate_request,
    sample_request,
)
from ganserve.clients._sampling import (
    Deadline,
    PartFetch,
    SampleAccumulator,
    check_request_size,
    plan_sample,
    resume_polls,
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
    """asyncio client of the ``ganserve.v1.Generator`` service.

    The same methods as ``GanClient``, as coroutines (``sample_stream`` is an async
    iterator). Failures raise ``GanServeError`` subclasses (``ModelNotFound``,
    ``InvalidRequest``, ``Overloaded``, ``Unavailable``, ``DeadlineExceeded``,
    ``Unauthenticated``, ``Cancelled``) that keep the gRPC status code and message.
    """

    def _open(self) -> None:
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
        """Every model in the server's repository (also refreshes ``limits()``).

        Args:
            timeout: Deadline in seconds (default: the client's ``timeout``).

        Returns:
            The latest version of each model, sorted by name.
        """
        msg = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        self._remember_limits(msg)
        return [ModelInfo.from_proto(m) for m in msg.models]

    async def limits(self, *, timeout: float | None = None) -> ServerLimits:
        """The server's request limits, fetched once with ``ListModels`` and cached.

        Args:
            timeout: Deadline in seconds of the first fetch (default: the client's
                ``timeout``).

        Returns:
            The limits, each the smaller of the server's and this client's.
        """
        async with self._limits_lock:  # concurrent first calls share one fetch
            if self._limits is None:
                await self.list_models(timeout=timeout)
        assert self._limits is not None
        return self._limits

    async def get_model(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelInfo:
        """One model (the ``GetModel`` call).

        Args:
            model: Model name, e.g. ``"mnist-cdcgan"``.
            version: Model version (default: the latest ready one).
            timeout: Deadline in seconds (default: the client's ``timeout``).

        Returns:
            The model's metadata, shapes, quality figures and load state.

        Raises:
            ModelNotFound: No such model or version.
        """
        req = pb.GetModelRequest(model=model, version=version)
        return self._remember_info(await self._unary(self._stub.GetModel, req, timeout), version)

    async def model_info(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelInfo:
        """Alias of ``get_model``, kept for existing code.

        Args:
            model: Model name, e.g. ``"mnist-cdcgan"``.
            version: Model version (default: the latest ready one).
            timeout: Deadline in seconds (default: the client's ``timeout``).

        Returns:
            The model's metadata, shapes, quality figures and load state.

        Raises:
            ModelNotFound: No such model or version.
        """
        return await self.get_model(model, version, timeout=timeout)

    async def _cached_info(
        self, model: str, version: str, timeout: float | None = None
    ) -> ModelInfo:
        info = self._infos.get((model, version))
        if info is not None:
            return info
        return await self.get_model(model, version, timeout=timeout)

    # --------------------------------------------------------------- sample
    async def sample(
        self,
        model: str,
        count: int | None = None,
        *,
        seed: int | None = None,
        latents: np.ndarray | Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        label: int | None = None,
        truncation: float | None = None,
        encoding: Literal["float32", "uint8", "png"] = "float32",
        return_latents: bool = False,
        chunk_size: int = 0,
        version: str = "",
        progress: bool = False,
        timeout: float | None = None,
    ) -> SampleResult:
        """Generate ``count`` images.

        Counts beyond one response go through ``SampleStream`` transparently, and
        counts beyond one stream through consecutive streams whose images are
        concatenated in order; the result is the one a single call would give.

        Args:
            model: Model name, e.g. ``"mnist-cdcgan"``.
            count: Number of images (default: ``len(latents)``, or 1).
            seed: First seed; image ``i`` uses ``seed + i``. Default: the server (or,
                when the count is split, the client) picks one; see ``result.seed``.
            latents: Explicit latent vectors, shape ``(count, latent_dim)``, instead
                of a seed.
            labels: One class per image (conditional models).
            label: One class for every image (conditional models); not with ``labels``.
                Default for both: image ``i`` gets class ``i % num_classes``.
            truncation: Truncation psi (at least 0.05) of seed-derived latents.
            encoding: Wire encoding: ``"float32"`` (the model's value range),
                ``"uint8"`` (``[-1, 1]`` mapped to ``[0, 255]``) or ``"png"``.
            return_latents: Also return the latent vectors in ``result.latents``.
            chunk_size: Images per streamed chunk (0: the server's default).
            version: Model version (default: the latest ready one).
            progress: Show a progress bar on stderr while a streamed count arrives.
            timeout: One deadline in seconds for the whole call: the limits and
                model lookups it may make first, then the ``Sample`` call or the whole
                streamed count, every ``SampleStream`` call and resume included
                (default: the client's ``timeout`` for each unary call; none for a
                stream).

        Returns:
            The images, ``(count, H, W)`` (grayscale) or ``(count, H, W, C)``, with
            their seeds, labels and (if asked) latents.

        Raises:
            InvalidRequest: A bad argument (checked before sending or by the server).
            ModelNotFound: No such model or version.
            GanServeError: ``DATA_LOSS`` when a stream ends without error but with
                images missing.
        """
        check_labels(label, labels)
        req = sample_request(
            model,
            count,
            version=version,
            seed=seed,
            latents=latents,
            truncation=truncation,
            labels=labels,
            label=label,
            encoding=encoding,
            return_latents=return_latents,
            chunk_size=chunk_size,
        )
        # One deadline for the whole call: the limits, the model's shape and the
        # Sample (or every SampleStream) each get what is left of it.
        deadline = Deadline(timeout)
        limits = await self.limits(timeout=deadline.left())
        info = await self._cached_info(model, req.version, deadline.left())
        plan = plan_sample(req, limits, info)
        if not plan.stream:
            return SampleResult.from_proto(
                await self._unary(self._stub.Sample, req, deadline.left())
            )
        req.chunk_size = plan.chunk_size
        with SampleAccumulator(req.count, progress=progress, desc=model) as acc:
            async for chunk in self._stream(req, deadline):
                acc.add(chunk)
        return acc.result()

    def sample_stream(
        self,
        model: str,
        count: int | None = None,
        *,
        seed: int | None = None,
        latents: np.ndarray | Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        label: int | None = None,
        truncation: float | None = None,
        encoding: Literal["float32", "uint8", "png"] = "float32",
        return_latents: bool = False,
        chunk_size: int = 0,
        version: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerator[SampleResult, None]:
        """The chunks of ``SampleStream`` as they arrive (``async for``).

        A count beyond one stream is fetched as consecutive streams; a stream cut
        by ``UNAVAILABLE`` after it delivered images is resumed where it stopped.
        To stop early, ``await`` the generator's ``aclose()``, or iterate it in
        ``contextlib.aclosing(...)``: that cancels the call and the server's work.
        Leaving the loop alone does not while the generator is still referenced.

        Args:
            model: Model name, e.g. ``"mnist-cdcgan"``.
            count: Number of images (default: ``len(latents)``, or 1).
            seed: First seed; image ``i`` uses ``seed + i``. Default: the server (or,
                when the count is split, the client) picks one; see ``chunk.seed``.
            latents: Explicit latent vectors, shape ``(count, latent_dim)``, instead
                of a seed.
            labels: One class per image (conditional models).
            label: One class for every image (conditional models); not with ``labels``.
                Default for both: image ``i`` gets class ``i % num_classes``.
            truncation: Truncation psi (at least 0.05) of seed-derived latents.
            encoding: Wire encoding: ``"float32"`` (the model's value range),
                ``"uint8"`` (``[-1, 1]`` mapped to ``[0, 255]``) or ``"png"``.
            return_latents: Also return the latent vectors in ``chunk.latents``.
            chunk_size: Images per chunk (0: the server's default).
            version: Model version (default: the latest ready one).
            timeout: Deadline in seconds of the whole stream, every
                ``SampleStream`` call and resume included, not of each chunk
                (default: none).

        Yields:
            Chunks in order; ``chunk.offset`` is the index of the chunk's first image
            in the whole request, ``chunk.seed`` the whole request's first seed.

        Raises:
            InvalidRequest: A bad argument (checked before sending or by the server).
            ModelNotFound: No such model or version.
            GanServeError: ``DATA_LOSS`` when a stream ends without error but with
                images missing.
        """
        check_labels(label, labels)
        req = sample_request(
            model,
            count,
            version=version,
            seed=seed,
            latents=latents,
            truncation=truncation,
            labels=labels,
            label=label,
            encoding=encoding,
            return_latents=return_latents,
            chunk_size=chunk_size,
        )
        return self._stream(req, timeout)

    async def _stream(
        self, req: pb.SampleRequest, timeout: float | Deadline | None
    ) -> AsyncGenerator[SampleResult, None]:
        # The clock of a timeout starts at the first chunk asked for; a Deadline is the
        # caller's, already running.
        deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout)
        limits = await self.limits(timeout=deadline.left())
        info = await self._cached_info(req.model, req.version, deadline.left())
        for offset, part in split_sample(req, limits, info):
            fetch = self._part_fetch(part, offset, info)
            while True:
                call = self._stub.SampleStream(
                    fetch.request(), **self._call_kwargs(deadline.left(), stream=True)
                )
                try:
                    async for msg in call:
                        yield fetch.place(msg)
                    fetch.check_complete()  # an OK end with images missing is DATA_LOSS
                    break
                except grpc.RpcError as exc:
                    delay = fetch.resume_delay(exc)  # or raises the typed error
                finally:
                    call.cancel()  # no-op after the end; stops the server when the consumer quits
                await asyncio.sleep(deadline.wait(delay))  # then resume where it stopped
                await self._wait_connected(deadline.wait(fetch.reconnect_s), fetch)

    async def _wait_connected(self, seconds: float, fetch: PartFetch) -> None:
        """Until a server answers with the part's model loaded (``fetch.settled``),
        ``seconds`` at most. With wait_for_ready the probe is held, not failed, while no
        server is connected, so a restart is waited out without attempts; the resume is
        then one call, whatever the outcome."""
        end = time.monotonic() + seconds
        polls = resume_polls()
        with contextlib.suppress(grpc.RpcError):  # the resume call says what is wrong
            while (left := end - time.monotonic()) > 0:
                reply = await self._stub.ListModels(
                    pb.ListModelsRequest(), wait_for_ready=True, **self._call_kwargs(left)
                )
                if fetch.settled(reply):
                    return
                await asyncio.sleep(min(next(polls), max(0.0, end - time.monotonic())))

    # ---------------------------------------------------- latent operations
    async def interpolate(
        self,
        model: str,
        keyframes: Sequence[Source],
        *,
        labels: Sequence[int | None] | None = None,
        steps: int = 16,
        method: Literal["slerp", "lerp"] = "slerp",
        truncation: float | None = None,
        encoding: Literal["float32", "uint8", "png"] = "float32",
        return_latents: bool = False,
        version: str = "",
        timeout: float | None = None,
    ) -> InterpolateResult:
        """Frames along a path through two or more keyframes.

        Args:
            model: Model name, e.g. ``"mnist-cdcgan"``.
            keyframes: Seeds (int) or latent vectors (``latent_dim`` floats).
            labels: One class per keyframe (conditional models: required there; the
                class input is blended between keyframes).
            steps: Frames over the whole path, the first and last keyframes included.
            method: ``"slerp"`` (along the great circle) or ``"lerp"`` (straight line).
            truncation: Truncation psi (at least 0.05) of seed keyframes.
            encoding: Wire encoding: ``"float32"``, ``"uint8"`` or ``"png"``.
            return_latents: Also return each frame's latent vector.
            version: Model version (default: the latest ready one).
            timeout: Deadline in seconds (default: the client's ``timeout``).

        Returns:
            ``steps`` frames, with the class blend weights of a conditional model.

        Raises:
            InvalidRequest: A bad argument (checked before sending or by the server).
            ModelNotFound: No such model or version.
        """
        check_labels(None, labels, per="keyframe")
        req = interpolate_request(
            model,
            keyframes,
            labels=labels,
            version=version,
            steps=steps,
            method=method,
            truncation=truncation,
            encoding=encoding,
            return_latents=return_latents,
        )
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
        truncation: float | None = None,
        encoding: Literal["float32", "uint8", "png"] = "float32",
        return_term_images: bool = False,
        return_latents: bool = False,
        version: str = "",
        timeout: float | None = None,
    ) -> ArithmeticResult:
        """The image of ``sum_k weight_k * term_k`` in latent space.

        Args:
            model: Model name, e.g. ``"mnist-cdcgan"``.
            terms: ``(weight, source)`` pairs; a source is a seed, a list of seeds
                (their mean latent) or a latent vector of floats.
            label: Class of the result and of every term image (conditional models:
                required there).
            truncation: Truncation psi (at least 0.05) of seed latents.
            encoding: Wire encoding: ``"float32"``, ``"uint8"`` or ``"png"``.
            return_term_images: Also return one image per term (its unweighted latent).
            return_latents: Also return the latents: the result's, then each term's.
            version: Model version (default: the latest ready one).
            timeout: Deadline in seconds (default: the client's ``timeout``).

        Returns:
            The result image, and the term images and latents if asked for.

        Raises:
            InvalidRequest: A bad argument (checked before sending or by the server).
            ModelNotFound: No such model or version.
        """
        check_label(label)
        req = arithmetic_request(
            model,
            terms,
            label=label,
            version=version,
            truncation=truncation,
            encoding=encoding,
            return_term_images=return_term_images,
            return_latents=return_latents,
        )
        if (size := self._large_request(req)) is not None:
            check_request_size(req, size, await self.limits(timeout=timeout))
        msg = await self._unary(self._stub.Arithmetic, req, timeout)
        return ArithmeticResult.from_proto(msg)

    # --------------------------------------------------------------- health
    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard gRPC health check.

        Args:
            service: Service name (default: the whole server).
            timeout: Deadline in seconds (default: the client's ``timeout``).

        Returns:
            ``"SERVING"``, ``"NOT_SERVING"``, ... of ``service``.

        Raises:
            ModelNotFound: The server does not know ``service``.
        """
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
