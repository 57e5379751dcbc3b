"""Sparse coding (SC): per-sample codes and a unit-norm dictionary learned together, no encoder.

Why: SC has no amortisation gap at all, every training code is optimised for its own sample, so
it is the upper reference for what the dictionary + codes can reach (O'Neill et al. 2024).

Algorithm (alternating minimisation of ‖X − S W‖² + λ‖S‖₁, S ≥ 0, ‖w_i‖ = 1):
1. codes: a few warm-started non-negative FISTA iterations for all samples at once on the current W;
2. dictionary: the MOD step (Engan et al. 1999), W = (SᵀS + εI)⁻¹ SᵀX, the exact least-squares
   dictionary for fixed codes; then each atom is scaled to unit norm and its codes scaled up by the
   same factor, so the reconstruction is unchanged. An atom no sample uses is restarted at the
   direction of a random training sample (a dead atom can never come back otherwise).
The L1 term makes step 2 slightly inconsistent with the objective (renormalisation changes ‖S‖₁);
in practice the alternation settles quickly, and codes for new data are inferred by FISTA on the
learned, frozen dictionary (``infer``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.data.synthetic import mix_seed
from saekit.errors import SaekitError
from saekit.inference import flops
from saekit.inference.iterative import InferenceResult, fista


@dataclass
class SCSettings:
    """Settings of alternating sparse coding."""

    rounds: int = 200
    """Alternations (code step + dictionary step)."""
    code_iters: int = 30
    """FISTA iterations per round on the training codes (warm-started from the last round)."""
    l1: float = 0.1
    """λ of the L1 penalty."""
    ridge: float = 1e-6
    """ε in the MOD solve (SᵀS + εI), for atoms that fire rarely."""
    seed: int = 0
    """Seed of the dictionary initialisation and of dead-atom restarts."""


@dataclass
class SCResult:
    """Learned unit-norm dictionary [n_atoms, d], training codes [n, n_atoms], FISTA iterations per round, FLOPs."""

    dictionary: Tensor
    codes: Tensor
    code_iters: list[int]
    train_flops: int


def _restart_dead(W: Tensor, usage: Tensor, x: Tensor, gen: torch.Generator) -> Tensor:
    dead = (usage <= 0).nonzero().flatten()
    if dead.numel():
        rows = torch.randint(0, x.shape[0], (dead.numel(),), generator=gen).to(x.device)
        fresh = x[rows] + 1e-3 * torch.randn(dead.numel(), x.shape[1], generator=gen).to(x)
        W = W.clone()
        W[dead] = fresh
    return W


@torch.no_grad()
def learn(x: Tensor, n_atoms: int, s: SCSettings | None = None) -> SCResult:
    """Learn a dictionary and training codes for x [n, d] by alternating FISTA and MOD steps."""
    s = s or SCSettings()
    if x.ndim != 2 or x.shape[0] == 0 or not torch.isfinite(x).all():
        raise SaekitError(f"sparse coding needs finite data [n > 0, d], got shape {tuple(x.shape)}")
    if n_atoms < 1 or s.rounds < 1 or s.code_iters < 1 or not s.l1 >= 0:
        raise SaekitError(f"sparse coding needs n_atoms, rounds, code_iters >= 1 and l1 >= 0, got "
                          f"n_atoms={n_atoms}, {s}")
    n, d = x.shape
    gen = torch.Generator().manual_seed(mix_seed(s.seed, 0x5C))  # never the generator's own stream for `seed`
    W = torch.randn(n_atoms, d, generator=gen).to(x)
    W = W / W.norm(dim=1, keepdim=True)
    S: Tensor | None = None
    iters: list[int] = []
    eye = torch.eye(n_atoms, dtype=x.dtype, device=x.device)
    for _ in range(s.rounds):
        with warnings.catch_warnings():  # a capped round is expected, not a failure
            warnings.simplefilter("ignore", RuntimeWarning)
            res = fista(x, W, l1=s.l1, max_iters=s.code_iters, tol=1e-6, init=S)
        S = res.codes
        iters.append(res.n_iters)
        W = torch.linalg.solve(S.T @ S + s.ridge * eye, S.T @ x)
        W = _restart_dead(W, S.sum(dim=0), x, gen)
        norms = W.norm(dim=1).clamp_min(1e-12)
        W = W / norms[:, None]
        S = S * norms
    assert S is not None
    train_flops = flops.sparse_coding_training(n, n_atoms, d, iters)
    return SCResult(W, S, iters, train_flops)


def infer(x: Tensor, dictionary: Tensor, l1: float, max_iters: int = 2000, tol: float = 1e-5) -> InferenceResult:
    """Codes for new data on the frozen learned dictionary (FISTA; warns if it does not converge)."""
    return fista(x, dictionary, l1=l1, max_iters=max_iters, tol=tol)
