"""The seed -> latent rule shared by the server and the client library.

Image ``i`` of a request with seed ``s`` uses its own seed ``s + i``::

    rng = numpy.random.Generator(numpy.random.PCG64(s + i))
    z = rng.standard_normal(latent_dim)               # float64
    # truncation psi: redraw every |z_j| > psi from the same rng, in index
    # order, one standard_normal(k) call per round, until none is left
    z = z.astype(numpy.float32)

So image ``i`` of ``(seed=s, count=n)`` equals image 0 of ``(seed=s+i, count=1)``,
on every run and every replica. Only numpy is needed (base install).

psi must be at least ``MIN_TRUNCATION`` (0.05): an entry lands in [-psi, psi] with
probability about 0.8 psi per draw, so the redraw loop's length grows as 1/psi
(about 0.6 ms per 100-d latent at 0.05 here) and without a floor a psi of 1e-30
would never finish.
"""

from __future__ import annotations

import numpy as np

MAX_SEED = 2**64 - 1
MIN_TRUNCATION = 0.05

__all__ = ["MAX_SEED", "MIN_TRUNCATION", "latent_cost_us", "latent_from_seed", "latents_from_seeds"]


def latent_cost_us(count: int, truncation: float | None = None) -> float:
    """A rough CPU cost of ``count`` latents from the seed rule, in microseconds (measured
    on the 2-core development VM: ~60 us each, ~30 + 30 / psi with truncation psi); used
    to decide when the work leaves an event loop."""
    per = 60.0 if truncation is None else 30.0 + 30.0 / max(truncation, MIN_TRUNCATION)
    return count * per


def latent_from_seed(seed: int, latent_dim: int, truncation: float | None = None) -> np.ndarray:
    """The latent vector of one seed: float32 ``(latent_dim,)``."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**64 - 1], got {seed}")
    if truncation is not None and not truncation >= MIN_TRUNCATION:
        raise ValueError(f"truncation must be >= {MIN_TRUNCATION}, got {truncation}")
    rng = np.random.Generator(np.random.PCG64(seed))
    z = rng.standard_normal(latent_dim)
    if truncation is not None:
        bad = np.flatnonzero(np.abs(z) > truncation)
        while bad.size:
            z[bad] = rng.standard_normal(bad.size)
            bad = bad[np.abs(z[bad]) > truncation]
    return z.astype(np.float32)


def latents_from_seeds(
    seed: int, count: int, latent_dim: int, truncation: float | None = None
) -> np.ndarray:
    """Latents of seeds ``seed .. seed + count - 1``: float32 ``(count, latent_dim)``."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count and seed + count - 1 > MAX_SEED:
        raise ValueError(f"seed + count - 1 must be <= 2**64 - 1, got seed={seed} count={count}")
    out = np.empty((count, latent_dim), dtype=np.float32)
    for i in range(count):
        out[i] = latent_from_seed(seed + i, latent_dim, truncation)
    return out
