"""The shared dictionary (decoder): atoms W_dec [n_latents, d_in] and bias b_dec [d_in]."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dictionary(nn.Module):
    """Decoder shared by every encoder family; x̂ = f @ W_dec + b_dec."""

    def __init__(self, n_latents: int, d_in: int) -> None:
        super().__init__()
        self.W_dec = nn.Parameter(torch.empty(n_latents, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[0]

    @property
    def d_in(self) -> int:
        return self.W_dec.shape[1]

    def reset_random(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm atoms (Gaussian directions)."""
        with torch.no_grad():
            self.W_dec.copy_(torch.randn(self.W_dec.shape, generator=generator, dtype=self.W_dec.dtype))
            self.normalize_()

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def atom_norms(self) -> Tensor:
        return self.W_dec.norm(dim=1)

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every atom back onto the unit sphere."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component along each (unit) atom, so a step moves atoms along the sphere."""
        g = self.W_dec.grad
        if g is None:
            return
        W = self.W_dec
        dots = torch.bmm(g.unsqueeze(1), W.unsqueeze(2)).view(-1, 1)  # g_i · d_i without a [n_latents, d_in] product
        g.addcmul_(W, dots / W.norm(dim=1, keepdim=True).square().clamp_min(1e-24), value=-1.0)
