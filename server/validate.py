"""Request validation and latent planning: proto request -> plain arrays and labels.

The edge of the server. Every user mistake becomes an ``InvalidArgument`` whose message
starts with the offending field (``"keyframes[1].latent: ..."``). A request over a
server limit is INVALID_ARGUMENT too, naming the field and the limit (and SampleStream
where that helps): it is a property of the request, so clients must not retry it;
RESOURCE_EXHAUSTED is kept for transient overload (a full queue), which clients retry. The plans
hold numpy arrays only, so the service can feed them to the core chunk by chunk.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from ganserve.seeds import MAX_SEED, MIN_TRUNCATION, latent_from_seed, latents_from_seeds
from ganserve.v1 import generator_pb2 as pb

from .errors import InvalidArgument
from .latent import blend_path, combine, interpolate_path, one_hot
from .repository import ModelSpec

__all__ = [
    "ArithmeticPlan",
    "InterpolatePlan",
    "Limits",
    "SamplePlan",
    "plan_arithmetic",
    "plan_interpolate",
    "plan_sample",
]

_ENCODINGS: dict[int, str] = {
    pb.ENCODING_UNSPECIFIED: "float32",
    pb.ENCODING_FLOAT32: "float32",
    pb.ENCODING_UINT8: "uint8",
    pb.ENCODING_PNG: "png",
}
_METHODS: dict[int, str] = {
    pb.INTERPOLATION_METHOD_UNSPECIFIED: "slerp",
    pb.INTERPOLATION_METHOD_LERP: "lerp",
    pb.INTERPOLATION_METHOD_SLERP: "slerp",
}
_LE_FLOAT32 = np.dtype("<f4")


@dataclass(frozen=True)
class Limits:
    """The server limits a request is checked against (reported by ListModels)."""

    max_images_per_request: int = 4096
    max_images_per_stream: int = 1_000_000
    stream_chunk_default: int = 256
    stream_chunk_max: int = 4096
    max_message_bytes: int = 64 * 1024 * 1024  # send limit
    max_request_bytes: int = 16 * 1024 * 1024  # receive limit


@dataclass
class SamplePlan:
    """A validated Sample / SampleStream request; latents are made per chunk."""

    count: int
    seed: int | None  # first seed, or None with explicit latents
    explicit: np.ndarray | None  # (count, D) float32 client latents
    truncation: float | None
    labels: np.ndarray | None  # (1,) or (count,) int64; None: i % C (conditional only)
    num_classes: int  # 0: unconditional
    latent_dim: int
    encoding: str
    return_latents: bool
    chunk_size: int  # SampleStream images per message

    def z(self, start: int, stop: int) -> np.ndarray:
        """Latents of images [start, stop): float32 (stop - start, D)."""
        if self.explicit is not None:
            return self.explicit[start:stop]
        assert self.seed is not None
        return latents_from_seeds(self.seed + start, stop - start, self.latent_dim, self.truncation)

    def image_labels(self, start: int, stop: int) -> np.ndarray | None:
        """Class of images [start, stop): int64 (stop - start,), None if unconditional."""
        if not self.num_classes:
            return None
        if self.labels is None:
            return np.arange(start, stop, dtype=np.int64) % self.num_classes
        if self.labels.size == 1:
            return np.full(stop - start, self.labels[0], dtype=np.int64)
        return self.labels[start:stop]


@dataclass
class InterpolatePlan:
    z: np.ndarray  # (steps, D) float32
    y: np.ndarray | None  # (steps, C) float32 class blend, conditional only
    encoding: str
    return_latents: bool


@dataclass
class ArithmeticPlan:
    latents: np.ndarray  # (1 + T, D) float32: the result, then each (unweighted) term
    n_images: int  # 1, or 1 + T with return_term_images: generate latents[:n_images]
    y: np.ndarray | None  # (n_images, C) float32, conditional only
    encoding: str
    return_latents: bool


# ------------------------------------------------------------------ field checks


def _encoding(value: int) -> str:
    try:
        return _ENCODINGS[value]
    except KeyError:
        raise InvalidArgument(
            f"encoding: unknown value {value}; use FLOAT32 (1), UINT8 (2) or PNG (3)"
        ) from None


def _truncation(req: Any) -> float | None:
    if not req.HasField("truncation"):
        return None
    psi = float(req.truncation)
    # The floor bounds the redraw loop of the seed rule (see ganserve.seeds).
    if not (math.isfinite(psi) and psi >= MIN_TRUNCATION):
        raise InvalidArgument(f"truncation: must be a finite number >= {MIN_TRUNCATION}, got {psi}")
    return psi


def _check_label(field: str, label: int, spec: ModelSpec) -> int:
    if not spec.num_classes:
        raise InvalidArgument(
            f"{field}: model {spec.name} is unconditional and takes no label; remove it"
        )
    if not 0 <= label < spec.num_classes:
        raise InvalidArgument(
            f"{field}: {label} is out of range [0, {spec.num_classes - 1}] for {spec.name}"
        )
    return label


def _require_label(field: str, req: Any, spec: ModelSpec) -> int | None:
    """The optional ``label`` field: required on conditional models, absent otherwise."""
    if req.HasField("label"):
        return _check_label(field, int(req.label), spec)
    if spec.num_classes:
        raise InvalidArgument(
            f"{field}: model {spec.name} is conditional: give a class in [0, "
            f"{spec.num_classes - 1}]"
        )
    return None


def _finite_rows(field: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise InvalidArgument(f"{field}: contains NaN or infinity; all values must be finite")
    return values


def _representable(field: str, values: np.ndarray, what: str) -> np.ndarray:
    """``values`` computed from finite inputs, which may still have overflowed float32."""
    if not np.isfinite(values).all():
        raise InvalidArgument(
            f"{field}: {what} overflows float32 (|value| > 3.4e38); use smaller values"
        )
    return values


def _latent_vector(field: str, vec: pb.LatentVector, dim: int) -> np.ndarray:
    """A LatentVector as float32 (D,)."""
    if len(vec.values) != dim:
        raise InvalidArgument(f"{field}: has {len(vec.values)} values, the model needs {dim}")
    return _finite_rows(field, np.asarray(vec.values, dtype=np.float32))


def _seed_range(field: str, seed: int, count: int) -> None:
    if seed + count - 1 > MAX_SEED:
        raise InvalidArgument(f"{field}: seed + count - 1 must be <= 2**64 - 1, got seed={seed}")


def _over_limit(field: str, value: int, limit: int, hint: str = "") -> None:
    if value > limit:
        raise InvalidArgument(f"{field}: {value} is over the server's limit of {limit}{hint}")


# ------------------------------------------------------------------------ plans


def plan_sample(
    req: pb.SampleRequest, spec: ModelSpec, limits: Limits, *, streaming: bool
) -> SamplePlan:
    """Validate a Sample / SampleStream request against the model and the limits."""
    limit = limits.max_images_per_stream if streaming else limits.max_images_per_request
    hint = "" if streaming else "; use SampleStream for more images"
    source = req.WhichOneof("source")
    explicit = None
    seed: int | None = None
    count = int(req.count)
    if source == "latents":
        lat = req.latents
        if lat.count < 1:
            raise InvalidArgument("latents.count: must be >= 1")
        if count not in (0, lat.count):
            raise InvalidArgument(
                f"count: {count} differs from latents.count {lat.count}; send 0 or the same"
            )
        count = int(lat.count)
        _over_limit("latents.count", count, limit, hint)
        if lat.dim != spec.latent_dim:
            raise InvalidArgument(
                f"latents.dim: {lat.dim}, but model {spec.name} has latent_dim {spec.latent_dim}"
            )
        expected = count * spec.latent_dim * 4
        if len(lat.data) != expected:
            raise InvalidArgument(
                f"latents.data: {len(lat.data)} bytes, expected count * dim * 4 = {expected}"
            )
        raw = np.frombuffer(lat.data, dtype=_LE_FLOAT32).reshape(count, spec.latent_dim)
        explicit = _finite_rows("latents.data", raw.astype(np.float32, copy=False))
    else:
        if count < 1:
            raise InvalidArgument(f"count: must be >= 1, got {count}")
        _over_limit("count", count, limit, hint)
        # 63 random bits leave room for seed + count - 1 below 2**64.
        seed = int(req.seed) if source == "seed" else secrets.randbits(63)
        _seed_range("seed", seed, count)
    labels = None
    if req.labels:
        _check_label("labels", int(req.labels[0]), spec)  # unconditional models: no labels
        if len(req.labels) not in (1, count):
            raise InvalidArgument(
                f"labels: give one label or exactly count={count}, got {len(req.labels)}"
            )
        labels = np.asarray(req.labels, dtype=np.int64)
        bad = labels[(labels < 0) | (labels >= spec.num_classes)]
        if bad.size:
            _check_label("labels", int(bad[0]), spec)
    chunk = int(req.chunk_size) or limits.stream_chunk_default
    if streaming and chunk > limits.stream_chunk_max:
        raise InvalidArgument(
            f"chunk_size: {chunk} is over the server's max_stream_chunk {limits.stream_chunk_max}"
        )
    return SamplePlan(
        count=count,
        seed=seed,
        explicit=explicit,
        truncation=_truncation(req),
        labels=labels,
        num_classes=spec.num_classes,
        latent_dim=spec.latent_dim,
        encoding=_encoding(req.encoding),
        return_latents=req.return_latents,
        chunk_size=min(chunk, count),
    )


def plan_interpolate(
    req: pb.InterpolateRequest, spec: ModelSpec, limits: Limits
) -> InterpolatePlan:
    """Frames along the keyframe path (and the class blend on conditional models)."""
    encoding = _encoding(req.encoding)
    if req.method not in _METHODS:
        raise InvalidArgument(f"method: unknown value {req.method}; use LERP (1) or SLERP (2)")
    psi = _truncation(req)
    n_keys = len(req.keyframes)
    if n_keys < 2:
        raise InvalidArgument(f"keyframes: need at least 2, got {n_keys}")
    steps = int(req.steps)
    if steps < 2:
        raise InvalidArgument(f"steps: must be >= 2, got {steps}")
    _over_limit("steps", steps, limits.max_images_per_request)
    if n_keys > steps:
        raise InvalidArgument(f"steps: {steps} frames cannot pass through {n_keys} keyframes")
    keys = np.empty((n_keys, spec.latent_dim), dtype=np.float32)  # (K, D)
    labels = []
    for i, key in enumerate(req.keyframes):
        field = f"keyframes[{i}]"
        source = key.WhichOneof("source")
        if source == "seed":
            keys[i] = latent_from_seed(int(key.seed), spec.latent_dim, psi)
        elif source == "latent":
            keys[i] = _latent_vector(f"{field}.latent", key.latent, spec.latent_dim)
        else:
            raise InvalidArgument(f"{field}: set a seed or a latent")
        label = _require_label(f"{field}.label", key, spec)
        if label is not None:
            labels.append(label)
    y = blend_path(one_hot(labels, spec.num_classes), steps) if spec.num_classes else None
    return InterpolatePlan(
        # SLERP rotates as it rescales: one entry can outgrow float32 between keyframes
        z=_representable(
            "keyframes", interpolate_path(keys, steps, _METHODS[req.method]), "the path"
        ),
        y=y,
        encoding=encoding,
        return_latents=req.return_latents,
    )


def plan_arithmetic(req: pb.ArithmeticRequest, spec: ModelSpec, limits: Limits) -> ArithmeticPlan:
    """The weighted sum of the terms, followed by each term's own latent."""
    encoding = _encoding(req.encoding)
    psi = _truncation(req)
    label = _require_label("label", req, spec)
    n_terms = len(req.terms)
    if n_terms < 1:
        raise InvalidArgument("terms: need at least one term")
    if req.return_term_images:  # one image per term and the result's
        hint = " (return_term_images: one image per term plus the result)"
        _over_limit("terms", n_terms, limits.max_images_per_request - 1, hint)
    else:
        _over_limit("terms", n_terms, limits.max_images_per_request)
    n_seeds = sum(len(t.seeds.seeds) for t in req.terms)
    _over_limit("terms[].seeds.seeds (total)", n_seeds, limits.max_images_per_request)
    weights = np.empty(n_terms, dtype=np.float64)
    terms = np.empty((n_terms, spec.latent_dim), dtype=np.float32)  # (T, D)
    for i, term in enumerate(req.terms):
        field = f"terms[{i}]"
        if not math.isfinite(term.weight):
            raise InvalidArgument(f"{field}.weight: must be finite, got {term.weight}")
        weights[i] = term.weight
        source = term.WhichOneof("source")
        if source == "latent":
            terms[i] = _latent_vector(f"{field}.latent", term.latent, spec.latent_dim)
        elif source == "seeds" and term.seeds.seeds:
            seeds = term.seeds.seeds
            terms[i] = np.mean([latent_from_seed(s, spec.latent_dim, psi) for s in seeds], axis=0)
        elif source == "seeds":
            raise InvalidArgument(f"{field}.seeds.seeds: give at least one seed")
        else:
            raise InvalidArgument(f"{field}: set a latent or seeds")
    result = combine(weights, terms)
    _representable("terms", result, "the weighted sum")  # e.g. weight 3e38 times a latent
    latents = np.concatenate([result[None, :], terms])  # (1 + T, D)
    n_images = latents.shape[0] if req.return_term_images else 1
    y = None
    if label is not None:
        y = one_hot(np.full(n_images, label), spec.num_classes)  # (n_images, C)
    return ArithmeticPlan(
        latents=latents,
        n_images=n_images,
        y=y,
        encoding=encoding,
        return_latents=req.return_latents,
    )
