"""Dead-latent tracking in tokens (not steps), and Bricken-style resampling for L1 architectures."""

from __future__ import annotations

import math

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


AUXK_DEAD_TOKENS_CAP = 10_000_000
"""Gao et al.'s AuxK dead threshold for LM runs of billions of tokens: the most a run-scaled one can be."""


def auxk_dead_tokens(dead_tokens: int, run_tokens: int, batch_size: int) -> int:
    """The AuxK dead threshold in tokens: ``dead_tokens`` when set (> 0), else 1% of the run's training
    tokens, at least one batch and at most ``AUXK_DEAD_TOKENS_CAP``."""
    if dead_tokens > 0:
        return dead_tokens
    return min(AUXK_DEAD_TOKENS_CAP, max(batch_size, run_tokens // 100))


@torch.no_grad()
def resample_dead_latents(sae: SparseAutoencoder, x_scaled: Tensor, x_hat_scaled: Tensor, dead: Tensor,
                          optimizer: torch.optim.Optimizer) -> int:
    """Re-point dead latents at badly reconstructed inputs (Bricken et al. 2023).

    Inputs are drawn with probability ∝ (per-input squared error)²; the new atom is the unit vector
    of the centred input x − b_dec, the encoder row that vector times 0.2 × the mean encoder norm of
    live latents, biases 0, and the latents' Adam moments are reset (the trainer's ``FreshAdamRows``
    then restarts their step counts too). Returns how many were resampled.
    """
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = (x_scaled - x_hat_scaled).pow(2).sum(dim=-1)
    weights = err.pow(2)
    if not weights.sum() > 0:
        return 0
    # drawn on the CPU generator whatever the device: the one a checkpoint saves, so a resumed run on
    # CUDA resamples what an uninterrupted one would (a no-op move on CPU)
    picks = torch.multinomial(weights.cpu(), idx.numel(), replacement=idx.numel() > weights.numel())
    picks = picks.to(x_scaled.device)
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


class FreshAdamRows:
    """Per-latent Adam step counts for resampled latents, so that their moments restart like a fresh Adam's.

    Why: torch's Adam keeps one step count t per tensor, not per row. Zeroing a resampled row's moments
    but leaving t makes its bias correction that of an old row: with β1 = 0 the first-moment
    correction 1 − β1^t is 1 at every step, but the second moment is divided by 1 − β2^t ≈ 1 instead
    of 1 − β2^n ≈ n(1 − β2) for a row that is n updates old, so the row's first update is
    1/sqrt(1 − β2) ≈ 31.6 times a fresh Adam's (β2 = 0.999), and it stays over 2 times for 287 updates.

    How: the moments are updated as usual (their recursion does not involve t); after each optimiser
    step the young rows of every latent parameter are recomputed from their old values with the row's
    own count n, p ← p − lr / (1 − β1^n) · m / (sqrt(v / (1 − β2^n)) + ε), exactly torch's Adam formula.
    A row is young until β1^n and β2^n are both below 1e-7 (then t and n give the same update to float
    precision). ``ages`` (−1 for a row that is not young) is part of the trainer's checkpoint.
    """

    TOLERANCE = 1e-7

    def __init__(self, n_latents: int) -> None:
        self.n_latents = n_latents
        self.rows = torch.zeros(0, dtype=torch.int64)  # the young latents, oldest reset first
        self.age = torch.zeros(0, dtype=torch.int64)  # Adam updates since each one's reset
        self.groups: list[list[int]] = []  # [rows, age] per reset, oldest first: pruned without a device sync

    @property
    def ages(self) -> Tensor:
        """[n_latents] int64: updates since each young latent's reset, −1 for the others (for checkpoints)."""
        out = torch.full((self.n_latents,), -1, dtype=torch.int64)
        out[self.rows.cpu()] = self.age.cpu()
        return out

    def load_ages(self, ages: Tensor, device: torch.device | str = "cpu") -> None:
        order = sorted((a for a in ages.unique().tolist() if a >= 0), reverse=True)
        parts = [(ages == a).nonzero().squeeze(1) for a in order]
        self.rows = torch.cat([torch.zeros(0, dtype=torch.int64), *parts]).to(device)
        self.age = torch.cat([torch.zeros(0, dtype=torch.int64), *(torch.full_like(p, a) for p, a in zip(parts, order))]).to(device)
        self.groups = [[p.numel(), a] for p, a in zip(parts, order)]

    def reset(self, idx: Tensor) -> None:
        """Latents ``idx`` had their moments zeroed: their next update is their first."""
        self.rows, self.age = self.rows.to(idx.device), self.age.to(idx.device)
        keep = ~torch.isin(self.rows, idx)
        counts = [int(seg.sum()) for seg in keep.split([n for n, _ in self.groups])] if self.groups else []
        self.groups = [[c, a] for c, (_, a) in zip(counts, self.groups) if c] + [[idx.numel(), 0]]
        self.rows = torch.cat([self.rows[keep], idx])
        self.age = torch.cat([self.age[keep], torch.zeros_like(idx)])

    def before_step(self, sae: SparseAutoencoder) -> list[Tensor] | None:
        """Count this update and snapshot the young rows of every latent parameter (None: no young rows)."""
        if not self.groups:
            return None
        for g in self.groups:
            g[1] += 1
        self.age += 1
        return [p.detach().index_select(dim, self.rows) for p, dim in sae.latent_parameters()]

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer,
                   snapshot: list[Tensor] | None) -> None:
        """Redo the young rows' update with their own step counts."""
        if snapshot is None:
            return
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        n = self.age.double()
        for (param, dim), old in zip(sae.latent_parameters(), snapshot):
            group, state = groups[id(param)], optimizer.state.get(param, {})
            if "exp_avg" not in state or group.get("amsgrad") or group.get("weight_decay") or group.get("maximize"):
                continue
            beta1, beta2 = group["betas"]
            shape = [1] * old.ndim
            shape[dim] = -1
            step_size = (float(group["lr"]) / (1 - beta1 ** n)).to(old.dtype).view(shape)
            c2_sqrt = (1 - beta2 ** n).sqrt().to(old.dtype).view(shape)
            m, v = state["exp_avg"].index_select(dim, self.rows), state["exp_avg_sq"].index_select(dim, self.rows)
            param.index_copy_(dim, self.rows, old - step_size * m / ((v.sqrt() / c2_sqrt).add_(group["eps"])))
        betas = [g["betas"] for g in optimizer.param_groups]
        while self.groups and all(max(b1 ** self.groups[0][1], b2 ** self.groups[0][1]) < self.TOLERANCE
                                  for b1, b2 in betas):
            count = self.groups.pop(0)[0]
            self.rows, self.age = self.rows[count:], self.age[count:]
