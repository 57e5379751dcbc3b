"""The decoupled-synthetic write-up: tables, plots, CSV/JSON and the README."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from saekit.io import atomic_write_json
from saekit.reproduce.decoupled_synthetic import methods as sm
from saekit.reproduce.common import claims_table, fmt, fmt_ci, markdown_table, write_csv, write_readme
from saekit.reproduce.decoupled_synthetic.methods import Row
from saekit.reproduce.decoupled_synthetic.config import DecoupledSyntheticScale, METRICS, OLD, PAPER
from saekit.reproduce.decoupled_synthetic.verdicts import above, claims, paired, summarise


# ------------------------------------------------------------------------------------------ tables

def _flag(s: Row) -> str:
    if s["above_chance_code"] is None:
        return "? (one seed)"
    flags = [name for name, ok in (("code ≤ chance", s["above_chance_code"]),
                                   ("dict ≤ chance", s.get("above_chance_dict"))) if ok is False]
    return "**" + ", ".join(flags) + "**" if flags else "above"


def _which(s: Row) -> str:
    """Which of code / dictionary MCC is not clearly above chance."""
    return ", ".join(x for x, ok in (("code", s["above_chance_code"]), ("dict", s.get("above_chance_dict")))
                     if ok is False)


def _chosen(s: Row) -> str:
    """'λ 0.1×3, 0.3×2 (of {…}; 2 at an end)': each seed's choice, the candidates, choices at an end of the range."""
    if not s["param"]:
        return "–"
    vals = [v for v in s["chosen"] if v is not None]
    counts: dict[Any, int] = defaultdict(int)
    for v in vals:
        counts[v] += 1
    text = f"{s['param']} " + ", ".join(f"{v:g}×{c}" if c > 1 else f"{v:g}" for v, c in sorted(counts.items()))
    text += f" (of {_set(s['candidates'])}" if s.get("candidates") else ""
    text += f"; {s['at_edge']} at an end)" if s.get("at_edge") else (")" if s.get("candidates") else "")
    return text


def main_table(summary: Sequence[Row], chance: Row | None) -> str:
    order = {k: i for i, k in enumerate(sm.METHODS)}
    rows = []
    for s in sorted(summary, key=lambda s: order.get(s["key"], 99)):
        ref = PAPER.get(s["key"], ("", ""))
        dict_ours = fmt_ci(s["dict_mcc"]) if s["dict_mcc"]["n"] else ("given" if s["regime"] == "known_dictionary"
                                                                       else "–")
        conv = "" if s.get("all_converged", True) else " (not all converged)"
        rows.append((s["regime"].replace("_", " "), s["method"], fmt_ci(s["code_mcc"]), ref[0] or "", dict_ours,
                     ref[1] or "", _flag(s), _chosen(s), f"{s['l0']['mean']:.2f}", f"{s['train_flops']['mean']:.3g}",
                     f"{s['infer_flops_per_sample']['mean']:.3g}{conv}"))
    table = markdown_table(rows, ["regime", "method", "code MCC (test)", "paper", "dict MCC", "paper",
                                  "vs chance", "chosen on validation", "L0", "train FLOPs", "inference FLOPs / sample"])
    if chance:
        table += ("\n\nChance levels of this setting (mean [95% CI] over seeds): untrained SAE code MCC "
                  f"{fmt_ci(chance['untrained_sae_code_mcc'])}, dictionary MCC of a random unit dictionary "
                  f"{fmt_ci(chance['random_dict_mcc'])}, of the untrained SAE "
                  f"{fmt_ci(chance['untrained_sae_dict_mcc'])} (true L0 = K; the untrained SAE fires "
                  f"{chance['untrained_sae_l0']['mean']:.1f} latents per sample).")
    return table


