"""The seed rule (ganserve/seeds.py) against numpy's own generator, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from ganserve import seeds
from ganserve.seeds import MAX_SEED, latent_from_seed, latents_from_seeds


def _reference(seed: int, dim: int, psi: float | None) -> np.ndarray:
    """The documented rule, written out with numpy's SeedSequence-seeded PCG64."""
    rng = np.random.Generator(np.random.PCG64(seed))
    z = rng.standard_normal(dim)
    if psi is not None:
        bad = np.flatnonzero(np.abs(z) > psi)
        while bad.size:
            z[bad] = rng.standard_normal(bad.size)
            bad = bad[np.abs(z[bad]) > psi]
    return z.astype(np.float32)


_EDGES = [0, 1, 2**32 - 1, 2**32, 2**63, MAX_SEED]


def test_seed_states_match_numpys_seed_sequence() -> None:
    rng = np.random.default_rng(11)
    values = _EDGES + [int(x) for x in rng.integers(0, 2**63, 1000, dtype=np.int64)]
    values += [int(x) << 1 | 1 for x in rng.integers(2**62, 2**63, 500, dtype=np.int64)]
    states = seeds._seed_states(np.array(values, dtype=np.uint64))
    for value, state in zip(values, states, strict=True):
        expected = np.random.SeedSequence(value).generate_state(4, np.uint64)
        assert state.tolist() == expected.tolist(), value


@pytest.mark.parametrize("start", [0, 2**32 - 20, 2**64 - 40, 918_273_645_546_372_819])
@pytest.mark.parametrize("psi", [None, 0.7, 0.05])
@pytest.mark.parametrize("count", [5, 40])  # below and above the vectorised threshold
def test_latents_are_the_documented_rule_bit_for_bit(
    start: int, psi: float | None, count: int
) -> None:
    got = latents_from_seeds(start, count, 16, psi)
    expected = np.stack([_reference(start + i, 16, psi) for i in range(count)])
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
    assert latent_from_seed(start, 16, psi).tobytes() == expected[0].tobytes()


def test_the_vectorised_path_is_used_and_checks_its_arguments() -> None:
    assert 5 < seeds._VECTOR_MIN <= 40
    with pytest.raises(ValueError, match="truncation"):
        latents_from_seeds(0, 40, 4, 0.01)
    with pytest.raises(ValueError, match="seed"):
        latents_from_seeds(-1, 40, 4)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        latents_from_seeds(MAX_SEED - 10, 40, 4)


def test_latent_cost_estimate_follows_the_measured_shape() -> None:
    """Seed by seed is dearer per latent than the vectorised hash; truncation adds a
    redraw cost that grows as psi shrinks and stops growing at MIN_TRUNCATION."""
    per = [seeds.latent_cost_us(n) / n for n in (1, seeds._VECTOR_MIN - 1, seeds._VECTOR_MIN)]
    assert per[0] == per[1] > per[2] > 0
    assert seeds.latent_cost_us(64, 2.0) < seeds.latent_cost_us(64, 0.5)
    assert seeds.latent_cost_us(64, 0.5) < seeds.latent_cost_us(64, seeds.MIN_TRUNCATION)
    assert seeds.latent_cost_us(64, 0.01) == seeds.latent_cost_us(64, seeds.MIN_TRUNCATION)
    assert seeds.latent_cost_us(0) == 0
