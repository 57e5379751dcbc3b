"""Choosing β, the paired intervals and the verdicts (pure functions, unit-tested), and ``analyse``: every
number of the write-up from the cached evaluations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from saekit.errors import SaekitError
from saekit.reproduce.common import Verdict, fmt, fmt_ci
from saekit.reproduce.gsae.config import FAMILIES, FAMILY_LABEL, GSAEScale, PAPER, Variant, grid


def select_beta(validation: dict[float, float | None]) -> float:
    """The β with the lowest validation ΔCE (ties: the smaller β); missing/NaN values never win."""
    ok = {b: v for b, v in validation.items() if v is not None and math.isfinite(v)}
    if not ok:
        raise SaekitError("no β has a finite validation ΔCE to choose from")
    return min(ok, key=lambda b: (ok[b], b))


def pool_choices(chosen: dict[tuple[int, str], float], validation_delta_ce: dict[tuple[int, str], float | None]
                 ) -> dict[tuple[int, str], float]:
    """Keep, per k, only the family whose chosen β has the lowest validation ΔCE (ties: the grid order
    of FAMILIES); ``validation_delta_ce`` maps (k, family) to that chosen β's validation ΔCE."""
    out: dict[tuple[int, str], float] = {}
    for k in sorted({k for k, _ in chosen}):
        cands = [(f, chosen[(k, f)]) for f in FAMILIES if (k, f) in chosen]
        ok = [(f, b) for f, b in cands if finite(validation_delta_ce.get((k, f)))]
        if not ok:
            raise SaekitError(f"no g-SAE at k={k} has a finite validation ΔCE to choose from")
        f, b = min(ok, key=lambda fb: (validation_delta_ce[(k, fb[0])], FAMILIES.index(fb[0])))  # type: ignore[arg-type]
        out[(k, f)] = b
    return out


def claim_groups(cfg: "GSAEScale", chosen: dict[tuple[int, str], float]) -> dict[str, dict[int, "Variant"]]:
    """The g-SAEs each claim is decided on: per family (its chosen β at every k), or one group "best"
    (the pooled choice per k) when ``cfg.pool_families``."""
    if cfg.pool_families:
        return {"best": {k: Variant(f, k, b) for (k, f), b in sorted(chosen.items())}}  # type: ignore[arg-type]
    return {fam: {k: Variant(fam, k, chosen[(k, fam)]) for k in cfg.ks if (k, fam) in chosen} for fam in FAMILIES}


Interval = tuple[str, float | None, float | None]  # (what it resamples, lo, hi)


def finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def decide(intervals: Sequence[Interval], claim: Literal["below", "above"] = "below") -> tuple[Verdict, str]:
    """Verdict on "the g-SAE − TopK difference is below (or above) 0" from 95% intervals.

    reproduced: every interval lies on the claimed side of 0; not reproduced: every interval lies on
    the other side; otherwise (an interval crosses 0, they disagree, or one is missing) undecided."""
    if not intervals:
        return "undecided at this power", "no interval"
    missing = [name for name, lo, hi in intervals if not (finite(lo) and finite(hi))]
    if missing:
        return "undecided at this power", f"no {', '.join(missing)} interval (one seed or no data)"
    shown = "; ".join(f"{name} [{lo:+.4g}, {hi:+.4g}]" for name, lo, hi in intervals)
    # as "below 0": an interval [lo, hi] of the claim "above" is [-hi, -lo] of the claim "below"
    flipped = [(lo, hi) if claim == "below" else (-hi, -lo) for _, lo, hi in intervals]  # type: ignore[operator]
    if all(hi < 0 for lo, hi in flipped):
        return "reproduced", f"every interval {'below' if claim == 'below' else 'above'} 0: {shown}"
    if all(lo > 0 for lo, hi in flipped):
        return "not reproduced", f"every interval on the wrong side of 0: {shown}"
    crossing = [name for name, lo, hi in intervals if lo <= 0 <= hi]  # type: ignore[operator]
    if crossing:
        cross = "interval crosses" if len(crossing) == 1 else "intervals cross"
        return "undecided at this power", f"{', '.join(crossing)} {cross} 0: {shown}"
    return "undecided at this power", f"the intervals disagree in sign: {shown}"


