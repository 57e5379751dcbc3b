"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations; loss NMSE + (1/32)·AuxK."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
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
        return kernels.topk_indices(z, self.cfg.k)

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
        """The same loss touching only the k selected latents per token (and AuxK's k_aux); the
        pre-activations are made a chunk of tokens at a time and never held for the whole batch."""
        n, k = x.shape[0], self.cfg.k
        idx = torch.empty((n, k), dtype=torch.long, device=x.device)
        values = torch.empty((n, k), dtype=x.dtype, device=x.device)
        dead = dead_mask.nonzero().squeeze(1) if dead_mask is not None and self.cfg.aux_coeff > 0 else None
        k_aux = min(self.k_aux, dead.numel()) if dead is not None else 0
        aux_idx = torch.empty((n, k_aux), dtype=torch.long, device=x.device)
        aux_values = torch.empty((n, k_aux), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            xc = x - self.dictionary.b_dec
            for rows, z in kernels.linear_chunks(self, xc, self.W_enc, self.b_enc):
                i = self.select_indices(z, x[rows], grad[rows] if grad is not None else None)
                idx[rows], values[rows] = i, z.gather(1, i)
                if k_aux:
                    v, j = z.index_select(1, dead).topk(k_aux, dim=-1, sorted=False)
                    aux_idx[rows], aux_values[rows] = dead[j], v
        p = kernels.Pattern.from_indices(idx, self.cfg.n_latents)
        f = kernels.gather_preacts(x, self.dictionary.b_dec, self.W_enc, self.b_enc, p, values.view(-1)).relu()
        x_hat = kernels.decode(f, self.dictionary.W_dec, p) + self.dictionary.b_dec
        nmse = losses.normalized_mse(x, x_hat)
        terms = {"nmse": nmse}
        loss = nmse
        if dead is not None:
            aux = self._sparse_auxk(x, aux_idx, aux_values, (x - x_hat).detach())
            terms["auxk"] = aux
            loss = loss + self.cfg.aux_coeff * aux
        return LossOutput(loss, terms, kernels.SparseCodes(p, f.detach()), x_hat)

    def _sparse_auxk(self, x: Tensor, idx: Tensor, values: Tensor, residual: Tensor) -> Tensor:
        """losses.auxk_loss over the dead latents' top-k_aux pre-activations (idx, values) only."""
        if idx.shape[1] == 0:
            return x.new_zeros(())
        p = kernels.Pattern.from_indices(idx, self.cfg.n_latents)
        codes = kernels.gather_preacts(x, self.dictionary.b_dec, self.W_enc, self.b_enc, p, values.reshape(-1)).relu()
        return losses.normalized_mse(residual, kernels.decode(codes, self.dictionary.W_dec, p))

    def dead_mask(self, tokens_since_fired: Tensor) -> Tensor:
        return tokens_since_fired >= self.cfg.dead_tokens


