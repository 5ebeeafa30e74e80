"""Latent-space math: class vectors, interpolation paths, weighted sums.

Pure numpy. Work is done in float64 and returned as float32, the dtype the
generators take. Interpolation paths are parametrized by ``u`` in ``[0, K-1]``
for ``K`` keyframes: frame ``i`` of ``steps`` sits at ``u = i * (K-1) / (steps-1)``,
between keyframes ``floor(u)`` and ``floor(u) + 1`` at fraction ``u - floor(u)``,
so the first frame is exactly the first keyframe and the last the last one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgument

__all__ = ["METHODS", "blend_path", "combine", "interpolate_path", "lerp", "one_hot", "slerp"]

METHODS = ("lerp", "slerp")

# Below this sin(angle) two directions count as (anti)parallel: the great
# circle between them is undefined (antiparallel) or numerically unstable.
_PARALLEL_EPS = 1e-6


def one_hot(labels: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """Class vectors of ``labels`` (N,): float32 ``(N, num_classes)``."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise InvalidArgument(f"labels: {bad} is out of range [0, {num_classes - 1}]")
    out = np.zeros((labels.size, num_classes), dtype=np.float32)  # (N, C)
    out[np.arange(labels.size), labels] = 1.0
    return out


def lerp(a: np.ndarray, b: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """``(1 - t) a + t b``; ``a``, ``b`` (..., D), ``t`` scalar or (...,)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[..., None]
    return (1.0 - t) * a + t * b


def slerp(a: np.ndarray, b: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Spherical interpolation; ``a``, ``b`` (..., D), ``t`` scalar or (...,).

    The direction moves along the great circle from ``a/|a|`` to ``b/|b|`` at
    constant angular speed while the norm goes linearly from ``|a|`` to ``|b|``
    (Gaussian latents live near a sphere; a straight line cuts through its
    low-density interior). Rows whose directions are (anti)parallel, or where
    either vector is zero, have no unique great circle: they fall back to
    :func:`lerp`.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[..., None]
    na = np.linalg.norm(a, axis=-1, keepdims=True)
    nb = np.linalg.norm(b, axis=-1, keepdims=True)
    safe_na = np.where(na > 0, na, 1.0)
    safe_nb = np.where(nb > 0, nb, 1.0)
    ua, ub = a / safe_na, b / safe_nb
    cos = np.clip(np.sum(ua * ub, axis=-1, keepdims=True), -1.0, 1.0)
    omega = np.arccos(cos)
    sin = np.sin(omega)
    degenerate = (sin < _PARALLEL_EPS) | (na == 0) | (nb == 0)
    safe_sin = np.where(degenerate, 1.0, sin)
    direction = (np.sin((1.0 - t) * omega) * ua + np.sin(t * omega) * ub) / safe_sin
    spherical = direction * ((1.0 - t) * na + t * nb)
    return np.where(degenerate, (1.0 - t) * a + t * b, spherical)


def _path_positions(num_keys: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment index (steps,) and fraction within it (steps,) of each frame."""
    if num_keys < 2:
        raise InvalidArgument(f"keyframes: need at least 2, got {num_keys}")
    if steps < 2:
        raise InvalidArgument(f"steps must be >= 2, got {steps}")
    u = np.linspace(0.0, num_keys - 1, steps)
    seg = np.minimum(np.floor(u).astype(np.int64), num_keys - 2)
    return seg, u - seg


def interpolate_path(keys: np.ndarray, steps: int, method: str = "slerp") -> np.ndarray:
    """Frames along keyframes ``keys`` (K, D): float32 ``(steps, D)``."""
    method = method.lower()
    if method not in METHODS:
        raise InvalidArgument(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    keys = np.asarray(keys, dtype=np.float64)
    if keys.ndim != 2:
        raise InvalidArgument(f"keyframes must be a (K, D) array, got shape {keys.shape}")
    seg, t = _path_positions(keys.shape[0], steps)
    fn = slerp if method == "slerp" else lerp
    frames = fn(keys[seg], keys[seg + 1], t)  # (steps, D)
    # Exact endpoints, free of the rounding in the trigonometry.
    frames[0], frames[-1] = keys[0], keys[-1]
    with np.errstate(over="ignore"):  # an overflow becomes inf, which the caller rejects
        return frames.astype(np.float32)


def blend_path(weights: np.ndarray, steps: int) -> np.ndarray:
    """Class vectors (K, C) blended linearly along the path: float32 ``(steps, C)``."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise InvalidArgument(f"class weights must be a (K, C) array, got shape {weights.shape}")
    seg, t = _path_positions(weights.shape[0], steps)
    return lerp(weights[seg], weights[seg + 1], t).astype(np.float32)


def combine(weights: Sequence[float] | np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Weighted sum ``sum_k weights[k] * terms[k]`` of terms (T, D): float32 ``(D,)``."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    terms = np.asarray(terms, dtype=np.float64)
    if terms.ndim != 2 or terms.shape[0] != w.size:
        raise InvalidArgument(
            f"terms: {w.size} weights need a ({w.size}, D) array of terms, got {terms.shape}"
        )
    if w.size == 0:
        raise InvalidArgument("terms: need at least one term")
    with np.errstate(over="ignore"):  # an overflow becomes inf, which the caller rejects
        return (w @ terms).astype(np.float32)
