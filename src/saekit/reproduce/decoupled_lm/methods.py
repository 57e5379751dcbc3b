"""The methods: one name, one way of producing codes for scaled activations on the frozen dictionary;
and the per-context sums every statistic is built from."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.reproduce.decoupled_lm.config import DecoupledLMScale


# ---------------------------------------------------------------------------------------------------------
# methods: one name, one way of producing codes for scaled activations

@dataclass(frozen=True)
class Spec:
    family: str
    param: float | None = None
    """k (pursuit) or λ (FISTA, ITO, MLP)."""
    seed: int | None = None
    spliced: bool = False
    """Spliced into the model (loss recovered, ΔCE, KL) on every test context."""
    frontier: bool = False
    """Only on the frontier contexts (FVU / L0), not spliced."""
    targets: tuple[float, ...] = ()
    """The L0 ratios it was chosen for."""

    @property
    def name(self) -> str:
        if self.family in ("sae", "sae+refit"):
            return self.family
        if self.family in ("mp", "omp"):
            return f"{self.family} k={int(self.param)}"
        if self.family.startswith("mlp"):
            label = "mlp from sae" if self.family == "mlp-sae" else "mlp"
            return f"{label} λ={self.param:.4g} s{self.seed}"
        return f"{self.family} λ={self.param:.4g}"


def linear_part(sae: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(W, b, b_in) of a ReLU encoder ReLU(W (x_s − b_in) + b) with the SAE's support, in scaled units.

    Gated: exp(r_mag) ⊙ π_gate = π_mag − θ, so ReLU(exp(r_mag) ⊙ π_gate) fires exactly where the Gated
    SAE does, with its magnitudes lowered by the JumpReLU threshold θ. ReLU / TopK: the encoder itself."""
    with torch.no_grad():
        if sae.cfg.architecture == "gated":
            scale = sae.r_mag.exp()
            return scale[:, None] * sae.W_gate, scale * sae.b_gate, sae.b_dec.clone()
        return sae.W_enc.clone(), sae.b_enc.clone(), sae.b_dec.clone()


class Encoders:
    """Codes for every Spec on a batch of scaled activations, with FLOPs per row (``saekit.inference.flops``).

    ``encode`` shares work inside one batch through ``memo`` (the SAE's codes, a FISTA solve)."""

    def __init__(self, cfg: DecoupledLMScale, sae: Any, dictionary: Any) -> None:
        from saekit.inference import flops
        from saekit.inference.lm import gated_encoder_flops

        self.cfg, self.sae, self.D = cfg, sae, dictionary
        self.n, self.d = dictionary.n_latents, dictionary.d_in
        self.enc_flops = (gated_encoder_flops(self.d, self.n) if sae.cfg.architecture == "gated"
                          else flops.linear_encoder(self.d, self.n))
        self.mlps: dict[tuple[str, float, int], Any] = {}

    def _refit_flops(self, codes: Tensor, iters: int) -> float:
        from saekit.inference.lm import nnls_refit_flops

        sizes = (codes > 0).sum(dim=1)
        if sizes.numel() == 0:
            return 0.0
        values, counts = torch.unique(sizes, return_counts=True)
        total = sum(nnls_refit_flops(self.d, int(s), iters) * int(c) for s, c in zip(values.tolist(), counts.tolist()))
        return total / sizes.numel()

    def _sae(self, xs: Tensor, memo: dict) -> Tensor:
        if "sae" not in memo:
            memo["sae"] = self.sae.encode_scaled(xs)
        return memo["sae"]

    def _fista(self, xs: Tensor, lam: float, memo: dict) -> Any:
        from saekit.inference import fista

        key = ("fista", lam)
        if key not in memo:
            memo[key] = fista(xs, self.D.W_dec, self.D.b_dec, l1=lam, max_iters=self.cfg.fista_iters,
                              tol=self.cfg.fista_tol)
        return memo[key]

    @torch.no_grad()
    def encode(self, spec: Spec, xs: Tensor, memo: dict | None = None) -> tuple[Tensor, float, int | None, bool]:
        """(codes, FLOPs per row, iterations or None, converged) for scaled activations ``xs``."""
        from saekit.inference import fista, flops, matching_pursuit, orthogonal_matching_pursuit
        from saekit.inference.lm import nnls_on_support

        memo = {} if memo is None else memo
        cfg, W, b, n, d = self.cfg, self.D.W_dec, self.D.b_dec, self.n, self.d
        fam = spec.family
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is recorded instead
            if fam == "sae":
                return self._sae(xs, memo), float(self.enc_flops), None, True
            if fam == "sae+refit":
                f = self._sae(xs, memo)
                r = nnls_on_support(xs, W, b, f, max_iters=cfg.refit_iters, tol=cfg.refit_tol)
                return r.codes, self.enc_flops + self._refit_flops(f, r.n_iters), r.n_iters, r.converged
            if fam == "mp":
                k = int(spec.param)
                return matching_pursuit(xs, W, b, k=k), float(flops.matching_pursuit(n, d, k)), None, True
            if fam == "omp":
                k = int(spec.param)
                return (orthogonal_matching_pursuit(xs, W, b, k=k), float(flops.orthogonal_matching_pursuit(n, d, k)),
                        None, True)
            if fam == "fista":
                r = self._fista(xs, float(spec.param), memo)
                return r.codes, float(flops.iterative(n, d, r.n_iters)), r.n_iters, r.converged
            if fam == "fista+refit":
                r = self._fista(xs, float(spec.param), memo)
                q = nnls_on_support(xs, W, b, r.codes, max_iters=cfg.refit_iters, tol=cfg.refit_tol)
                fl = flops.iterative(n, d, r.n_iters) + self._refit_flops(r.codes, q.n_iters)
                return q.codes, float(fl), r.n_iters, r.converged and q.converged
            if fam == "sae+ito":
                r = fista(xs, W, b, l1=float(spec.param), max_iters=cfg.ito_iters, tol=cfg.fista_tol,
                          init=self._sae(xs, memo))
                return r.codes, float(self.enc_flops + flops.iterative(n, d, r.n_iters)), r.n_iters, r.converged
            if fam in ("mlp", "mlp-sae"):
                mlp = self.mlps[(fam, float(spec.param), int(spec.seed))]
                return mlp(xs), float(mlp.flops()), None, True
        raise SaekitError(f"unknown method family {fam!r}")

    def l0(self, spec: Spec, xs: Tensor, batch_rows: int = 1024) -> float:
        """Mean L0 of ``spec``'s codes on scaled ``xs`` (validation)."""
        nz = 0
        for chunk in xs.split(batch_rows):
            nz += int((self.encode(spec, chunk)[0] > 0).sum())
        return nz / max(xs.shape[0], 1)


