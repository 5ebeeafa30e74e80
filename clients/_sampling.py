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

Response and request sizes are estimated by ``ganserve.contract.sizes``, the
server's own estimate: a ``Sample`` goes unary exactly when the server would take
it, stream chunks are ones it takes, and what it would refuse for size is refused
here before sending, with the server's words.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import grpc
import numpy as np
from tqdm.auto import tqdm

from ganserve.clients.errors import (
    DeadlineExceeded,
    GanServeError,
    InvalidRequest,
    from_rpc_error,
    server_pushback_s,
)
from ganserve.clients.results import ModelInfo, SampleResult, ServerLimits
from ganserve.contract.encodings import Encoding
from ganserve.contract.labels import default_labels, label_count_problem, needs_explicit_labels
from ganserve.contract.limits import MIN_MESSAGE_BYTES
from ganserve.contract.model_format import DEFAULT_IMAGE_SHAPE
from ganserve.contract.sizes import (
    images_per_message,
    latents_per_request,
    response_bytes,
    response_too_large,
    sample_per_image_bytes,
)
from ganserve.seeds import MAX_SEED
from ganserve.v1 import generator_pb2 as pb

# Whose limit a refusal for size names: the client plans with the smaller of the
# server's send limit and its own receive limit (ClientBase._remember_limits).
_LIMIT_NAME = "the max_message_bytes (the smaller of the server's and this client's)"


@dataclass(frozen=True)
class FetchPlan:
    """How to fetch a ``sample``: one unary call, or streams in chunks."""

    stream: bool
    chunk_size: int


def _request_fit(req: pb.SampleRequest, limits: ServerLimits) -> int:
    """Images whose latents and labels fit in one request message (a split may add
    labels the caller did not send)."""
    return latents_per_request(limits.request_bytes, req.latents.dim)  # dim 0 for seeds


# The smallest receive limit a server can have: a request no larger always fits, and
# needs no look at the server's limits.
ALWAYS_FITS_BYTES = MIN_MESSAGE_BYTES


def _image_bytes(req: pb.SampleRequest, info: ModelInfo) -> tuple[Encoding, int]:
    """The request's encoding and the response bytes of one of its images."""
    try:
        encoding = Encoding.from_number(req.encoding)
    except ValueError as exc:
        raise InvalidRequest(f"encoding: {exc}") from None
    per_image = sample_per_image_bytes(
        info.image_shape or DEFAULT_IMAGE_SHAPE,
        encoding,
        info.latent_dim,
        info.num_classes,
        req.return_latents,
    )
    return encoding, per_image


def _too_large(
    req: pb.SampleRequest, n: int, per_image: int, encoding: Encoding, limit: int, hint: str
) -> InvalidRequest:
    size = response_bytes(n, per_image)
    return InvalidRequest(
        response_too_large(n, encoding, req.model, size, limit, hint, _LIMIT_NAME)
    )


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


def plan_sample(req: pb.SampleRequest, limits: ServerLimits, info: ModelInfo) -> FetchPlan:
    """Unary when the request and its answer fit the server's per-request and message
    limits, else streams in chunks that fit; InvalidRequest when not even one image fits
    a message (the server would refuse every chunk)."""
    encoding, per_image = _image_bytes(req, info)
    fits = images_per_message(limits.max_message_bytes, per_image)
    if fits < 1:
        hint = "not even one image fits a message"
        raise _too_large(req, 1, per_image, encoding, limits.max_message_bytes, hint)
    max_unary = min(limits.max_images_per_request or req.count, fits, _request_fit(req, limits))
    if req.count <= max_unary:
        return FetchPlan(stream=False, chunk_size=0)
    chunk = req.chunk_size or limits.max_stream_chunk or max_unary
    return FetchPlan(stream=True, chunk_size=max(1, min(chunk, fits)))


def _check_chunk(req: pb.SampleRequest, limits: ServerLimits, info: ModelInfo) -> None:
    """Refuse, before sending, a ``chunk_size`` whose chunks the server would refuse as
    too large for a message (0: the server's default chunk, which it sizes itself)."""
    if not req.chunk_size:
        return
    encoding, per_image = _image_bytes(req, info)
    # the server's chunk: at most the images of one call (a part, when the request is split)
    n = min(req.chunk_size, req.count or req.latents.count, max(1, _part_size(req, limits)))
    limit = limits.max_message_bytes
    if response_bytes(n, per_image) > limit:
        raise _too_large(req, n, per_image, encoding, limit, "lower chunk_size")


