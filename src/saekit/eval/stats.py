"""Confidence intervals: t-intervals over training seeds, and paired bootstrap over held-out contexts.

Seeds vary what training does; contexts vary what the evaluation happens to see. A verdict rests
on both: a seed interval says whether another training run would land elsewhere, a context
bootstrap whether another sample of text would. Paired means every SAE (and the clean and ablated
runs) is resampled with the *same* contexts, so differences between them keep their pairing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from saekit.errors import SaekitError


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and Student-t interval of ``values`` (e.g. one metric over training seeds).

    With one value the interval is undefined (NaN bounds): one seed says nothing about the next."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "sd": math.nan, "n": 0}
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "sd": math.nan, "n": 1}
    sd = float(v.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": int(v.size)}


def percentile_interval(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def bootstrap_indices(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_items] indices drawn with replacement (numpy's generator, seeded by name)."""
    from saekit.rng import stream_seed

    if n_items <= 0 or n_boot <= 0:
        raise SaekitError("the bootstrap needs at least one item and one resample")
    rng = np.random.default_rng(stream_seed("stats.bootstrap", seed))
    return rng.integers(0, n_items, size=(n_boot, n_items))


def paired_bootstrap(per_context: Mapping[str, Sequence[float]], statistic: Callable[[Mapping[str, float]], float],
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """A statistic of per-context *sums* (e.g. loss recovered from CE sums and token counts), with its
    percentile interval over contexts resampled together for every key.

    ``per_context[key][c]`` is context c's sum of that quantity; ``statistic`` maps the summed
    quantities to the number (so ratios are ratios of sums, exactly as the point estimate)."""
    keys = list(per_context)
    arrays = {k: np.asarray(per_context[k], dtype=np.float64) for k in keys}
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1:
        raise SaekitError(f"per-context arrays differ in length: {sorted(sizes)}")
    n = sizes.pop()
    point = statistic({k: float(a.sum()) for k, a in arrays.items()})
    idx = bootstrap_indices(n, n_boot, seed)
    sums = {k: a[idx].sum(axis=1) for k, a in arrays.items()}
    samples = np.array([statistic({k: float(sums[k][b]) for k in keys}) for b in range(n_boot)])
    lo, hi = percentile_interval(samples, level)
    return {"value": point, "lo": lo, "hi": hi, "n_contexts": n, "n_boot": n_boot}


def splice_intervals(result: Mapping[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Bootstrap intervals for loss recovered (zero and mean ablation), ΔCE and KL of one spliced SAE.

    ``result`` is one entry of ``evaluate_splice(..., per_context=True)``."""
    pc = result["per_context"]
    q = {"n": pc["count"], "clean": pc["ce_clean"], "zero": pc["ce_zero"], "mean": pc["ce_mean"],
         "sae": pc["ce_sae"], "kl": pc["kl_sae"]}

    def ratio(a: float, b: float) -> float:
        return a / b if b != 0 else math.nan

    stats = {
        "loss_recovered": lambda s: ratio(s["zero"] - s["sae"], s["zero"] - s["clean"]),
        "loss_recovered_mean_ablation": lambda s: ratio(s["mean"] - s["sae"], s["mean"] - s["clean"]),
        "delta_ce": lambda s: (s["sae"] - s["clean"]) / s["n"],
        "kl": lambda s: s["kl"] / s["n"],
    }
    return {name: paired_bootstrap(q, fn, n_boot, seed) for name, fn in stats.items()}


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any], key: str = "ce_sae", n_boot: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Per-token mean of ``key`` for SAE a minus SAE b on the same contexts, with its paired interval."""
    pa, pb = a["per_context"], b["per_context"]
    if list(pa["count"]) != list(pb["count"]):
        raise SaekitError("the two splice results were not measured on the same contexts")
    q = {"n": pa["count"], "a": pa[key], "b": pb[key]}
    return paired_bootstrap(q, lambda s: (s["a"] - s["b"]) / s["n"], n_boot, seed)
