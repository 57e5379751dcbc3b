"""Loss terms exactly as DESIGN.md defines them. Every function returns a mean over tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """E_t ‖x_t − x̂_t‖² (sum over dimensions, mean over tokens); one fused kernel each way."""
    return F.mse_loss(x_hat, x, reduction="sum") / max(x.numel() // max(x.shape[-1], 1), 1)


def weighted_l1(f: Tensor, atom_norms: Tensor) -> Tensor:
    """E_t Σ_i f_i ‖d_i‖: the decoder-norm-weighted L1 (plain L1 when atoms are unit norm)."""
    return (f.abs() * atom_norms).sum(dim=-1).mean()


def l1(f: Tensor) -> Tensor:
    """E_t ‖f_t‖₁."""
    return f.abs().sum(dim=-1).mean()


def normalized_mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖² over the batch (the TopK paper's NMSE)."""
    denom = F.mse_loss(x, x.mean(dim=0, keepdim=True).expand_as(x), reduction="sum").clamp_min(1e-12)
    return F.mse_loss(x_hat, x, reduction="sum") / denom


def topk_codes(z: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of z per row, ReLU them, zero the rest."""
    values, indices = z.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter_(-1, indices, values.relu())


def auxk_loss(z: Tensor, residual: Tensor, W_dec: Tensor, dead_mask: Tensor, k_aux: int) -> Tensor:
    """AuxK: reconstruct the (detached) residual e from the top-k_aux dead latents, no bias.

    L_aux = ‖e − ê‖² / E‖e − E e‖², with k_aux capped by the number of dead latents.
    """
    n_dead = int(dead_mask.sum())
    k = min(k_aux, n_dead)
    if k == 0:
        return z.new_zeros(())
    z_dead = z.masked_fill(~dead_mask, float("-inf"))
    e_hat = topk_codes(z_dead, k) @ W_dec
    return normalized_mse(residual, e_hat)
