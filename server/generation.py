"""The generation path every protocol edge shares: plan off the loop when costly,
generate through the model's batcher, refuse non-finite output.

grpc-free: the gRPC servicer and the HTTP API both call it, so a request gets the
same work, offloading and errors whichever protocol carried it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ganserve.contract.limits import Limits
from ganserve.seeds import latent_cost_us

from .errors import Internal, InvalidArgument, ServeError
from .plan import SamplePlan
from .repository import LoadedModel, ModelSpec

__all__ = [
    "OFFLOAD_IMAGES",
    "OFFLOAD_LATENT_US",
    "generate_checked",
    "non_finite_output",
    "plan_offloaded",
    "sample_latents",
]

# Latent and encoding work above this many images leaves the event loop for a thread,
# so one large request does not stall the small ones of other clients.
OFFLOAD_IMAGES = 256
# The same for latents from seeds, by their estimated cost (``latent_cost_us``, which
# counts truncation's redraws): more work would hold up other clients' small requests.
OFFLOAD_LATENT_US = 15_000.0
# Far beyond any standard-normal latent (the seed rule's never exceed ~6.5).
_LARGE_LATENT = 100.0

_P = TypeVar("_P")


async def plan_offloaded(
    build: Callable[[Any, ModelSpec, Limits], _P],
    request: Any,
    spec: ModelSpec,
    limits: Limits,
    seeds: int,
) -> _P:
    """``build(request, spec, limits)``, in a thread when its ``seeds`` latents (as the
    request states them, truncation included) are too costly for the event loop."""
    psi = request.truncation if request.HasField("truncation") else None
    if latent_cost_us(seeds, psi) > OFFLOAD_LATENT_US:
        return await asyncio.to_thread(build, request, spec, limits)
    return build(request, spec, limits)


async def sample_latents(plan: SamplePlan, start: int, stop: int) -> np.ndarray:
    """Latents of images [start, stop) of a sample plan, float32 (n, D); costly seed
    latents are drawn in a thread."""
    n = stop - start
    if plan.explicit is None and latent_cost_us(n, plan.truncation) > OFFLOAD_LATENT_US:
        return await asyncio.to_thread(plan.z, start, stop)
    return plan.z(start, stop)


def non_finite_output(z: np.ndarray, field: str = "latents") -> ServeError:
    """The error for NaN/infinite model output: the caller's if its latents were huge
    (finite, but overflowing inside the model), the model's otherwise. ``field``: the
    request field the latents came from."""
    top = float(np.abs(z).max()) if z.size else 0.0
    if top > _LARGE_LATENT:
        return InvalidArgument(
            f"{field}: the model's output is not finite (NaN or infinity) for latents this "
            f"large (max |z| = {top:.3g}); use values of the order of a standard normal's"
        )
    return Internal("the model produced non-finite values (NaN or infinity)")


async def generate_checked(
    model: LoadedModel,
    z: np.ndarray,
    y: np.ndarray | None,
    deadline: float | None,
    is_cancelled: Callable[[], bool] | None,
    field: str = "latents",
) -> np.ndarray:
    """``model.generate`` (the batcher), refusing output with NaN or infinity (the
    contract: no response carries such images): float32 (N, C, H, W)."""
    images = await model.generate(z, y, deadline, is_cancelled)
    if not np.isfinite(images).all():
        raise non_finite_output(z, field)
    return images
