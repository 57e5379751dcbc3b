"""`saekit reproduce architectures`: TopK, BatchTopK, Matryoshka and JumpReLU beside Gated and standard.

No single paper's claim: the comparison a researcher choosing an architecture asks for (issue 13).
1. Synthetic dictionary recovery (O'Neill et al. ground truth: 64 atoms in R^32, 3 active, 64 latents):
   dictionary MCC per architecture at three seeds, each seed its own truth and initialisation, with the
   chance level of random unit dictionaries; the bar is MCC >= 0.9 on every seed.
2. The LM frontier on the Gated reproduction's store (same model, hookpoint, test contexts, training
   recipe, width = the Gated width): a sparsity grid per architecture at seed 0, then every seed at the
   value whose *validation* L0 is nearest a target; each SAE spliced into the model (loss recovered, ΔCE,
   KL with paired bootstrap intervals over the test contexts), FVU, γ, dead over >= 1M store tokens; the
   L0 each architecture needs at matched loss recovered, beside the Gated and standard frontiers read from
   the Gated reproduction's cached evaluations (the same test contexts).
Every step is cached under WORK (trained SAEs, evaluations), so a killed run continues.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import DataConfig, SAEConfig, TrainConfig
from saekit.reproduce.common import choose

SPARSITY_FIELD = {"topk": "k", "batchtopk": "k", "matryoshka": "k", "jumprelu": "l0_coeff"}
"""The field each architecture's sparsity grid sets."""

COLOURS = {"gated": "tab:blue", "standard": "tab:orange", "topk": "tab:green", "batchtopk": "tab:red",
           "matryoshka": "tab:purple", "jumprelu": "tab:brown"}


@dataclass(frozen=True)
class SyntheticSetting:
    """One architecture's synthetic recovery run: its steps, SAEConfig fields and SyntheticConfig fields
    ((name, value) pairs; data: e.g. the generator)."""

    architecture: str
    steps: int
    sae: tuple[tuple[str, Any], ...] = ()
    data: tuple[tuple[str, Any], ...] = ()


@dataclass
class ArchitecturesScale:
    """One scale of the architecture comparison."""

    gated_scale: str = "cpu"
    """Which scale of the Gated reproduction supplies the store, the recipe and the test contexts."""
    gated_work: str = "runs/reproduce/gated-cpu"
    """Its work folder (store, cached Gated/standard evaluations); "" = WORK/gated (smoke)."""
    width: int = 0
    """Latents of every SAE here; 0 = the Gated scale's Gated width (same parameter count as a Gated SAE's
    dictionary; Gated's extra r_mag/b_mag are per latent)."""
    grids: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("topk", (10, 20, 40, 80)), ("batchtopk", (10, 20, 40, 80)), ("matryoshka", (10, 20, 40, 80)),
        ("jumprelu", (0.1, 0.3, 1.0, 3.0)))
    """Per architecture, the values of its sparsity field (``SPARSITY_FIELD``) trained at seed 0."""
    seeds: tuple[int, ...] = (0, 1, 2)
    seed_target_l0: float = 20.0
    """Every seed at the grid value whose validation L0 is nearest this (log scale)."""
    jumprelu_lr: float = 0.0
    """lr of JumpReLU runs; 0 = the Gated recipe's."""
    synthetic: tuple[SyntheticSetting, ...] = (
        SyntheticSetting("topk", 3000), SyntheticSetting("jumprelu", 1000, (("l0_coeff", 3.0),)),
        SyntheticSetting("batchtopk", 6000), SyntheticSetting("matryoshka", 10000, (("group_sizes", (32, 32)),)),
        *(SyntheticSetting(a, 3000, sae, (("generator", "hierarchical"),)) for a, sae in (
            ("topk", ()), ("batchtopk", ()), ("matryoshka", ()), ("matryoshka", (("group_sizes", (16, 48)),)))))
    """The bar's problem (oneill: 64 equally frequent independent atoms) per architecture at the budget that
    meets the bar where one does, then the hierarchical generator (16 parents with 3 children each, group_size
    4), which is what Matryoshka's nested prefixes are for; (16, 48) puts the parents' count in the first prefix."""
    synthetic_seeds: tuple[int, ...] = (0, 1, 2)
    match_range: tuple[float, float] = (10.0, 100.0)
    """L0 range of the frontier fits (loss recovered against log L0)."""
    n_boot: int = 2000
    device: str = "cpu"