def _part_size(req: pb.SampleRequest, limits: ServerLimits) -> int:
    """Images per ``SampleStream`` call: the stream limit, and the request message size."""
    return min(limits.max_images_per_stream or req.count, _request_fit(req, limits))


def split_sample(
    req: pb.SampleRequest, limits: ServerLimits, info: ModelInfo
) -> Iterator[tuple[int, pb.SampleRequest]]:
    """``(offset, request)`` per ``SampleStream`` call; ``req`` itself when one call holds it.
    InvalidRequest, before any call, for chunks too large for a message."""
    _check_chunk(req, limits, info)
    size = max(1, _part_size(req, limits))
    if req.count <= size:
        yield 0, req
        return
    source = req.WhichOneof("source")
    count = _checked_count(req, source)
    labels = list(req.labels)
    problem = label_count_problem(len(labels), count)
    if problem:
        raise InvalidRequest(problem)
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
    elif needs_explicit_labels(offset, info.num_classes):
        # The default rule counts from the part's start; name the classes the whole
        # request would have given.
        part.labels.extend(default_labels(offset, offset + n, info.num_classes).tolist())
    return part


class PartFetch:
    """The ``SampleStream`` calls of one part, resumed where a cut stream stopped.

    A stream that fails UNAVAILABLE after it delivered images (the server restarted,
    or drained for a rolling update, while it streamed) is called again for the images
    still missing: the same seeds (the part's, or the one the server reported in the
    first chunk), latents and labels, so the images are the ones the uncut stream
    would have given. Only a call that delivered at least one chunk is resumed, with
    one call per cut: after ``backoff_s``, or the server's pushback
    (``grpc-retry-pushback-ms``) when it asks for longer, the client waits up to
    ``reconnect_s`` for a server to answer again (a ``ListModels`` held by gRPC's
    wait_for_ready, so no attempt fails while none is connected) and calls once, with
    gRPC's own retries. A call that fails before its first chunk has had those retries
    (under the channel's token bucket); resuming it as well would multiply the
    attempts, so it ends the stream. A negative pushback is not resumed, as in gRPC's
    own retries, nor is anything with ``retries`` 0. Other errors are not retried here.
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
        self.count = _checked_count(part, part.WhichOneof("source"))
        self.done = 0  # images of the part received
        self._start = 0  # images of the part received before the current call
        self._seed: int | None = int(part.seed) if part.HasField("seed") else None

    @property
    def reconnect_s(self) -> float:
        """How long a resume waits for a server to answer again: ``retries`` times
        the longest backoff, so a restart of a few seconds is ridden out with one
        resume call rather than one per attempt."""
        return self.retries * self.max_backoff_s

    def request(self) -> pb.SampleRequest:
        """The next call's request: the part, or what is left of it."""
        self._start = self.done
        if self.done == 0:
            return self.part
        source = self.part.WhichOneof("source")
        seed = None if source == "latents" else self._seed
        template = _template(self.part)
        return _slice(self.part, template, seed, self.done, self.count - self.done, self.info)

    def place(self, msg: pb.SampleResponse) -> SampleResult:
        """A chunk of the current call, placed in the whole request."""
        chunk = SampleResult.from_proto(msg)
        if self._seed is None and chunk.seed is not None:
            self._seed = chunk.seed - self._start  # the part's first seed
        self.done = self._start + msg.offset + msg.images.count
        return rebase(chunk, self.offset + self._start)

    def check_complete(self) -> None:
        """After the call ended OK: DATA_LOSS unless every image of the part arrived
        (``sample`` refuses a short stream the same way; a caller of ``sample_stream``
        would otherwise take a truncated answer for the whole)."""
        if self.done != self.count:
            where = f" of the part at image {self.offset}" if self.offset else ""
            raise GanServeError(
                f"stream ended after {self.done} of {self.count} images{where}",
                grpc.StatusCode.DATA_LOSS,
            )

    def settled(self, reply: pb.ListModelsResponse) -> bool:
        """Whether a restarted server's ``ListModels`` says the resume can be made: the
        part's model is listed READY or FAILED. A server answers while it still loads
        its models (some not listed yet, others LOADING); resuming then would fail.
        ``ListModels`` shows each model's default version only; a pinned version is
        settled with it, since a server's first load makes every version it loaded
        READY (or FAILED) at once."""
        states = (pb.LOAD_STATE_READY, pb.LOAD_STATE_FAILED)
        return any(m.name == self.part.model and m.state in states for m in reply.models)

    def resume_delay(self, exc: grpc.RpcError) -> float:
        """Seconds to wait before resuming after ``exc``; raises its typed error instead
        when the stream is not to be resumed."""
        pushback = server_pushback_s(exc)
        progressed = self.done > self._start  # this call delivered a chunk before the cut
        give_up = (
            exc.code() != grpc.StatusCode.UNAVAILABLE
            or not self.retries
            or not progressed
            or (pushback is not None and pushback < 0)
        )
        # (a seed-based stream whose chunks named no seed cannot be resumed exactly)
        if give_up or (self.part.WhichOneof("source") != "latents" and self._seed is None):
            raise from_rpc_error(exc) from exc
        delay = min(self.backoff_s, self.max_backoff_s)
        return delay if pushback is None else max(delay, pushback)


