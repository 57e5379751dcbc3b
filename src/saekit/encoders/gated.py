"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a tied magnitude path how much.

π_gate = W_gate x' + b_gate, π_mag = exp(r_mag) ⊙ (W_gate x') + b_mag, x' = x − b_dec,
f̃ = 1[π_gate > 0] ⊙ ReLU(π_mag). Loss: ‖x − x̂(f̃)‖² + λ‖ReLU(π_gate)‖₁ + ‖x − x̂_frozen(ReLU(π_gate))‖²,
where x̂_frozen uses stop-gradient copies of W_dec and b_dec.

Stated once (``saekit.statement``): the selection is the open gates, π_gate > 0 (no term passes
gradient where a gate is shut: ReLU(π_gate) is 0 there and the indicator has no gradient); the
objective reads the shared projection W_gate x' without b_gate (``bias_outside``) and builds both paths
from it, so the sparse path runs the decoder, the auxiliary pass and the encoder backward on the open
gates only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from saekit import losses
from saekit.encoders.relu import L1Params, ReluSAE
from saekit.sae import LossOutput, register
from saekit.statement import Above, Selected, Selection, StatedLoss


def _same(v: Tensor) -> Tensor:
    return v


def gated_codes(pi_gate: Tensor, pi_mag: Tensor) -> Tensor:
    """f̃ = 1[π_gate > 0] ⊙ ReLU(π_mag)."""
    return (pi_gate > 0).to(pi_mag.dtype) * pi_mag.relu()


@register
class GatedSAE(StatedLoss):
    architecture = "gated"
    summary = "Gated SAE: a gate picks which latents fire, a tied magnitude path how much; L1 on the gate (Rajamanoharan et al. 2024)"
    Params = L1Params
    adam_betas = (0.0, 0.999)
    uses_sparsity_penalty = True
    validate = ReluSAE.validate
    bias_outside = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        n, d = cfg.n_latents, cfg.d_in
        self.W_gate = nn.Parameter(torch.zeros(n, d))
        self.b_gate = nn.Parameter(torch.zeros(n))
        self.r_mag = nn.Parameter(torch.zeros(n))
        self.b_mag = nn.Parameter(torch.zeros(n))

    def paths(self, projected: Tensor, latent: Callable[[Tensor], Tensor] = _same) -> tuple[Tensor, Tensor]:
        """(π_gate, π_mag) from the shared projection W_gate x'; ``latent`` aligns a per-latent
        parameter with ``projected`` (the identity on a dense [B, M] matrix, Active.latent otherwise)."""
        pi_gate = projected + latent(self.b_gate)
        return pi_gate, projected * latent(self.r_mag.exp()) + latent(self.b_mag)

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(π_gate, π_mag) for scaled inputs; both paths share one matmul."""
        return self.paths((x - self.dictionary.b_dec) @ self.W_gate.T)

    def encode_scaled(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        return gated_codes(*self.gate_and_magnitude(x))

    # ---- the stated loss ---------------------------------------------------------------------------
    def projection(self) -> tuple[Tensor, Tensor]:
        return self.W_gate, self.b_gate

    def selection(self, n_rows: int, like: Tensor) -> Selection:
        return Above(0.0, n_rows, self.cfg.n_latents)  # the open gates (b_gate inside the chunks' matmul)

    def objective(self, x: Tensor, sel: Selected, sparsity_scale: float, dead_mask: Tensor | None) -> LossOutput:
        a = sel.main
        pi_gate, pi_mag = self.paths(a.z, a.latent)
        f = gated_codes(pi_gate, pi_mag)
        W_dec, b_dec = self.dictionary.W_dec, self.dictionary.b_dec
        x_hat = a.decode(f, W_dec) + b_dec
        mse = losses.squared_error(x, x_hat)
        gate_act = pi_gate.relu()
        sparsity = a.per_token(gate_act.abs())
        x_hat_frozen = a.decode(gate_act, W_dec.detach()) + b_dec.detach()  # the aux term trains no decoder
        aux = losses.squared_error(x, x_hat_frozen)
        loss = mse + sparsity_scale * self.cfg.l1_coeff * sparsity + aux
        return LossOutput(loss, {"mse": mse, "l1": sparsity, "aux": aux}, a.codes(f), x_hat)

    # ---- inference as a JumpReLU ---------------------------------------------------------------------
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

    # ---- training support ----------------------------------------------------------------------------
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
