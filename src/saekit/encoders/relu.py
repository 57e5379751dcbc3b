"""Standard SAE: f = ReLU(W_enc (x − b_dec) + b_enc), loss ‖x − x̂‖² + λ Σ_i f_i ‖d_i‖."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from saekit import kernels, losses
from saekit.errors import SaekitError
from saekit.sae import LossOutput, register
from saekit.statement import Above, LinearEncoderMixin, Selected, Selection, StatedSAE  # noqa: F401 (re-exported)


@dataclass
class L1Params:
    l1_coeff: float = 5.0
    """λ, the sparsity coefficient (with inputs normalised to E|x|^2 = d_in)."""
    kernels: Literal["auto", "dense", "sparse"] = "auto"
    """Training kernels: sparse runs the decoder, the encoder backward (and the gated auxiliary pass) on
    the active latents only; dense uses full matmuls; auto picks per batch by measured code density."""


@dataclass
class ReluParams(L1Params):
    unit_norm_atoms: bool = False
    """Keep atoms at unit norm (then the weighted L1 is the plain L1); False lets norms float."""


@register
class ReluSAE(StatedSAE):
    """Stated once (``saekit.statement``): the support is z > 0, the objective ‖x − x̂‖² + λ Σ ReLU(z_i) ‖d_i‖."""

    architecture = "relu"
    summary = "standard SAE, ReLU codes, decoder-norm-weighted L1 (Bricken et al. 2023)"
    Params = ReluParams
    uses_sparsity_penalty = True

    @classmethod
    def validate(cls, cfg) -> None:
        if not cfg.l1_coeff >= 0:
            raise SaekitError(f"sae.l1_coeff must be >= 0, got {cfg.l1_coeff}")
        kernels.check_mode(cfg.kernels)

    def keeps_unit_norm(self) -> bool:
        return self.cfg.unit_norm_atoms

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        return self.pre_activations(x).relu()

    def selection(self, n_rows: int, like: Tensor) -> Selection:
        return Above(0.0, n_rows, self.cfg.n_latents)

    def objective(self, x: Tensor, sel: Selected, sparsity_scale: float, dead_mask: Tensor | None) -> LossOutput:
        a = sel.main
        f = a.z.relu()
        x_hat = a.decode(f, self.dictionary.W_dec) + self.dictionary.b_dec
        mse = losses.squared_error(x, x_hat)
        sparsity = a.per_token(f.abs() * a.latent(self.dictionary.atom_norms()))
        loss = mse + sparsity_scale * self.cfg.l1_coeff * sparsity
        return LossOutput(loss, {"mse": mse, "l1": sparsity}, a.codes(f), x_hat)
