"""Standard SAE: f = ReLU(W_enc (x − b_dec) + b_enc), loss ‖x − x̂‖² + λ Σ_i f_i ‖d_i‖."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saekit import kernels, losses
from saekit.errors import SaekitError
from saekit.sae import LossOutput, SparseAutoencoder, register


@dataclass
class L1Params:
    l1_coeff: float = 5.0
    """λ, the sparsity coefficient (with inputs normalised to E|x|^2 = d_in)."""
    kernels: Literal["auto", "dense", "sparse"] = "auto"
    """Training kernels: sparse runs the decoder, the encoder backward (and the gated auxiliary pass) on
    the active latents only; dense uses full matmuls; auto picks per batch by measured code density."""


class LinearEncoderMixin:
    """An affine encoder W_enc [n_latents, d_in], b_enc [n_latents] applied to x − b_dec."""

    W_enc: nn.Parameter
    b_enc: nn.Parameter

    def _init_linear_encoder(self, n_latents: int, d_in: int) -> None:
        self.W_enc = nn.Parameter(torch.zeros(n_latents, d_in))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))

    def pre_activations(self, x: Tensor) -> Tensor:
        return (x - self.dictionary.b_dec) @ self.W_enc.T + self.b_enc  # type: ignore[attr-defined]

    def encoder_weight(self) -> Tensor:
        return self.W_enc

    @torch.no_grad()
    def reinit_latents(self, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        self.dictionary.W_dec[idx] = directions  # type: ignore[attr-defined]
        self.W_enc[idx] = directions * encoder_norm
        self.b_enc[idx] = 0.0

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.W_enc, 0), (self.b_enc, 0), (self.dictionary.W_dec, 0)]  # type: ignore[attr-defined]


@dataclass
class ReluParams(L1Params):
    unit_norm_atoms: bool = False
    """Keep atoms at unit norm (then the weighted L1 is the plain L1); False lets norms float."""


@register
class ReluSAE(LinearEncoderMixin, SparseAutoencoder):
    architecture = "relu"
    summary = "standard SAE, ReLU codes, decoder-norm-weighted L1 (Bricken et al. 2023)"
    Params = ReluParams
    uses_sparsity_penalty = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._init_linear_encoder(cfg.n_latents, cfg.d_in)

    @classmethod
    def validate(cls, cfg) -> None:
        if not cfg.l1_coeff >= 0:
            raise SaekitError(f"sae.l1_coeff must be >= 0, got {cfg.l1_coeff}")
        kernels.check_mode(cfg.kernels)

    def keeps_unit_norm(self) -> bool:
        return self.cfg.unit_norm_atoms

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        return self.pre_activations(x).relu()

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None,
             grad: Tensor | None = None) -> LossOutput:
        x = x * self.cfg.input_scale
        if self.cfg.kernels != "dense":  # look at the first chunk's density, then go sparse or dense
            with torch.no_grad():
                chunks = kernels.linear_chunks(self, x - self.dictionary.b_dec, self.W_enc, self.b_enc)
            first = next(chunks)
            if kernels.use_sparse(self.cfg.kernels, kernels.sampled_density(first[1])):
                p, z = kernels.entries_above(itertools.chain([first], chunks), 0.0, x.shape[0], self.cfg.n_latents)
                return self._sparse_loss(x, p, z, sparsity_scale)
        f = self.encode_scaled(x)
        x_hat = self.dictionary.decode(f)
        mse = losses.squared_error(x, x_hat)
        sparsity = losses.weighted_l1(f, self.dictionary.atom_norms())
        loss = mse + sparsity_scale * self.cfg.l1_coeff * sparsity
        return LossOutput(loss, {"mse": mse, "l1": sparsity}, f, x_hat)

    def _sparse_loss(self, x: Tensor, p: kernels.Pattern, z: Tensor, sparsity_scale: float) -> LossOutput:
        """The same loss over the active latents only (p: where z > 0; z: their pre-activations)."""
        f = kernels.gather_preacts(x, self.dictionary.b_dec, self.W_enc, self.b_enc, p, z).relu()
        x_hat = kernels.decode(f, self.dictionary.W_dec, p) + self.dictionary.b_dec
        mse = losses.squared_error(x, x_hat)
        sparsity = (f.abs() * self.dictionary.atom_norms().index_select(0, p.cols)).sum() / x.shape[0]
        loss = mse + sparsity_scale * self.cfg.l1_coeff * sparsity
        return LossOutput(loss, {"mse": mse, "l1": sparsity}, kernels.SparseCodes(p, f.detach()), x_hat)
