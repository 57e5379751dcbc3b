"""The g-SAE reproduction's write-up: README sections, CSV/JSON and plots from ``analyse``'s result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saekit.reproduce.common import Claim, Run, claims_table, fmt, fmt_ci, markdown_table, write_csv, write_readme
from saekit.reproduce.gsae.config import FAMILY_LABEL, GSAEScale
from saekit.reproduce.gsae.verdicts import finite


def _plt():
    from saekit.report.plots import pyplot

    return pyplot()


def _save(fig: Any, path: Path) -> str:
    from saekit.report.plots import save_figure

    return save_figure(fig, path).name


def _err(ci: dict[str, Any]) -> tuple[float, float, float]:
    v = ci.get("mean", ci.get("value"))
    v = math.nan if v is None else v
    lo, hi = ci.get("lo"), ci.get("hi")
    return v, (v - lo) if finite(lo) else 0.0, (hi - v) if finite(hi) else 0.0


def plots(cfg: GSAEScale, out: Path, result: dict[str, Any]) -> list[str]:
    plt = _plt()
    names = []
    styles = {("topk", "topk"): ("k", "-", "TopK"), ("norm", "grads"): ("C0", "-", "g-SAE norm (+grads)"),
              ("norm", "bare"): ("C0", "--", "g-SAE norm (bare, β=0)"),
              ("raw", "grads"): ("C3", "-", "g-SAE raw (+grads)"),
              ("raw", "bare"): ("C3", "--", "g-SAE raw (bare, β=0)")}
    ks = list(cfg.ks)
    # 1. ΔCE, KL, FVU vs k (mean over seeds, t-interval)
    shift = {("topk", "topk"): 0.0, ("norm", "grads"): -0.1, ("norm", "bare"): -0.05, ("raw", "grads"): 0.05,
             ("raw", "bare"): 0.1}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = {"delta_ce": "ΔCE (nats/token)", "kl": "KL(p_clean ‖ p_spliced) (nats/token)", "fvu": "FVU"}
    for metric, ax in zip(("delta_ce", "kl", "fvu"), axes):
        for (fam, inf), (color, ls, label) in styles.items():
            pts = [(r["k"], _err(r[metric])) for r in result["summary"] if r["family"] == fam and r["inference"] == inf]
            if not pts:
                continue
            x = [p[0] * 2 ** shift[(fam, inf)] for p in pts]
            ax.errorbar(x, [p[1][0] for p in pts], yerr=[[p[1][1] for p in pts], [p[1][2] for p in pts]],
                        color=color, ls=ls, marker="s" if inf == "bare" else "o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_title(titles[metric], fontsize=10)
    fig.suptitle("test contexts: mean over training seeds, 95% t-interval", fontsize=10)
    axes[0].legend(fontsize=7)
    names.append(_save(fig, out / "fidelity_vs_k.png"))
    # 2. paired difference to TopK
    fig, ax = plt.subplots(figsize=(6.5, 4))
    offs = {("norm", "grads"): -0.09, ("norm", "bare"): -0.03, ("raw", "grads"): 0.03, ("raw", "bare"): 0.09}
    for (fam, inf), off in offs.items():
        color, ls, label = styles[(fam, inf)]
        pts = [r for r in result["summary"] if r["family"] == fam and r["inference"] == inf]
        if not pts:
            continue
        x = [math.log2(r["k"]) + off for r in pts]
        e = [_err(r["dce_vs_topk_contexts"]) for r in pts]
        ax.errorbar(x, [p[0] for p in e], yerr=[[p[1] for p in e], [p[2] for p in e]], color=color,
                    marker="o" if inf == "grads" else "s", ls="none", capsize=3, label=label)
    ax.axhline(0, color="k", lw=1)
    ax.set_xticks([math.log2(k) for k in ks], [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("ΔCE(g-SAE) − ΔCE(TopK), nats/token")
    ax.set_title("paired difference on test contexts (seed mean, 95% bootstrap)", fontsize=9)
    ax.legend(fontsize=7)
    names.append(_save(fig, out / "dce_vs_topk.png"))
    # 3. validation curves over β (normalised units for both families)
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks):
        vr = [r for r in result["validation"] if r["k"] == k]
        top = [r for r in vr if r["family"] == "topk"]
        if top:
            ax.axhline(top[0]["delta_ce"], color="k", label="TopK")
        for fam, color in (("norm", "C0"), ("raw", "C3")):
            pts = sorted((r["beta_norm"], r["delta_ce"], r["chosen"]) for r in vr if r["family"] == fam)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker="o", label=f"g-SAE {fam}")
                ax.plot([p[0] for p in pts if p[2]], [p[1] for p in pts if p[2]], color=color, marker="*", ms=14, ls="none")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("β in normalised units (raw β × E‖g‖)")
        ax.set_title(f"validation ΔCE, k={k}, seed {cfg.seeds[0]} (★ chosen)", fontsize=9)
    axes[0][0].set_ylabel("ΔCE (nats/token)")
    axes[0][0].legend(fontsize=7)
    names.append(_save(fig, out / "validation_beta.png"))
    # 4. steering ECDFs
    if result["steering"]:
        fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.6), squeeze=False)
        for ax, k in zip(axes[0], ks):
            for r in (r for r in result["steering"] if r["k"] == k):
                eff = sorted(e for e in r["_effects"] if finite(e)) if "_effects" in r else []
                if eff:
                    ax.plot([eff[0], *eff], [0.0, *((i + 1) / r["latents"] for i in range(len(eff)))],
                            drawstyle="steps-post",
                            color=styles[(r["family"], "topk" if r["family"] == "topk" else "grads")][0],
                            label=f"{r['sae']} (n={r['latents']})")
            ax.set_xlabel(f"effect on targets at KL = {cfg.steer_kl_budget} (nats)")
            ax.set_title(f"steering, k={k}", fontsize=9)
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("fraction of latents (ECDF)")
        names.append(_save(fig, out / "steering.png"))
    return names


def write_outputs(cfg: GSAEScale, run: Run, result: dict[str, Any]) -> None:
    from saekit.eval.splice import clean_json
    from saekit.io import atomic_write_json

    out = run.out
    write_csv(out / "gsae_test.csv", result["test"])
    write_csv(out / "gsae_validation.csv", result["validation"])
    flat = []
    for r in result["summary"]:
        f = {k: v for k, v in r.items() if not isinstance(v, dict)}
        for key, ci in r.items():
            if isinstance(ci, dict):
                f[key] = ci.get("mean", ci.get("value"))
                f[key + "_lo"], f[key + "_hi"] = ci.get("lo"), ci.get("hi")
        flat.append(f)
    write_csv(out / "gsae_summary.csv", flat)
    write_csv(out / "gsae_steering.csv", [{k: v for k, v in r.items() if not k.startswith("_") and k != "diff_vs_topk"}
                                          for r in result["steering"]])
    atomic_write_json(out / "gsae.json", clean_json({"command": run.command, "scale": run.scale, **result}))
    pngs = plots(cfg, out, result)
    write_readme(run, "g-SAE (gradient TopK) vs TopK — Olmo et al. 2024 (arXiv 2411.10397)",
                 sections(cfg, run, result, pngs), cfg)


def sections(cfg: GSAEScale, run: Run, result: dict[str, Any], pngs: list[str]) -> list[str]:
    u, c = result["units"], result["clean"]
    n_grid = len(cfg.ks) * (1 + len(cfg.norm_betas) + len(cfg.raw_betas))
    per_k_gsaes = 1 if cfg.pool_families else (1 if cfg.norm_betas else 0) + (1 if cfg.raw_betas else 0)
    n_more = len(cfg.ks) * (1 + per_k_gsaes) * (len(cfg.seeds) - 1)
    pool_text = (", then per k the better of the two families' choices (the two grids are one score with β in "
                 "different units, so pooling them is one finer grid); only that g-SAE goes on"
                 if cfg.pool_families else "")
    s = []
    s.append(f"""## What this tests

