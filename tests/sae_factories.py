"""SAE factories for tests (a module of its own: every conftest.py is named 'conftest')."""

from __future__ import annotations

import torch

from saekit.config import SAEConfig
from saekit.sae import build_sae


def tiny_sae(architecture: str, d_in: int = 6, n_latents: int = 10, **params):
    """A small SAE with non-trivial biases so every code path is exercised."""
    sae = build_sae(SAEConfig(architecture=architecture, d_in=d_in, n_latents=n_latents, **params), seed=1)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return sae
