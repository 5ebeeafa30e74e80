"""Checked requests as plans: proto request -> plain arrays and labels.

The plans hold numpy arrays only, so the service can feed them to the core chunk by
chunk; field checks and their messages are ``validate.py``'s.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from ganserve.contract.encodings import Encoding
from ganserve.contract.labels import image_labels
from ganserve.contract.limits import Limits
from ganserve.seeds import latent_from_seed, latents_from_seeds
from ganserve.v1 import generator_pb2 as pb

from .errors import InvalidArgument
from .latent import blend_path, combine, interpolate_path, one_hot
from .spec import ModelSpec
from .validate import (
    check_limit,
    check_seed_range,
    encoding_field,
    latent_batch,
    latent_vector,
    method_field,
    representable,
    require_label,
    sample_labels,
    truncation_field,
)

__all__ = [
    "ArithmeticPlan",
    "InterpolatePlan",
    "SamplePlan",
    "plan_arithmetic",
    "plan_interpolate",
    "plan_sample",
]


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
    encoding: Encoding
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
        return image_labels(self.labels, start, stop, self.num_classes)


@dataclass
class InterpolatePlan:
    z: np.ndarray  # (steps, D) float32
    y: np.ndarray | None  # (steps, C) float32 class blend, conditional only
    encoding: Encoding
    return_latents: bool


@dataclass
class ArithmeticPlan:
    latents: np.ndarray  # (1 + T, D) float32: the result, then each (unweighted) term
    n_images: int  # 1, or 1 + T with return_term_images: generate latents[:n_images]
    y: np.ndarray | None  # (n_images, C) float32, conditional only
    encoding: Encoding
    return_latents: bool


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
        check_limit("latents.count", count, limit, hint)
        explicit = latent_batch(lat, count, spec)
    else:
        if count < 1:
            raise InvalidArgument(f"count: must be >= 1, got {count}")
        check_limit("count", count, limit, hint)
        # 63 random bits leave room for seed + count - 1 below 2**64.
        seed = int(req.seed) if source == "seed" else secrets.randbits(63)
        check_seed_range("seed", seed, count)
    labels = sample_labels(req.labels, count, spec)
    chunk = int(req.chunk_size) or limits.stream_chunk_default
    if streaming and chunk > limits.stream_chunk_max:
        raise InvalidArgument(
            f"chunk_size: {chunk} is over the server's max_stream_chunk {limits.stream_chunk_max}"
        )
    return SamplePlan(
        count=count,
        seed=seed,
        explicit=explicit,
        truncation=truncation_field(req),
        labels=labels,
        num_classes=spec.num_classes,
        latent_dim=spec.latent_dim,
        encoding=encoding_field(req.encoding),
        return_latents=req.return_latents,
        chunk_size=min(chunk, count),
    )


def plan_interpolate(
    req: pb.InterpolateRequest, spec: ModelSpec, limits: Limits
) -> InterpolatePlan:
    """Frames along the keyframe path (and the class blend on conditional models)."""
    encoding = encoding_field(req.encoding)
    method = method_field(req.method)
    psi = truncation_field(req)
    n_keys = len(req.keyframes)
    if n_keys < 2:
        raise InvalidArgument(f"keyframes: need at least 2, got {n_keys}")
    steps = int(req.steps)
    if steps < 2:
        raise InvalidArgument(f"steps: must be >= 2, got {steps}")
    check_limit("steps", steps, limits.max_images_per_request)
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
            keys[i] = latent_vector(f"{field}.latent", key.latent, spec.latent_dim)
        else:
            raise InvalidArgument(f"{field}: set a seed or a latent")
        label = require_label(f"{field}.label", key, spec)
        if label is not None:
            labels.append(label)
    y = blend_path(one_hot(labels, spec.num_classes), steps) if spec.num_classes else None
    return InterpolatePlan(
        # SLERP rotates as it rescales: one entry can outgrow float32 between keyframes
        z=representable("keyframes", interpolate_path(keys, steps, method), "the path"),
        y=y,
        encoding=encoding,
        return_latents=req.return_latents,
    )


def plan_arithmetic(req: pb.ArithmeticRequest, spec: ModelSpec, limits: Limits) -> ArithmeticPlan:
    """The weighted sum of the terms, followed by each term's own latent."""
    encoding = encoding_field(req.encoding)
    psi = truncation_field(req)
    label = require_label("label", req, spec)
    n_terms = len(req.terms)
    if n_terms < 1:
        raise InvalidArgument("terms: need at least one term")
    if req.return_term_images:  # one image per term and the result's
        hint = " (return_term_images: one image per term plus the result)"
        check_limit("terms", n_terms, limits.max_images_per_request - 1, hint)
    else:
        check_limit("terms", n_terms, limits.max_images_per_request)
    n_seeds = sum(len(t.seeds.seeds) for t in req.terms)
    check_limit("terms[].seeds.seeds (total)", n_seeds, limits.max_images_per_request)
    weights = np.empty(n_terms, dtype=np.float64)
    terms = np.empty((n_terms, spec.latent_dim), dtype=np.float32)  # (T, D)
    for i, term in enumerate(req.terms):
        field = f"terms[{i}]"
        if not math.isfinite(term.weight):
            raise InvalidArgument(f"{field}.weight: must be finite, got {term.weight}")
        weights[i] = term.weight
        source = term.WhichOneof("source")
        if source == "latent":
            terms[i] = latent_vector(f"{field}.latent", term.latent, spec.latent_dim)
        elif source == "seeds" and term.seeds.seeds:
            seeds = term.seeds.seeds
            terms[i] = np.mean([latent_from_seed(s, spec.latent_dim, psi) for s in seeds], axis=0)
        elif source == "seeds":
            raise InvalidArgument(f"{field}.seeds.seeds: give at least one seed")
        else:
            raise InvalidArgument(f"{field}: set a latent or seeds")
    result = combine(weights, terms)
    representable("terms", result, "the weighted sum")  # e.g. weight 3e38 times a latent
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
