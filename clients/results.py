"""Results of the client calls, decoded from protobuf into numpy.

Images come back as ``uint8`` or ``float32`` arrays of shape ``(N, H, W)`` for
grayscale models (the MNIST family) and ``(N, H, W, C)`` otherwise — channels
last, as PIL and matplotlib expect. PNG-encoded responses are decoded with
pillow (the raw files are kept in ``png``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from ganserve.clients import images as _images
from ganserve.clients.errors import GanServeError, InvalidRequest
from ganserve.contract.encodings import BY_NUMBER, Encoding
from ganserve.contract.load_state import LoadState
from ganserve.contract.model_format import ModelKind
from ganserve.v1 import generator_pb2 as pb

__all__ = [
    "ArithmeticResult",
    "InterpolateResult",
    "ModelInfo",
    "RuntimePlan",
    "SampleResult",
    "ServerLimits",
]

# proto number -> the strings of ModelInfo.kind / .state (the client's are lower case)
_KINDS = {kind.number: kind.value for kind in ModelKind}
_STATES = {state.number: state.value.lower() for state in LoadState}


@dataclass(frozen=True)
class ServerLimits:
    """The server's request limits (``ListModelsResponse.limits``)."""

    max_images_per_request: int
    max_images_per_stream: int
    max_stream_chunk: int
    max_message_bytes: int  # largest response
    max_request_bytes: int = 0  # largest request; 0: max_message_bytes (older servers)

    @classmethod
    def from_proto(cls, msg: pb.ServerLimits) -> ServerLimits:
        return cls(
            msg.max_images_per_request,
            msg.max_images_per_stream,
            msg.max_stream_chunk,
            msg.max_message_bytes,
            msg.max_request_bytes,
        )

    @property
    def request_bytes(self) -> int:
        """The largest request message the server takes."""
        return self.max_request_bytes or self.max_message_bytes


@dataclass(frozen=True)
class RuntimePlan:
    """How the server runs a loaded version (``ModelInfo.runtime``): the graph, the
    batch sizes on one ORT thread, and the measured seconds per batch behind them."""

    graph: str  # "original" | "rewritten"
    single_thread_max_batch: int
    threads: int
    source: str  # "measured" | "saved" | "defaults" | "pinned"
    tuning_seconds: float
    costs: tuple[tuple[int, str, int, float], ...]  # (batch size, graph, threads, seconds)

    @classmethod
    def from_proto(cls, msg: pb.RuntimePlan) -> RuntimePlan:
        return cls(
            graph=msg.graph,
            single_thread_max_batch=msg.single_thread_max_batch,
            threads=msg.threads,
            source=msg.source,
            tuning_seconds=msg.tuning_seconds,
            costs=tuple((c.batch_size, c.graph, c.threads, c.seconds) for c in msg.costs),
        )


@dataclass(frozen=True)
class ModelInfo:
    """One model version: what it is, how well it does, whether it serves."""

    name: str
    version: str
    versions: tuple[str, ...]
    kind: str  # "unconditional" | "conditional" | "unspecified"
    latent_dim: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]  # (C, H, W)
    value_range: tuple[float, float]
    dataset: str
    architecture: str
    quality: dict[str, float]
    metadata: dict[str, str]
    state: str  # "loading" | "ready" | "failed" | "unspecified"
    state_message: str
    device: str
    runtime: RuntimePlan | None = None  # READY versions

    @property
    def conditional(self) -> bool:
        return self.kind == ModelKind.CONDITIONAL

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_proto(cls, msg: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=msg.name,
            version=msg.version,
            versions=tuple(msg.versions),
            kind=_KINDS.get(msg.kind, "unspecified"),
            latent_dim=msg.latent_dim,
            class_names=tuple(msg.class_names),
            image_shape=tuple(msg.image_shape),
            value_range=(msg.value_min, msg.value_max),
            dataset=msg.dataset,
            architecture=msg.architecture,
            quality=dict(msg.quality),
            metadata=dict(msg.metadata),
            state=_STATES.get(msg.state, "unspecified"),
            state_message=msg.state_message,
            device=msg.device,
            runtime=RuntimePlan.from_proto(msg.runtime) if msg.HasField("runtime") else None,
        )


class _HasImages:
    images: np.ndarray

    def to_pil(self) -> list:
        """One ``PIL.Image`` per image."""
        return [_images.to_pil(img) for img in self.images]

    def save_grid(self, path: str | os.PathLike[str], **kwargs: object) -> None:
        """Save all images as one PNG grid (see ``images.save_grid``)."""
        _images.save_grid(self.images, path, **kwargs)  # type: ignore[arg-type]


