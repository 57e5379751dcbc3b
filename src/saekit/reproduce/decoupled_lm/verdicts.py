"""Numbers, paired intervals and a verdict per claim from the test chunks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from saekit.reproduce.decoupled_lm.config import DecoupledLMScale, ITERATIVE, PAPER
from saekit.reproduce.decoupled_lm.methods import Spec, variance_per_context


# ---------------------------------------------------------------------------------------------------------
# step 4: numbers, intervals, verdicts

def _merge(chunks: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """Chunks -> (activation sums over every test context, per-method measurement, per-method splice)."""
    acts = {"n": [], "sum": [], "sq": []}
    methods: dict[str, dict[str, Any]] = {}
    splice: dict[str, dict[str, list[float]]] = {}
    for ch in chunks:
        for k in acts:
            acts[k].extend(ch["activations"][k])
        for name, st in ch["methods"].items():
            m = methods.setdefault(name, {"sums": {k: [] for k in st["sums"]}, "flops": 0.0, "rows": 0, "iters": [],
                                          "converged": True, "seconds": 0.0, "fired": set(), "contexts": []})
            for k, v in st["sums"].items():
                m["sums"][k].extend(v)
            m["flops"] += st["flops"]
            m["rows"] += st["rows"]
            m["iters"].extend(st["iters"])
            m["converged"] = m["converged"] and st["converged"]
            m["seconds"] += st["seconds"]
            m["fired"].update(st["fired"])
            m["contexts"].extend(st["contexts"])
        for name, pc in ch["splice"].items():
            s = splice.setdefault(name, {k: [] for k in pc})
            for k, v in pc.items():
                s[k].extend(v)
    return acts, methods, splice


def _point(m: dict[str, Any], var: np.ndarray, where: list[int]) -> dict[str, float]:
    """L0, FVU, γ of one method over the contexts ``where`` (positions in its own context list)."""
    s = {k: np.asarray(v, dtype=np.float64)[where] for k, v in m["sums"].items()}
    n = s["n"].sum()
    return {"l0": float(s["l0"].sum() / n), "fvu": float(s["sse"].sum() / var.sum()),
            "gamma": float(s["hh"].sum() / s["xh"].sum()) if s["xh"].sum() else math.nan, "tokens": int(n)}


def analyse(cfg: DecoupledLMScale, specs: list[Spec], chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Every method's numbers on test (full test for the non-frontier ones, the frontier contexts for all),
    with paired bootstrap intervals and differences from the SAE encoder."""
    from saekit.eval.stats import mean_ci, paired_bootstrap, paired_difference, splice_intervals

    acts, methods, splice = _merge(chunks)
    n_ctx = len(acts["n"])
    var_full = variance_per_context(acts, list(range(n_ctx)))
    frontier = list(range(cfg.frontier_contexts))
    var_front = variance_per_context(acts, frontier)
    sae = methods["sae"]
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        m = methods[spec.name]
        pos = {c: i for i, c in enumerate(m["contexts"])}
        row: dict[str, Any] = {"method": spec.name, "family": spec.family, "param": spec.param, "seed": spec.seed,
                               "targets": list(spec.targets), "spliced": spec.spliced, "frontier_only": spec.frontier,
                               "flops_per_token": m["flops"] / max(m["rows"], 1),
                               "iters_mean": float(np.mean(m["iters"])) if m["iters"] else None,
                               "iters_max": int(max(m["iters"])) if m["iters"] else None,
                               "converged": m["converged"], "encode_seconds": m["seconds"],
                               "latents_fired": len(m["fired"])}
        row["flops_ratio"] = row["flops_per_token"] / (sae["flops"] / max(sae["rows"], 1))
        front = _point(m, var_front, [pos[c] for c in frontier])
        row.update({f"frontier_{k}": v for k, v in front.items()})
        if not spec.frontier:
            full = _point(m, var_full, [pos[c] for c in range(n_ctx)])
            row.update(full)
            sse = np.asarray(m["sums"]["sse"])
            row["fvu_ci"] = paired_bootstrap({"a": sse, "v": var_full}, lambda q: q["a"] / q["v"], cfg.n_boot, seed=0)
            if spec.name != "sae":
                row["d_fvu"] = paired_bootstrap({"a": sse, "b": np.asarray(sae["sums"]["sse"]), "v": var_full},
                                                lambda q: (q["a"] - q["b"]) / q["v"], cfg.n_boot, seed=0)
                row["l0_ratio"] = row["l0"] / (np.sum(sae["sums"]["l0"]) / np.sum(sae["sums"]["n"]))
        if spec.spliced:
            res = {"per_context": splice[spec.name]}
            ci = splice_intervals(res, cfg.n_boot, seed=0)
            row.update({k: ci[k]["value"] for k in ci})
            row["ci"] = ci
            if spec.name != "sae":
                ref = {"per_context": splice["sae"]}
                pc, pr = splice[spec.name], splice["sae"]
                row["d_kl"] = paired_difference(res, ref, "kl_sae", cfg.n_boot, seed=0)
                row["d_ce"] = paired_difference(res, ref, "ce_sae", cfg.n_boot, seed=0)
                row["d_loss_recovered"] = paired_bootstrap(
                    {"a": pc["ce_sae"], "b": pr["ce_sae"], "z": pc["ce_zero"], "c": pc["ce_clean"]},
                    lambda q: (q["b"] - q["a"]) / (q["z"] - q["c"]) if q["z"] != q["c"] else math.nan,
                    cfg.n_boot, seed=0)
                row["outcome"] = compare(row["l0_ratio"], row["d_fvu"], row["d_kl"], cfg.match_tolerance)
        rows[spec.name] = row
    ref = splice["sae"]
    reference = {"ce_tokens": int(sum(ref["count"])), "ce_clean": sum(ref["ce_clean"]) / sum(ref["count"]),
                 "ce_zero": sum(ref["ce_zero"]) / sum(ref["count"]),
                 "ce_mean_ablation": sum(ref["ce_mean"]) / sum(ref["count"]),
                 "test_tokens": int(sum(acts["n"])), "test_contexts": n_ctx,
                 "frontier_tokens": int(np.asarray(acts["n"])[frontier].sum())}
    seeds = {}
    for fam in ("mlp-sae", "mlp"):
        rs = [r for r in rows.values() if r["family"] == fam and not r["frontier_only"]]
        if rs:
            entry = {"seeds": len(rs), "lambda": rs[0]["param"]}
            for k in ("l0", "fvu", "kl", "delta_ce", "loss_recovered", "gamma", "latents_fired"):
                vals = [r.get(k) for r in rs if r.get(k) is not None]
                entry[k] = mean_ci(vals) if vals else None
            entry["d_fvu"] = mean_ci([r["d_fvu"]["value"] for r in rs])
            entry["d_kl"] = mean_ci([r["d_kl"]["value"] for r in rs if "d_kl" in r]) if any("d_kl" in r for r in rs) \
                else None
            seeds[fam] = entry
    return {"rows": list(rows.values()), "reference": reference, "seeds": seeds}