# ---------------------------------------------------------------------------------------------------------
# per-context sums (every statistic is a ratio of sums, so chunks and bootstrap resamples add up)

def context_sums(x: Tensor, x_hat: Tensor, codes: Tensor, counts: list[int]) -> dict[str, list[float]]:
    """Per context (rows grouped by ``counts``): rows, Σ‖x − x̂‖², Σ L0, Σ x·x̂, Σ ‖x̂‖² (model units)."""
    idx = torch.repeat_interleave(torch.arange(len(counts), device=x.device),
                                  torch.tensor(counts, device=x.device))
    x64, h64 = x.double(), x_hat.double()

    def per(v: Tensor) -> list[float]:
        return torch.zeros(len(counts), dtype=torch.float64, device=x.device).index_add_(0, idx, v).tolist()

    return {"n": [float(c) for c in counts], "sse": per((x64 - h64).pow(2).sum(1)),
            "l0": per((codes > 0).sum(1).double()), "xh": per((x64 * h64).sum(1)), "hh": per(h64.pow(2).sum(1))}


def activation_sums(x: Tensor, counts: list[int]) -> dict[str, Any]:
    """Per context: rows, Σ x (vector), Σ ‖x‖² — the FVU denominator for any set of contexts."""
    out = {"n": [], "sum": [], "sq": []}
    for part in x.double().split(counts):
        out["n"].append(float(part.shape[0]))
        out["sum"].append(part.sum(0).tolist())
        out["sq"].append(float(part.pow(2).sum()))
    return out


def variance_per_context(acts: dict[str, Any], contexts: list[int]) -> np.ndarray:
    """Σ_t ‖x_t − x̄‖² per context of ``contexts``, x̄ the mean over those contexts (DESIGN.md's FVU)."""
    n = np.asarray(acts["n"], dtype=np.float64)[contexts]
    s = np.asarray(acts["sum"], dtype=np.float64)[contexts]
    q = np.asarray(acts["sq"], dtype=np.float64)[contexts]
    mean = s.sum(0) / max(n.sum(), 1.0)
    return q - 2.0 * s @ mean + n * float(mean @ mean)
