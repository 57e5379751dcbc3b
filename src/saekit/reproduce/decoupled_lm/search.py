"""Choosing a hyperparameter (k or λ) on validation data so that a method hits a target L0."""

from __future__ import annotations

import math
from collections.abc import Callable

from saekit.reproduce.common import choose, log_l0


# ---------------------------------------------------------------------------------------------------------
# choosing a hyperparameter on validation to hit a target L0


def matched(l0: float, target: float, tolerance: float) -> bool:
    return abs(log_l0(l0) - math.log(target)) <= math.log1p(tolerance)


def search(measure: Callable[[float], float], target: float, start: float, *, evals: int, tolerance: float,
           integer: bool = False, slope: float = -1.0, bounds: tuple[float, float] = (1e-4, 1e4),
           points: dict[float, float] | None = None) -> dict[float, float]:
    """Evaluate ``measure`` (a validation L0) at up to ``evals`` new parameters that approach ``target``.

    L0 is monotone in the parameter, with the sign of ``slope`` (λ: falling, k: rising). Each new
    parameter comes from a log-log interpolation between the nearest evaluated points on either side of
    the target, or, without such a bracket, a step from the nearest point along the local slope (the
    given ``slope`` until two points fix one; at most 8x per step). Stops early once a point lies within
    ``tolerance``. Returns every evaluated point (``points`` may hold earlier ones, e.g. shared between
    targets); the choice among them is ``choose``."""
    pts = dict(points or {})
    lo, hi = bounds
    for _ in range(evals):
        if pts and matched(pts[choose(pts, target)], target, tolerance):
            break
        p = _propose(pts, target, start, slope)
        p = min(max(p, lo), hi)
        if integer:
            p = float(min(max(round(p), lo), hi))
            if p in pts:  # the nearest integer is known: step one towards the target, if that is new
                up = (pts[p] < target) == (slope > 0)
                p = float(min(max(p + (1 if up else -1), lo), hi))
                if p in pts:
                    break
        elif p in pts:
            break
        pts[p] = float(measure(p))
    return pts


def _propose(pts: dict[float, float], target: float, start: float, slope: float) -> float:
    if not pts:
        return start
    t = math.log(target)
    below = [p for p in pts if log_l0(pts[p]) < t]
    above = [p for p in pts if log_l0(pts[p]) > t]
    if below and above:  # bracketed: interpolate between the nearest on each side
        a = min(below, key=lambda p: t - log_l0(pts[p]))
        b = min(above, key=lambda p: log_l0(pts[p]) - t)
        la, lb = log_l0(pts[a]), log_l0(pts[b])
        w = (t - la) / (lb - la)
        return math.exp(math.log(a) + w * (math.log(b) - math.log(a)))
    best = choose(pts, target)
    s = slope
    others = [p for p in pts if p != best and pts[p] != pts[best]]
    if others:
        q = min(others, key=lambda p: abs(math.log(p) - math.log(best)))
        local = (log_l0(pts[q]) - log_l0(pts[best])) / (math.log(q) - math.log(best))
        if local * slope > 0:  # the expected direction: use the measured slope
            s = local
    step = (t - log_l0(pts[best])) / s
    return math.exp(math.log(best) + max(min(step, math.log(8.0)), -math.log(8.0)))