@dataclass
class SampleResult(_HasImages):
    """``images``: ``(N, H, W)``; ``seed``: first seed (image i used ``seed + i``),
    ``None`` for explicit latents; ``labels``: ``(N,)`` int or ``None`` for
    unconditional models; ``latents``: ``(N, latent_dim)`` if requested."""

    model: str
    version: str
    images: np.ndarray
    seed: int | None
    labels: np.ndarray | None
    latents: np.ndarray | None = None
    offset: int = 0  # SampleStream chunks: index of the first image in the request
    png: list[bytes] = field(default_factory=list)

    @property
    def seeds(self) -> np.ndarray | None:
        """The seed of each image (``seed + offset + i``), ``None`` for explicit latents."""
        if self.seed is None:
            return None
        return np.arange(len(self.images), dtype=np.uint64) + np.uint64(self.seed + self.offset)

    @classmethod
    def from_proto(cls, msg: pb.SampleResponse) -> SampleResult:
        return cls(
            model=msg.model,
            version=msg.version,
            images=decode_images(msg.images),
            seed=msg.seed if msg.HasField("seed") else None,
            labels=np.asarray(msg.labels, dtype=np.int32) if len(msg.labels) else None,
            latents=decode_latents(msg.latents) if msg.HasField("latents") else None,
            offset=msg.offset,
            png=list(msg.images.png),
        )


@dataclass
class InterpolateResult(_HasImages):
    """``images``: ``(steps, H, W)`` frames; ``class_weights``: ``(steps, num_classes)``
    blend of the class input per frame (conditional models)."""

    model: str
    version: str
    images: np.ndarray
    latents: np.ndarray | None = None
    class_weights: np.ndarray | None = None

    def save_gif(self, path: str | os.PathLike[str], **kwargs: object) -> None:
        """Save the frames as an animated GIF (see ``images.save_gif``)."""
        _images.save_gif(self.images, path, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_proto(cls, msg: pb.InterpolateResponse) -> InterpolateResult:
        images = decode_images(msg.images)
        weights = None
        if len(msg.class_weights):
            # (steps, num_classes) float32 blend weights
            weights = np.asarray(msg.class_weights, dtype=np.float32).reshape(len(images), -1)
        return cls(
            model=msg.model,
            version=msg.version,
            images=images,
            latents=decode_latents(msg.latents) if msg.HasField("latents") else None,
            class_weights=weights,
        )


@dataclass
class ArithmeticResult:
    """``image``: ``(H, W)`` result; ``term_images``: ``(K, H, W)`` one per term if
    requested; ``latents``: ``(1 + K, dim)`` result then terms, if requested."""

    model: str
    version: str
    image: np.ndarray
    term_images: np.ndarray | None = None
    latents: np.ndarray | None = None

    @classmethod
    def from_proto(cls, msg: pb.ArithmeticResponse) -> ArithmeticResult:
        terms = decode_images(msg.term_images) if msg.term_images.count else None
        return cls(
            model=msg.model,
            version=msg.version,
            image=decode_images(msg.result)[0],
            term_images=terms,
            latents=decode_latents(msg.latents) if msg.HasField("latents") else None,
        )


def decode_images(msg: pb.Images) -> np.ndarray:
    """``Images`` → ``(N, H, W)`` (C=1) or ``(N, H, W, C)``; float32 or uint8."""
    n = msg.count
    encoding = BY_NUMBER.get(msg.encoding)
    if encoding is None:
        raise _malformed(f"unknown encoding {msg.encoding}")
    if encoding is Encoding.PNG:
        if len(msg.png) != n:
            raise _malformed(f"{len(msg.png)} PNG files for count={n}")
        return _decode_pngs(msg.png, tuple(msg.shape))
    if len(msg.shape) != 3:
        raise _malformed(f"image shape {list(msg.shape)} is not (C, H, W)")
    dtype = encoding.raw_dtype
    assert dtype is not None  # every encoding but PNG is a raw tensor
    c, h, w = msg.shape
    expected = n * c * h * w * dtype.itemsize
    if len(msg.data) != expected:
        raise _malformed(f"{len(msg.data)} image bytes, expected {expected}")
    chw = np.frombuffer(msg.data, dtype=dtype).reshape(n, c, h, w)  # (N, C, H, W)
    out = chw[:, 0] if c == 1 else chw.transpose(0, 2, 3, 1)  # (N, H, W) | (N, H, W, C)
    return out.astype(dtype.newbyteorder("="), copy=True)  # writable, native order


def _decode_pngs(files: Sequence[bytes], shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    arrays = [np.asarray(Image.open(io.BytesIO(f))) for f in files]
    if not arrays:
        c, h, w = shape if len(shape) == 3 else (1, 0, 0)
        return np.zeros((0, h, w) if c == 1 else (0, h, w, c), dtype=np.uint8)
    return np.stack(arrays).astype(np.uint8, copy=False)


def decode_latents(msg: pb.LatentBatch) -> np.ndarray:
    """``LatentBatch`` → float32 ``(count, dim)``."""
    expected = msg.count * msg.dim * 4
    if len(msg.data) != expected:
        raise _malformed(f"{len(msg.data)} latent bytes, expected {expected}")
    return np.frombuffer(msg.data, dtype="<f4").reshape(msg.count, msg.dim).astype(np.float32)


def encode_latents(latents: np.ndarray) -> pb.LatentBatch:
    """float ``(count, dim)`` → ``LatentBatch`` (little-endian float32)."""
    arr = np.ascontiguousarray(latents, dtype="<f4")
    if arr.ndim != 2:
        raise InvalidRequest(f"latents must be 2-D (count, dim), got shape {arr.shape}")
    return pb.LatentBatch(count=arr.shape[0], dim=arr.shape[1], data=arr.tobytes())


def _malformed(what: str) -> GanServeError:
    return GanServeError(f"malformed response from the server: {what}", grpc.StatusCode.INTERNAL)