def compare(l0_ratio: float, d_fvu: dict[str, float], d_kl: dict[str, float], tolerance: float) -> str:
    """A method against the SAE encoder on test: 'better' when it uses at most the SAE's L0 (within
    ``tolerance``) and both the FVU and the KL difference intervals lie below 0; 'worse' when it uses at
    least the SAE's L0 (within tolerance) and either interval lies above 0; else 'undecided'."""
    not_more = l0_ratio <= 1.0 + tolerance
    not_less = l0_ratio >= 1.0 / (1.0 + tolerance)
    if not_more and d_fvu["hi"] < 0 and d_kl["hi"] < 0:
        return "better"
    if not_less and (d_fvu["lo"] > 0 or d_kl["lo"] > 0):
        return "worse"
    return "undecided"


def _describe(r: dict[str, Any]) -> str:
    from saekit.reproduce.common import fmt_ci

    return (f"{r['method']}: L0 ×{r['l0_ratio']:.2f}, ΔFVU {fmt_ci(r['d_fvu'])}, ΔKL {fmt_ci(r['d_kl'])} "
            f"({r['outcome']})")


def verdicts(cfg: DecoupledLMScale, results: dict[str, Any]) -> list[Any]:
    from saekit.reproduce.common import Claim, fmt_ci

    rows = {r["method"]: r for r in results["rows"]}
    compared = [r for r in rows.values() if r["spliced"] and r["method"] != "sae"]
    claims = []
    tol = f"L0 within ±{cfg.match_tolerance:.0%} of the SAE's counts as matched"

    it = [r for r in compared if r["family"] in ITERATIVE]
    ours = "; ".join(_describe(r) for r in it)
    if any(r["outcome"] == "better" for r in it):
        v, why = "reproduced", "an iterative method has lower FVU and KL (95% paired intervals below 0) at no more L0"
    elif it and all(r["outcome"] == "worse" for r in it):
        v, why = "not reproduced", "every iterative method is worse in FVU or KL at no less L0"
    else:
        v, why = "undecided at this power", "no iterative method is clearly better, not all are clearly worse"
    claims.append(Claim("Iterative inference on the frozen dictionary beats the amortised SAE encoder at matched "
                        "L0 (lower FVU and KL)", PAPER["gap"], ours, v, f"{why}; {tol}"))

    ito = [r for r in compared if r["family"] == "sae+ito"]
    if ito:
        r = ito[0]
        v = {"better": "reproduced", "worse": "not reproduced"}.get(r["outcome"], "undecided at this power")
        claims.append(Claim("SAE + ITO improves on the SAE encoder at matched L0", PAPER["ito"], _describe(r), v,
                            {"better": "both intervals below 0", "worse": "an interval above 0"}.get(
                                r["outcome"], "intervals include 0 or L0 not matched") + f" ({cfg.ito_iters} iterations)"))

    mlps = [r for r in compared if r["family"] == "mlp-sae"]
    s = results["seeds"].get("mlp-sae", {})
    dfvu, dkl = s.get("d_fvu") or {}, s.get("d_kl") or {}
    ours = (f"{len(mlps)} seeds, ΔFVU {fmt_ci(dfvu)}, ΔKL {fmt_ci(dkl)} (t-intervals over seeds); per seed: "
            + ", ".join(r["outcome"] for r in mlps))
    rnd = [r for r in rows.values() if r["family"] == "mlp" and not r["frontier_only"]]
    if rnd:
        ours += "; random-init MLP (FVU only): " + ", ".join(
            f"L0 {r['l0']:.1f}, FVU {r['fvu']:.3f}" for r in rnd)
    t_below = dfvu.get("hi") is not None and math.isfinite(dfvu.get("hi", math.nan)) and dfvu["hi"] < 0 \
        and dkl.get("hi") is not None and math.isfinite(dkl.get("hi", math.nan)) and dkl["hi"] < 0
    t_above = any(d.get("lo") is not None and math.isfinite(d.get("lo", math.nan)) and d["lo"] > 0 for d in (dfvu, dkl))
    if mlps and all(r["outcome"] == "better" for r in mlps) and t_below:
        v, why = "reproduced", "every seed better (context intervals) and the seed t-intervals below 0"
    elif mlps and (all(r["outcome"] == "worse" for r in mlps) or (t_above and all(r["l0_ratio"] >= 1 / (
            1 + cfg.match_tolerance) for r in mlps))):
        v, why = "not reproduced", "the SAE-started MLP is worse (every seed, or the seed t-interval above 0)"
    else:
        v, why = "undecided at this power", "seeds disagree or intervals include 0"
    claims.append(Claim("An MLP encoder trained on the frozen dictionary beats the SAE encoder at matched L0",
                        PAPER["mlp"], ours, v, why))

    better = sorted((r for r in compared if r["outcome"] == "better"), key=lambda r: r["flops_ratio"])
    if better:
        cheapest = better[0]
        ours = ", ".join(f"{r['method']} {r['flops_ratio']:.1f}x" for r in better) + " the SAE encoder's FLOPs"
        if cheapest["flops_ratio"] <= cfg.modest_flops:
            v, why = "reproduced", f"the cheapest method that beats the SAE costs ≤ {cfg.modest_flops:g}x its FLOPs"
        else:
            v, why = "not reproduced", f"every method that beats the SAE costs > {cfg.modest_flops:g}x its FLOPs"
    else:
        ours, v, why = "no method beats the SAE encoder", "undecided at this power", "nothing to price"
    claims.append(Claim(f"… at a modest FLOP cost (≤ {cfg.modest_flops:g}x the encoder's inference FLOPs per token)",
                        PAPER["flops"], ours, v, why))
    return claims