def grid_table(summary: Sequence[Row], chance: dict[tuple[int, int, int], Row], metric: str = "code_mcc") -> str:
    """Rows (K, M, N), one column per method: mean [95% CI], bold where not clearly above chance."""
    methods = [k for k in sm.METHODS if any(s["key"] == k for s in summary)]
    if metric == "dict_mcc":
        methods = [k for k in methods if sm.METHODS[k][0] == "unknown"]
    names = {s["key"]: f"{s['regime'].replace('known_dictionary', 'known D').replace('unknown', 'unknown')}: "
                       f"{s['method']}" for s in summary}
    idx = {(s["key"], s["N"], s["M"], s["K"]): s for s in summary}
    cells = sorted({(s["K"], s["M"], s["N"]) for s in summary})
    rows = []
    for k, m, n in cells:
        ch = chance.get((n, m, k))
        chance_col = (fmt(ch["untrained_sae_code_mcc"]["mean"]) if metric == "code_mcc" else
                      f"{fmt(ch['random_dict_mcc']['mean'])} / {fmt(ch['untrained_sae_dict_mcc']['mean'])}") if ch else "–"
        cols = [k, m, n, chance_col]
        for key in methods:
            s = idx.get((key, n, m, k))
            if s is None:
                cols.append("–")
                continue
            flag = s["above_chance_code"] if metric == "code_mcc" else s["above_chance_dict"]
            text = fmt_ci(s[metric], 2)
            cols.append(f"**{text}** ✗" if flag is False else text)
        rows.append(cols)
    head = ["K", "M", "N", "chance (untrained SAE)" if metric == "code_mcc" else "chance (random / untrained SAE)"]
    return markdown_table(rows, head + [names[k] for k in methods])


# ------------------------------------------------------------------------------------------- plots

def _pyplot() -> Any:
    from saekit.report.plots import pyplot

    return pyplot()


def _save(fig: Any, path: Path) -> Path:
    from saekit.report.plots import save_figure

    return save_figure(fig, path)


def _half(ci: dict[str, float]) -> float:
    return (ci["hi"] - ci["mean"]) if math.isfinite(ci.get("hi", math.nan)) else 0.0


_MARKERS = {"known_codes": "s", "known_dictionary": "^", "unknown": "o"}