def combine(per_k: dict[int, Verdict]) -> Verdict:
    """One verdict over every k: reproduced only if reproduced at every k, not reproduced if it fails
    at any k (the claim is 'at equal k'), else undecided."""
    values = list(per_k.values())
    if values and all(v == "reproduced" for v in values):
        return "reproduced"
    if any(v == "not reproduced" for v in values):
        return "not reproduced"
    return "undecided at this power"


def difference_of_means(a: Sequence[float], b: Sequence[float], n_boot: int, seed: int,
                        level: float = 0.95) -> dict[str, float]:
    """mean(a) − mean(b) for two independent samples (e.g. two SAEs' latents), with a percentile
    bootstrap interval resampling each sample on its own; NaN bounds when either is empty."""
    from saekit.eval.stats import bootstrap_indices, percentile_interval

    x = np.asarray([v for v in a if finite(v)], dtype=np.float64)
    y = np.asarray([v for v in b if finite(v)], dtype=np.float64)
    if x.size == 0 or y.size == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n_a": int(x.size), "n_b": int(y.size)}
    point = float(x.mean() - y.mean())
    ia, ib = bootstrap_indices(x.size, n_boot, 2 * seed), bootstrap_indices(y.size, n_boot, 2 * seed + 1)
    lo, hi = percentile_interval(x[ia].mean(axis=1) - y[ib].mean(axis=1), level)
    return {"value": point, "lo": lo, "hi": hi, "n_a": int(x.size), "n_b": int(y.size)}


