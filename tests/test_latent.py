"""Latent math: one-hot, lerp/slerp, interpolation paths, class blends, weighted sums."""

from __future__ import annotations

import numpy as np
import pytest

from ganserve.server.errors import InvalidArgument
from ganserve.server.latent import blend_path, combine, interpolate_path, lerp, one_hot, slerp


def test_one_hot_rows_and_range_check() -> None:
    out = one_hot(np.array([2, 0, 2]), 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(InvalidArgument, match="labels: 3 is out of range"):
        one_hot([0, 3], 3)
    with pytest.raises(InvalidArgument, match="labels: -1"):
        one_hot([-1], 3)


def test_slerp_endpoints_norm_and_great_circle() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16) * 2.0, rng.standard_normal(16) * 0.5
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-12)
    for t in (0.25, 0.5, 0.8):
        mid = slerp(a, b, t)
        # the norm goes linearly from |a| to |b| ...
        expected = (1 - t) * np.linalg.norm(a) + t * np.linalg.norm(b)
        assert np.linalg.norm(mid) == pytest.approx(expected)
        # ... and the direction at constant angular speed along the great circle
        angle = np.arccos(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
        to_a = np.arccos(np.dot(mid, a) / np.linalg.norm(mid) / np.linalg.norm(a))
        assert to_a == pytest.approx(t * angle)
    # differs from the straight line in between
    assert not np.allclose(slerp(a, b, 0.5), lerp(a, b, 0.5))


@pytest.mark.parametrize("scale", [2.0, -3.0, 0.0])
def test_slerp_falls_back_to_lerp_when_parallel_or_zero(scale: float) -> None:
    a = np.array([1.0, 2.0, 3.0])
    b = a * scale
    for t in (0.0, 0.3, 1.0):
        out = slerp(a, b, t)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, lerp(a, b, t))


def test_slerp_vectorized_rows_match_scalar_calls() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    t = np.linspace(0, 1, 5)
    rows = slerp(a, b, t)
    for i in range(5):
        np.testing.assert_allclose(rows[i], slerp(a[i], b[i], t[i]))


@pytest.mark.parametrize("method", ["lerp", "slerp", "SLERP"])
def test_interpolate_path_hits_every_keyframe(method: str) -> None:
    keys = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    frames = interpolate_path(keys, 9, method)  # u = 0, .25, ..., 2: keys at frames 0, 4, 8
    assert frames.shape == (9, 8) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames[0], keys[0])
    np.testing.assert_array_equal(frames[-1], keys[-1])
    np.testing.assert_allclose(frames[4], keys[1], atol=1e-6)


def test_interpolate_path_two_steps_is_the_endpoints() -> None:
    keys = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    np.testing.assert_array_equal(interpolate_path(keys, 2, "slerp"), keys)


@pytest.mark.parametrize(
    ("keys", "steps", "method", "match"),
    [
        (np.zeros((1, 4)), 5, "lerp", "at least 2"),
        (np.zeros((2, 4)), 1, "lerp", "steps must be >= 2"),
        (np.zeros((2, 4)), 5, "cubic", "method must be one of"),
        (np.zeros(4), 5, "lerp", r"\(K, D\)"),
    ],
)
def test_interpolate_path_rejects_bad_input(keys, steps, method, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=match):
        interpolate_path(keys, steps, method)


def test_blend_path_morphs_between_classes() -> None:
    weights = one_hot([3, 8], 10)
    blend = blend_path(weights, 5)
    assert blend.shape == (5, 10) and blend.dtype == np.float32
    np.testing.assert_allclose(blend[:, 3], [1, 0.75, 0.5, 0.25, 0])
    np.testing.assert_allclose(blend[:, 8], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(blend.sum(axis=1), 1.0)


def test_combine_weighted_sum() -> None:
    terms = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, 0.5]])
    out = combine([1.0, -1.0, 2.0], terms)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1 - 3 + 1, 2 - 4 + 1])
    with pytest.raises(InvalidArgument, match="terms"):
        combine([1.0], terms)
    with pytest.raises(InvalidArgument, match="at least one"):
        combine([], np.zeros((0, 2)))


def test_float32_overflow_becomes_inf_without_a_warning() -> None:
    """Finite inputs whose result outgrows float32 give inf (the caller turns it into
    INVALID_ARGUMENT) and no RuntimeWarning in the server log; pytest makes warnings errors."""
    big = np.float32(3e38)
    assert np.isinf(combine([1.0, 1.0], np.array([[big, 0.0], [big, 0.0]]))).any()
    keys = np.array([[big, big], [-big, big]])
    assert np.isinf(interpolate_path(keys, 3, "slerp")).any()
