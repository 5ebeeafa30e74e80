"""Field checks at the server's edge: every user mistake becomes an ``InvalidArgument``
whose message starts with the offending field (``"keyframes[1].latent: ..."``).

A request over a server limit is INVALID_ARGUMENT too, naming the field and the limit
(and SampleStream where that helps): it is a property of the request, so clients must
not retry it; RESOURCE_EXHAUSTED is kept for transient overload (a full queue), which
clients retry. The rules both sides share (encodings, labels, limits) come from
``ganserve.contract``; ``plan.py`` turns checked requests into plans.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ganserve.contract import labels as label_rule
from ganserve.contract.encodings import BY_NUMBER, Encoding, proto_choices
from ganserve.seeds import MAX_SEED, MIN_TRUNCATION
from ganserve.v1 import generator_pb2 as pb

from .errors import InvalidArgument
from .spec import ModelSpec

__all__ = [
    "check_label",
    "check_limit",
    "check_seed_range",
    "encoding_field",
    "finite",
    "latent_batch",
    "latent_vector",
    "method_field",
    "representable",
    "require_label",
    "sample_labels",
    "truncation_field",
]

_METHODS: dict[int, str] = {
    pb.INTERPOLATION_METHOD_UNSPECIFIED: "slerp",
    pb.INTERPOLATION_METHOD_LERP: "lerp",
    pb.INTERPOLATION_METHOD_SLERP: "slerp",
}
_LE_FLOAT32 = np.dtype("<f4")


def encoding_field(value: int) -> Encoding:
    """The ``encoding`` field: UNSPECIFIED is FLOAT32."""
    found = BY_NUMBER.get(value)
    if found is None:
        raise InvalidArgument(f"encoding: unknown value {value}; use {proto_choices()}")
    return found


def method_field(value: int) -> str:
    """The ``method`` field of Interpolate: UNSPECIFIED is SLERP."""
    method = _METHODS.get(value)
    if method is None:
        raise InvalidArgument(f"method: unknown value {value}; use LERP (1) or SLERP (2)")
    return method


def truncation_field(req: Any) -> float | None:
    """The optional ``truncation`` field; absent: None."""
    if not req.HasField("truncation"):
        return None
    psi = float(req.truncation)
    # The floor bounds the redraw loop of the seed rule (see ganserve.seeds).
    if not (math.isfinite(psi) and psi >= MIN_TRUNCATION):
        # a float32 field: 7 digits show what was sent (0.01, not 0.009999999776482582)
        raise InvalidArgument(
            f"truncation: must be a finite number >= {MIN_TRUNCATION}, got {psi:.7g}"
        )
    return psi


def check_label(field: str, label: int, spec: ModelSpec) -> int:
    """A given label: the model is conditional and has this class."""
    problem = label_rule.label_problem(field, label, spec.num_classes, spec.name)
    if problem:
        raise InvalidArgument(problem)
    return label


def require_label(field: str, req: Any, spec: ModelSpec) -> int | None:
    """The optional ``label`` field: required on conditional models, absent otherwise."""
    if req.HasField("label"):
        return check_label(field, int(req.label), spec)
    problem = label_rule.missing_label_problem(field, spec.num_classes, spec.name)
    if problem:
        raise InvalidArgument(problem)
    return None


def sample_labels(labels: Any, count: int, spec: ModelSpec) -> np.ndarray | None:
    """A SampleRequest's ``labels``: none (None: the default rule), one for every image
    or one each; int64 ``(1,)`` or ``(count,)``."""
    if not labels:
        return None
    check_label("labels", int(labels[0]), spec)  # unconditional models: no labels
    problem = label_rule.label_count_problem(len(labels), count)
    if problem:
        raise InvalidArgument(problem)
    out = np.asarray(labels, dtype=np.int64)
    bad = label_rule.first_bad_label(out, spec.num_classes)
    if bad is not None:
        check_label("labels", bad, spec)
    return out


def finite(field: str, values: np.ndarray) -> np.ndarray:
    """Client-given values, which must all be finite."""
    if not np.isfinite(values).all():
        raise InvalidArgument(f"{field}: contains NaN or infinity; all values must be finite")
    return values


def representable(field: str, values: np.ndarray, what: str) -> np.ndarray:
    """``values`` computed from finite inputs, which may still have overflowed float32."""
    if not np.isfinite(values).all():
        raise InvalidArgument(
            f"{field}: {what} overflows float32 (|value| > 3.4e38); use smaller values"
        )
    return values


def latent_vector(field: str, vec: pb.LatentVector, dim: int) -> np.ndarray:
    """A LatentVector as float32 (D,)."""
    if len(vec.values) != dim:
        raise InvalidArgument(f"{field}: has {len(vec.values)} values, the model needs {dim}")
    return finite(field, np.asarray(vec.values, dtype=np.float32))


def latent_batch(lat: pb.LatentBatch, count: int, spec: ModelSpec) -> np.ndarray:
    """A SampleRequest's ``latents`` for ``count`` images as float32 (count, D); ``count``
    is already checked against ``lat.count`` and the limit."""
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
    return finite("latents.data", raw.astype(np.float32, copy=False))


def check_seed_range(field: str, seed: int, count: int) -> None:
    """Seeds ``seed .. seed + count - 1`` stay within the seed rule's uint64."""
    if seed + count - 1 > MAX_SEED:
        raise InvalidArgument(f"{field}: seed + count - 1 must be <= 2**64 - 1, got seed={seed}")


def check_limit(field: str, value: int, limit: int, hint: str = "") -> None:
    """``value`` of ``field`` is within the server's ``limit``."""
    if value > limit:
        raise InvalidArgument(f"{field}: {value} is over the server's limit of {limit}{hint}")
