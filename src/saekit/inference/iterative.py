"""Iterative sparse inference on a frozen dictionary: ISTA and FISTA.

Both minimise, for every row x of a batch independently,

    E(f) = ‖x − W_decᵀ f − b_dec‖² + λ ‖f‖₁   subject to f ≥ 0

(the DESIGN.md objective, no ½ on the squared error). Why iterate at all: a one-pass encoder
has an amortisation gap (O'Neill et al. 2024); a convex solver on the same dictionary does not.

Step size: the gradient of ‖x − W_decᵀ f − b_dec‖² is 2 W_dec (W_decᵀ f + b_dec − x), which is
Lipschitz with constant 2L, L = λ_max(W_dec W_decᵀ) (eigvalsh of the smaller Gram matrix). The
step is therefore 1/(2L) — the classical 1/L step for the ½-scaled objective. The proximal
operator of λ‖f‖₁ + 1[f ≥ 0] is max(0, v − λ/(2L)).

Convergence: a row has converged when ‖f_t − f_{t−1}‖ ≤ tol · max(‖f_t‖, 1); the loop stops when
every row has, or after ``max_iters`` (then ``converged`` is False and a warning is raised; it never
hangs). Everything is batched over rows and runs on the dictionary's device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.errors import SaekitError


@dataclass
class InferenceResult:
    """Codes [batch, n_atoms], iterations actually run, and whether every row met the tolerance."""

    codes: Tensor
    n_iters: int
    converged: bool


def check_dictionary(W_dec: Tensor, b_dec: Tensor | None = None) -> None:
    """Raise SaekitError (one line) for a dictionary no solver can use."""
    if W_dec.ndim != 2 or W_dec.shape[0] == 0 or W_dec.shape[1] == 0:
        raise SaekitError(f"dictionary must be a non-empty [n_atoms, d] matrix, got shape {tuple(W_dec.shape)}")
    if not torch.isfinite(W_dec).all():
        raise SaekitError("dictionary has non-finite (NaN or inf) entries")
    zero = (W_dec.norm(dim=1) == 0).nonzero().flatten()
    if zero.numel():
        raise SaekitError(f"dictionary has {zero.numel()} zero atom(s), first at row {int(zero[0])}")
    if b_dec is not None:
        if b_dec.shape != (W_dec.shape[1],):
            raise SaekitError(f"b_dec has shape {tuple(b_dec.shape)} but the dictionary needs ({W_dec.shape[1]},)")
        if not torch.isfinite(b_dec).all():
            raise SaekitError("b_dec has non-finite (NaN or inf) entries")


def check_inputs(x: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    """Validate dictionary and batch; return x − b_dec (the part the atoms must explain)."""
    check_dictionary(W_dec, b_dec)
    if x.ndim != 2 or x.shape[1] != W_dec.shape[1]:
        raise SaekitError(f"inputs must be [batch, {W_dec.shape[1]}], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise SaekitError("inputs have non-finite (NaN or inf) entries")
    x = x.to(W_dec.dtype)
    return x - b_dec if b_dec is not None else x


def lipschitz(W_dec: Tensor) -> float:
    """L = λ_max(W_dec W_decᵀ), from the smaller of the two Gram matrices (same nonzero spectrum)."""
    W = W_dec.double()
    gram = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    return float(torch.linalg.eigvalsh(gram)[-1])


def _setup(x: Tensor, W_dec: Tensor, b_dec: Tensor | None, l1: float, max_iters: int, tol: float,
           init: Tensor | None) -> tuple[Tensor, Tensor, float, float]:
    target = check_inputs(x, W_dec, b_dec)
    if not (math.isfinite(l1) and l1 >= 0):
        raise SaekitError(f"l1 must be a finite number >= 0, got {l1}")
    if max_iters < 1:
        raise SaekitError(f"max_iters must be >= 1, got {max_iters}")
    if not tol > 0:
        raise SaekitError(f"tol must be > 0, got {tol}")
    n = W_dec.shape[0]
    if init is None:
        f0 = torch.zeros(x.shape[0], n, dtype=W_dec.dtype, device=W_dec.device)
    else:
        if init.shape != (x.shape[0], n):
            raise SaekitError(f"init must have shape ({x.shape[0]}, {n}), got {tuple(init.shape)}")
        f0 = init.detach().to(W_dec.dtype).clamp_min(0)
    step = 1.0 / (2.0 * lipschitz(W_dec))
    return target, f0, step, l1 * step


def _prox_grad(f: Tensor, target: Tensor, W: Tensor, step: float, thresh: float) -> Tensor:
    """One proximal gradient step from f: max(0, f − step·2(fW − target)Wᵀ − thresh)."""
    residual = f @ W - target
    return (f - (2.0 * step) * (residual @ W.T) - thresh).clamp_min(0)


def _done(new: Tensor, old: Tensor, tol: float) -> bool:
    change = (new - old).norm(dim=1)
    return bool((change <= tol * new.norm(dim=1).clamp_min(1.0)).all())


def _finish(name: str, f: Tensor, it: int, converged: bool, max_iters: int, tol: float) -> InferenceResult:
    if not converged:
        warnings.warn(f"{name} did not converge to tol={tol} within max_iters={max_iters}", RuntimeWarning,
                      stacklevel=4)  # past the no_grad wrapper, to the caller
    return InferenceResult(f, it, converged)


@torch.no_grad()
def ista(x: Tensor, W_dec: Tensor, b_dec: Tensor | None = None, *, l1: float = 0.1, max_iters: int = 1000,
         tol: float = 1e-5, init: Tensor | None = None) -> InferenceResult:
    """Non-negative ISTA (proximal gradient). ``init``: warm start, e.g. an encoder's codes (SAE + ITO)."""
    target, f, step, thresh = _setup(x, W_dec, b_dec, l1, max_iters, tol, init)
    W = W_dec.detach()
    for it in range(1, max_iters + 1):
        f_new = _prox_grad(f, target, W, step, thresh)
        done = _done(f_new, f, tol)
        f = f_new
        if done:
            return _finish("ista", f, it, True, max_iters, tol)
    return _finish("ista", f, max_iters, False, max_iters, tol)


