"""Python arguments → protobuf requests, and the unary-or-stream plan for ``sample``.

Shared by the sync and async clients so both validate and encode the same way;
no I/O here. Client-side checks are limited to what the proto cannot express
(types, mutually exclusive arguments); the server validates values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from ganserve.clients.errors import GanServeError, InvalidRequest
from ganserve.clients.results import (
    ModelInfo,
    SampleResult,
    ServerLimits,
    encode_latents,
)
from ganserve.v1 import generator_pb2 as pb

ENCODINGS = {"float32": pb.ENCODING_FLOAT32, "uint8": pb.ENCODING_UINT8, "png": pb.ENCODING_PNG}
METHODS = {"slerp": pb.INTERPOLATION_METHOD_SLERP, "lerp": pb.INTERPOLATION_METHOD_LERP}
# Headroom for protobuf framing and the other fields of a response.
_MESSAGE_SLACK = 0.9

E = TypeVar("E")
# A keyframe / term source: a seed, seeds, or an explicit latent vector.
Source = int | Sequence[int] | Sequence[float] | np.ndarray


def _enum(table: Mapping[str, E], value: str, what: str) -> E:
    try:
        return table[value.lower()]
    except (KeyError, AttributeError):
        raise InvalidRequest(f"{what} must be one of {sorted(table)}, got {value!r}") from None


def sample_request(
    model: str,
    count: int | None,
    *,
    version: str = "",
    seed: int | None = None,
    latents: Any = None,
    truncation: float | None = None,
    labels: Iterable[int] | None = None,
    label: int | None = None,
    encoding: str = "float32",
    return_latents: bool = False,
    chunk_size: int = 0,
) -> pb.SampleRequest:
    """A ``SampleRequest``; ``count`` None means ``len(latents)`` or 1."""
    if seed is not None and latents is not None:
        raise InvalidRequest("give seed or latents, not both")
    if labels is not None and label is not None:
        raise InvalidRequest("give labels (one per image) or label (for all), not both")
    req = pb.SampleRequest(
        model=model,
        version=version,
        encoding=_enum(ENCODINGS, encoding, "encoding"),
        return_latents=return_latents,
        chunk_size=chunk_size,
    )
    if latents is not None:
        req.latents.CopyFrom(encode_latents(np.asarray(latents, dtype=np.float32)))
    elif seed is not None:
        req.seed = int(seed)
    req.count = int(count) if count is not None else (req.latents.count or 1)
    if truncation is not None:
        req.truncation = float(truncation)
    if label is not None:
        req.labels.append(int(label))
    elif labels is not None:
        req.labels.extend(int(x) for x in labels)
    return req


def interpolate_request(
    model: str,
    keyframes: Sequence[Source],
    *,
    labels: Sequence[int | None] | None = None,
    version: str = "",
    steps: int = 16,
    method: str = "slerp",
    truncation: float | None = None,
    encoding: str = "float32",
    return_latents: bool = False,
) -> pb.InterpolateRequest:
    """``keyframes``: seeds (int) or latent vectors; ``labels``: one per keyframe."""
    if labels is not None and len(labels) != len(keyframes):
        raise InvalidRequest(f"{len(labels)} labels for {len(keyframes)} keyframes")
    req = pb.InterpolateRequest(
        model=model,
        version=version,
        steps=steps,
        method=_enum(METHODS, method, "method"),
        encoding=_enum(ENCODINGS, encoding, "encoding"),
        return_latents=return_latents,
    )
    if truncation is not None:
        req.truncation = float(truncation)
    for i, source in enumerate(keyframes):
        frame = req.keyframes.add()
        seeds, vector = _split_source(source, f"keyframes[{i}]")
        if vector is not None:
            frame.latent.values.extend(vector)
        elif len(seeds) == 1:
            frame.seed = seeds[0]
        else:
            raise InvalidRequest(f"keyframes[{i}] must be one seed or one latent vector")
        if labels is not None and labels[i] is not None:
            frame.label = int(labels[i])  # type: ignore[arg-type]
    return req


def arithmetic_request(
    model: str,
    terms: Sequence[tuple[float, Source]],
    *,
    label: int | None = None,
    version: str = "",
    truncation: float | None = None,
    encoding: str = "float32",
    return_term_images: bool = False,
    return_latents: bool = False,
) -> pb.ArithmeticRequest:
    """``terms``: ``(weight, source)``; source = a seed, a list of seeds (their mean
    latent) or a float latent vector (numpy float array or a list with floats)."""
    req = pb.ArithmeticRequest(
        model=model,
        version=version,
        encoding=_enum(ENCODINGS, encoding, "encoding"),
        return_term_images=return_term_images,
        return_latents=return_latents,
    )
    if label is not None:
        req.label = int(label)
    if truncation is not None:
        req.truncation = float(truncation)
    for i, term in enumerate(terms):
        try:
            weight, source = term
        except (TypeError, ValueError):
            raise InvalidRequest(f"terms[{i}] must be a (weight, source) pair") from None
        seeds, vector = _split_source(source, f"terms[{i}]")
        msg = req.terms.add(weight=float(weight))
        if vector is not None:
            msg.latent.values.extend(vector)
        else:
            msg.seeds.seeds.extend(seeds)
    return req


def _split_source(source: Source, where: str) -> tuple[list[int], list[float] | None]:
    """(seeds, None) for integer sources, ([], vector) for float vectors."""
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        return [int(source)], None
    arr = np.asarray(source)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidRequest(f"{where} must be a seed, a list of seeds or a 1-D latent vector")
    if np.issubdtype(arr.dtype, np.integer):
        return [int(s) for s in arr], None
    if np.issubdtype(arr.dtype, np.floating):
        return [], arr.astype(np.float32).tolist()
    raise InvalidRequest(f"{where} has unsupported type {arr.dtype}")


@dataclass(frozen=True)
class SamplePlan:
    """How to fetch a ``sample``: one unary call, or a stream in chunks."""

    stream: bool
    chunk_size: int


def plan_sample(req: pb.SampleRequest, limits: ServerLimits, info: ModelInfo) -> SamplePlan:
    """Unary when the answer fits the server's per-request and message limits."""
    shape = info.image_shape or (1, 28, 28)
    values = int(np.prod(shape))
    bytes_per_value = 1 if req.encoding in (pb.ENCODING_UINT8, pb.ENCODING_PNG) else 4
    per_image = values * bytes_per_value + (4 * info.latent_dim if req.return_latents else 0)
    budget = int(limits.max_message_bytes * _MESSAGE_SLACK) or 1
    fits = max(1, budget // per_image)
    max_unary = min(limits.max_images_per_request or req.count, fits)
    if req.count <= max_unary:
        return SamplePlan(stream=False, chunk_size=0)
    if limits.max_images_per_stream and req.count > limits.max_images_per_stream:
        raise InvalidRequest(
            f"count={req.count} exceeds the server's max_images_per_stream="
            f"{limits.max_images_per_stream}; split it into several calls"
        )
    chunk = req.chunk_size or limits.max_stream_chunk or max_unary
    return SamplePlan(stream=True, chunk_size=max(1, min(chunk, fits)))


class SampleAccumulator:
    """Collects ``SampleStream`` chunks into one ``SampleResult``.

    Chunks arrive decoded (the protobuf bytes are freed early) and are ordered
    by their ``offset``, not by arrival.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0
        self._chunks: list[SampleResult] = []

    def add(self, chunk: SampleResult) -> int:
        """Keep one decoded chunk; returns its number of images."""
        self._chunks.append(chunk)
        self.received += len(chunk.images)
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
