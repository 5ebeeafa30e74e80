"""Sample-quality figures on feature vectors and class predictions (numpy only).

- :func:`fid`: Fréchet distance between Gaussians fitted to two feature sets.
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019)
  with k-NN balls in feature space, distances computed in row blocks so that
  10,000 x 10,000 comparisons stay within a few tens of MB.
- :func:`class_histogram`, :func:`entropy_bits`, :func:`min_share`: mode coverage.
- :func:`accuracy`: share of predictions equal to the requested labels.
- :func:`mean_pair_sq_distance`, :func:`feature_step_sq`, :func:`path_length_means`: the
  pieces of the perceptual path length (Karras et al. 2019) in feature space.

No torch, no scipy: importable from the lightweight CLI registration path.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "accuracy",
    "class_histogram",
    "entropy_bits",
    "feature_step_sq",
    "fid",
    "kth_neighbour_radii",
    "mean_pair_sq_distance",
    "min_share",
    "path_length_means",
    "precision_recall",
]


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need a (N >= 2, D) feature array, got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh.

    Round-off can make tiny eigenvalues negative; they are clipped to 0.
    """
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID = |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of features ``(N, D)``.

    ``C_a C_b`` is not symmetric, but it is similar to ``S C_b S`` with
    ``S = C_a^(1/2)``, which is symmetric PSD: its trace square root is the sum of
    the square roots of its (clipped) eigenvalues. This avoids the complex-valued
    ``scipy.linalg.sqrtm`` and its spurious imaginary parts.
    """
    mu_a, cov_a = _mean_cov(a)
    mu_b, cov_b = _mean_cov(b)
    s = _sqrt_psd(cov_a)
    m = s @ cov_b @ s
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)
    return max(value, 0.0)  # round-off can give -1e-12 for identical sets


def _blocks(a: np.ndarray, b: np.ndarray, block: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Euclidean distances of ``a`` to ``b`` one row block at a time: ``(block, len(b))``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    b_sq = (b**2).sum(1)
    for start in range(0, len(a), block):
        rows = slice(start, min(start + block, len(a)))
        ab = a[rows]
        # |x - y|^2 = |x|^2 + |y|^2 - 2 x.y, clipped: cancellation can go below 0
        d2 = (ab**2).sum(1)[:, None] + b_sq[None, :] - 2.0 * (ab @ b.T)  # (block, len(b))
        yield rows, np.sqrt(np.clip(d2, 0.0, None))


def kth_neighbour_radii(x: np.ndarray, k: int = 3, block: int = 1000) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row: ``(N,)``."""
    if not 1 <= k < len(x):
        raise ValueError(f"k must be in [1, {len(x) - 1}] for {len(x)} samples, got {k}")
    radii = np.empty(len(x))
    for rows, d in _blocks(x, x, block):
        d[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = -1.0  # drop self
        radii[rows] = np.partition(d, k, axis=1)[:, k]  # index 0 is the -1 self entry
    return radii


def precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    k: int = 3,
    block: int = 1000,
    real_radii: np.ndarray | None = None,
) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` features.

    Precision: share of fake samples inside at least one real k-NN ball
    (ball of real sample r has radius = distance from r to its k-th nearest real).
    Recall: share of real samples inside at least one fake k-NN ball.
    ``real_radii`` (from :func:`kth_neighbour_radii`) saves recomputing them when
    one reference set serves several evaluations.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    r_real = kth_neighbour_radii(real, k, block) if real_radii is None else real_radii
    r_fake = kth_neighbour_radii(fake, k, block)
    fake_inside = np.zeros(len(fake), dtype=bool)
    real_inside = np.zeros(len(real), dtype=bool)
    for rows, d in _blocks(fake, real, block):  # d: (block of fake, len(real))
        fake_inside[rows] = (d <= r_real[None, :]).any(1)
        real_inside |= (d <= r_fake[rows, None]).any(0)
    return float(fake_inside.mean()), float(real_inside.mean())


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts per class, int64 ``(num_classes,)``."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return np.bincount(labels, minlength=num_classes)


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy of a histogram in bits (log2); uniform over 10 classes = 3.32."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 (one class) into 0.0


def min_share(counts: np.ndarray) -> float:
    """Share of the rarest class (0 when a class is missing)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float(counts.min() / total) if total > 0 else 0.0


def accuracy(predicted: np.ndarray, requested: np.ndarray) -> float:
    """Share of ``predicted == requested``."""
    predicted, requested = np.asarray(predicted), np.asarray(requested)
    if predicted.shape != requested.shape:
        raise ValueError(f"shape mismatch {predicted.shape} vs {requested.shape}")
    return float((predicted == requested).mean()) if predicted.size else 0.0


def mean_pair_sq_distance(x: np.ndarray) -> float:
    """Mean squared Euclidean distance between two different rows of ``x`` ``(N, D)``:
    ``2 * sum of the per-column variances (ddof=1)``, exactly, without the N^2 pairs."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need a (N >= 2, D) feature array, got shape {x.shape}")
    return float(2.0 * x.var(0, ddof=1).sum())


def feature_step_sq(a: np.ndarray, b: np.ndarray, scale: float, epsilon: float) -> np.ndarray:
    """Squared distances of rows ``a`` to rows ``b`` ``(N, D)``, divided by ``scale`` and by
    ``epsilon ** 2``: ``(N,)``. Differences are taken directly, not as ``|a|^2 + |b|^2 -
    2 a.b``, which would cancel away a step of 1e-4 of the norms."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    if not scale > 0 or not epsilon > 0:
        raise ValueError(f"scale and epsilon must be > 0, got {scale}, {epsilon}")
    return ((a - b) ** 2).sum(-1) / (scale * epsilon**2)


def path_length_se(
    distances: np.ndarray, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap standard errors of :func:`path_length_means`' two figures: the sample
    standard deviation of each over ``resamples`` resamples of the paths (with
    replacement, the percentile filter applied within each), seeded."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if d.size < 2:
        raise ValueError("a standard error needs at least 2 path-length samples")
    rng = np.random.default_rng(seed)
    draws = np.array([path_length_means(d[rng.integers(0, d.size, d.size)])
                      for _ in range(resamples)])  # fmt: skip
    se = draws.std(axis=0, ddof=1)
    return float(se[0]), float(se[1])


def path_length_means(distances: np.ndarray) -> tuple[float, float]:
    """The mean of ``distances`` and the mean of those within their 1st..99th percentile
    (NumPy's "lower" and "higher" percentile methods, inclusive): how StyleGAN reports
    the perceptual path length, so that a few near-discontinuities do not dominate."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("no path-length samples")
    lo = np.percentile(d, 1, method="lower")
    hi = np.percentile(d, 99, method="higher")
    return float(d.mean()), float(d[(d >= lo) & (d <= hi)].mean())


def largest_step_share(feats: np.ndarray) -> np.ndarray:
    """Per walk, the largest squared feature step between consecutive frames as a share
    of all the walk's squared steps: ``feats`` ``(P, T, D)`` -> ``(P,)`` in (0, 1].

    An even walk of ``T`` frames scores about ``1 / (T - 1)``; a walk whose change
    happens in one step (a discrete switch) scores near 1. Unlike the path length, which
    samples one infinitesimal step per path and so almost never lands on a switch, this
    sees every switch a walk makes."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 3 or f.shape[1] < 2:
        raise ValueError(f"expected (paths, frames >= 2, features), got {f.shape}")
    steps = ((f[:, 1:] - f[:, :-1]) ** 2).sum(-1)  # (P, T-1)
    total = steps.sum(-1)
    if not np.isfinite(total).all():
        raise ValueError("walk features hold NaN or infinity")
    # a walk that does not change at all has T-1 equal (zero) steps: an even walk, not
    # the 0 that would read as better than any real one
    even = np.full_like(total, 1.0 / steps.shape[1])
    return np.divide(steps.max(-1), total, out=even, where=total > 0)