SCALES: dict[str, ArchitecturesScale] = {
    "smoke": ArchitecturesScale(gated_scale="smoke", gated_work="", width=256,
                                grids=(("topk", (8, 32)), ("batchtopk", (8, 32)), ("matryoshka", (8, 32)),
                                       ("jumprelu", (0.3, 3.0))),
                                seeds=(0, 1), seed_target_l0=8.0,
                                synthetic=(SyntheticSetting("batchtopk", 20), SyntheticSetting("jumprelu", 20),
                                           SyntheticSetting("matryoshka", 20, (), (("generator", "hierarchical"),))),
                                synthetic_seeds=(0,), match_range=(0.1, 1000.0), n_boot=50),
    "cpu": ArchitecturesScale(),
    "gpu": ArchitecturesScale(gated_scale="gpu", gated_work="runs/reproduce/gated-gpu",
                              grids=(("topk", (10, 20, 40, 80, 160)), ("batchtopk", (10, 20, 40, 80, 160)),
                                     ("matryoshka", (10, 20, 40, 80, 160)), ("jumprelu", (0.03, 0.1, 0.3, 1.0, 3.0))),
                              device="cuda"),
}


def run_name(architecture: str, value: float, seed: int) -> str:
    return f"{architecture}-{SPARSITY_FIELD[architecture]}_{value:g}-s{seed}"


def train_config(cfg: ArchitecturesScale, gcfg: Any, store: Path, work: Path, architecture: str, value: float,
                 seed: int) -> TrainConfig:
    """The Gated reproduction's recipe (steps, batch, lr, warm-up) for another architecture. TopK-family
    SAEs use AuxK (run-scaled dead threshold) instead of resampling; JumpReLU resamples like Gated."""
    param = SPARSITY_FIELD[architecture]
    sae = SAEConfig(architecture=architecture, n_latents=cfg.width or gcfg.gated_width,
                    **{param: int(value) if param == "k" else float(value)})
    l0_trained = architecture == "jumprelu"
    lr = cfg.jumprelu_lr if l0_trained and cfg.jumprelu_lr else gcfg.lr
    return TrainConfig(sae=sae, data=DataConfig(source="store", store=str(store), store_seed=seed),
                       steps=gcfg.steps, batch_size=gcfg.batch_size, lr=lr, warmup_steps=gcfg.warmup_steps,
                       resample_every=gcfg.resample_every if l0_trained else 0,
                       dead_window_tokens=gcfg.dead_window_tokens, log_every=10, ckpt_every=50,
                       out_dir=str(Path(work) / "runs" / run_name(architecture, value, seed)), seed=seed,
                       device=cfg.device, progress=False)


nearest = choose
"""The value whose L0 is nearest a target on a log scale (``common.choose``, shared with decoupled-lm)."""


# ---------------------------------------------------------------------------------------------------------
# the pipeline