# How often a resume asks a restarted server whether the stream's model is loaded: the
# first wait, then 1.5 x longer each time up to the last (many cut streams would
# otherwise ask a loading server ten times a second each).
RESUME_POLL_S = (0.1, 1.0)


def resume_polls() -> Iterator[float]:
    """The waits between a resume's ``ListModels`` calls, with 10 % jitter."""
    wait, longest = RESUME_POLL_S
    while True:
        yield wait * random.uniform(0.9, 1.1)
        wait = min(wait * 1.5, longest)


class Deadline:
    """One deadline for a whole streamed request (every part, every resume): gRPC's
    deadline is per call, so each call gets what is left. ``None``: no deadline."""

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        """Seconds left; DeadlineExceeded once none are (gRPC may still start a call
        whose deadline is now, and a chunk may arrive before it notices)."""
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("Deadline Exceeded")  # gRPC's own words for it
        return left

    def wait(self, delay: float) -> float:
        """``delay``, cut to what is left: no sleep past the deadline."""
        left = self.left()
        return delay if left is None else min(delay, left)


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

    Each chunk is copied at its ``offset`` (not its arrival order) into arrays of the
    whole count, made at the first chunk: the memory is the result's and one chunk's,
    where keeping the chunks and concatenating them at the end took twice the result.
    Use it as a context manager (closes the bar).
    """

    def __init__(self, count: int, *, progress: bool = False, desc: str = "") -> None:
        self.count = count
        self.received = 0
        self._head: tuple[int, str, str, int | None] | None = None  # offset, model, version, seed
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._latents: np.ndarray | None = None
        self._png: list[tuple[int, list[bytes]]] = []
        self._covered = np.zeros(count, dtype=bool)  # rows filled: np.empty holds garbage
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
        """Copy one decoded chunk into place; returns its number of images."""
        n = len(chunk.images)
        if chunk.offset < 0 or chunk.offset + n > self.count:
            raise GanServeError(
                f"a chunk of images {chunk.offset}..{chunk.offset + n - 1} is outside "
                f"the {self.count} asked for",
                grpc.StatusCode.DATA_LOSS,
            )
        if self._covered[chunk.offset : chunk.offset + n].any():
            raise GanServeError(
                f"a chunk of images {chunk.offset}..{chunk.offset + n - 1} repeats images "
                "already received",
                grpc.StatusCode.DATA_LOSS,
            )
        self._covered[chunk.offset : chunk.offset + n] = True
        if self._head is None or chunk.offset < self._head[0]:
            self._head = (chunk.offset, chunk.model, chunk.version, chunk.seed)
        self._images = self._place(self._images, chunk.images, chunk.offset)
        if chunk.labels is not None:
            self._labels = self._place(self._labels, chunk.labels, chunk.offset)
        if chunk.latents is not None:
            self._latents = self._place(self._latents, chunk.latents, chunk.offset)
        if chunk.png:
            self._png.append((chunk.offset, chunk.png))
        self.received += n
        self._bar.update(n)
        return n

    def _place(self, whole: np.ndarray | None, rows: np.ndarray, offset: int) -> np.ndarray:
        if whole is None:
            whole = np.empty((self.count, *rows.shape[1:]), dtype=rows.dtype)
        whole[offset : offset + len(rows)] = rows
        return whole

    def result(self) -> SampleResult:
        if not self._covered.all() or self._head is None or self._images is None:
            raise GanServeError(
                f"stream ended after {self.received} of {self.count} images",
                grpc.StatusCode.DATA_LOSS,
            )
        _, model, version, seed = self._head
        return SampleResult(
            model=model,
            version=version,
            images=self._images,
            seed=seed,
            labels=self._labels,
            latents=self._latents,
            png=[f for _, files in sorted(self._png, key=lambda p: p[0]) for f in files],
        )
