"""Reconstruction metrics of an SAE over a held-out stream, and ground-truth recovery on synthetic data."""

from __future__ import annotations

from typing import Any

import torch

from saekit.data.source import ActivationSource, check_finite
from saekit.eval.metrics import ReconstructionStats
from saekit.eval.recovery import code_mcc, dictionary_mcc
from saekit.sae import SparseAutoencoder


@torch.no_grad()
def evaluate_reconstruction(sae: SparseAutoencoder, source: ActivationSource, n_tokens: int,
                            batch_size: int = 4096) -> tuple[dict[str, float], torch.Tensor]:
    """L0, MSE, FVU, γ, cosine, dead/dense fractions over ``n_tokens`` of ``source``; and the density vector."""
    stats = ReconstructionStats(sae.cfg.n_latents)
    device = sae.W_dec.device
    for batch, _ in source.batches(batch_size):
        x = batch.acts.to(device, torch.float32)
        check_finite(x, "evaluation batch")
        grads = batch.grads.to(device, torch.float32) if batch.grads is not None and sae.needs_gradients else None
        x_hat, f = sae(x, grads)
        stats.update(x, x_hat, f)
        if stats.tokens >= n_tokens:
            break
    return stats.summary(), stats.density()


@torch.no_grad()
def evaluate_recovery(sae: SparseAutoencoder, x: torch.Tensor, true_codes: torch.Tensor,
                      true_atoms: torch.Tensor) -> dict[str, Any]:
    """Dictionary MCC (atoms vs true atoms) and code MCC (codes vs true codes) on held-out samples."""
    f = sae.encode(x.to(sae.W_dec.device))
    return {"dictionary_mcc": dictionary_mcc(true_atoms, sae.W_dec.detach().cpu()),
            "code_mcc": code_mcc(true_codes, f.cpu())}