def reproduce(cfg: ArchitecturesScale, run: Any) -> Path:
    """Run (or continue) the comparison and write run.out/README.md."""
    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.data.models import load_model
    from saekit.reproduce import common, evaluate, gated
    from saekit.settings import check_settings_used

    synthetic = [_synthetic(run, s, seed) | {"settings": dict(s.sae), "generator": dict(s.data).get("generator", "oneill")}
                 for s in cfg.synthetic for seed in cfg.synthetic_seeds]
    gcfg = gated.SCALES[cfg.gated_scale]
    gwork = Path(cfg.gated_work) if cfg.gated_work else run.work / "gated"
    model, tokenizer = load_model(gcfg.lm.model, device=gcfg.lm.device, dtype=gcfg.lm.dtype)
    store = gated.prepare_store(gcfg, gwork, model, tokenizer, run.log)
    val_ctxs, test_ctxs = common.held_out_split(tokenizer, gcfg.lm, gcfg.validation_contexts, gcfg.test_contexts)
    n_val = sum(int(c.mask.sum()) for c in val_ctxs)

    def trained(arch: str, value: float, seed: int) -> Any:
        tc = train_config(cfg, gcfg, store, run.work, arch, value, seed)
        check_settings_used(tc)
        run.log(f"SAE {run_name(arch, value, seed)}")
        return common.train_or_resume(tc).eval()

    saes = {run_name(a, v, cfg.seeds[0]): trained(a, v, cfg.seeds[0]) for a, values in cfg.grids for v in values}
    validation = {n: evaluate.on_validation(run, n, sae, store, n_val) for n, sae in saes.items()}
    seeded = {a: nearest({v: validation[run_name(a, v, cfg.seeds[0])]["l0"] for v in values}, cfg.seed_target_l0)
              for a, values in cfg.grids}
    for arch, value in seeded.items():
        for seed in cfg.seeds[1:]:
            saes[run_name(arch, value, seed)] = trained(arch, value, seed)
    hp = resolve_hookpoint(model, gcfg.lm.hookpoint)
    spliced = evaluate.spliced(run, model, hp, saes, test_ctxs, gcfg.splice_batch_contexts)
    rows = [_row(cfg, name, sae, spliced[name], validation.get(name))
            | evaluate.dead_over_store(run, name, sae, store, gcfg.dead_count_tokens) for name, sae in saes.items()]
    reference = _gated_reference(gcfg, gwork)
    analysis = analyse(cfg, rows, spliced, reference)
    return _write(cfg, gcfg, run, store, synthetic, rows, reference, analysis, seeded, n_val, spliced)


def _synthetic(run: Any, s: SyntheticSetting, seed: int) -> dict[str, Any]:
    from saekit.reproduce.architectures_synthetic import run as recover
    from saekit.reproduce.common import cached_json

    key = "-".join([s.architecture, str(s.steps), *(f"{k}_{v}" for k, v in s.sae + s.data), f"s{seed}"])
    key = key.replace(" ", "").replace("(", "").replace(")", "").replace(",", ".")
    run.log(f"synthetic {key}")
    return cached_json(run.work / "synthetic" / f"{key}.json",
                       lambda: recover(s.architecture, seed, s.steps, dict(s.sae), data_kw=dict(s.data)))


def _row(cfg: ArchitecturesScale, name: str, sae: Any, spliced: dict[str, Any],
         validation: dict[str, Any] | None) -> dict[str, Any]:
    from saekit.eval.stats import splice_intervals

    arch = sae.cfg.architecture
    ci = splice_intervals(spliced, cfg.n_boot, seed=0)
    row = {"name": name, "architecture": arch, "n_latents": sae.cfg.n_latents,
           "sparsity_field": SPARSITY_FIELD[arch], "value": float(getattr(sae.cfg, SPARSITY_FIELD[arch])),
           "seed": int(name.rsplit("-s", 1)[1]), "l0": spliced["l0"], "fvu": spliced["fvu"], "gamma": spliced["gamma"],
           "loss_recovered": spliced["loss_recovered"], "loss_recovered_lo": ci["loss_recovered"]["lo"],
           "loss_recovered_hi": ci["loss_recovered"]["hi"], "delta_ce": spliced["delta_ce"],
           "kl": spliced["kl"], "kl_lo": ci["kl"]["lo"], "kl_hi": ci["kl"]["hi"], "test_tokens": spliced["ce_tokens"]}
    if validation:
        row.update({"validation_l0": validation["l0"], "validation_fvu": validation["fvu"]})
    return row


