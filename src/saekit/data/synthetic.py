"""Synthetic ground truth with known atoms and codes.

``oneill``: the generator of O'Neill, Gumran & Klindt (2024): N true atoms in R^M, i.i.d. Gaussian
then unit norm; every sample has exactly K atoms chosen uniformly, magnitudes |N(0,1)|;
x = Σ s_i d_i, no noise.

``powerlaw``: feature i fires with probability p_i ∝ (i+1)^-α (scaled so E[#active] = K), and
which features co-fire is correlated through a Gaussian copula: latent Gaussians correlated with
coefficient ρ within consecutive groups; feature i is on when its Gaussian exceeds Φ⁻¹(1 − p_i).

``hierarchical`` (the setting Matryoshka SAEs are built for, Bussmann et al. 2025): consecutive groups of
G = group_size features, the first of each group a parent, the other G − 1 its children. Each parent fires
independently with probability p = K / (P · 2) (P = N / G parents; p = K / P when G = 1), and a firing
parent brings exactly one of its children, chosen uniformly; a child never fires alone. So E[#active] = K,
and a parent always co-fires with one child: the pattern that invites feature absorption.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saekit.config import SyntheticConfig
from saekit.data.source import Batch
from saekit.errors import SaekitError
from saekit.rng import stream


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (Python's hash() of strings varies between processes)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & 0xFFFF_FFFF_FFFF_FFFF)) * 0x100000001B3) & 0xFFFF_FFFF_FFFF_FFFF
    return h & 0x7FFF_FFFF_FFFF_FFFF


class GroundTruth:
    """A synthetic problem: the true dictionary and a sampler of (x, codes)."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        if cfg.n_features <= 0 or cfg.d <= 0 or cfg.k <= 0:
            raise SaekitError("synthetic n_features, d and k must be positive")
        if cfg.generator == "oneill" and cfg.k > cfg.n_features:
            raise SaekitError(f"synthetic k={cfg.k} exceeds n_features={cfg.n_features}")
        self.cfg = cfg
        # its own named stream: an SAE seeded like the problem never starts at the truth
        atoms = torch.randn(cfg.n_features, cfg.d, generator=stream("synthetic.atoms", cfg.seed))
        self.dictionary = atoms / atoms.norm(dim=1, keepdim=True)
        if cfg.generator == "hierarchical":
            g = cfg.group_size
            if g < 1 or cfg.n_features % g:
                raise SaekitError(f"synthetic hierarchical: group_size={g} must be >= 1 and divide "
                                  f"n_features={cfg.n_features}")
            self.parent_probability = cfg.k / (cfg.n_features // g * (2 if g > 1 else 1))
            if self.parent_probability > 1:
                raise SaekitError(f"synthetic hierarchical: k={cfg.k} needs parents firing with probability "
                                  f"{self.parent_probability:.2f} > 1 (fewer k or more features)")
        if cfg.generator == "powerlaw":
            freq = (torch.arange(cfg.n_features, dtype=torch.float64) + 1) ** -cfg.powerlaw_exponent
            self.probabilities = (freq * cfg.k / freq.sum()).clamp(max=1.0)
            normal = torch.distributions.Normal(0.0, 1.0)
            self.thresholds = normal.icdf((1 - self.probabilities).clamp(1e-12, 1 - 1e-12)).float()
            if not 0.0 <= cfg.correlation < 1.0:
                raise SaekitError(f"synthetic correlation must lie in [0, 1), got {cfg.correlation}")

    @property
    def d(self) -> int:
        return self.cfg.d

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n samples: (x [n, M], codes [n, N])."""
        if self.cfg.generator == "oneill":
            active = self._uniform_support(n, generator)
        elif self.cfg.generator == "hierarchical":
            active = self._hierarchical_support(n, generator)
        else:
            active = self._correlated_support(n, generator)
        magnitudes = torch.randn(n, self.cfg.n_features, generator=generator).abs()
        codes = magnitudes * active
        return codes @ self.dictionary, codes

    def _uniform_support(self, n: int, generator: torch.Generator) -> Tensor:
        scores = torch.rand(n, self.cfg.n_features, generator=generator)
        idx = scores.topk(self.cfg.k, dim=1).indices  # a uniformly random K-subset per row
        return torch.zeros(n, self.cfg.n_features).scatter_(1, idx, 1.0)

    def _hierarchical_support(self, n: int, generator: torch.Generator) -> Tensor:
        g = self.cfg.group_size
        parents = (torch.rand(n, self.cfg.n_features // g, generator=generator) < self.parent_probability).float()
        active = torch.zeros(n, parents.shape[1], g)
        active[:, :, 0] = parents
        if g > 1:  # exactly one child of each firing parent
            child = torch.randint(1, g, parents.shape, generator=generator)
            active.scatter_(2, child.unsqueeze(2), parents.unsqueeze(2))
        return active.reshape(n, self.cfg.n_features)

    def _correlated_support(self, n: int, generator: torch.Generator) -> Tensor:
        N, g, rho = self.cfg.n_features, max(1, self.cfg.group_size), self.cfg.correlation
        n_groups = math.ceil(N / g)
        shared = torch.randn(n, n_groups, generator=generator).repeat_interleave(g, dim=1)[:, :N]
        own = torch.randn(n, N, generator=generator)
        latent = math.sqrt(rho) * shared + math.sqrt(1 - rho) * own  # unit variance, corr ρ within a group
        return (latent > self.thresholds).float()


class SyntheticSource:
    """Synthetic activations as a resumable source (codes kept for recovery metrics)."""

    has_grads = False

    def __init__(self, cfg: SyntheticConfig, split: str = "train") -> None:
        if split not in ("train", "eval"):
            raise SaekitError(f"unknown split {split!r}")
        self.cfg = cfg
        self.split = split
        self.truth = GroundTruth(cfg)
        self.d_in = cfg.d
        self._fixed: tuple[Tensor, Tensor] | None = None
        if cfg.n_samples > 0 and split == "train":
            self._fixed = self.truth.sample(cfg.n_samples, stream("synthetic.fixed", cfg.seed))

    @property
    def train_set(self) -> tuple[Tensor, Tensor] | None:
        return self._fixed

    def eval_set(self, n: int) -> tuple[Tensor, Tensor]:
        """Held-out samples with their true codes (never seen in training)."""
        return self.truth.sample(n, stream("synthetic.eval", self.cfg.seed))

    def sample(self, n: int) -> Tensor:
        if self._fixed is not None:
            return self._fixed[0][:n]
        return self.truth.sample(n, stream("synthetic.sample", self.cfg.seed))[0]

    def batches(self, batch_size: int, position: dict[str, Any] | None = None) -> Iterator[tuple[Batch, dict[str, Any]]]:
        index = int((position or {}).get("batch", 0))
        while True:
            yield Batch(self._batch(index, batch_size)), {"batch": index + 1}
            index += 1

    def _batch(self, index: int, batch_size: int) -> Tensor:
        if self._fixed is None:  # fresh samples, a function of (seed, batch index) alone
            gen = stream("synthetic.train" if self.split == "train" else "synthetic.eval-batches", self.cfg.seed, index)
            return self.truth.sample(batch_size, gen)[0]
        n = self._fixed[0].shape[0]
        start = index * batch_size
        rows = [self._epoch_order(e)[max(start, e * n) - e * n:min(start + batch_size, (e + 1) * n) - e * n]
                for e in range(start // n, (start + batch_size - 1) // n + 1)]
        return self._fixed[0][torch.cat(rows)]

    def _epoch_order(self, epoch: int) -> Tensor:
        return torch.randperm(self._fixed[0].shape[0], generator=stream("synthetic.order", self.cfg.seed, epoch))  # type: ignore[index]
