"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a tied magnitude path how much.

π_gate = W_gate x' + b_gate, π_mag = exp(r_mag) ⊙ (W_gate x') + b_mag, x' = x − b_dec,
f̃ = 1[π_gate > 0] ⊙ ReLU(π_mag). Loss: ‖x − x̂(f̃)‖² + λ‖ReLU(π_gate)‖₁ + ‖x − x̂_frozen(ReLU(π_gate))‖²,
where x̂_frozen uses stop-gradient copies of W_dec and b_dec.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from saekit import kernels, losses
from saekit.encoders.relu import L1Params, ReluSAE
from saekit.sae import LossOutput, SparseAutoencoder, register


@register
class GatedSAE(SparseAutoencoder):
    architecture = "gated"
    summary = "Gated SAE: a gate picks which latents fire, a tied magnitude path how much; L1 on the gate (Rajamanoharan et al. 2024)"
    Params = L1Params
    adam_betas = (0.0, 0.999)
    uses_sparsity_penalty = True
    validate = ReluSAE.validate

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        n, d = cfg.n_latents, cfg.d_in
        self.W_gate = nn.Parameter(torch.zeros(n, d))
        self.b_gate = nn.Parameter(torch.zeros(n))
        self.r_mag = nn.Parameter(torch.zeros(n))
        self.b_mag = nn.Parameter(torch.zeros(n))

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(π_gate, π_mag) for scaled inputs; both paths share one matmul."""
        projected = (x - self.dictionary.b_dec) @ self.W_gate.T
        return projected + self.b_gate, projected * self.r_mag.exp() + self.b_mag

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        return (pi_gate > 0).to(x.dtype) * pi_mag.relu()

    def jumprelu_threshold(self) -> Tensor:
        """θ = b_mag − exp(r_mag) ⊙ b_gate: at inference the Gated SAE is a JumpReLU with this threshold."""
        return self.b_mag - self.r_mag.exp() * self.b_gate

    def encode_jumprelu(self, x: Tensor) -> Tensor:
        """The same codes computed as JumpReLU_θ(π_mag) = ReLU(π_mag) ⊙ 1[π_mag > θ] (model-unit x)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            _, pi_mag = self.gate_and_magnitude(x * self.cfg.input_scale)
            return pi_mag.relu() * (pi_mag > self.jumprelu_threshold()).to(x.dtype)

    @torch.no_grad()
    def to_jumprelu(self):
        """The JumpReLU SAE this Gated SAE is at inference: W_enc = diag(exp(r_mag)) W_gate, b_enc = b_mag,
        θ = max(b_mag − exp(r_mag) ⊙ b_gate, 0), the same dictionary (a θ ≤ 0 is a ReLU: see jumprelu_from)."""
        from saekit.encoders.jumprelu import jumprelu_from

        return jumprelu_from(self, self.r_mag.exp().unsqueeze(1) * self.W_gate, self.b_mag, self.jumprelu_threshold())

    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None,
             grad: Tensor | None = None) -> LossOutput:
        x = x * self.cfg.input_scale
        if self.cfg.kernels != "dense":  # look at the first chunk's density, then go sparse or dense
            with torch.no_grad():  # π_gate, a chunk of tokens at a time
                chunks = kernels.linear_chunks(self, x - self.dictionary.b_dec, self.W_gate, self.b_gate)
            first = next(chunks)
            if kernels.use_sparse(self.cfg.kernels, kernels.sampled_density(first[1])):
                p, pi_gate = kernels.entries_above(itertools.chain([first], chunks), 0.0, x.shape[0], self.cfg.n_latents)
                return self._sparse_loss(x, p, pi_gate - self.b_gate.detach()[p.cols], sparsity_scale)
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        f = (pi_gate > 0).to(x.dtype) * pi_mag.relu()
        x_hat = self.dictionary.decode(f)
        mse = losses.squared_error(x, x_hat)
        gate_act = pi_gate.relu()
        sparsity = losses.l1(gate_act)
        x_hat_frozen = gate_act @ self.dictionary.W_dec.detach() + self.dictionary.b_dec.detach()
        aux = losses.squared_error(x, x_hat_frozen)
        loss = mse + sparsity_scale * self.cfg.l1_coeff * sparsity + aux
        return LossOutput(loss, {"mse": mse, "l1": sparsity, "aux": aux}, f, x_hat)

    def _sparse_loss(self, x: Tensor, p: kernels.Pattern, proj: Tensor, sparsity_scale: float) -> LossOutput:
        """The same loss over the open gates only (p: where π_gate > 0; proj: (x − b_dec) · w_gate there).

        Neither path passes gradient where the gate is shut (π_gate ≤ 0 zeroes ReLU(π_gate), and the
        indicator has no gradient), so the decoder, the auxiliary pass and the encoder backward run
        on the open entries."""
        projected = kernels.gather_preacts(x, self.dictionary.b_dec, self.W_gate, None, p, proj)
        pi_gate = projected + self.b_gate.index_select(0, p.cols)  # (index_select: a cheap index_add backward)
        pi_mag = projected * self.r_mag.exp().index_select(0, p.cols) + self.b_mag.index_select(0, p.cols)
        f = (pi_gate > 0).to(x.dtype) * pi_mag.relu()
        W_dec, b_dec = self.dictionary.W_dec, self.dictionary.b_dec
        x_hat = kernels.decode(f, W_dec, p) + b_dec
        mse = losses.squared_error(x, x_hat)
        gate_act = pi_gate.relu()
        sparsity = gate_act.abs().sum() / x.shape[0]
        x_hat_frozen = kernels.decode(gate_act, W_dec.detach(), p) + b_dec.detach()
        aux = losses.squared_error(x, x_hat_frozen)
        loss = mse + sparsity_scale * self.cfg.l1_coeff * sparsity + aux
        return LossOutput(loss, {"mse": mse, "l1": sparsity, "aux": aux}, kernels.SparseCodes(p, f.detach()), x_hat)

    def encoder_weight(self) -> Tensor:
        return self.W_gate

    @torch.no_grad()
    def reinit_latents(self, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        self.dictionary.W_dec[idx] = directions
        self.W_gate[idx] = directions * encoder_norm
        for p in (self.b_gate, self.r_mag, self.b_mag):
            p[idx] = 0.0

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.W_gate, 0), (self.b_gate, 0), (self.r_mag, 0), (self.b_mag, 0), (self.dictionary.W_dec, 0)]
