"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations; loss NMSE + (1/32)·AuxK."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from saekit import kernels, losses
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
    kernels: Literal["auto", "dense", "sparse"] = "auto"
    """Training kernels: sparse runs the decoder, the encoder backward (and the gated auxiliary pass) on
    the active latents only; dense uses full matmuls; auto picks per batch by measured code density."""


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
        kernels.check_mode(cfg.kernels)

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or self.cfg.d_in // 2

    def select(self, z: Tensor, x: Tensor, grad: Tensor | None) -> Tensor:
        """Codes from pre-activations; gradient-aware subclasses change which latents are chosen."""
        return losses.topk_codes(z, self.cfg.k)

    def select_indices(self, z: Tensor, x: Tensor, grad: Tensor | None) -> Tensor:
        """[B, k] indices of the latents ``select`` keeps (their codes are ReLU(z) there); used by the
        sparse kernels. A subclass that overrides ``select`` but not this trains with dense kernels."""
        return z.topk(self.cfg.k, dim=-1, sorted=False).indices

    def _sparse_ok(self) -> bool:
        cls = type(self)
        if cls.select is not TopKSAE.select and cls.select_indices is TopKSAE.select_indices:
            return False
        mode = self.cfg.kernels
        return kernels.use_sparse(mode, self.cfg.k / self.cfg.n_latents) if mode != "dense" else False

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        return self.select(self.pre_activations(x), x, grad)

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None,
             grad: Tensor | None = None) -> LossOutput:
        x = x * self.cfg.input_scale
        if grad is not None:
            grad = grad / self.cfg.input_scale
        if self._sparse_ok():
            return self._sparse_loss(x, grad, dead_mask)
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

    def _sparse_loss(self, x: Tensor, grad: Tensor | None, dead_mask: Tensor | None) -> LossOutput:
        """The same loss touching only the k selected latents per token (and AuxK's k_aux)."""
        xc = x - self.dictionary.b_dec
        z = kernels.linear(xc, self.W_enc, self.b_enc, kernels.workspace_of(self))
        idx = self.select_indices(z, x, grad)
        p = kernels.Pattern.from_indices(idx, self.cfg.n_latents)
        f = kernels.gather_preacts(xc, self.W_enc, self.b_enc, p, z.gather(1, idx).reshape(-1)).relu()
        x_hat = kernels.decode(f, self.dictionary.W_dec, p) + self.dictionary.b_dec
        nmse = losses.normalized_mse(x, x_hat)
        terms = {"nmse": nmse}
        loss = nmse
        if dead_mask is not None and self.cfg.aux_coeff > 0:
            aux = self._sparse_auxk(xc, z, (x - x_hat).detach(), dead_mask)
            terms["auxk"] = aux
            loss = loss + self.cfg.aux_coeff * aux
        codes = z.zero_().scatter_(1, idx, f.detach().view(idx.shape))  # reuses z's memory
        return LossOutput(loss, terms, codes, x_hat)

    def _sparse_auxk(self, xc: Tensor, z: Tensor, residual: Tensor, dead_mask: Tensor) -> Tensor:
        """losses.auxk_loss over the dead latents' top-k_aux pre-activations only."""
        dead = dead_mask.nonzero().squeeze(1)
        k = min(self.k_aux, dead.numel())
        if k == 0:
            return z.new_zeros(())
        values, j = z.index_select(1, dead).topk(k, dim=-1, sorted=False)
        idx = dead[j]
        p = kernels.Pattern.from_indices(idx, self.cfg.n_latents)
        codes = kernels.gather_preacts(xc, self.W_enc, self.b_enc, p, values.reshape(-1)).relu()
        return losses.normalized_mse(residual, kernels.decode(codes, self.dictionary.W_dec, p))

    def dead_mask(self, tokens_since_fired: Tensor) -> Tensor:
        return tokens_since_fired >= self.cfg.dead_tokens


