"""How many bytes a response takes: one estimate for the server's refusal and the
client's plan.

The server refuses, before computing, a response that cannot fit its send limit
(``max_message_bytes``): INVALID_ARGUMENT, naming the limit. The client plans with the
same numbers: it sends a ``Sample`` unary only when the server would take it, streams
in chunks the server would take, and refuses itself what no chunk could carry. Both
call the functions here, so the two sides cannot drift apart.

The estimate is an upper bound: each image's encoded bytes (a PNG at most its raw
pixels plus ``PNG_OVERHEAD``), the per-image fields a response carries (a latent
vector when asked for, a label on conditional Sample responses, class weights on
conditional Interpolate frames), plus ``MESSAGE_MARGIN`` for protobuf framing and the
small fields (names, shape, seed). The client sizes its requests with the same margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .encodings import Encoding

__all__ = [
    "FLOAT_BYTES",
    "LABEL_BYTES",
    "MESSAGE_MARGIN",
    "PNG_OVERHEAD",
    "images_per_message",
    "latents_per_request",
    "per_image_bytes",
    "response_bytes",
    "response_too_large",
    "sample_per_image_bytes",
]

MESSAGE_MARGIN = 64 * 1024  # protobuf framing and the small fields of a message
PNG_OVERHEAD = 256  # bytes of a PNG file beyond its raw pixels, a bound for small images
LABEL_BYTES = 5  # a packed int32 label >= 0 as a varint, at most
FLOAT_BYTES = 4  # a float32 value: latents, class weights


def per_image_bytes(
    image_shape: Sequence[int], encoding: Encoding, latent_dim: int = 0, extra: int = 0
) -> int:
    """Response bytes of one image ``(C, H, W)`` in ``encoding``, with its latent vector
    when ``latent_dim`` is given (0: latents not returned) and ``extra`` bytes of other
    per-image fields."""
    size = math.prod(image_shape) * encoding.bytes_per_value + extra
    if encoding is Encoding.PNG:
        size += PNG_OVERHEAD
    return size + latent_dim * FLOAT_BYTES


def sample_per_image_bytes(
    image_shape: Sequence[int],
    encoding: Encoding,
    latent_dim: int,
    num_classes: int,
    return_latents: bool,
) -> int:
    """Bytes of one image of a ``SampleResponse``: the image, its label on a conditional
    model, its latent if ``return_latents``."""
    return per_image_bytes(
        image_shape,
        encoding,
        latent_dim if return_latents else 0,
        LABEL_BYTES if num_classes else 0,
    )


def response_bytes(n: int, per_image: int, extra: int = 0) -> int:
    """The estimate for a response of ``n`` images of ``per_image`` bytes and ``extra``
    bytes besides (e.g. latents returned without their images)."""
    return n * per_image + extra + MESSAGE_MARGIN


def images_per_message(limit: int, per_image: int, extra: int = 0) -> int:
    """The most images of ``per_image`` bytes one response under ``limit`` can carry:
    the largest ``n`` with ``response_bytes(n, per_image, extra) <= limit`` (may be 0)."""
    return max(0, (limit - MESSAGE_MARGIN - extra) // max(1, per_image))


def response_too_large(
    n: int,
    encoding: Encoding,
    model: str,
    size: int,
    limit: int,
    hint: str,
    limit_name: str = "the server's max_message_bytes",
) -> str:
    """The refusal of a response over the send limit, in the same words on both sides
    (``limit_name``: whose limit ``limit`` is)."""
    return (
        f"{n} {encoding} images of {model} need about {size} bytes, over {limit_name} "
        f"{limit}; {hint}"
    )


def latents_per_request(limit: int, latent_dim: int) -> int:
    """Images whose explicit latents (``latent_dim`` float32 each, 0 for seeds) and
    labels fit in one request message under the receive ``limit``; at least 1."""
    per_image = FLOAT_BYTES * latent_dim + LABEL_BYTES
    return max(1, (limit - MESSAGE_MARGIN) // per_image)