def pooled_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], key: str = "ce_sae",
                      n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean over seeds of the per-token difference of ``key`` (SAE a_s − SAE b_s, every seed s spliced on
    the same contexts), with a paired bootstrap interval resampling the contexts jointly for every seed."""
    from saekit.eval.stats import paired_bootstrap

    if len(a) != len(b) or not a:
        raise SaekitError("pooled_difference needs one result per seed for both SAEs")
    count = list(a[0]["per_context"]["count"])
    q: dict[str, Sequence[float]] = {"n": count}
    for i, (ra, rb) in enumerate(zip(a, b)):
        if list(ra["per_context"]["count"]) != count or list(rb["per_context"]["count"]) != count:
            raise SaekitError("the splice results were not measured on the same contexts")
        q[f"a{i}"], q[f"b{i}"] = ra["per_context"][key], rb["per_context"][key]
    m = len(a)
    return paired_bootstrap(q, lambda s: sum(s[f"a{i}"] - s[f"b{i}"] for i in range(m)) / (m * s["n"]), n_boot, seed)


def dead_verdict(gsae: Sequence[float], topk: Sequence[float]) -> tuple[Verdict, str, dict[str, float]]:
    """'Fewer dead latents': t-interval over seeds of the per-seed difference g-SAE − TopK."""
    from saekit.eval.stats import mean_ci

    diff = mean_ci([g - t for g, t in zip(gsae, topk)])
    if all(v == 0 for v in [*gsae, *topk]):
        return "undecided at this power", "no latent is dead in any run of either (nothing to compare)", diff
    verdict, why = decide([("seed", diff["lo"], diff["hi"])], "below")
    return verdict, why, diff


def analyse(cfg: GSAEScale, units: dict[str, float], validation: dict[int, dict[str, Any]],
            chosen: dict[tuple[int, str], float], final: dict[int, list[Variant]], test: dict[int, dict[str, Any]],
            dead: dict[str, float | None], steer: dict[str, dict[str, Any]],
            betas_used: dict[str, dict[str, float]], changed: dict[str, Any] | None = None) -> dict[str, Any]:
    from saekit.eval.stats import mean_ci, paired_difference, splice_intervals

    seeds, nb = list(cfg.seeds), cfg.n_boot
    rows: list[dict[str, Any]] = []  # one per (SAE, inference, seed) on test
    summary: list[dict[str, Any]] = []  # one per (k, variant, inference) over seeds
    comparisons: dict[tuple[int, str, str], dict[str, Any]] = {}
    for k in cfg.ks:
        topk = Variant("topk", k)
        for v in final[k]:
            for inference in (["topk"] if v.family == "topk" else ["grads", "bare"]):
                suffix = "" if v.family == "topk" else ("+grads" if inference == "grads" else "@bare")
                per_seed = []
                for s in seeds:
                    r, t = test[s][v.name(s) + suffix], test[s][topk.name(s)]
                    iv = splice_intervals(r, nb, seed=s)
                    row = {"sae": v.name(s) + suffix, "k": k, "family": v.family, "inference": inference,
                           "seed": s, "beta": v.beta, **betas_used.get(v.name(s), {}),
                           "delta_ce": r["delta_ce"], "delta_ce_lo": iv["delta_ce"]["lo"],
                           "delta_ce_hi": iv["delta_ce"]["hi"], "kl": r["kl"], "kl_lo": iv["kl"]["lo"],
                           "kl_hi": iv["kl"]["hi"], "loss_recovered": r["loss_recovered"],
                           "loss_recovered_lo": iv["loss_recovered"]["lo"],
                           "loss_recovered_hi": iv["loss_recovered"]["hi"], "fvu": r.get("fvu"), "l0": r.get("l0"),
                           "dead_test_tokens": r.get("dead_fraction"), "dead_train_window": dead.get(v.name(s)),
                           "ce_clean": r["ce_clean"], "ce_zero": r["ce_zero"], "ce_tokens": r["ce_tokens"]}
                    if v.family != "topk":
                        dce = paired_difference(r, t, "ce_sae", nb, seed=s)
                        dkl = paired_difference(r, t, "kl_sae", nb, seed=s)
                        row.update({"dce_vs_topk": dce["value"], "dce_vs_topk_lo": dce["lo"], "dce_vs_topk_hi": dce["hi"],
                                    "dkl_vs_topk": dkl["value"], "dkl_vs_topk_lo": dkl["lo"], "dkl_vs_topk_hi": dkl["hi"]})
                    rows.append(row)
                    per_seed.append(row)
                srow: dict[str, Any] = {"k": k, "family": v.family, "beta": v.beta, "inference": inference,
                                        "seeds": len(per_seed)}
                for key in ("delta_ce", "kl", "loss_recovered", "fvu", "l0", "dead_train_window"):
                    srow[key] = mean_ci([r[key] for r in per_seed if r.get(key) is not None])
                if v.family != "topk":
                    srow["dce_vs_topk_seeds"] = mean_ci([r["dce_vs_topk"] for r in per_seed])
                    srow["dce_vs_topk_contexts"] = pooled_difference(
                        [test[s][v.name(s) + suffix] for s in seeds], [test[s][topk.name(s)] for s in seeds],
                        "ce_sae", nb)
                    srow["dkl_vs_topk_seeds"] = mean_ci([r["dkl_vs_topk"] for r in per_seed])
                    comparisons[(k, v.family, inference)] = srow
                summary.append(srow)

    # claims
    per_k: dict[str, dict[str, dict[int, dict[str, Any]]]] = {"delta_ce": {}, "dead": {}, "steering": {}}
    steering_rows: list[dict[str, Any]] = []
    groups = claim_groups(cfg, chosen)
    for fam, members in groups.items():
        for claim in per_k:
            per_k[claim][fam] = {}
        for k, v in members.items():
            topk = Variant("topk", k)
            c = comparisons[(k, v.family, "grads")]
            verdict, why = decide([("seed", c["dce_vs_topk_seeds"]["lo"], c["dce_vs_topk_seeds"]["hi"]),
                                   ("context", c["dce_vs_topk_contexts"]["lo"], c["dce_vs_topk_contexts"]["hi"])])
            per_k["delta_ce"][fam][k] = {"verdict": verdict, "why": why, "seeds": c["dce_vs_topk_seeds"],
                                         "contexts": c["dce_vs_topk_contexts"]}
            g_dead = [dead.get(v.name(s)) for s in seeds]
            t_dead = [dead.get(topk.name(s)) for s in seeds]
            if any(x is None for x in [*g_dead, *t_dead]):
                dv, dw, dd = "undecided at this power", "no dead fraction in the metrics", {}
            else:
                dv, dw, dd = dead_verdict(g_dead, t_dead)  # type: ignore[arg-type]
            per_k["dead"][fam][k] = {"verdict": dv, "why": dw, "diff": dd, "gsae": g_dead, "topk": t_dead}
            intervals: list[Interval] = []
            diffs = []
            for s in cfg.steer_seeds:
                ga, ta = steer.get(v.name(s)), steer.get(topk.name(s))
                if ga is None or ta is None:
                    continue
                ge = [r["effect_at_kl"] for r in ga["latents"]]
                te = [r["effect_at_kl"] for r in ta["latents"]]
                d = difference_of_means(ge, te, nb, seed=s)
                diffs.append(d["value"])
                intervals.append((f"latents (seed {s})", d["lo"], d["hi"]))
                for name, res, eff in ((v.name(s), ga, ge), (topk.name(s), ta, te)):
                    if any(r["sae"] == name for r in steering_rows):
                        continue  # TopK's row, already there from the other family
                    ok = [e for e in eff if finite(e)]
                    steering_rows.append({"sae": name, "k": k, "family": "topk" if res is ta else v.family, "seed": s,
                                          "latents": len(eff), "reached_budget": len(ok),
                                          "mean_effect_at_kl": float(np.mean(ok)) if ok else None,
                                          "median_effect_at_kl": float(np.median(ok)) if ok else None,
                                          "activation_norm": res["activation_norm"], "_effects": eff,
                                          **({"diff_vs_topk": d} if res is ga else {})})
            if cfg.steer_ks and k not in cfg.steer_ks:
                continue  # not steered at this k: the steering claim is decided over steer_ks
            if len(cfg.steer_seeds) > 1:
                sd = mean_ci(diffs)
                intervals.append(("seed", sd["lo"], sd["hi"]))
            sv, sw = decide(intervals, "above") if intervals else ("undecided at this power", "not steered")
            if len(cfg.steer_seeds) == 1 and intervals:
                sw += f"; one training seed steered (seed {cfg.steer_seeds[0]}): latent intervals only"
            per_k["steering"][fam][k] = {"verdict": sv, "why": sw, "diffs": diffs, "intervals": intervals}

    claims: list[dict[str, Any]] = []
    texts = {"delta_ce": "lower spliced ΔCE than TopK at equal k (gradients at inference)",
             "dead": "fewer dead latents than TopK at equal k",
             "steering": "latents steer more effectively than TopK's (effect on target tokens at a KL budget)"}
    for claim, text in texts.items():
        for fam in groups:
            ks = per_k[claim][fam]
            if not ks:
                continue
            overall = combine({k: e["verdict"] for k, e in ks.items()})
            ours = "; ".join(f"k={k}: {_claim_value(claim, e)}" for k, e in ks.items())
            why = "; ".join(f"k={k} {e['verdict']}: {e['why']}" for k, e in ks.items())
            claims.append({"claim": f"{text} — {FAMILY_LABEL[fam]}", "claim_key": claim, "family": fam,
                           "paper": PAPER[claim], "ours": ours, "verdict": overall, "why": why,
                           "per_k": {str(k): {"verdict": e["verdict"], "why": e["why"]} for k, e in ks.items()}})

    val_rows = []
    for k in cfg.ks:
        for v in grid(cfg, k):
            r = validation[k][v.name(cfg.seeds[0])]
            val_rows.append({"k": k, "family": v.family, "beta": v.beta, **betas_used.get(v.name(cfg.seeds[0]), {}),
                             "delta_ce": r["delta_ce"], "kl": r["kl"], "loss_recovered": r["loss_recovered"],
                             "fvu": r.get("fvu"), "chosen": v.family != "topk" and chosen.get((k, v.family)) == v.beta,
                             "selection_changed": (changed or {}).get(v.name(cfg.seeds[0]), {}).get("changed_fraction")})
    return {"units": units, "chosen": {f"k{k}-{f}": b for (k, f), b in chosen.items()}, "validation": val_rows,
            "test": rows, "summary": summary, "steering": steering_rows, "claims": claims,
            "clean": {"ce_clean": rows[0]["ce_clean"], "ce_zero": rows[0]["ce_zero"],
                      "ce_mean_ablation": test[seeds[0]][rows[0]["sae"]]["ce_mean_ablation"],
                      "test_tokens": rows[0]["ce_tokens"]}}


def _claim_value(claim: str, e: dict[str, Any]) -> str:
    if claim == "delta_ce":
        return (f"{fmt_ci(e['seeds'], 4)} (seeds), {fmt_ci(e['contexts'], 4)} (contexts)")
    if claim == "dead":
        g, t = e["gsae"], e["topk"]
        return (f"g-SAE {', '.join(fmt(x, 4) for x in g)} vs TopK {', '.join(fmt(x, 4) for x in t)}; "
                f"diff {fmt_ci(e['diff'], 4)}")
    parts = [f"{fmt(d, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]" for d, (_, lo, hi) in zip(e["diffs"], e["intervals"])]
    return "Δ effect@κ " + ", ".join(parts) if parts else "–"