@torch.no_grad()
def fista(x: Tensor, W_dec: Tensor, b_dec: Tensor | None = None, *, l1: float = 0.1, max_iters: int = 1000,
          tol: float = 1e-5, init: Tensor | None = None, restart: bool = True) -> InferenceResult:
    """Non-negative FISTA (Beck & Teboulle 2009): ISTA plus Nesterov momentum, O(1/t²) instead of O(1/t).

    With ``restart=True`` (default) each row's momentum is reset when it stops pointing downhill,
    ⟨y − f_new, f_new − f⟩ > 0 (the gradient restart of O'Donoghue & Candès 2015): same fixed points,
    no oscillation near the solution, far fewer iterations on ill-conditioned dictionaries.
    """
    target, f, step, thresh = _setup(x, W_dec, b_dec, l1, max_iters, tol, init)
    W = W_dec.detach()
    y = f
    t = torch.ones(f.shape[0], 1, dtype=f.dtype, device=f.device)
    for it in range(1, max_iters + 1):
        f_new = _prox_grad(y, target, W, step, thresh)
        if restart:
            uphill = ((y - f_new) * (f_new - f)).sum(dim=1, keepdim=True) > 0
            t = torch.where(uphill, torch.ones_like(t), t)
        t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = f_new + ((t - 1.0) / t_new) * (f_new - f)
        done = _done(f_new, f, tol)
        f, t = f_new, t_new
        if done:
            return _finish("fista", f, it, True, max_iters, tol)
    return _finish("fista", f, max_iters, False, max_iters, tol)


def objective(x: Tensor, W_dec: Tensor, b_dec: Tensor | None, codes: Tensor, l1: float) -> Tensor:
    """E(f) per row: ‖x − W_decᵀ f − b_dec‖² + λ‖f‖₁ (for checking solvers)."""
    target = x - b_dec if b_dec is not None else x
    return (target - codes @ W_dec).pow(2).sum(dim=1) + l1 * codes.abs().sum(dim=1)