def _gated_reference(gcfg: Any, gwork: Path) -> dict[str, Any]:
    """Gated and standard splice results of the Gated reproduction (same store, same test contexts), as
    cached by it; empty when that reproduction has not been run at this scale."""
    folder = gwork / "eval" / "splice"
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        arch = path.stem.split("-", 1)[0]
        if arch in ("gated", "relu"):
            res = json.loads(path.read_text())
            dead = gwork / "eval" / "dead" / path.name
            res["dead_fraction"] = json.loads(dead.read_text())["dead_fraction"] if dead.is_file() else None
            res["architecture"] = "gated" if arch == "gated" else "standard"
            out[path.stem] = res
    return out


# ---------------------------------------------------------------------------------------------------------
# analysis

def l0_at(points: list[tuple[float, float]], targets: np.ndarray) -> np.ndarray | None:
    """L0 at each target loss recovered from the least-squares fit LR = a + b log L0 over ``points``
    ((L0, LR) pairs); None when fewer than 2 distinct L0 or LR does not rise with L0."""
    from saekit.reproduce.gated import fit_line

    p = np.asarray(points, dtype=np.float64)
    if p.shape[0] < 2:
        return None
    fit = fit_line(np.log(p[:, 0]), p[:, 1])
    if fit is None or fit[1] <= 0:
        return None
    return np.exp((targets - fit[0]) / fit[1])


def analyse(cfg: ArchitecturesScale, rows: list[dict[str, Any]], spliced: dict[str, Any],
            reference: dict[str, Any]) -> dict[str, Any]:
    """Seed statistics per (architecture, value), and the L0 each architecture needs at three levels of
    loss recovered inside every frontier's range, relative to Gated's when the Gated frontier is at hand,
    with a paired bootstrap over test contexts (runs fixed: the frontier is seed 0's)."""
    from saekit.eval.stats import bootstrap_indices, mean_ci, percentile_interval

    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["architecture"], r["value"]), []).append(r)
    seeded = [{"architecture": a, "value": v, "seeds": len(rs),
               **{m: mean_ci([r[m] for r in rs]) for m in ("l0", "loss_recovered", "fvu", "gamma", "kl",
                                                          "dead_fraction")}}
              for (a, v), rs in sorted(groups.items()) if len(rs) > 1]
    lo, hi = cfg.match_range
    frontier: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for r in rows:
        if r["seed"] == cfg.seeds[0]:
            frontier.setdefault(r["architecture"], []).append((r["name"], spliced[r["name"]]))
    for name, res in reference.items():
        if name.endswith(f"-s{cfg.seeds[0]}"):
            frontier.setdefault(res["architecture"], []).append((name, res))
    frontier = {a: [(n, s) for n, s in v if lo <= s["l0"] <= hi and s["loss_recovered"] is not None]
                for a, v in frontier.items()}
    fit_archs = [a for a, v in frontier.items() if len(v) >= 2]
    result: dict[str, Any] = {"seeded": seeded, "match_range": [lo, hi], "frontier_runs": {a: len(v) for a, v in
                                                                                         frontier.items()}}
    if not fit_archs:
        result["matched"] = None
        return result
    ranges = [(min(s["loss_recovered"] for _, s in frontier[a]), max(s["loss_recovered"] for _, s in frontier[a]))
              for a in fit_archs]
    band = (max(r[0] for r in ranges), min(r[1] for r in ranges))
    result["extrapolated"] = band[0] >= band[1]
    if result["extrapolated"]:
        band = (float(np.median([r[0] for r in ranges])), float(np.median([r[1] for r in ranges])))
    targets = np.linspace(band[0], band[1], 5)[1:-1]
    result["targets"] = targets.tolist()
    point = {a: l0_at([(s["l0"], s["loss_recovered"]) for _, s in frontier[a]], targets) for a in fit_archs}
    n_ctx = len(next(iter(frontier[fit_archs[0]]))[1]["per_context"]["count"])
    idx_all = bootstrap_indices(n_ctx, cfg.n_boot, seed=1)
    arrays = {n: {k: np.asarray(v, dtype=np.float64) for k, v in s["per_context"].items()}
              for a in fit_archs for n, s in frontier[a]}
    samples: dict[str, list[np.ndarray]] = {a: [] for a in fit_archs}
    ratios: dict[str, list[np.ndarray]] = {a: [] for a in fit_archs}
    for idx in idx_all:
        boot = {}
        for a in fit_archs:
            pts = []
            for n, s in frontier[a]:
                q = arrays[n]
                clean, zero, sae = q["ce_clean"][idx].sum(), q["ce_zero"][idx].sum(), q["ce_sae"][idx].sum()
                pts.append((s["l0"], (zero - sae) / (zero - clean)))
            boot[a] = l0_at(pts, targets)
        for a in fit_archs:
            if boot[a] is not None:
                samples[a].append(boot[a])
                if "gated" in boot and boot["gated"] is not None:
                    ratios[a].append(boot[a] / boot["gated"])
    table = []
    for j, t in enumerate(targets):
        entry: dict[str, Any] = {"loss_recovered": float(t)}
        for a in fit_archs:
            if point[a] is None:
                continue
            lo_, hi_ = percentile_interval([s[j] for s in samples[a]]) if samples[a] else (math.nan, math.nan)
            entry[a] = {"value": float(point[a][j]), "lo": lo_, "hi": hi_}
            if "gated" in point and point["gated"] is not None and ratios[a]:
                rlo, rhi = percentile_interval([s[j] for s in ratios[a]])
                entry[f"{a}_vs_gated"] = {"value": float(point[a][j] / point["gated"][j]), "lo": rlo, "hi": rhi}
        table.append(entry)
    result["matched"] = table
    return result


