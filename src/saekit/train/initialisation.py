"""Data-dependent initialisation: the input scale and b_dec (geometric median of a sample)."""

from __future__ import annotations

import math

from torch import Tensor

from saekit.errors import SaekitError


def geometric_median(points: Tensor, max_iters: int = 200, tol: float = 1e-7) -> Tensor:
    """argmin_y Σ_i ‖p_i − y‖ by Weiszfeld's algorithm (float64), started at the mean."""
    p = points.double()
    y = p.mean(dim=0)
    for _ in range(max_iters):
        weights = 1.0 / (p - y).norm(dim=1).clamp_min(1e-12)
        y_next = (weights[:, None] * p).sum(dim=0) / weights.sum()
        moved = (y_next - y).norm()
        y = y_next
        if moved <= tol * max(1.0, y.norm().item()):
            break
    return y.to(points.dtype)


def input_scale(sample: Tensor) -> float:
    """The constant s with E‖s·x‖² = d_in, so λ means the same across models and layers."""
    mean_sq = sample.double().pow(2).sum(dim=-1).mean().item()
    if not mean_sq > 0 or not math.isfinite(mean_sq):
        raise SaekitError("cannot normalise activations: the sample is all zeros or not finite")
    return math.sqrt(sample.shape[-1] / mean_sq)
