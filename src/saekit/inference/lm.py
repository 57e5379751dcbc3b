"""Decoupled inference on a trained SAE's frozen dictionary (real activations, issue 6 part 4).

A trained ``SparseAutoencoder`` works in *scaled* units: codes come from ``encode_scaled(s·x)`` and
``decode(f) = (f W_dec + b_dec) / s`` with s = ``cfg.input_scale``. Every encoder compared here
(the SAE's own, ISTA/FISTA, pursuit, an MLP) produces codes for the same scaled problem

    min_f ‖s·x − f W_dec − b_dec‖² (+ λ‖f‖₁),  f ≥ 0,

so codes are interchangeable and the reconstruction in model units is always ``(f W_dec + b_dec) / s``.
``FrozenDictionary`` holds that convention; ``nnls_on_support`` is the λ = 0 refit ("debiasing")
of a code's magnitudes on its own support; the FLOP helpers extend ``saekit.inference.flops`` to the
Gated (JumpReLU) encoder and to the refit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.inference import flops
from saekit.inference.iterative import InferenceResult, check_inputs

# model-unit activations [n, d] -> (reconstruction [n, d] in model units, codes [n, M])
Reconstruct = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class FrozenDictionary:
    """W_dec [M, d], b_dec [d] of a trained SAE (detached) and its input scale s."""

    W_dec: Tensor
    b_dec: Tensor
    input_scale: float = 1.0

    @classmethod
    def from_sae(cls, sae: torch.nn.Module) -> "FrozenDictionary":
        return cls(sae.W_dec.detach().clone(), sae.b_dec.detach().clone(), float(sae.cfg.input_scale))

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[0]

    @property
    def d_in(self) -> int:
        return self.W_dec.shape[1]

    def scale(self, x: Tensor) -> Tensor:
        """Model-unit activations to the dictionary's units."""
        return x.to(self.W_dec.dtype) * self.input_scale

    def decode(self, codes: Tensor) -> Tensor:
        """Codes to a model-unit reconstruction."""
        return (codes @ self.W_dec + self.b_dec) / self.input_scale

    def reconstructor(self, encode: Callable[[Tensor], Tensor]) -> Reconstruct:
        """Wrap ``encode`` (scaled x -> codes) into model units x -> (x̂, f), the form splicing takes."""
        def run(x: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                f = encode(self.scale(x))
                return self.decode(f), f
        return run


@torch.no_grad()
def nnls_on_support(x: Tensor, W_dec: Tensor, b_dec: Tensor | None, codes: Tensor, *, max_iters: int = 50,
                    tol: float = 1e-4, chunk: int = 256) -> InferenceResult:
    """Refit the magnitudes of ``codes`` on their own support: min ‖x − b − aᵀA‖² s.t. a ≥ 0, where A are the
    atoms a row's code uses (λ = 0, support never grows; an entry may reach 0, so L0 can only fall).

    Why: an L1 penalty (ISTA/FISTA) and an amortised encoder both shrink magnitudes; re-solving on the
    chosen support removes that bias at the same L0. Solved per row on the small problem: the support's
    Gram matrix G = A Aᵀ [s, s] and right side A(x − b), then FISTA with gradient restart and step
    1/(2 λ_max(G)) (exact eigvalsh per row). Rows are sorted by support size and padded to the largest
    support of their chunk with zero atoms (masked out). ``n_iters`` is the largest over chunks.
    """
    target = check_inputs(x, W_dec, b_dec)
    if codes.shape != (x.shape[0], W_dec.shape[0]):
        raise SaekitError(f"codes must have shape ({x.shape[0]}, {W_dec.shape[0]}), got {tuple(codes.shape)}")
    if max_iters < 1 or chunk < 1:
        raise SaekitError(f"max_iters and chunk must be >= 1, got {max_iters} and {chunk}")
    W = W_dec.detach()
    out = torch.zeros_like(codes, dtype=W.dtype)
    worst, converged = 0, True
    by_size = torch.argsort((codes > 0).sum(dim=1), stable=True)  # similar supports share a chunk: less padding
    for lo in range(0, x.shape[0], chunk):
        rows = by_size[lo:lo + chunk]
        f = codes[rows].to(W.dtype)
        active = f > 0
        s = int(active.sum(dim=1).max()) if f.numel() else 0
        if s == 0:
            continue
        # indices of each row's support, padded with a repeated index whose slot is masked out
        order = torch.argsort(active.to(torch.int8), dim=1, descending=True, stable=True)[:, :s]
        valid = active.gather(1, order)  # [b, s]
        A = W[order] * valid[..., None]  # [b, s, d], padded atoms are zero
        gram = A @ A.transpose(1, 2)  # [b, s, s]
        rhs = (A @ target[rows, :, None]).squeeze(2)  # [b, s]
        lmax = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(1e-12)[:, None]
        step = 1.0 / (2.0 * lmax)
        a = f.gather(1, order) * valid
        y, t = a, torch.ones_like(lmax)
        it = 0
        for it in range(1, max_iters + 1):
            grad = 2.0 * ((gram @ y[:, :, None]).squeeze(2) - rhs)
            a_new = ((y - step * grad).clamp_min(0)) * valid
            uphill = ((y - a_new) * (a_new - a)).sum(dim=1, keepdim=True) > 0
            t = torch.where(uphill, torch.ones_like(t), t)
            t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
            y = a_new + ((t - 1.0) / t_new) * (a_new - a)
            change = (a_new - a).norm(dim=1)
            done = bool((change <= tol * a_new.norm(dim=1).clamp_min(1.0)).all())
            a = a_new
            if done:
                break
        else:
            converged = False
        worst = max(worst, it)
        out[rows] = torch.zeros_like(f).scatter_(1, order, a)  # padded slots are distinct inactive indices, value 0
    return InferenceResult(out, worst, converged)


def gated_encoder_flops(d: int, n: int) -> int:
    """Gated SAE at inference (a JumpReLU): scale x (d), x − b_dec (d), one shared matmul (2dn), gate bias,
    magnitude scale and bias (3n), gate test, ReLU and product (3n): 2dn + 6n + 2d."""
    return flops.matmul(1, d, n) + 6 * n + 2 * d


def nnls_refit_flops(d: int, support: float, iters: int) -> int:
    """Refit of one row with a support of ``support`` atoms (mean over rows, rounded up): Gram 2s²d,
    right side 2sd + d, eigvalsh ~ 9s³ (an estimate for a symmetric tridiagonal-reduction solver), and
    per iteration G y (2s²) plus the step, projection, restart test and momentum (~12s)."""
    s = int(-(-support // 1))
    return 2 * s * s * d + 2 * s * d + d + 9 * s ** 3 + iters * (2 * s * s + 12 * s)
