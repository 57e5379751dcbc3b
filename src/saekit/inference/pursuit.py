"""Greedy sparse inference to a target L0 on a frozen dictionary: matching, gradient and orthogonal pursuit.

Why greedy: when the number of active atoms k is known (or wanted), pursuit reaches exactly that
L0 in k cheap steps, with no λ to tune. All three add one atom per step, for every row at once
(the loop is over the k steps, never over samples).

Choice of sign: with ``nonnegative=True`` (the default, matching f ≥ 0 everywhere else in saekit)
an atom is chosen by its largest *positive* normalised correlation with the residual, and no
coefficient is allowed below zero:
- matching pursuit: a row whose best correlation is ≤ 0 simply stops adding;
- gradient pursuit: the exact line-search step is shortened so that no coefficient crosses zero
  (a projected line search), which keeps the residual update exact;
- OMP: the least-squares coefficients on the support are clipped at zero and the residual is
  recomputed (a heuristic, not exact NNLS).
With ``nonnegative=False`` atoms are chosen by |correlation| and coefficients are signed.
An atom may be picked again by matching pursuit (then L0 < k); gradient pursuit and OMP never
pick a supported atom twice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.inference.iterative import check_inputs


def _check_k(k: int, n_atoms: int) -> None:
    if not 1 <= k <= n_atoms:
        raise SaekitError(f"target L0 k={k} must lie in [1, n_atoms={n_atoms}]")


def _select(corr: Tensor, norms: Tensor, nonnegative: bool, exclude: Tensor | None = None) -> Tensor:
    """Index of the best atom per row by normalised correlation."""
    score = corr / norms
    score = score if nonnegative else score.abs()
    if exclude is not None:
        score = score.masked_fill(exclude, -torch.inf)
    return score.argmax(dim=1)


@torch.no_grad()
def matching_pursuit(x: Tensor, W_dec: Tensor, b_dec: Tensor | None = None, *, k: int,
                     nonnegative: bool = True) -> Tensor:
    """Matching pursuit (Mallat & Zhang 1993): k steps of 'pick the best atom, subtract its projection'."""
    target = check_inputs(x, W_dec, b_dec)
    _check_k(k, W_dec.shape[0])
    W = W_dec.detach()
    norms2 = W.pow(2).sum(dim=1)
    norms = norms2.sqrt()
    r = target.clone()
    f = torch.zeros(x.shape[0], W.shape[0], dtype=W.dtype, device=W.device)
    for _ in range(k):
        corr = r @ W.T
        best = _select(corr, norms, nonnegative)
        coef = corr.gather(1, best[:, None]).squeeze(1) / norms2[best]
        if nonnegative:
            coef = coef.clamp_min(0)
        f.scatter_add_(1, best[:, None], coef[:, None])
        r -= coef[:, None] * W[best]
    return f


@torch.no_grad()
def gradient_pursuit(x: Tensor, W_dec: Tensor, b_dec: Tensor | None = None, *, k: int,
                     nonnegative: bool = True) -> Tensor:
    """Gradient pursuit (Blumensath & Davies 2008): grow the support by one atom, then take one exact
    line-search step along the gradient restricted to the support. Close to OMP at MP's cost."""
    target = check_inputs(x, W_dec, b_dec)
    _check_k(k, W_dec.shape[0])
    W = W_dec.detach()
    norms = W.norm(dim=1)
    B, n = x.shape[0], W.shape[0]
    r = target.clone()
    f = torch.zeros(B, n, dtype=W.dtype, device=W.device)
    support = torch.zeros(B, n, dtype=torch.bool, device=W.device)
    rows = torch.arange(B, device=W.device)
    for _ in range(k):
        corr = r @ W.T
        best = _select(corr, norms, nonnegative, exclude=support)
        if nonnegative:  # a row with no positively correlated atom left adds nothing
            ok = corr[rows, best] > 0
            support[rows[ok], best[ok]] = True
        else:
            support[rows, best] = True
        g = corr * support  # −½ gradient of ‖r‖², restricted to the support
        c = g @ W
        step = (r * c).sum(dim=1) / c.pow(2).sum(dim=1).clamp_min(torch.finfo(W.dtype).tiny)
        if nonnegative:  # shorten the step so that no coefficient crosses zero
            limit = torch.where(g < 0, f / (-g).clamp_min(torch.finfo(W.dtype).tiny), torch.inf)
            step = torch.minimum(step, limit.min(dim=1).values)
        f = f + step[:, None] * g
        if nonnegative:
            f = f.clamp_min(0)  # only rounding noise can be negative here
        r = r - step[:, None] * c
    return f


@torch.no_grad()
def orthogonal_matching_pursuit(x: Tensor, W_dec: Tensor, b_dec: Tensor | None = None, *, k: int,
                                nonnegative: bool = True, ridge: float = 1e-10) -> Tensor:
    """OMP (Pati et al. 1993): grow the support by one atom, then refit all support coefficients by
    least squares (a batched [t, t] solve per row, with a tiny ridge so that k > d stays solvable)."""
    target = check_inputs(x, W_dec, b_dec)
    _check_k(k, W_dec.shape[0])
    W = W_dec.detach()
    norms = W.norm(dim=1)
    B, n = x.shape[0], W.shape[0]
    r = target.clone()
    chosen = torch.zeros(B, 0, dtype=torch.long, device=W.device)
    support = torch.zeros(B, n, dtype=torch.bool, device=W.device)
    rows = torch.arange(B, device=W.device)
    f = torch.zeros(B, n, dtype=W.dtype, device=W.device)
    for t in range(1, k + 1):
        corr = r @ W.T
        best = _select(corr, norms, nonnegative, exclude=support)
        support[rows, best] = True
        chosen = torch.cat([chosen, best[:, None]], dim=1)
        A = W[chosen]  # [B, t, d]
        gram = A @ A.transpose(1, 2) + ridge * torch.eye(t, dtype=W.dtype, device=W.device)
        coef = torch.linalg.solve(gram, (A @ target[:, :, None])).squeeze(2)
        if nonnegative:
            coef = coef.clamp_min(0)
        f = torch.zeros(B, n, dtype=W.dtype, device=W.device).scatter_(1, chosen, coef)
        r = target - (coef[:, :, None] * A).sum(dim=1)
    return f
