"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations; loss NMSE + (1/32)·AuxK.

Stated once (``saekit.statement``): the selection is each token's top k (of the scores, which a
gradient-aware variant changes), the objective NMSE(x, x̂) with f = ReLU(z) on the selected entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from saekit import kernels, losses
from saekit.errors import SaekitError
from saekit.sae import LossOutput, register
from saekit.statement import Active, AuxKMixin, RowTopK, Selected, Selection, StatedSAE


@dataclass
class TopKParams:
    k: int = 32
    """Latents kept per token (batchtopk, matryoshka: on average over the batch)."""
    k_aux: int = 0
    """Dead latents used by AuxK; 0 means d_in // 2 (always capped by the number of dead latents)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_tokens: int = 0
    """A latent is dead for AuxK when it has not fired in this many tokens; 0 = scaled to the run:
    1% of its training tokens (at least one batch), at most Gao et al.'s 10,000,000 (their LM value, which
    a run shorter than 10M tokens never reaches, so AuxK would never switch on)."""
    kernels: Literal["auto", "dense", "sparse"] = "auto"
    """Training kernels: sparse runs the decoder, the encoder backward (and the gated auxiliary pass) on
    the active latents only; dense uses full matmuls; auto picks per batch by measured code density."""


class TopKFamily(AuxKMixin, StatedSAE):
    """ReLU codes on a selection of pre-activations, trained on NMSE + AuxK (topk, batchtopk, matryoshka)."""

    @classmethod
    def validate(cls, cfg) -> None:
        if not 0 < cfg.k <= cfg.n_latents:
            raise SaekitError(f"sae.k must lie in [1, n_latents={cfg.n_latents}], got {cfg.k}")
        if cfg.k_aux < 0 or cfg.aux_coeff < 0 or cfg.dead_tokens < 0:
            raise SaekitError("sae.k_aux, sae.aux_coeff and sae.dead_tokens must be >= 0 (dead_tokens 0: scaled "
                              "to the run)")
        kernels.check_mode(cfg.kernels)

    def objective(self, x: Tensor, sel: Selected, sparsity_scale: float, dead_mask: Tensor | None) -> LossOutput:
        a = sel.main
        f = a.selected(a.z.relu())
        loss, terms, x_hat = self.reconstruction(x, a, f)
        loss = self.with_auxk(loss, terms, x, x_hat, sel, dead_mask)
        self.observe(a, f)
        return LossOutput(loss, terms, a.codes(f), x_hat)

    def reconstruction(self, x: Tensor, a: Active, f: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(reconstruction loss, its terms, x̂): NMSE of the whole dictionary's reconstruction."""
        x_hat = a.decode(f, self.dictionary.W_dec) + self.dictionary.b_dec
        nmse = losses.normalized_mse(x, x_hat)
        return nmse, {"nmse": nmse}, x_hat

    def observe(self, a: Active, f: Tensor) -> None:
        """Look at a training batch's codes (BatchTopK estimates its inference threshold here)."""


@register
class TopKSAE(TopKFamily):
    architecture = "topk"
    summary = "TopK SAE: each token keeps its k largest pre-activations; NMSE + AuxK (Gao et al. 2024)"
    Params = TopKParams

    def selection(self, n_rows: int, like: Tensor) -> Selection:
        return RowTopK(self.cfg.k, n_rows, self.cfg.n_latents, like=like)

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        z = self.pre_activations(x)
        score = self.scorer(x, grad)
        s = z.detach() if score is None else score(z.detach(), slice(0, z.shape[0]))
        return z.relu() * self.selection(z.shape[0], z).mask(z, s)
