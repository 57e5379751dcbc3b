"""Gradient-aware selection (g-SAE, Olmo et al. 2024) as a modifier of any top-k-style architecture.

z = W_enc (x − b_dec) + b_enc; g = ∂L_LM/∂x (next-token CE summed over tokens, clean forward,
detached); score s = z ⊙ (1 + β |W_dec ĝ|) with ĝ = g / grad_scale. The selection (a token's top k,
the batch's top k·B, ...) ranks s instead of z and keeps the chosen latents *with their values z*.
β = 0, or no gradient at hand, is exactly the unmodified architecture.

grad_scale is the mean ‖g‖ over a sample (in the SAE's normalised input units), fixed by the trainer
at the start and saved in cfg.json, so β means the same thing across models and layers.

``gradient_aware(Base, name)`` makes the registered variant: one implementation for topk
(``gradient_topk``), batchtopk and matryoshka.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from saekit import kernels
from saekit.errors import SaekitError


@dataclass
class GradientParams:
    beta: float = 1.0
    """β, weight of the loss-gradient term in the selection score s = z (1 + β |W_dec g / grad_scale|)."""
    grad_scale: float = 1.0
    """Normaliser of the LM gradient: its mean norm over a sample, set by the trainer at the start."""


class GradientAware:
    """Mixin (before the base architecture): rank s = z (1 + β |W_dec ĝ|) in the selection."""

    cfg: object
    fitted_fields: tuple[str, ...] = ("grad_scale",)  # set by fit_to_sample, so a given value would be overwritten

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)  # type: ignore[misc]
        if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
            raise SaekitError(f"sae.beta must be a finite number >= 0, got {cfg.beta}")
        if not (cfg.grad_scale > 0 and math.isfinite(cfg.grad_scale)):
            raise SaekitError(f"sae.grad_scale must be positive, got {cfg.grad_scale}")

    @property
    def needs_gradients(self) -> bool:  # type: ignore[override]
        return self.cfg.beta != 0  # type: ignore[attr-defined]

    @classmethod
    def fit_to_sample(cls, cfg, acts: Tensor, grads: Tensor | None):
        """Fix grad_scale = E‖g‖ in normalised input units (∂L/∂(s·x) = g / s)."""
        if cfg.beta == 0:
            return cfg
        if grads is None:
            raise SaekitError(f"{cfg.architecture} needs LM gradients: use a store made with `saekit cache --grads` "
                              "or data.lm.with_grads=true (or set sae.beta=0)")
        mean_norm = (grads.double() / cfg.input_scale).norm(dim=-1).mean().item()
        if not (mean_norm > 0 and math.isfinite(mean_norm)):
            raise SaekitError("the LM gradients in the sample are all zero or not finite")
        return replace(cfg, grad_scale=mean_norm)

    def _scores(self, z: Tensor, grad: Tensor) -> Tensor:
        """z (1 + β |d_i · g| / grad_scale) in two passes over a scratch buffer. Where z ≤ 0 this is ≤ 0
        rather than ReLU(z)·(…) = 0, which changes nothing: such a latent, if picked, has code 0."""
        effect = kernels.scratch(self, "scores", tuple(z.shape), z)  # type: ignore[arg-type]
        torch.mm(grad, self.dictionary.W_dec.detach().T, out=effect)  # type: ignore[attr-defined]
        z = z.detach()
        return torch.addcmul(z, z, effect.abs_(), value=self.cfg.beta / self.cfg.grad_scale, out=effect)  # type: ignore[attr-defined]

    def scorer(self, x: Tensor, grad: Tensor | None):
        if grad is None or self.cfg.beta == 0:  # type: ignore[attr-defined]
            return None
        return lambda z, rows: self._scores(z, grad[rows])


def gradient_aware(base: type, name: str, params_name: str | None = None) -> type:
    """The gradient-aware variant of ``base`` named ``name`` (register it with @register)."""
    params = dataclasses.dataclass(type(params_name or f"Gradient{base.Params.__name__}", (base.Params, GradientParams),
                                        {"__doc__": f"{base.Params.__doc__ or ''} plus gradient-aware selection."}))
    doc = f"{base.__doc__ or base.__name__}\n\nGradient-aware: the selection ranks z (1 + β |W_dec ĝ|) (saekit.gradient_selection)."
    summary = f"{base.architecture} whose selection ranks z·(1 + β|W_dec ĝ|), ĝ the LM gradient (g-SAE, Olmo et al. 2024)"
    return type(f"Gradient{base.__name__}", (GradientAware, base), {"architecture": name, "Params": params, "summary": summary,
                                                                 "__doc__": doc, "__module__": base.__module__})
