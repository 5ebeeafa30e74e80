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
and without a floor a psi of 1e-30 would never finish.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_SEED = 2**64 - 1
MIN_TRUNCATION = 0.05

__all__ = ["MAX_SEED", "MIN_TRUNCATION", "latent_cost_us", "latent_from_seed", "latents_from_seeds"]


def latent_cost_us(count: int, truncation: float | None = None) -> float:
    """A rough CPU cost of ``count`` 100-d latents from the seed rule, in microseconds;
    used to decide when the work leaves an event loop. The constants are a measured
    upper bound (seed by seed under ``_VECTOR_MIN``, the vectorised hash above it, and
    redraws growing as 1/psi), rounded up so that the estimate errs towards offloading;
    a slower CPU only makes the offload come sooner than needed, never later by much."""
    per = 7.0 if count < _VECTOR_MIN else 3.0
    if truncation is not None:
        per += 13.0 / max(truncation, MIN_TRUNCATION)
    return count * per


def latent_from_seed(seed: int, latent_dim: int, truncation: float | None = None) -> np.ndarray:
    """The latent vector of one seed: float32 ``(latent_dim,)``."""
    _check(seed, truncation)
    return _draw(np.random.Generator(np.random.PCG64(seed)), latent_dim, truncation)


def latents_from_seeds(
    seed: int, count: int, latent_dim: int, truncation: float | None = None
) -> np.ndarray:
    """Latents of seeds ``seed .. seed + count - 1``: float32 ``(count, latent_dim)``.

    From ``_VECTOR_MIN`` seeds on, the seeds' SeedSequence states are computed for all of
    them at once (:func:`_seed_states`), which cuts the cost per latent (about 40 % for 64
    seeds); the latents are the same bits.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count and seed + count - 1 > MAX_SEED:
        raise ValueError(f"seed + count - 1 must be <= 2**64 - 1, got seed={seed} count={count}")
    out = np.empty((count, latent_dim), dtype=np.float32)
    if count < _VECTOR_MIN:
        for i in range(count):
            out[i] = latent_from_seed(seed + i, latent_dim, truncation)
        return out
    _check(seed, truncation)
    states = _seed_states(np.uint64(seed) + np.arange(count, dtype=np.uint64))
    for i in range(count):
        # numpy takes any ISeedSequence here (documented); its stubs name only SeedSequence
        rng = np.random.Generator(np.random.PCG64(_State(states[i])))  # type: ignore[arg-type]
        out[i] = _draw(rng, latent_dim, truncation)
    return out


def _check(seed: int, truncation: float | None) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**64 - 1], got {seed}")
    if truncation is not None and not truncation >= MIN_TRUNCATION:
        raise ValueError(f"truncation must be >= {MIN_TRUNCATION}, got {truncation}")


def _draw(rng: np.random.Generator, latent_dim: int, truncation: float | None) -> np.ndarray:
    z = rng.standard_normal(latent_dim)
    if truncation is not None:
        bad = np.flatnonzero(np.abs(z) > truncation)
        while bad.size:
            z[bad] = rng.standard_normal(bad.size)
            bad = bad[np.abs(z[bad]) > truncation]
    return z.astype(np.float32)


# numpy's SeedSequence (numpy/random/bit_generator.pyx, O'Neill's seed_seq_fe; its output
# is part of numpy's stream-compatibility promise), for many integer seeds at once.
_VECTOR_MIN = 32  # the vector hash costs ~70 us at any size: below, seed by seed
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_U32 = np.uint32


def _seed_states(seeds: np.ndarray) -> np.ndarray:
    """``SeedSequence(s).generate_state(4, np.uint64)`` for each uint64 seed: ``(n, 4)``.

    A seed below 2**64 is one or two 32-bit entropy words; a missing second word and a
    zero one hash alike, so every seed is taken as two words in a pool of four.
    """
    seeds = np.asarray(seeds, dtype=np.uint64)
    hash_a = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_a
        value = value ^ _U32(hash_a)
        hash_a = (hash_a * _MULT_A) & 0xFFFFFFFF
        value = value * _U32(hash_a)
        return value ^ (value >> _U32(16))

    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as in the C code
        low = (seeds & np.uint64(0xFFFFFFFF)).astype(_U32)
        zero = np.zeros_like(low)
        pool = [hashmix(low), hashmix((seeds >> np.uint64(32)).astype(_U32))]
        pool += [hashmix(zero), hashmix(zero)]
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    mixed: np.ndarray = _U32(_MIX_L) * pool[dst] - _U32(_MIX_R) * hashmix(pool[src])
                    pool[dst] = mixed ^ (mixed >> _U32(16))
        words = np.empty((seeds.size, 8), dtype=_U32)
        hash_b = _INIT_B
        for i in range(8):
            value: np.ndarray = pool[i % 4] ^ _U32(hash_b)
            hash_b = (hash_b * _MULT_B) & 0xFFFFFFFF
            value = value * _U32(hash_b)
            words[:, i] = value ^ (value >> _U32(16))
    return words.view("<u8")  # pairs of little-endian uint32 words, as numpy assembles them


class _State(np.random.bit_generator.ISeedSequence):
    """A SeedSequence whose state is already known (PCG64 asks for 4 uint64 words)."""

    __slots__ = ("_words",)

    def __init__(self, words: np.ndarray):
        self._words = words

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        return self._words  # PCG64 asks for exactly (4, np.uint64); a test checks the bits
