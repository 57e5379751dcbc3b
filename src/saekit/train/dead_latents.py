"""Dead-latent tracking in tokens (not steps), and Bricken-style resampling for L1 architectures."""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.sae import SparseAutoencoder


class DeadLatentTracker:
    """Tokens since each latent last fired."""

    def __init__(self, n_latents: int, device: torch.device | str = "cpu") -> None:
        self.tokens_since_fired = torch.zeros(n_latents, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, fired: Tensor, n_tokens: int) -> None:
        """After a batch of ``n_tokens`` in which the latents ``fired`` ([n_latents] bool) were nonzero."""
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    def dead(self, window_tokens: int) -> Tensor:
        return self.tokens_since_fired >= window_tokens

    def dead_fraction(self, window_tokens: int) -> float:
        return self.dead(window_tokens).float().mean().item()


@torch.no_grad()
def resample_dead_latents(sae: SparseAutoencoder, x_scaled: Tensor, x_hat_scaled: Tensor, dead: Tensor,
                          optimizer: torch.optim.Optimizer) -> int:
    """Re-point dead latents at badly reconstructed inputs (Bricken et al. 2023).

    Inputs are drawn with probability ∝ (per-input squared error)²; the new atom is the unit vector
    of the centred input x − b_dec, the encoder row that vector times 0.2 × the mean encoder norm of
    live latents, biases 0, and the latents' Adam moments are reset. Returns how many were resampled.
    """
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = (x_scaled - x_hat_scaled).pow(2).sum(dim=-1)
    weights = err.pow(2)
    if not weights.sum() > 0:
        return 0
    picks = torch.multinomial(weights, idx.numel(), replacement=idx.numel() > weights.numel())
    centred = x_scaled[picks] - sae.b_dec
    directions = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norms = sae.encoder_weight().norm(dim=1)
    encoder_norm = 0.2 * (enc_norms[alive].mean().item() if alive.any() else 1.0)
    sae.reinit_latents(idx, directions.to(sae.W_dec.dtype), encoder_norm)
    for param, dim in sae.latent_parameters():
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(dim, idx, 0.0)
    return idx.numel()
