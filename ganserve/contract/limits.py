"""The server's request limits and their defaults, one set for the server's
configuration, its checks and the documentation.

``ListModels`` reports them (``ServerLimits``) so that clients plan within them; the
server refuses a request over one with INVALID_ARGUMENT naming the limit. The byte
limits are also gRPC's own message limits (send: ``max_message_bytes``, receive:
``max_request_bytes``): a request larger than the receive limit fails in the transport
before any check.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_MESSAGE_BYTES_BELOW",
    "MIB",
    "MIN_MESSAGE_BYTES",
    "Limits",
]

MIB = 1024 * 1024
# Neither byte limit may be set lower: a request or a response this small always fits,
# so a client needs no look at the server's limits to send it.
MIN_MESSAGE_BYTES = 1 * MIB
# gRPC message lengths are signed 32-bit integers: both byte limits stay below this.
MAX_MESSAGE_BYTES_BELOW = 2**31


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a server. The defaults are the server's."""

    # Sample count, Interpolate steps, Arithmetic terms and their seeds in all
    max_images_per_request: int = 4096
    max_images_per_stream: int = 1_000_000  # SampleStream count
    stream_chunk_default: int = 256  # SampleStream images per message when chunk_size is 0
    stream_chunk_max: int = 4096  # the largest chunk_size
    max_message_bytes: int = 64 * MIB  # send limit: the largest response message
    # Receive limit: the largest request message. Parsing runs on the event loop before
    # any check, so it bounds how long one message can hold the loop; 16 MiB holds
    # 4,096 explicit latents of up to ~1,000 dimensions.
    max_request_bytes: int = 16 * MIB


DEFAULT_LIMITS = Limits()
