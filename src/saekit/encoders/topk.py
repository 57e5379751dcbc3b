"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations; loss NMSE + (1/32)·AuxK."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saekit import losses
from saekit.encoders.relu import LinearEncoderMixin
from saekit.errors import SaekitError
from saekit.sae import LossOutput, SparseAutoencoder, register


@dataclass
class TopKParams:
    k: int = 32
    """Latents kept per token."""
    k_aux: int = 0
    """Dead latents used by AuxK; 0 means d_in // 2 (always capped by the number of dead latents)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_tokens: int = 10_000_000
    """A latent is dead for AuxK when it has not fired in this many tokens."""


@register
class TopKSAE(LinearEncoderMixin, SparseAutoencoder):
    architecture = "topk"
    Params = TopKParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._init_linear_encoder(cfg.n_latents, cfg.d_in)

    @classmethod
    def validate(cls, cfg) -> None:
        if not 0 < cfg.k <= cfg.n_latents:
            raise SaekitError(f"sae.k must lie in [1, n_latents={cfg.n_latents}], got {cfg.k}")
        if cfg.k_aux < 0 or cfg.aux_coeff < 0 or cfg.dead_tokens <= 0:
            raise SaekitError("sae.k_aux and sae.aux_coeff must be >= 0 and sae.dead_tokens > 0")

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or self.cfg.d_in // 2

    def select(self, z: Tensor, x: Tensor, grad: Tensor | None) -> Tensor:
        """Codes from pre-activations; gradient-aware subclasses change which latents are chosen."""
        return losses.topk_codes(z, self.cfg.k)

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        return self.select(self.pre_activations(x), x, grad)

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None,
             grad: Tensor | None = None) -> LossOutput:
        x = x * self.cfg.input_scale
        if grad is not None:
            grad = grad / self.cfg.input_scale
        z = self.pre_activations(x)
        f = self.select(z, x, grad)
        x_hat = self.dictionary.decode(f)
        nmse = losses.normalized_mse(x, x_hat)
        terms = {"nmse": nmse}
        loss = nmse
        if dead_mask is not None and self.cfg.aux_coeff > 0:
            aux = losses.auxk_loss(z, (x - x_hat).detach(), self.dictionary.W_dec, dead_mask, self.k_aux)
            terms["auxk"] = aux
            loss = loss + self.cfg.aux_coeff * aux
        return LossOutput(loss, terms, f, x_hat)

    def dead_mask(self, tokens_since_fired: Tensor) -> Tensor:
        return tokens_since_fired >= self.cfg.dead_tokens