# ---------------------------------------------------------------------------------------------------------
# the write-up

def _write(cfg: ArchitecturesScale, gcfg: Any, run: Any, store: Path, synthetic: list[dict[str, Any]],
           rows: list[dict[str, Any]], reference: dict[str, Any], analysis: dict[str, Any],
           seeded: dict[str, float], n_val: int, spliced: dict[str, Any]) -> Path:
    from saekit.eval.splice import clean_json
    from saekit.io import atomic_write_json
    from saekit.reproduce.common import fmt, fmt_ci, markdown_table, write_csv, write_readme

    write_csv(run.out / "runs.csv", rows)
    write_csv(run.out / "synthetic.csv", [{k: v for k, v in s.items() if not isinstance(v, dict)} for s in synthetic])
    atomic_write_json(run.out / "results.json", clean_json({"command": run.command, "rows": rows, "synthetic": synthetic,
                                                              "analysis": analysis, "seeded": seeded}))
    _plot(cfg, run, rows, reference)
    first = next(iter(spliced.values()))
    archs = [a for a, _ in cfg.grids]
    # 1. synthetic
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for s in synthetic:
        label = (f"{s['generator']} | {s['arch']} | {s['steps']} | "
                 + (", ".join(f"{k}={v}" for k, v in s["settings"].items()) or "defaults"))
        by_setting.setdefault(label, []).append(s)
    syn_rows = []
    for label, runs in by_setting.items():
        generator, arch, steps, settings = label.split(" | ")
        mccs = [r["dict_mcc"] for r in runs]
        f1 = (" / ".join(f"{r['parent_f1']:.2f}" for r in runs) + " · " + " / ".join(f"{r['child_f1']:.2f}" for r in runs)
              if all("parent_f1" in r for r in runs) else "–")
        f1_chance = (" / ".join(f"{r['parent_f1_chance']:.2f}" for r in runs) + " · "
                     + " / ".join(f"{r['child_f1_chance']:.2f}" for r in runs)
                     if all("parent_f1_chance" in r for r in runs) else "–")
        syn_rows.append((generator, arch, steps, settings, " / ".join(f"{m:.3f}" for m in mccs), f"{min(mccs):.3f}",
                         " / ".join(f"{r['chance']:.3f}" for r in runs), "yes" if min(mccs) >= 0.9 else "**no**", f1, f1_chance,
                         f"{sum(r['seconds'] for r in runs):.0f}"))
    syn_table = markdown_table(syn_rows, ["ground truth", "arch", "steps", "settings", "MCC per seed", "min",
                                          "chance per seed", "bar (≥ 0.9 every seed)",
                                          "firing F1 parents · children", "its chance", "train s (all seeds)"])
    # 2. the LM frontier
    run_table = markdown_table(
        [(r["architecture"], f"{r['sparsity_field']}={r['value']:g}", r["seed"], fmt(r["l0"], 1),
          f"{fmt(r['loss_recovered'])} [{fmt(r['loss_recovered_lo'])}, {fmt(r['loss_recovered_hi'])}]",
          fmt(r["delta_ce"]), f"{fmt(r['kl'])} [{fmt(r['kl_lo'])}, {fmt(r['kl_hi'])}]", fmt(r["fvu"]),
          fmt(r["gamma"]), f"{100 * r['dead_fraction']:.2f}%")
         for r in sorted(rows, key=lambda r: (archs.index(r["architecture"]), r["l0"]))]
        + [(res["architecture"] + " (Gated repr.)", "λ=" + name.split("l1_")[1].split("-s")[0],
            int(name.rsplit("-s", 1)[1]), fmt(res["l0"], 1), fmt(res["loss_recovered"]), fmt(res["delta_ce"]),
            fmt(res["kl"]), fmt(res["fvu"]), fmt(res["gamma"]),
            "–" if res["dead_fraction"] is None else f"{100 * res['dead_fraction']:.2f}%")
           for name, res in sorted(reference.items(), key=lambda kv: (kv[1]["architecture"], kv[1]["l0"]))],
        ["arch", "setting", "seed", "L0", "loss recovered [95% CI]", "ΔCE", "KL [95% CI]", "FVU", "γ", "dead"])
    seeded_table = markdown_table(
        [(s["architecture"], f"{SPARSITY_FIELD[s['architecture']]}={s['value']:g}", s["seeds"], fmt_ci(s["l0"], 1),
          fmt_ci(s["loss_recovered"]), fmt_ci(s["fvu"]), fmt_ci(s["gamma"]), fmt_ci(s["kl"]), fmt_ci(s["dead_fraction"]))
         for s in analysis["seeded"]], ["arch", "setting", "seeds", "L0", "loss recovered", "FVU", "γ", "KL", "dead"]) \
        if analysis["seeded"] else "(one seed)"
    matched = analysis.get("matched") or []
    fit_archs = [a for a in ("gated", "standard", *archs) if matched and a in matched[0]]
    matched_table = markdown_table(
        [(f"{e['loss_recovered']:.3f}", *(fmt_ci(e[a], 1) + (f" (×{fmt_ci(e[a + '_vs_gated'], 2)})"
                                                          if a != "gated" and a + "_vs_gated" in e else "")
                                          for a in fit_archs)) for e in matched],
        ["loss recovered", *(f"L0 {a}" for a in fit_archs)]) if matched else "(no frontier with 2 runs in range)"
    sections = [
        "## What this compares\n\nNo paper's headline claim is tested here: this is the side-by-side a researcher "
        "choosing an architecture needs, on saekit's own recipe. Verdict-free by design; the numbers say where "
        "each architecture stands at this budget.",
        "## 1. Synthetic dictionary recovery\n\n"
        "Ground truth `oneill` (O'Neill et al.: 64 unit atoms in R^32, 3 active per sample chosen uniformly, "
        "no noise) or `hierarchical` (the same 64 atoms as 16 groups of a parent and 3 children: a parent fires "
        "with probability 3/32 and brings exactly one of its children, so 3 active in expectation; a child never "
        "fires alone). 64 latents, k = 3 where the architecture has a k, batch 1024, lr 1e-3, AuxK with its "
        "run-scaled dead threshold. Seed s "
        "draws the truth and the SAE's initialisation from independent named streams, so each seed is its own "
        "problem. Dictionary MCC = Hungarian-matched mean |cos| of decoder rows to true atoms; chance = the same "
        "for 20 random unit dictionaries. Firing F1 (hierarchical only; `best_firing_f1`): per true feature, the "
        "best F1 of one latent's firing as a detector of that feature's firing on 16,384 held-out samples, mean "
        "over the 16 parents · the 48 children; a parent absorbed into parent+child latents has no latent of "
        "its own and a low F1. Its chance (`chance_firing_f1`): the best expected F1 of a latent firing "
        "independently of the feature at the latent's own rate, max_j 2·p·q_j / (p + q_j), from the same run's "
        "firing rates.\n\n" + syn_table +
        "\n\nMatryoshka's prefix losses make each prefix reconstruct on its own, so its early latents point at "
        "mixtures of true atoms rather than at atoms (by hand, 3000 steps: on `hierarchical` with prefixes "
        "(16, 48) the first 16 latents reach a mean best |cos| of 0.90–0.92 to a true atom, the other 48 0.80–0.82), "
        "and a one-to-one decoder MCC charges it for that on both generators (`results/architectures_synthetic.md` "
        "explored its settings by hand). Its paper's claim is about *when* latents fire (no absorption of a "
        "parent into its children), which this metric does not measure.",
        "## 2. The LM frontier\n\n"
        f"- Model `{gcfg.lm.model}`, hookpoint `{gcfg.lm.hookpoint}`, store `{store}` (the Gated reproduction's, "
        f"scale `{cfg.gated_scale}`). Every SAE: {cfg.width or gcfg.gated_width} latents, {gcfg.steps} steps x "
        f"{gcfg.batch_size} tokens, lr {gcfg.lr:g}"
        + (f" (JumpReLU {cfg.jumprelu_lr:g})" if cfg.jumprelu_lr else "") +
        f", warm-up {gcfg.warmup_steps}; TopK family with AuxK (dead threshold 1% of the run), no resampling; "
        f"JumpReLU resampled every {gcfg.resample_every} steps until half-way. Sparsity grids at seed "
        f"{cfg.seeds[0]}: " + "; ".join(f"{a} {SPARSITY_FIELD[a]} {list(v)}" for a, v in cfg.grids) + ".\n"
        f"- Seeds {list(cfg.seeds)} at the value whose validation L0 ({gcfg.validation_contexts} contexts, "
        f"{n_val:,} tokens) is nearest {cfg.seed_target_l0:g}: "
        + ", ".join(f"{a} {SPARSITY_FIELD[a]}={v:g}" for a, v in seeded.items()) + ".\n"
        f"- Test: the Gated reproduction's {gcfg.test_contexts} test contexts, {first['ce_tokens']:,} counted "
        f"predictions (CE clean {first['ce_clean']:.3f}, zero-ablated {first['ce_zero']:.3f}). Loss recovered, "
        "ΔCE and KL with 95% paired bootstrap intervals over test contexts; dead = never fires on the first "
        f"{rows[0]['dead_count_tokens']:,} tokens of the store's train split.\n"
        + ("- Gated and standard rows: the Gated reproduction's own runs (its λ grid, Gated width "
           f"{gcfg.gated_width}, standard {gcfg.standard_width}), read from its cache."
           if reference else "- The Gated reproduction has not been run at this scale: no Gated/standard rows."),
        "### L0 at matched loss recovered (seed-0 frontiers)\n\n" + matched_table +
        "\n\nEach frontier: least-squares loss recovered = a + b log L0 over its seed-0 runs with L0 in "
        f"[{cfg.match_range[0]:g}, {cfg.match_range[1]:g}], inverted at three levels inside every frontier's range"
        + (" (the ranges do not overlap: the fits extrapolate)" if analysis.get("extrapolated") else "") +
        f"; 95% intervals from {cfg.n_boot} paired resamples of the test contexts (runs fixed), and the ratio to "
        "Gated's L0 at the same level in brackets. Loss recovered saturates near 1 here (see results/gated), so "
        "KL in the table below is the more sensitive measure.",
        "### Seeds (mean and t-interval)\n\n" + seeded_table,
        "### Caveats\n\n" + _caveats(cfg, rows, reference),
        "### Every run\n\n" + run_table + "\n\nPlot: `frontier.png` (loss recovered and KL against L0). "
        "Data: `runs.csv`, `synthetic.csv`, `results.json`.",
    ]
    return write_readme(run, "Architectures side by side: TopK, BatchTopK, Matryoshka, JumpReLU, Gated, standard",
                        sections, cfg)