The three claims of Olmo et al. 2024 (*Features that Make a Difference*, arXiv 2411.10397; GPT-2 small,
layer 7), on {cfg.lm.model} `{cfg.lm.hookpoint}`, corpus `{cfg.lm.corpus}`: at equal k a g-SAE
(1) splices with less next-token loss than TopK, (2) has fewer dead latents, (3) has latents that steer
more effectively. The g-SAE picks the k latents with the largest z_i (1 + β |d_i · g|), g = ∂CE/∂x at the
hookpoint (next-token cross-entropy summed over the context, from a clean forward and backward), and
keeps them with their values z_i. The paper uses the gradient at inference too; so does "+grads" here
(`WithGradients`: one clean forward + backward per batch, which uses the next-token labels). "bare" is
the same weights encoded without gradients (β = 0: TopK selection).

### Which β is which

* **norm** (saekit's default): ĝ = g / grad_scale, grad_scale = E‖g‖ in the SAE's normalised input units,
  fitted by the trainer on its initial sample, so |d_i · ĝ| is O(1/√d).
  Grid {', '.join(f'{b:g}' for b in cfg.norm_betas)}.
* **raw** (the paper's score, DESIGN.md): g in the model's own units, unit-norm atoms d_i. Trained as
  `gradient_topk` with `sae.beta` = β_raw · E‖g‖, E‖g‖ computed from exactly the sample the trainer
  fits grad_scale on, so β·|d_i·ĝ| = β_raw·|d_i·g| (checked on every SAE: β_raw = beta / (input_scale ·
  grad_scale) from its cfg.json; the CSVs list `beta_norm` and `beta_raw` of each). Grid
  {', '.join(f'{b:g}' for b in cfg.raw_betas)}.
* On this store E‖x‖ = {fmt(u['mean_act_norm'], 4)}, E‖g‖ = {fmt(u['mean_grad_norm'], 4)} (model units,
  first {u['sample_tokens']} tokens), input_scale s = {fmt(u['input_scale'], 4)}: a raw β equals a normalised
  β of β_raw × {fmt(u['mean_grad_norm'], 4)}. The paper's own β values are for GPT-2's gradients and do not
  transfer; both grids here are ours.

## What was run

1. One store of {cfg.train_tokens:,} training tokens with gradients (`{store_label(cfg, run)}`; fp16
   activations, fp32 gradients), context length {cfg.lm.context_length}.
2. Seed {cfg.seeds[0]}: TopK and one g-SAE per β of both grids at k ∈ {{{', '.join(map(str, cfg.ks))}}}
   ({n_grid} SAEs). All SAEs: {cfg.width} latents, {cfg.steps} steps × {cfg.batch_size} tokens
   ({cfg.steps * cfg.batch_size:,} tokens), Adam lr {cfg.lr:g}, {cfg.warmup_steps} warm-up steps, AuxK with a
   dead threshold of {cfg.auxk_dead_tokens:,} tokens, activations normalised, b_dec at the geometric median; the
   seed sets the initialisation and the data order, so the SAEs of one seed see the same batches.
3. β chosen per (k, family) by the lowest spliced ΔCE (+grads) on the {cfg.validation_contexts} **validation**
   contexts{pool_text}; TopK and the chosen g-SAEs trained at seeds {', '.join(map(str, cfg.seeds[1:])) or '–'} ({n_more} SAEs).
4. Every chosen SAE spliced on the {cfg.test_contexts} **test** contexts (disjoint from validation; {c['test_tokens']:,}
   predicted tokens): CE clean {fmt(c['ce_clean'], 4)}, zero-ablation {fmt(c['ce_zero'], 4)}, mean-ablation
   {fmt(c['ce_mean_ablation'], 4)} nats/token. Dead latents: the trainer's last metrics row (no activation in the
   last {cfg.dead_window_tokens:,} training tokens).
5. Steering (`saekit steer-eval` protocol, `src/saekit/eval/steering.py`): {cfg.steer_latents} latents per SAE for
   TopK and the chosen g-SAEs at k ∈ {{{', '.join(map(str, cfg.steer_ks or cfg.ks))}}}, training seed(s) {', '.join(map(str, cfg.steer_seeds))}; α ∈
   {{{', '.join(f'{a:g}' for a in cfg.steer_alphas)}}} × mean ‖x‖, targets = the 10 tokens promoted most at α =
   {cfg.steer_calib_alpha:g} on {cfg.steer_calib_contexts} calibration contexts, effect read at KL κ =
   {cfg.steer_kl_budget:g} nats/token on {cfg.steer_eval_contexts} measurement contexts (both drawn from the test
   contexts).

Intervals are 95%: "seeds" = Student t over the {len(cfg.seeds)} training seeds of the per-seed paired
difference; "contexts" = paired bootstrap ({cfg.n_boot} resamples) over test contexts of the seed-mean difference,
every SAE and seed resampled with the same contexts; steering = bootstrap over latents (independent per SAE).
A claim is **reproduced** when every interval lies on the claimed side of 0, **not reproduced** when every
interval lies on the other side, **undecided at this power** otherwise; over k it is reproduced only if it is at
every k and not reproduced if it fails at any.
""")
    s.append("## Verdicts\n\n" + claims_table([Claim(x["claim"], x["paper"], x["ours"], x["verdict"], x["why"])
                                                for x in result["claims"]]) + "\n")
    per_k_rows = [(x["claim_key"], FAMILY_LABEL[x["family"]], k, f"**{e['verdict']}**", e["why"])
                  for x in result["claims"] for k, e in x["per_k"].items()]
    s.append("### Per k\n\n" + markdown_table(per_k_rows, ["claim", "g-SAE", "k", "verdict", "why"]) + "\n")
    s.append(fidelity_section(result))
    s.append(validation_section(cfg, result))
    s.append(steering_section(cfg, result))
    if pngs:
        s.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in pngs) + "\n")
    s.append(f"""## Caveats

* The "+grads" splice uses the next-token labels at inference (as the paper does); "bare" does not.
* A training seed sets both the initialisation and the data order (independent streams; `data.store_seed`):
  TopK and the g-SAEs of one seed see the same batches in the same order (the comparison is paired), and the
  seed intervals cover initialisation and data order. grad_scale is fitted on the gradients of the sample's
  own rows, so it, and hence each β, is the same in every seed.
{ladder_edges(result)}* {len(cfg.seeds)} seeds; the β grid and the choice of β use seed {cfg.seeds[0]} only; steering covers seed(s)
  {', '.join(map(str, cfg.steer_seeds))} only (so its intervals do not cover training noise unless several are listed).
* {cfg.train_tokens:,} training tokens is far below the paper's scale; dead-latent dynamics that need many tokens
  cannot show.

Files: `gsae_test.csv` (every SAE × inference × seed on test), `gsae_summary.csv` (seed means with intervals),
`gsae_validation.csv` (the β grid), `gsae_steering.csv`, `gsae.json` (everything, with the verdicts).
""")
    return s


def ladder_edges(result: dict[str, Any]) -> str:
    """A caveat line per k whose chosen β is the ladder's smallest or largest (in normalised units, both
    grids pooled): its optimum may lie outside the ladder. Empty when every choice is interior."""
    lines = []
    for k in sorted({r["k"] for r in result["validation"]}):
        rows = [r for r in result["validation"] if r["k"] == k and r.get("beta_norm") is not None]
        chosen = [r for r in rows if r["chosen"]]
        if len(rows) < 2 or not chosen:
            continue
        b, ladder = chosen[0]["beta_norm"], sorted(r["beta_norm"] for r in rows)
        if b in (ladder[0], ladder[-1]):
            end = "largest" if b == ladder[-1] else "smallest"
            lines.append(f"* k={k}: the chosen β ({b:.4g} normalised) is the ladder's {end} "
                         f"({', '.join(f'{x:.3g}' for x in ladder)}): the best β may lie beyond it.\n")
    return "".join(lines)


def store_label(cfg: GSAEScale, run: Run) -> str:
    return cfg.store or str(Path(run.work) / "store")


def fidelity_section(result: dict[str, Any]) -> str:
    rows = []
    for r in result["summary"]:
        how = "+grads" if r["inference"] == "grads" else "bare"
        label = "TopK" if r["family"] == "topk" else f"{r['family']} β={r['beta']:g} ({how})"
        rows.append((r["k"], label, fmt_ci(r["delta_ce"], 4), fmt_ci(r.get("dce_vs_topk_seeds"), 4),
                     fmt_ci(r.get("dce_vs_topk_contexts"), 4), fmt_ci(r["kl"], 4), fmt_ci(r.get("dkl_vs_topk_seeds"), 4),
                     fmt_ci(r["loss_recovered"], 4), fmt_ci(r["fvu"], 3), fmt(r["l0"].get("mean"), 1),
                     fmt_ci(r["dead_train_window"], 4)))
    return ("## Downstream fidelity and dead latents (test contexts)\n\n" + markdown_table(
        rows, ["k", "SAE", "ΔCE [seeds]", "ΔCE − TopK [seeds]", "ΔCE − TopK [contexts]", "KL [seeds]",
               "KL − TopK [seeds]", "loss recovered", "FVU", "L0", "dead (train window)"]) + "\n")


def validation_section(cfg: GSAEScale, result: dict[str, Any]) -> str:
    rows = [(r["k"], r["family"], fmt(r["beta"], 3) if r["beta"] is not None else "–", fmt(r.get("beta_norm"), 4),
             fmt(r.get("beta_raw"), 4), fmt(r["delta_ce"], 4), fmt(r["kl"], 4), fmt(r["fvu"], 3),
             fmt(100 * r["selection_changed"], 1) + "%" if r.get("selection_changed") is not None else "–",
             "**chosen**" if r["chosen"] else "") for r in result["validation"]]
    return (f"## β chosen on the validation contexts (seed {cfg.seeds[0]}, +grads)\n\n"
            + markdown_table(rows, ["k", "family", "β", "β (normalised units)", "β (raw units)", "ΔCE", "KL", "FVU",
                                    "selection changed by g", ""]) + "\n"
            + f"\n\"selection changed by g\": the share of the latents a g-SAE selects with gradients that the same "
            f"weights would not select at β = 0, on the first {cfg.selection_contexts} test context(s) (how much the "
            "gradient term actually does at that β).\n")


def steering_section(cfg: GSAEScale, result: dict[str, Any]) -> str:
    rows = []
    for r in result["steering"]:
        d = r.get("diff_vs_topk")
        rows.append((r["k"], r["sae"], r["latents"], r["reached_budget"], fmt(r["mean_effect_at_kl"], 3),
                     fmt(r["median_effect_at_kl"], 3), fmt_ci(d, 3) if d else "–"))
    return (f"## Steering (effect on target tokens at KL = {cfg.steer_kl_budget:g} nats/token)\n\n"
            + markdown_table(rows, ["k", "SAE", "latents", "reached κ", "mean effect@κ", "median effect@κ",
                                    "mean − TopK [latents]"]) + "\n")
