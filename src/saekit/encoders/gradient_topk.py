"""g-SAE (Olmo et al. 2024, "Features that Make a Difference"): TopK whose *choice* of latents also
weighs each latent's effect on the model's loss.

z = ReLU(W_enc (x − b_dec) + b_enc); g = ∂L_LM/∂x (next-token CE summed over tokens, clean forward,
detached); score s = z ⊙ (1 + β |W_dec ĝ|) with ĝ = g / grad_scale; the k latents with the largest s
are kept *with their values z*. β = 0, or no gradient at hand, is exactly TopK.

grad_scale is the mean ‖g‖ over a sample (in the SAE's normalised input units), fixed by the trainer
at the start and saved in cfg.json, so β means the same thing across models and layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from saekit import kernels
from saekit.encoders.topk import TopKParams, TopKSAE
from saekit.errors import SaekitError
from saekit.sae import register


@dataclass
class GradientTopKParams(TopKParams):
    beta: float = 1.0
    """β, weight of the loss-gradient term in the selection score s = z (1 + β |W_dec g / grad_scale|)."""
    grad_scale: float = 1.0
    """Normaliser of the LM gradient: its mean norm over a sample, set by the trainer at the start."""


@register
class GradientTopKSAE(TopKSAE):
    architecture = "gradient_topk"
    Params = GradientTopKParams

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
            raise SaekitError(f"sae.beta must be a finite number >= 0, got {cfg.beta}")
        if not (cfg.grad_scale > 0 and math.isfinite(cfg.grad_scale)):
            raise SaekitError(f"sae.grad_scale must be positive, got {cfg.grad_scale}")

    @property
    def needs_gradients(self) -> bool:  # type: ignore[override]
        return self.cfg.beta != 0

    fitted_fields = ("grad_scale",)

    @classmethod
    def fit_to_sample(cls, cfg, acts: Tensor, grads: Tensor | None):
        """Fix grad_scale = E‖g‖ in normalised input units (∂L/∂(s·x) = g / s)."""
        if cfg.beta == 0:
            return cfg
        if grads is None:
            raise SaekitError("gradient_topk needs LM gradients: use a store made with `saekit cache --grads` "
                              "or data.lm.with_grads=true (or set sae.beta=0)")
        mean_norm = (grads.double() / cfg.input_scale).norm(dim=-1).mean().item()
        if not (mean_norm > 0 and math.isfinite(mean_norm)):
            raise SaekitError("the LM gradients in the sample are all zero or not finite")
        return replace(cfg, grad_scale=mean_norm)

    def _scores(self, z: Tensor, grad: Tensor) -> Tensor:
        """z (1 + β |d_i · g| / grad_scale) in two passes over a scratch buffer. Where z ≤ 0 this is ≤ 0
        rather than ReLU(z)·(…) = 0, which changes nothing: such a latent, if picked, has code 0."""
        effect = kernels.scratch(self, "scores", tuple(z.shape), z)
        torch.mm(grad, self.dictionary.W_dec.detach().T, out=effect)  # [B, n_latents]: d_i · g
        z = z.detach()
        return torch.addcmul(z, z, effect.abs_(), value=self.cfg.beta / self.cfg.grad_scale, out=effect)

    def select_indices(self, z: Tensor, x: Tensor, grad: Tensor | None) -> Tensor:
        if grad is None or self.cfg.beta == 0:
            return super().select_indices(z, x, grad)
        return kernels.topk_indices(self._scores(z, grad), self.cfg.k)

    def select(self, z: Tensor, x: Tensor, grad: Tensor | None) -> Tensor:
        if grad is None or self.cfg.beta == 0:
            return super().select(z, x, grad)
        idx = self.select_indices(z, x, grad)
        return torch.zeros_like(z).scatter_(-1, idx, z.gather(-1, idx).relu())
