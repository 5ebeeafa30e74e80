"""How the clients fetch ``sample``: one ``Sample``, or ``SampleStream`` calls in parts.

Shared by the sync and async clients; no I/O here. A count over the server's
``max_images_per_stream`` (or explicit latents too big for one request message)
is split into consecutive ``SampleStream`` calls whose chunks are rebased to
offsets in the whole request. The split is exact because of the seed rule
(image i of seed s is image 0 of seed s + i): the part starting at image ``o``
uses seed ``s + o``, the slice of the latents or of the per-image labels, the
same single label, and on a conditional model without labels the classes
``(o + i) % num_classes`` it would have had in one call. Without a seed the
client picks one the way the server does (63 random bits, so ``seed + count - 1``
stays below 2**64) and every part continues its sequence; the result reports it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import grpc
import numpy as np
from tqdm.auto import tqdm

from ganserve.clients.errors import GanServeError, InvalidRequest, from_rpc_error
from ganserve.clients.results import ModelInfo, SampleResult, ServerLimits
from ganserve.seeds import MAX_SEED
from ganserve.v1 import generator_pb2 as pb

# Headroom for protobuf framing and the other fields of a message.
_MESSAGE_SLACK = 0.9
# Request bytes of one image besides its latent vector: a varint int32 label >= 0
# (a split may add labels the caller did not send).
_LABEL_BYTES = 5


@dataclass(frozen=True)
class SamplePlan:
    """How to fetch a ``sample``: one unary call, or streams in chunks."""

    stream: bool
    chunk_size: int


def _budget(limits: ServerLimits) -> int:
    return int(limits.max_message_bytes * _MESSAGE_SLACK) or 1


def _request_fit(req: pb.SampleRequest, limits: ServerLimits) -> int:
    """Images whose latents and labels fit in one request message."""
    per_image = 4 * req.latents.dim + _LABEL_BYTES  # latents.dim is 0 for seeds
    return max(1, int(limits.request_bytes * _MESSAGE_SLACK) // per_image)


# The smallest receive limit a server can have (--max-request-bytes >= 1 MiB): a request
# no larger always fits, and needs no look at the server's limits.
ALWAYS_FITS_BYTES = 1 << 20


def check_request_size(
    req: pb.InterpolateRequest | pb.ArithmeticRequest, size: int, limits: ServerLimits
) -> None:
    """Refuse, before sending, a request over the server's receive limit: gRPC would
    fail it with RESOURCE_EXHAUSTED, which the channel's retry policy would resend."""
    if size > limits.request_bytes:
        what = "keyframes" if isinstance(req, pb.InterpolateRequest) else "terms"
        raise InvalidRequest(
            f"the request is {size} bytes, over the request limit {limits.request_bytes} "
            "(the smaller of the server's max_request_bytes and this client's "
            f"max_message_bytes): send seeds instead of latent vectors, or fewer {what}"
        )