def plot_main(summary: Sequence[Row], chance: Row | None, path: Path) -> Path:
    """Code and dictionary MCC (mean, 95% CI over seeds) against total FLOPs (training + test inference),
    with the chance levels as dashed lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(summary):
        x = max(s["total_flops"]["mean"], 1.0)
        for ax, key in zip(axes, ("code_mcc", "dict_mcc")):
            if s[key]["n"] == 0:
                continue
            ax.errorbar(x, s[key]["mean"], yerr=_half(s[key]), fmt=_MARKERS.get(s["regime"], "o"), color=cmap(i % 20),
                        capsize=3, label=f"{s['regime']}: {s['method']}")
    if chance:
        axes[0].axhline(chance["untrained_sae_code_mcc"]["mean"], ls="--", color="grey", label="chance: untrained SAE")
        axes[1].axhline(chance["random_dict_mcc"]["mean"], ls="--", color="grey", label="chance: random dictionary")
        axes[1].axhline(chance["untrained_sae_dict_mcc"]["mean"], ls=":", color="grey", label="chance: untrained SAE")
    for ax, title in zip(axes, ("code MCC (test samples)", "dictionary MCC")):
        ax.set_xscale("log")
        ax.set_xlabel("total FLOPs (training + inference on the test set)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    s0 = summary[0]
    fig.suptitle(f"O'Neill et al. synthetic benchmark, N={s0['N']}, M={s0['M']}, K={s0['K']} "
                 f"(mean, 95% CI over {s0['seeds']} seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    h2, l2 = axes[1].get_legend_handles_labels()
    extra = [(h, lab) for h, lab in zip(h2, l2) if lab.startswith("chance") and lab not in labels]
    fig.legend(handles + [h for h, _ in extra], labels + [lab for _, lab in extra], loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _save(fig, path)


def plot_grid_heatmaps(summary: Sequence[Row], specs: Sequence[sm.CellSpec], path: Path, metric: str = "code_mcc") -> Path:
    """One heatmap (N rows × M columns) per method and K; skipped cells hatched grey, cells not clearly
    above chance marked ✗."""
    plt = _pyplot()
    methods = [k for k in sm.METHODS if any(s["key"] == k for s in summary)]
    if metric == "dict_mcc":
        methods = [k for k in methods if sm.METHODS[k][0] == "unknown"]
    ns = sorted({c.n for c in specs})
    ms = sorted({c.m for c in specs})
    ks = sorted({c.k for c in specs})
    idx = {(s["key"], s["N"], s["M"], s["K"]): s for s in summary}
    names = {s["key"]: f"{s['regime'].replace('_', ' ')}: {s['method']}" for s in summary}
    fig, axes = plt.subplots(len(methods), len(ks), figsize=(3.4 * len(ks), 2.8 * len(methods)), squeeze=False,
                             layout="constrained")
    for i, key in enumerate(methods):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            grid = np.full((len(ns), len(ms)), np.nan)
            for a, n in enumerate(ns):
                for b, m in enumerate(ms):
                    s = idx.get((key, n, m, k))
                    if s is not None:
                        grid[a, b] = s[metric]["mean"]
            ax.set_facecolor("#dddddd")
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for a, n in enumerate(ns):
                for b, m in enumerate(ms):
                    s = idx.get((key, n, m, k))
                    if s is None:
                        ax.text(b, a, "skip", ha="center", va="center", fontsize=7, color="black")
                        continue
                    flag = s["above_chance_code"] if metric == "code_mcc" else s["above_chance_dict"]
                    ax.text(b, a, f"{grid[a, b]:.2f}" + (" ✗" if flag is False else ""), ha="center", va="center",
                            fontsize=7, color="white" if grid[a, b] < 0.6 else "black")
            ax.set_xticks(range(len(ms)), [str(m) for m in ms])
            ax.set_yticks(range(len(ns)), [str(n) for n in ns])
            ax.set_xlabel("M")
            ax.set_ylabel("N")
            ax.set_title(f"{names[key]}, K={k}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="code MCC (test)" if metric == "code_mcc" else "dictionary MCC")
    fig.suptitle(f"{'code' if metric == 'code_mcc' else 'dictionary'} MCC over the grid "
                 "(mean over seeds; ✗ not clearly above chance; grey: skipped, K ≥ M)")
    return _save(fig, path)


def plot_gaps(rows: Sequence[Row], valid: Sequence[tuple[int, int, int]], path: Path) -> Path:
    """Code MCC gap (FISTA − SAE encoder, known dictionary; SC − SAE, unknown) against N, one line per (M, K)."""
    plt = _pyplot()
    pairs = [("known_dictionary/fista", "known_dictionary/sae", "known D: FISTA − SAE encoder"),
             ("unknown/sc", "unknown/sae", "unknown: SC − SAE"), ("unknown/mlp", "unknown/sae", "unknown: MLP − SAE")]
    keys = {r["key"] for r in rows}
    pairs = [p for p in pairs if p[0] in keys and p[1] in keys]
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(5 * max(1, len(pairs)), 4), squeeze=False,
                             layout="constrained")
    mks = sorted({(m, k) for _, m, k in valid})
    for ax, (a, b, title) in zip(axes[0], pairs):
        for m, k in mks:
            ns = sorted(n for n, mm, kk in valid if (mm, kk) == (m, k))
            cis = [paired(rows, a, b, (n, m, k)) for n in ns]
            ax.errorbar(ns, [c["mean"] for c in cis], yerr=[_half(c) for c in cis], marker="o", capsize=2,
                        label=f"M={m}, K={k}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (true atoms)")
        ax.set_ylabel("code MCC gap (paired over seeds)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def write_results(cfg: DecoupledSyntheticScale, run: Any, t0: float, roots: tuple[Path, Path],
                  main: tuple[list[Row], list[Row]], grid: tuple[list[Row], list[Row]],
                  specs: Sequence[sm.CellSpec]) -> Path:
    """Summaries, verdicts, CSV/JSON, plots and the README from the runs (and chance rows) of the main setting
    and the grid; ``t0`` is when this invocation started."""
    (main_root, grid_root), (main_rows, main_chance), (grid_rows, grid_chance) = roots, main, grid
    main_cell = (cfg.n, cfg.m, cfg.k)
    valid = [(c.n, c.m, c.k) for c in specs if not c.skip]

    main_summary, main_ch = summarise(main_rows, main_chance)
    grid_summary, grid_ch = summarise(grid_rows, grid_chance)
    verdicts, detail = claims(main_rows, main_summary, grid_rows, valid, main_cell)

    out = run.out
    for r in main_rows:
        r["setting"] = "main"
    for r in grid_rows:
        r["setting"] = "grid"
    cols = ["setting", "regime", "method", "key", "N", "M", "K", "seed", "param", "value", "val_code_mcc", "code_mcc",
            "dict_mcc", "l0", "train_flops", "infer_flops_per_sample", "infer_flops_total", "total_flops",
            "selection_flops", "iters", "converged", "seconds"]
    write_csv(out / "runs.csv", main_rows + grid_rows, cols)
    flat = []
    for setting, summ in (("main", main_summary), ("grid", grid_summary)):
        for s in summ:
            row = {"setting": setting, **{k: s[k] for k in ("regime", "method", "key", "N", "M", "K", "seeds", "param")},
                   "chosen": " ".join(f"{v:g}" for v in s["chosen"] if v is not None),
                   "above_chance_code": s["above_chance_code"], "above_chance_dict": s["above_chance_dict"]}
            for metric in METRICS:
                for part in ("mean", "lo", "hi"):
                    row[f"{metric}_{part}"] = s[metric][part]
            flat.append(row)
    write_csv(out / "summary.csv", flat)
    write_csv(out / "chance.csv", [{"setting": "main", **c} for c in main_chance] +
              [{"setting": "grid", **c} for c in grid_chance])
    from saekit.eval.splice import clean_json

    atomic_write_json(out / "results.json", clean_json({
        "config": asdict(cfg), "paper": PAPER, "old_write_up": OLD, "claims": [asdict(c) for c in verdicts],
        "claim_detail": {k: v for k, v in detail.items()},
        "skipped_cells": [asdict(c) for c in specs if c.skip], "notes": {f"N{c.n}-M{c.m}-K{c.k}": c.note for c in specs
                                                                        if c.note},
        "main_summary": main_summary, "grid_summary": grid_summary,
        "main_chance": list(main_ch.values()), "grid_chance": list(grid_ch.values()),
        "main_runs": main_rows, "grid_runs": grid_rows}))
    plots = []
    if cfg.plots:
        plots.append(plot_main(main_summary, main_ch.get(main_cell), out / "main_quality_vs_flops.png"))
        if grid_summary:
            plots.append(plot_grid_heatmaps(grid_summary, specs, out / "grid_code_mcc.png", "code_mcc"))
            if any(s["regime"] == "unknown" for s in grid_summary):
                plots.append(plot_grid_heatmaps(grid_summary, specs, out / "grid_dict_mcc.png", "dict_mcc"))
            plots.append(plot_gaps(grid_rows, valid, out / "grid_gap_vs_n.png"))

    compute_main = sum(r.get("seconds", 0.0) for r in main_rows)
    compute_grid = sum(r.get("seconds", 0.0) for r in grid_rows)
    sections = [_intro(cfg, valid, specs), "## Verdicts\n\n" + claims_table(verdicts) + "\n\n" + _verdict_notes(),
                f"## Main setting: N={cfg.n}, M={cfg.m}, K={cfg.k}, {len(cfg.seeds)} seeds\n\n"
                "Mean [95% t-interval] over seeds; code MCC on the test samples; λ (or pursuit's target L0 k) chosen "
                "per seed on the validation samples (the list gives each seed's choice). Paper = the authors' "
                "released results, mean over 5 seeds, as quoted in issue 11. \"vs chance\": **code ≤ chance** / "
                "**dict ≤ chance** where the method's interval does not lie above the chance level's.\n\n"
                + main_table(main_summary, main_ch.get(main_cell))
                + ("\n\n![quality vs FLOPs](main_quality_vs_flops.png)" if cfg.plots else "")]
    if grid_summary:
        sections.append(_grid_section(cfg, grid_summary, grid_ch, specs, detail))
    sections.append(_changes_section(main_summary, main_cell))
    sections.append(
        "## Files and budget\n\n"
        "- `runs.csv`: one row per setting, method, cell and seed (chosen value, validation and test code MCC, "
        "dictionary MCC, L0, FLOPs: training of one model, inference per test sample, total, and everything the "
        "selection cost: every candidate trained and evaluated on validation);\n"
        "- `summary.csv`: mean, lo, hi over seeds per method and cell, above-chance flags; `chance.csv`: chance levels "
        "per cell and seed; `results.json`: all of it plus the config, verdict details and skipped cells;\n"
        f"- plots: {', '.join(f'`{p.name}`' for p in plots) or 'none'}.\n\n"
        f"Compute recorded with the cached results: main setting {compute_main / 60:.1f} min, grid "
        f"{compute_grid / 60:.1f} min (on the machine and load of the invocation that computed them); "
        f"this invocation {(time.perf_counter() - t0) / 60:.1f} min. Cache: `{main_root}`, `{grid_root}`.")
    return write_readme(run, "Decoupled sparse inference on synthetic data (O'Neill, Gumran & Klindt 2024)",
                        sections, cfg)


def _intro(cfg: DecoupledSyntheticScale, valid: Sequence[tuple[int, int, int]], specs: Sequence[sm.CellSpec]) -> str:
    b, g = cfg.main, cfg.grid
    skipped = [c for c in specs if c.skip]
    return (
        "Reproduction of the synthetic part of arXiv 2411.13117 (\"Compute Optimal Inference and Provable "
        "Amortisation Gap in Sparse Autoencoders\"). The LM part is `saekit reproduce decoupled-lm`.\n\n"
        "**Data** (`saekit.data.synthetic`, O'Neill generator): N atoms in R^M, i.i.d. Gaussian then unit norm; "
        "exactly K active per sample, magnitudes |N(0,1)|, no noise. Per cell and seed a new truth and "
        f"{cfg.n_train} training, {cfg.n_validation} validation and {cfg.n_test} test samples, each from its own "
        "named random stream; every method's initialisation and mini-batch order from its own stream too, so no "
        "method starts at (or near) the truth whatever the seeds (tested).\n\n"
        "**Methods** (objective ‖x − fW‖² + λ‖f‖₁, f ≥ 0, unit-norm atoms, no decoder bias): linear-ReLU SAE encoder "
        f"and MLP encoders (h={'x'.join(map(str, b.mlp_hidden_known_codes))} with known codes, "
        f"h={'x'.join(map(str, b.mlp_hidden))} otherwise), Adam lr {b.lr:g}, batch {b.batch_size}, {b.steps} steps "
        f"(grid {g.steps}); ISTA/FISTA (restart) to tol {b.ito_tol:g} or {b.ito_max_iters} iterations (grid "
        f"{g.ito_tol:g} / {g.ito_max_iters}); MP/GP/OMP; SAE + ITO (FISTA warm-started from the SAE's codes on its "
        f"dictionary); sparse coding ({b.sc_rounds} rounds, grid {g.sc_rounds}, of {b.sc_code_iters} FISTA "
        "iterations + the MOD dictionary step; test codes by FISTA on the learned dictionary).\n\n"
        f"**Selection.** λ ∈ {_set(b.lambdas)} for every L1 method in the main setting"
        + (" (except " + "; ".join(f"{k}: {_set(v)}" for k, v in b.lambdas_by_method.items()) + ")"
           if b.lambdas_by_method else "")
        + f"; in the grid {_set(g.lambdas)}"
        + (" except " + "; ".join(f"{k}: {_set(v)}" for k, v in g.lambdas_by_method.items())
           if g.lambdas_by_method else "")
        + ". The target L0 of pursuit k ∈ {" + ", ".join(f"{f:g}K" for f in b.pursuit_k_factors) + "}. Each is chosen "
        "per method and seed as the highest code MCC on the validation samples; every reported code MCC is on the "
        "test samples. The supervised encoders (known codes) have nothing to tune. The tables give each seed's choice "
        "and how many fell on an end of the candidate range (the best value may then lie beyond it).\n\n"
        "**Chance levels** beside every MCC: a random unit dictionary's dictionary MCC "
        f"(`chance_dictionary_mcc`, {cfg.chance_draws} draws per cell and seed) and the untrained SAE (the "
        "regime-iii SAE's initial dictionary and its tied-encoder codes ReLU(x Wᵀ)): dictionary and code MCC. A "
        "method is *clearly above chance* when the lower end of its 95% interval over seeds exceeds the upper end "
        "of the chance level's (for dictionary MCC the larger of the two chance levels).\n\n"
        f"**Grid.** N ∈ {_set(cfg.grid_n)}, M ∈ {_set(cfg.grid_m)}, K ∈ {_set(cfg.grid_k)}: {len(valid)} cells run with "
        f"{len(cfg.grid_seeds)} seeds each and methods {', '.join(g.methods)}."
        + (f" Skipped ({len(skipped)} cells with K ≥ M: "
           + ", ".join(f"N={c.n} M={c.m} K={c.k}" for c in skipped) + f"): {skipped[0].skip.split(': ', 1)[1]}."
           if skipped else "")
        + " Cells with M/2 < K < M are beyond the worst-case (spark) uniqueness bound but identifiable almost "
        "surely; they are kept.\n\n"
        "**Seeds and intervals.** Mean and 95% Student-t interval over seeds (`saekit.eval.stats.mean_ci`). Method "
        "comparisons are paired: each seed is one problem shared by every method, so a claim's interval is the "
        "t-interval of the per-seed difference.")


def _set(values: Sequence[Any]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _verdict_notes() -> str:
    return ("A main-setting claim is *reproduced* when the paired 95% interval of the difference lies above 0, *not "
            "reproduced* when it lies below, and *undecided at this power* when it includes 0. Grid claims count "
            "cells; trend claims test the slope of the gap against log2 N.")


def _grid_section(cfg: DecoupledSyntheticScale, summary: Sequence[Row], chance: dict, specs: Sequence[sm.CellSpec],
                  detail: dict[str, Any]) -> str:
    flagged = [s for s in summary if s["above_chance_code"] is False or s.get("above_chance_dict") is False]
    lines = [f"## Grid: {len(cfg.grid_seeds)} seeds per cell, {cfg.grid.steps} encoder steps, "
             f"{cfg.grid.sc_rounds} SC rounds",
             "",
             "The grid's budget is smaller than the main setting's (to fit the scale); within a cell every method gets "
             "the same data and seeds. Code MCC on test, mean [95% CI]; **bold ✗** = not clearly above chance.", "",
             grid_table(summary, chance, "code_mcc"), ""]
    if any(s["regime"] == "unknown" for s in summary):
        lines += ["Dictionary MCC of the methods that learn a dictionary (chance: random unit dictionary / untrained "
                  "SAE; at small M a random dictionary already scores high, and the chance level rises with N/M, so "
                  "compare within a cell):", "", grid_table(summary, chance, "dict_mcc"), ""]
    if cfg.plots:
        lines += ["![grid code MCC](grid_code_mcc.png)", "", "![grid dictionary MCC](grid_dict_mcc.png)", "",
                  "![gaps vs N](grid_gap_vs_n.png)", ""]
    lines += [f"Not clearly above chance (code or dictionary MCC): {len(flagged)} of {len(summary)} (method, cell) "
              "entries" + (":" if flagged else ".")]
    by_method: dict[str, list[Row]] = defaultdict(list)
    for s in flagged:
        by_method[f"{s['regime'].replace('_', ' ')}: {s['method']}"].append(s)
    for name, ss in by_method.items():
        lines.append(f"- {name} ({len(ss)}): " + ", ".join(
            f"N={s['N']} M={s['M']} K={s['K']} ({_which(s)})" for s in ss))
    notes = [c for c in specs if c.note]
    if notes:
        lines += ["", "Cells beyond the worst-case uniqueness bound (kept): "
                  + ", ".join(f"N={c.n} M={c.m} K={c.k}" for c in notes) + "."]
    trends = {k: v for k, v in detail.items() if isinstance(v, dict) and "per_mk" in v}
    for text, v in trends.items():
        lines += ["", f"{text}: mean slope per (M, K): "
                  + ", ".join(f"{mk} {s:+.3f}" for mk, s in v["per_mk"].items()) + "."]
    return "\n".join(lines)


def _changes_section(summary: Sequence[Row], cell: tuple[int, int, int]) -> str:
    rows = []
    for key, (code_old, dict_old) in OLD.items():
        s = next((s for s in summary if s["key"] == key), None)
        if s is None:
            continue
        rows.append((s["regime"].replace("_", " "), s["method"], code_old, fmt(s["code_mcc"]["mean"]), dict_old,
                     fmt(s["dict_mcc"]["mean"]) if s["dict_mcc"]["n"] else dict_old))
    return ("## What changed since results/decoupled_inference.md (its numbers are superseded)\n\n"
            "The old write-up (`saekit bench-synthetic`, now removed) is superseded by this page:\n\n"
            "- **Random streams.** saekit drew a synthetic problem's true atoms and an SAE's initial dictionary from "
            "generators seeded alike (`torch.Generator().manual_seed(seed)`), so an SAE built with the "
            "seed of its synthetic problem (`saekit train` with its defaults: both 0) started at the truth. Every draw now has its own named stream (`saekit.rng`): the truth "
            "(`decoupled.truth` → `synthetic.atoms`), train / validation / test samples, each method's "
            "initialisation and batch order. The old benchmark mixed its method seeds, but seed 0's training samples "
            "came from the generator that drew seed 1's atoms; all problems are new draws now, so no old number can "
            "be compared seed by seed.\n"
            "- **λ chosen on validation**, per method and seed, instead of one λ = 0.1 for all; pursuit's target L0 "
            "chosen the same way instead of k = K; a validation set separate from training and test.\n"
            "- **Chance levels** beside every MCC and flags where a method is not clearly above them.\n"
            "- **95% t-intervals** over seeds instead of ± std, paired differences for every claim, verdicts.\n"
            "- **The grid** has K ∈ {3, 6, 9} (not only 3), several seeds per cell (not one), and the known-dictionary "
            "methods too.\n\n"
            f"Main setting N={cell[0]}, M={cell[1]}, K={cell[2]}, old (superseded: λ = 0.1, mean over 5 seeds) vs now "
            "(mean over this run's seeds):\n\n"
            + markdown_table(rows, ["regime", "method", "code MCC old", "code MCC now", "dict MCC old", "dict MCC now"]))
