"""The serving engine: a validated plan in, generated and encoded images out.

Every protocol edge (the ``ganserve.v1`` servicer, KServe's core, the ``/v1`` HTTP API)
turns its wire format into a plan (``plan.py``) and hands it here with the model version
it holds, the call's deadline and a cancellation check; it gets a ``Generated`` back (a
stream: an iterator of them) and turns that into its own response. What a request needs
on the way is done here once, whichever protocol carried it:

- the response-size check against ``max_message_bytes``: a request whose reply cannot
  be one message fails with INVALID_ARGUMENT before any work;
- the server-wide budgets of ``budget.ServerBudgets`` when the engine has them: the
  response bytes held at once (``--max-buffered-bytes``) and the streams open
  (``--max-streams``);
- costly latents and encodings in a thread, so that one large request does not stall
  the event loop that every other client's small requests run on;
- generation through the model's batcher (its admission control, the deadline, the
  cancellation), refusing output that is not finite (no response carries such images);
- encoding (``encode.py``), traced as ``ganserve.encode``.

The stateless steps are ``generation.py``'s; the engine holds what spans calls (the
budgets, the count of open streams) and the order of the steps. grpc-free and
protobuf-free, so it is tested without a network (``tests/test_engine.py``). It is
every call's hot path: no tasks, no copies of the images, no awaits beyond the work's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np

from ganserve.contract.encodings import Encoding
from ganserve.contract.limits import Limits
from ganserve.contract.sizes import FLOAT_BYTES, per_image_bytes, response_bytes

from . import tracing
from .budget import ByteBudget, ServerBudgets
from .calls import Call, hold_model
from .errors import ResourceExhausted
from .generation import (
    check_response_size,
    encode,
    non_finite_output,
    sample_image_bytes,
    sample_inputs,
)
from .metrics import Metrics
from .plan import ArithmeticPlan, InterpolatePlan, SamplePlan
from .repository import LoadedModel, ModelRepository

__all__ = ["Engine", "Generated"]

_T = TypeVar("_T")
IsCancelled = Callable[[], bool] | None
# Registers a callable to run once the edge's transport has taken the response.
OnSent = Callable[[Callable[[], None]], None]


@dataclass(slots=True)
class Generated:
    """One response's images (a stream: one chunk's), generated and encoded."""

    images: np.ndarray  # float32 (N, C, H, W), as the model made them
    raw: bytes  # FLOAT32 / UINT8: the images' bytes; PNG: b""
    pngs: list[bytes]  # PNG: one file per image; otherwise []
    latents: np.ndarray  # float32 (L, D): the latents the response returns
    labels: np.ndarray | None = None  # int64 (N,): a sample's classes (conditional models)
    offset: int = 0  # the first image's index in the whole request (a stream's chunk)


def _finite(images: np.ndarray, z: np.ndarray, field: str) -> np.ndarray:
    if not np.isfinite(images).all():
        raise non_finite_output(z, field)
    return images


class Engine:
    """Plans to images over one repository.

    ``budgets``: the server-wide budgets this engine's calls are held to (the response
    bytes of samples and streams, the streams open); None: none (an edge that answers
    with pictures or tensors of its own keeps to the request limits alone).
    """

    def __init__(
        self,
        repository: ModelRepository,
        limits: Limits,
        metrics: Metrics,
        budgets: ServerBudgets | None = None,
    ) -> None:
        self._repo = repository
        self._limits = limits
        self._metrics = metrics
        self._budgets = budgets
        self._buffered: ByteBudget | None = None if budgets is None else budgets.buffered
        self._streams = 0  # sample streams open

    @property
    def budgets(self) -> ServerBudgets | None:
        """The server-wide budgets its calls are held to (None: none)."""
        return self._budgets

    @property
    def streams(self) -> int:
        """Sample streams open (started, not yet finished or closed)."""
        return self._streams

    def hold(self, name: str, version: str, call: Call) -> LoadedModel:
        """The serving version of ``name``, held by ``call`` until it ends."""
        return hold_model(self._repo, name, version, call)

    # ---------------------------------------------------------------- budgets

    def refused(self, reason: str, model: str) -> None:
        """Count a refusal before any work (``ganserve_rejected_total``); the edges'
        own refusals (server-wide limits) are counted here too, with ``model=""``."""
        self._metrics.rejected_total.labels(model, reason).inc()

    def reserve_now(
        self, budget: ByteBudget, size: int, what: str, model: str, **wording: str
    ) -> None:
        """A new response's bytes, or RESOURCE_EXHAUSTED at once (no silent wait),
        counted in ``ganserve_rejected_total``. ``wording``: ``ByteBudget.acquire_now``'s
        ``buffer`` and ``smaller``, for bytes other than a response's."""
        try:
            budget.acquire_now(size, what, **wording)
        except ResourceExhausted as exc:
            self.refused(exc.reason, model)
            raise

    async def _reserve(
        self, budget: ByteBudget, size: int, deadline: float | None, model: str
    ) -> None:
        """A running stream's next chunk's bytes, waiting for room within the deadline
        (DEADLINE_EXCEEDED when it passes first)."""
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await budget.acquire(size, left)
        except ResourceExhausted as exc:
            self.refused(exc.reason, model)
            raise

    # ------------------------------------------------------------- generation

    async def images(
        self,
        model: LoadedModel,
        z: np.ndarray,
        y: np.ndarray | None,
        deadline: float | None,
        is_cancelled: IsCancelled,
        field: str = "latents",
    ) -> np.ndarray:
        """Images of latents ``z`` (N, D) [and class vectors ``y`` (N, C)] through the
        model's batcher: float32 (N, C, H, W), all finite. ``field`` names the request
        field of ``z`` in the error for non-finite output."""
        return _finite(await model.generate(z, y, deadline, is_cancelled), z, field)

    async def _generate(
        self,
        model: LoadedModel,
        z: np.ndarray,
        y: np.ndarray | None,
        deadline: float | None,
        is_cancelled: IsCancelled,
        encoding: Encoding,
        field: str,
    ) -> tuple[np.ndarray, bytes, list[bytes]]:
        images = _finite(await model.generate(z, y, deadline, is_cancelled), z, field)
        with tracing.encode_span(encoding, images.shape[0]):  # a no-op while tracing is off
            raw, pngs = await encode(images, encoding)
        return images, raw, pngs

    async def _sample_chunk(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        start: int,
        stop: int,
        deadline: float | None,
        is_cancelled: IsCancelled,
    ) -> Generated:
        z, labels, y = await sample_inputs(plan, start, stop)  # (n, D), (n,), (n, C)
        images, raw, pngs = await self._generate(
            model, z, y, deadline, is_cancelled, plan.encoding, "latents"
        )
        return Generated(images, raw, pngs, z, labels, start)

    # ------------------------------------------------------------------ plans

    @overload
    async def sample(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
    ) -> Generated: ...

    @overload
    async def sample(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
        respond: Callable[[Generated], _T],
        on_sent: OnSent | None = None,
    ) -> _T: ...

    async def sample(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
        respond: Callable[[Generated], Any] | None = None,
        on_sent: OnSent | None = None,
    ) -> Any:
        """All images of a sample plan as one response.

        Its bytes are reserved before anything is computed (RESOURCE_EXHAUSTED at once
        when they do not fit) and given back once the edge's transport has taken the
        response: ``on_sent(release)`` registers ``release`` for then (gRPC: the call's
        done callback); without it, once ``respond``, the edge's message builder, has
        turned the result into the response. Returned is what ``respond`` returns
        (without it: the ``Generated``).
        """
        spec = model.spec
        per_image = sample_image_bytes(plan, spec)
        size = check_response_size(
            self._limits, spec.name, plan.count, plan.encoding, per_image, "use SampleStream"
        )

        def work() -> Awaitable[Generated]:
            return self._sample_chunk(model, plan, 0, plan.count, deadline, is_cancelled)

        return await self._held(spec.name, size, work, respond, on_sent)

    async def _held(
        self,
        model: str,
        size: int,
        work: Callable[[], Awaitable[Generated]],
        respond: Callable[[Generated], Any] | None,
        on_sent: OnSent | None,
    ) -> Any:
        """``work()``'s result (through ``respond``) with ``size`` bytes of the response
        budget held: reserved before any work (RESOURCE_EXHAUSTED at once when they do
        not fit), given back when the edge's transport has taken the response
        (``on_sent``) or, without it or when anything fails, on return."""
        budget = self._buffered
        if budget is None:
            result = await work()
            return result if respond is None else respond(result)
        self.reserve_now(budget, size, "the response", model)
        handed = False
        try:
            result = await work()
            out = result if respond is None else respond(result)
            if on_sent is not None:
                on_sent(functools.partial(budget.release, size))
                handed = True
            return out
        finally:
            if not handed:
                budget.release(size)

    @overload
    def sample_stream(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
    ) -> AsyncIterator[Generated]: ...

    @overload
    def sample_stream(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
        respond: Callable[[Generated], _T],
    ) -> AsyncIterator[_T]: ...

    async def sample_stream(
        self,
        model: LoadedModel,
        plan: SamplePlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
        respond: Callable[[Generated], Any] | None = None,
    ) -> AsyncIterator[Any]:
        """A sample plan's images in chunks of ``plan.chunk_size``, one ``respond(chunk)``
        (or ``Generated``) each; nothing runs before the first is asked for.

        A chunk is computed only once the previous one has been consumed: an edge that
        asks for the next chunk when its transport has taken the last (gRPC's write)
        stops a stream whose client does not read, and each stream holds at most one
        chunk. The first chunk is refused at once when the response budget is full;
        later ones wait for room, within the deadline. Close the iterator (``aclose``)
        when abandoning it: that gives its bytes back.
        """
        spec = model.spec
        per_image = sample_image_bytes(plan, spec)
        check_response_size(
            self._limits, spec.name, plan.chunk_size, plan.encoding, per_image, "lower chunk_size"
        )
        budgets = self._budgets
        if budgets is not None and self._streams >= budgets.max_streams:
            self.refused("streams", spec.name)
            raise ResourceExhausted(
                f"the server has {self._streams} streams open, its limit (--max-streams "
                f"{budgets.max_streams}); retry later",
                "streams",
                1.0,
            )
        budget = self._buffered
        self._streams += 1
        try:
            start = 0
            while start < plan.count:
                stop = min(start + plan.chunk_size, plan.count)
                size = response_bytes(stop - start, per_image)
                if budget is not None:
                    if start:
                        await self._reserve(budget, size, deadline, spec.name)
                    else:
                        self.reserve_now(budget, size, "the first chunk", spec.name)
                try:
                    chunk = await self._sample_chunk(
                        model, plan, start, stop, deadline, is_cancelled
                    )
                    message = chunk if respond is None else respond(chunk)
                    # While the stream waits for its reader this frame stays alive: it
                    # keeps the message, not the float images (4x a UINT8 reply's bytes)
                    del chunk
                    yield message
                    del message
                finally:
                    if budget is not None:
                        budget.release(size)
                start = stop
        finally:
            self._streams -= 1

    async def interpolate(
        self,
        model: LoadedModel,
        plan: InterpolatePlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
        respond: Callable[[Generated], Any] | None = None,
        on_sent: OnSent | None = None,
    ) -> Any:
        """The frames of an interpolation plan; ``latents``: its path ``plan.z``. Its
        bytes are held in the response budget as a sample's are (``sample``)."""
        spec = model.spec
        per_image = per_image_bytes(
            spec.image_shape,
            plan.encoding,
            spec.latent_dim if plan.return_latents else 0,
            FLOAT_BYTES * spec.num_classes,  # class_weights, conditional only
        )
        size = check_response_size(
            self._limits, spec.name, plan.z.shape[0], plan.encoding, per_image,
            "request fewer steps",
        )  # fmt: skip

        async def work() -> Generated:
            images, raw, pngs = await self._generate(
                model, plan.z, plan.y, deadline, is_cancelled, plan.encoding, "keyframes"
            )
            return Generated(images, raw, pngs, plan.z)

        return await self._held(spec.name, size, work, respond, on_sent)

    async def arithmetic(
        self,
        model: LoadedModel,
        plan: ArithmeticPlan,
        deadline: float | None,
        is_cancelled: IsCancelled,
        respond: Callable[[Generated], Any] | None = None,
        on_sent: OnSent | None = None,
    ) -> Any:
        """The result's image (and each term's, when the plan asks), encoded as one batch:
        the result is image 0. ``latents``: the result's and every term's. Its bytes are
        held in the response budget as a sample's are (``sample``)."""
        spec = model.spec
        latent_dim = spec.latent_dim if plan.return_latents else 0
        size = check_response_size(
            self._limits,
            spec.name,
            plan.n_images,
            plan.encoding,
            per_image_bytes(spec.image_shape, plan.encoding, latent_dim),
            "use fewer terms",
            # the result's and every term's latent are returned, with or without their images
            extra=(plan.latents.shape[0] - plan.n_images) * FLOAT_BYTES * latent_dim,
        )
        z = plan.latents[: plan.n_images]  # (1 [+ T], D)

        async def work() -> Generated:
            images, raw, pngs = await self._generate(
                model, z, plan.y, deadline, is_cancelled, plan.encoding, "terms"
            )
            return Generated(images, raw, pngs, plan.latents)

        return await self._held(spec.name, size, work, respond, on_sent)