def plan_sample(req: pb.SampleRequest, limits: ServerLimits, info: ModelInfo) -> SamplePlan:
    """Unary when the request and its answer fit the server's per-request and message limits."""
    shape = info.image_shape or (1, 28, 28)
    values = int(np.prod(shape))
    bytes_per_value = 1 if req.encoding in (pb.ENCODING_UINT8, pb.ENCODING_PNG) else 4
    per_image = values * bytes_per_value + (4 * info.latent_dim if req.return_latents else 0)
    fits = max(1, _budget(limits) // per_image)
    max_unary = min(limits.max_images_per_request or req.count, fits, _request_fit(req, limits))
    if req.count <= max_unary:
        return SamplePlan(stream=False, chunk_size=0)
    chunk = req.chunk_size or limits.max_stream_chunk or max_unary
    return SamplePlan(stream=True, chunk_size=max(1, min(chunk, fits)))


def _part_size(req: pb.SampleRequest, limits: ServerLimits) -> int:
    """Images per ``SampleStream`` call: the stream limit, and the request message size."""
    return min(limits.max_images_per_stream or req.count, _request_fit(req, limits))


def split_sample(
    req: pb.SampleRequest, limits: ServerLimits, info: ModelInfo
) -> Iterator[tuple[int, pb.SampleRequest]]:
    """``(offset, request)`` per ``SampleStream`` call; ``req`` itself when one call holds it."""
    size = max(1, _part_size(req, limits))
    if req.count <= size:
        yield 0, req
        return
    source = req.WhichOneof("source")
    count = _checked_count(req, source)
    labels = list(req.labels)
    if len(labels) not in (0, 1, count):
        raise InvalidRequest(f"labels: give one label or exactly count={count}, got {len(labels)}")
    seed = None if source == "latents" else _first_seed(req, count)
    template = _template(req)
    for offset in range(0, count, size):
        yield offset, _slice(req, template, seed, offset, min(size, count - offset), info)


def _template(req: pb.SampleRequest) -> pb.SampleRequest:
    """``req`` without its latents and labels (copied once, then per part)."""
    template = pb.SampleRequest()
    template.CopyFrom(req)
    template.ClearField("latents")
    del template.labels[:]
    return template


def _slice(
    req: pb.SampleRequest,
    template: pb.SampleRequest,
    seed: int | None,
    offset: int,
    n: int,
    info: ModelInfo,
) -> pb.SampleRequest:
    """Images ``[offset, offset + n)`` of ``req`` as a request of their own; ``seed``:
    ``req``'s first seed (None: explicit latents)."""
    labels = req.labels
    row = 4 * req.latents.dim  # bytes of one latent vector
    part = pb.SampleRequest()
    part.CopyFrom(template)
    part.count = n
    if seed is not None:
        part.seed = seed + offset
    else:
        data = req.latents.data[offset * row : (offset + n) * row]
        part.latents.CopyFrom(pb.LatentBatch(count=n, dim=req.latents.dim, data=data))
    if len(labels) == 1:
        part.labels.append(labels[0])
    elif labels:
        part.labels.extend(labels[offset : offset + n])
    elif info.num_classes and offset % info.num_classes:
        # The server's default (image i gets class i % num_classes) counts from the
        # part's start; name the classes the whole request would have given.
        part.labels.extend((offset + i) % info.num_classes for i in range(n))
    return part


class PartFetch:
    """The ``SampleStream`` calls of one part, resumed where a cut stream stopped.

    A stream that fails UNAVAILABLE (the server restarted, or drained for a rolling
    update, while it streamed) is called again for the images still missing: the same
    seeds (the part's, or the one the server reported in the first chunk), latents
    and labels, so the images are the ones the uncut stream would have given. At most
    ``retries`` attempts in a row without a new chunk, ``backoff_s`` doubling up to
    ``max_backoff_s`` between them; other errors are not retried here.
    """

    def __init__(
        self,
        part: pb.SampleRequest,
        offset: int,
        info: ModelInfo,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
    ) -> None:
        self.part, self.offset, self.info = part, offset, info
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.done = 0  # images of the part received
        self._start = 0  # images of the part received before the current call
        self._seed: int | None = int(part.seed) if part.HasField("seed") else None
        self._failures = 0  # failed calls since the last chunk

    def request(self) -> pb.SampleRequest:
        """The next call's request: the part, or what is left of it."""
        self._start = self.done
        if self.done == 0:
            return self.part
        source = self.part.WhichOneof("source")
        count = _checked_count(self.part, source)
        seed = None if source == "latents" else self._seed
        template = _template(self.part)
        return _slice(self.part, template, seed, self.done, count - self.done, self.info)

    def place(self, msg: pb.SampleResponse) -> SampleResult:
        """A chunk of the current call, placed in the whole request."""
        chunk = SampleResult.from_proto(msg)
        if self._seed is None and chunk.seed is not None:
            self._seed = chunk.seed - self._start  # the part's first seed
        self.done = self._start + msg.offset + msg.images.count
        self._failures = 0
        return rebase(chunk, self.offset + self._start)

    def resume_delay(self, exc: grpc.RpcError) -> float:
        """Seconds to wait before resuming after ``exc``; raises its typed error instead
        when the stream is not to be resumed."""
        give_up = exc.code() != grpc.StatusCode.UNAVAILABLE or self._failures >= self.retries
        # (a seed-based stream whose chunks named no seed cannot be resumed exactly)
        if give_up or (
            self.done and self.part.WhichOneof("source") != "latents" and self._seed is None
        ):
            raise from_rpc_error(exc) from exc
        delay = min(self.backoff_s * 2**self._failures, self.max_backoff_s)
        self._failures += 1
        return delay


def _checked_count(req: pb.SampleRequest, source: str | None) -> int:
    if source != "latents":
        return int(req.count)
    if req.count not in (0, req.latents.count):
        raise InvalidRequest(
            f"count: {req.count} differs from latents.count {req.latents.count}; send 0 or the same"
        )
    return int(req.latents.count)


def _first_seed(req: pb.SampleRequest, count: int) -> int:
    # The server's rule for a request without a seed: 63 random bits.
    seed = int(req.seed) if req.HasField("seed") else secrets.randbits(63)
    if seed + count - 1 > MAX_SEED:
        raise InvalidRequest(f"seed: seed + count - 1 must be <= 2**64 - 1, got seed={seed}")
    return seed


def rebase(chunk: SampleResult, offset: int) -> SampleResult:
    """A chunk of the part starting at ``offset``, placed in the whole request."""
    chunk.offset += offset
    if chunk.seed is not None:
        chunk.seed -= offset  # the whole request's first seed, as the proto defines it
    return chunk


class SampleAccumulator:
    """Collects ``SampleStream`` chunks into one ``SampleResult``, with a progress bar.

    Chunks arrive decoded (the protobuf bytes are freed early) and are ordered
    by their ``offset``, not by arrival. Use it as a context manager (closes the bar).
    """

    def __init__(self, count: int, *, progress: bool = False, desc: str = "") -> None:
        self.count = count
        self.received = 0
        self._chunks: list[SampleResult] = []
        self._bar = tqdm(total=count, unit="img", desc=desc, disable=not progress)

    def __enter__(self) -> SampleAccumulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.close()

    def add(self, chunk: SampleResult) -> int:
        """Keep one decoded chunk; returns its number of images."""
        self._chunks.append(chunk)
        self.received += len(chunk.images)
        self._bar.update(len(chunk.images))
        return len(chunk.images)

    def result(self) -> SampleResult:
        if self.received != self.count or not self._chunks:
            raise GanServeError(
                f"stream ended after {self.received} of {self.count} images",
                grpc.StatusCode.DATA_LOSS,
            )
        chunks = sorted(self._chunks, key=lambda c: c.offset)
        first = chunks[0]
        labels = [c.labels for c in chunks if c.labels is not None]
        latents = [c.latents for c in chunks if c.latents is not None]
        return SampleResult(
            model=first.model,
            version=first.version,
            images=np.concatenate([c.images for c in chunks]),
            seed=first.seed,
            labels=np.concatenate(labels) if labels else None,
            latents=np.concatenate(latents) if latents else None,
            png=[f for c in chunks for f in c.png],
        )