def _caveats(cfg: ArchitecturesScale, rows: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """What limits the comparison, with this run's own numbers."""
    lines = []
    worst = max(rows, key=lambda r: r["dead_fraction"])
    if worst["dead_fraction"] > 0.01:
        per = ", ".join(f"{r['architecture']} {r['sparsity_field']}={r['value']:g}: {100 * r['dead_fraction']:.0f}%"
                        for r in rows if r["dead_fraction"] > 0.01 and r["seed"] == cfg.seeds[0])
        lines.append(f"- Dead latents at the sparsest settings ({per}): AuxK's run-scaled threshold does not revive "
                     "them within this budget; the matched comparison leaves out L0 < 10.")
    jump = [r for r in rows if r["architecture"] == "jumprelu" and r["seed"] == cfg.seeds[0]]
    if jump:
        lo, hi = min(jump, key=lambda r: r["value"]), max(jump, key=lambda r: r["value"])
        lines.append(f"- JumpReLU's L0 barely follows λ at this budget (λ {lo['value']:g} → L0 {lo['l0']:.1f}, "
                     f"λ {hi['value']:g} → {hi['l0']:.1f}): log θ moves about lr per Adam step, so its thresholds stay "
                     "near their initial value; its frontier covers a narrow L0 range, which also narrows the band of "
                     "loss recovered where every frontier is compared.")
    for arch in ("batchtopk", "matryoshka"):
        rs = [r for r in rows if r["architecture"] == arch]
        if rs:
            gap = float(np.median([r["l0"] / r["value"] - 1 for r in rs]))
            lines.append(f"- {arch}: test L0 lies {abs(gap):.0%} {'below' if gap < 0 else 'above'} k (median over runs) "
                         "with the inference threshold calibrated at the end of training on the store's first rows.")
    if reference:
        lines.append("- Widths differ as in the Gated reproduction: standard has 1.5x the latents (its compute match "
                     "to Gated); every other SAE has the Gated width. Frontiers are seed 0's; seeds are at one setting.")
    lines.append("- One budget (512k tokens per SAE) on one 135M model and hookpoint: rankings can change with longer "
                 "training.")
    return "\n".join(lines)


def _plot(cfg: ArchitecturesScale, run: Any, rows: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    from saekit.report.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    points: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        if r["seed"] == cfg.seeds[0] and r["loss_recovered"] is not None:
            points.setdefault(r["architecture"], []).append((r["l0"], r["loss_recovered"], r["kl"]))
    for name, res in reference.items():
        if name.endswith(f"-s{cfg.seeds[0]}") and res["loss_recovered"] is not None:
            points.setdefault(res["architecture"], []).append((res["l0"], res["loss_recovered"], res["kl"]))
    for arch, pts in points.items():
        pts.sort()
        x = [p[0] for p in pts]
        for ax, col in zip(axes, (1, 2)):
            ax.plot(x, [p[col] for p in pts], "o-", color=COLOURS.get(arch), label=arch, ms=4, lw=1)
    for ax, label in zip(axes, ("loss recovered (zero ablation)", "KL to the clean model (nats)")):
        ax.set_xscale("log")
        ax.set_xlabel("L0 (test tokens)")
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[0].set_title("Frontiers at seed 0 (same store, test contexts)")
    axes[0].legend(fontsize=8)
    save_figure(fig, run.out / "frontier.png")


