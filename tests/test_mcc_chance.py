"""MCC chance levels: what a random unit dictionary scores against a synthetic truth (DESIGN.md: always
report it beside an MCC), and the two ends of the scale."""

from __future__ import annotations

import pytest
import torch

from saekit.config import SyntheticConfig
from saekit.data.synthetic import GroundTruth
from saekit.eval.recovery import chance_dictionary_mcc, dictionary_mcc, random_unit_dictionary


def truth(n: int, m: int, seed: int = 0) -> torch.Tensor:
    return GroundTruth(SyntheticConfig(n_features=n, d=m, k=3, seed=seed)).dictionary


@pytest.mark.parametrize("seed", [0, 1])
def test_random_dictionary_scores_about_two_thirds_in_the_main_setting(seed):
    """N=16 atoms in M=8 dimensions: a random dictionary already reaches about 0.67 (measured 0.664 and
    0.641 for truths 0 and 1, sd 0.015-0.03 over draws)."""
    c = chance_dictionary_mcc(truth(16, 8, seed), 16, draws=20)
    assert c["draws"] == 20 and 0.0 < c["sd"] < 0.05
    assert c["mean"] == pytest.approx(0.67, abs=0.05)
    assert c["mean"] <= c["max"] < 0.75


def test_chance_rises_with_more_atoms_and_falls_with_more_dimensions():
    wide = chance_dictionary_mcc(truth(256, 8), 256, draws=5)["mean"]
    assert wide == pytest.approx(0.87, abs=0.02)  # the figure for N=256, M=8
    main = chance_dictionary_mcc(truth(16, 8), 16)["mean"]
    assert wide > main + 0.15
    m16, m32 = (chance_dictionary_mcc(truth(16, m), 16)["mean"] for m in (16, 32))
    assert main > m16 + 0.1 > m32 + 0.2  # measured 0.66, 0.47, 0.34


def test_the_truth_scores_one_whatever_its_order_sign_and_scale():
    t = truth(16, 8)
    assert dictionary_mcc(t, t) == pytest.approx(1.0, abs=1e-12)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    signs = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)[:, None]
    assert dictionary_mcc(t, 2.5 * signs * t[perm]) == pytest.approx(1.0, abs=1e-12)
    # extra learned atoms do not lower it; a slightly perturbed truth lies between chance and 1
    assert dictionary_mcc(t, torch.cat([t, random_unit_dictionary(8, 8)])) == pytest.approx(1.0, abs=1e-12)
    noisy = dictionary_mcc(t, t + 0.1 * torch.randn(16, 8, generator=torch.Generator().manual_seed(4)))
    assert chance_dictionary_mcc(t, 16)["max"] < noisy < 1.0


def test_chance_dictionaries_are_reproducible_and_never_the_truth():
    """The chance stream is its own: seed 0 does not give the atoms of the truth seeded 0."""
    assert torch.equal(random_unit_dictionary(16, 8, seed=0), random_unit_dictionary(16, 8, seed=0))
    assert not torch.equal(random_unit_dictionary(16, 8, seed=0), random_unit_dictionary(16, 8, seed=1))
    assert torch.allclose(random_unit_dictionary(16, 8).norm(dim=1), torch.ones(16))
    for seed in (0, 1):
        assert dictionary_mcc(truth(16, 8, seed), random_unit_dictionary(16, 8, seed=seed)) < 0.75
    assert chance_dictionary_mcc(truth(16, 8), 16, seed=5) == chance_dictionary_mcc(truth(16, 8), 16, seed=5)
