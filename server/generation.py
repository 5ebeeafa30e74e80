"""The steps of answering a request, stateless: planning and latents off the event loop
when costly, the response-size check, encoding (in a thread when large), the error
for non-finite output.

grpc-free. ``engine.Engine`` composes them under the server-wide budgets; an edge
calls the ones that sit outside the engine itself: planning (it reads the edge's
request message) and encoding of the tensors an edge answers with (KServe's). The
offload thresholds are also the edges' own (KServe's typed output, its JSON bodies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ganserve.contract.encodings import Encoding
from ganserve.contract.limits import Limits
from ganserve.contract.sizes import response_bytes, response_too_large, sample_per_image_bytes
from ganserve.seeds import latent_cost_us

from .encode import encode_images
from .errors import Internal, InvalidArgument, ServeError
from .latent import one_hot
from .plan import SamplePlan
from .repository import ModelSpec

__all__ = [
    "OFFLOAD_IMAGES",
    "OFFLOAD_LATENT_US",
    "check_response_size",
    "encode",
    "non_finite_output",
    "plan_offloaded",
    "sample_image_bytes",
    "sample_inputs",
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


def sample_image_bytes(plan: SamplePlan, spec: ModelSpec) -> int:
    """Response bytes of one image of a Sample / SampleStream plan."""
    return sample_per_image_bytes(
        spec.image_shape, plan.encoding, spec.latent_dim, spec.num_classes, plan.return_latents
    )


def check_response_size(
    limits: Limits,
    model: str,
    n: int,
    encoding: Encoding,
    per_image: int,
    hint: str,
    extra: int = 0,
) -> int:
    """Fail before computing if ``n`` images of ``per_image`` bytes (and ``extra`` bytes
    besides) cannot fit in one message: ``contract.sizes``' estimate (the client's
    planner's), which is returned."""
    size = response_bytes(n, per_image, extra)
    limit = limits.max_message_bytes
    if size > limit:
        # Deterministic for this request: INVALID_ARGUMENT, so retry policies skip it.
        raise InvalidArgument(response_too_large(n, encoding, model, size, limit, hint))
    return size


async def sample_inputs(
    plan: SamplePlan, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The model inputs of images [start, stop) of a sample plan: latents float32
    (n, D), the images' classes int64 (n,) and their one-hot vectors float32 (n, C)
    (both None on unconditional models). Costly seed latents are drawn in a thread."""
    if plan.explicit is None and latent_cost_us(stop - start, plan.truncation) > OFFLOAD_LATENT_US:
        z = await asyncio.to_thread(plan.z, start, stop)
    else:
        z = plan.z(start, stop)
    labels = plan.image_labels(start, stop)
    return z, labels, None if labels is None else one_hot(labels, plan.num_classes)


async def encode(
    images: np.ndarray, encoding: Encoding = Encoding.FLOAT32
) -> tuple[bytes, list[bytes]]:
    """``encode_images`` (raw bytes, PNG files), in a thread from ``OFFLOAD_IMAGES`` images."""
    if images.shape[0] >= OFFLOAD_IMAGES:
        return await asyncio.to_thread(encode_images, images, encoding)
    return encode_images(images, encoding)


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
