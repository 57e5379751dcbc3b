"""Reconstruction and sparsity metrics exactly as DESIGN.md defines them.

Functions take one batch; ``ReconstructionStats`` accumulates the same quantities over many
batches with numerators and denominators summed separately (so FVU over a set is not a mean of
per-batch FVUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of tokens is dense


def l0(f: Tensor) -> float:
    """E_t ‖f_t‖₀."""
    return (f != 0).sum(dim=-1).double().mean().item()


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per element: E_t ‖x_t − x̂_t‖² / d."""
    return (x - x_hat).double().pow(2).mean().item()


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖², x̄ the mean over these tokens."""
    x, x_hat = x.double(), x_hat.double()
    return ((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).item()


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    return 1.0 - fvu(x, x_hat)


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor) -> float:
    """γ = E‖x̂‖² / E[x·x̂]: 1 is unbiased, below 1 is shrinkage."""
    x, x_hat = x.double(), x_hat.double()
    return (x_hat.pow(2).sum(dim=-1).mean() / (x * x_hat).sum(dim=-1).mean()).item()


def cosine_similarity(x: Tensor, x_hat: Tensor) -> float:
    """E_t cos(x_t, x̂_t)."""
    return torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=-1).mean().item()


def feature_density(f: Tensor) -> Tensor:
    """Per latent, the fraction of tokens on which it fires."""
    return (f != 0).double().mean(dim=0)


def dead_fraction(density: Tensor) -> float:
    """Share of latents that never fired in the window."""
    return (density == 0).double().mean().item()


def dense_fraction(density: Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Share of latents firing on more than ``threshold`` of tokens."""
    return (density > threshold).double().mean().item()


@dataclass
class ReconstructionStats:
    """Running sums for every metric above over an evaluation set (float64)."""

    n_latents: int
    tokens: int = 0
    sq_err: float = 0.0
    sum_sq_x: float = 0.0
    sum_sq_x_hat: float = 0.0
    sum_dot: float = 0.0
    sum_cos: float = 0.0
    sum_l0: float = 0.0
    elements: int = 0
    sum_x: Tensor | None = None
    fire_counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.fire_counts = torch.zeros(self.n_latents, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.tokens += x.shape[0]
        self.elements += x.numel()
        self.sq_err += (x - x_hat).pow(2).sum().item()
        self.sum_sq_x += x.pow(2).sum().item()
        self.sum_sq_x_hat += x_hat.pow(2).sum().item()
        self.sum_dot += (x * x_hat).sum().item()
        self.sum_cos += torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum().item()
        fired = f != 0
        self.sum_l0 += fired.sum().item()
        self.fire_counts += fired.sum(dim=0).double().cpu()
        s = x.sum(dim=0).cpu()
        self.sum_x = s if self.sum_x is None else self.sum_x + s

    def density(self) -> Tensor:
        return self.fire_counts / max(self.tokens, 1)

    def summary(self) -> dict[str, float | int]:
        n = max(self.tokens, 1)
        mean = self.sum_x / n if self.sum_x is not None else torch.zeros(1, dtype=torch.float64)
        total_var = self.sum_sq_x - n * mean.pow(2).sum().item()  # Σ‖x − x̄‖²
        density = self.density()
        fvu_value = self.sq_err / total_var if total_var > 0 else float("nan")
        return {
            "tokens": self.tokens,
            "l0": self.sum_l0 / n,
            "mse": self.sq_err / max(self.elements, 1),
            "fvu": fvu_value,
            "explained_variance": 1.0 - fvu_value,
            "gamma": (self.sum_sq_x_hat / n) / (self.sum_dot / n) if self.sum_dot != 0 else float("nan"),
            "cosine_similarity": self.sum_cos / n,
            "dead_fraction": dead_fraction(density),
            "dense_fraction": dense_fraction(density),
        }
