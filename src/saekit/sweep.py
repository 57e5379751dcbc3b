"""`saekit sweep`: train and evaluate a grid of SAEs (architectures × λ or k × widths) on shared data.

Every point starts from one base TrainConfig (a config file plus flag overrides, as in `saekit
train`). With ``data.source=lm`` the model runs once: `saekit cache` writes OUT/store and every
point trains from that store; a store or the synthetic source is shared as it is. Each point is
evaluated on held-out data (for LM data by splicing all SAEs into the model, sharing the clean
and ablated runs), then OUT/results.csv, OUT/results.json and OUT/plots/*.png are written.

A point that fails (an invalid value such as k > n_latents, a training error) is recorded with its
error message; the others still run. Points are seeded by the base seed, so identical inputs give
identical results.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import tyro

from saekit import cliparse
from saekit.config import DataConfig, TrainConfig, check_numbers, load_train_config
from saekit.settings import (changed_sae_fields, check_settings_used, overwritten_sae_settings, owners_of,
                             unused_data_settings)
from saekit.errors import SaekitError
from saekit.io import atomic_write_json, atomic_write_text
from saekit.lock import check_output_folder, output_lock
from saekit.report.table import format_table

COLUMNS = ("name", "status", "architecture", "n_latents", "sparsity_param", "sparsity", "l0", "fvu",
           "explained_variance", "gamma", "dead_fraction", "dense_fraction", "loss_recovered",
           "loss_recovered_mean_ablation", "delta_ce", "kl", "ce_clean", "ce_sae", "ce_zero", "ce_mean_ablation",
           "error")


@dataclass
class SweepCommand:
    cfg: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    """Base training settings shared by every point (every field can also come from --config)."""
    config: Path | None = None
    """YAML or JSON file with the base training settings; flags override it."""
    architectures: tuple[str, ...] = ("relu", "gated", "topk")
    """Architectures in the grid: any registered ones (relu, gated, topk, gradient_topk, jumprelu,
    batchtopk, matryoshka, gradient_batchtopk, gradient_matryoshka)."""
    l1_coeffs: tuple[float, ...] = (1.0, 3.0, 10.0)
    """λ values for the L1-trained architectures (relu, gated); empty: the base sae.l1_coeff."""
    l0_coeffs: tuple[float, ...] = (0.3, 1.0, 3.0)
    """λ values for the L0-trained architectures (jumprelu); empty: the base sae.l0_coeff."""
    ks: tuple[int, ...] = (8, 16, 32)
    """k values for the TopK-style architectures (topk, batchtopk, matryoshka and their gradient-aware
    variants); empty: the base sae.k."""
    widths: tuple[int, ...] = ()
    """n_latents values; empty: the base sae.n_latents (or expansion_factor × d_in)."""
    sweep_dir: str = "runs/sweep"
    """Output folder: runs/<point>/, results.csv, results.json, plots/ (and store/ for LM data)."""
    cache_tokens: int = 500_000
    """data.source=lm: activations harvested once into SWEEP_DIR/store (per split)."""
    eval_tokens: int = 65536
    """Held-out activation vectors for the reconstruction metrics (synthetic or store data)."""
    splice_contexts: int = 64
    """LM data: held-out contexts for the splicing evaluation."""
    splice_batch_contexts: int = 8
    """LM data: contexts per model forward in the splicing evaluation."""


@dataclass
class Point:
    architecture: str
    sparsity_param: str
    sparsity: float
    n_latents: int

    @property
    def name(self) -> str:
        return f"{self.architecture}-{self.sparsity_param}{self.sparsity:g}-m{self.n_latents}"


def sparsity_param(architecture: str) -> str:
    """The field that sets an architecture's sparsity: l1_coeff, l0_coeff or k."""
    from saekit.sae import architecture_class, params_fields

    fields = params_fields(architecture_class(architecture))
    for name in ("l1_coeff", "l0_coeff", "k"):
        if name in fields:
            return name
    raise SaekitError(f"architecture {architecture!r} has no l1_coeff, l0_coeff or k to sweep")


def grid(base: TrainConfig, architectures: tuple[str, ...], l1_coeffs: tuple[float, ...], ks: tuple[int, ...],
         widths: tuple[int, ...], l0_coeffs: tuple[float, ...] = ()) -> list[Point]:
    """Every (architecture, λ or k, width) combination, in the order given."""
    points = []
    for arch in architectures:
        param = sparsity_param(arch)
        values = {"l1_coeff": l1_coeffs, "l0_coeff": l0_coeffs, "k": ks}[param] or (getattr(base.sae, param),)
        for v in values:
            for w in widths or (base.sae.n_latents,):
                points.append(Point(arch, param, float(v), int(w)))
    return points


def point_config(base: TrainConfig, p: Point, runs_dir: Path) -> TrainConfig:
    value: Any = int(p.sparsity) if p.sparsity_param == "k" else p.sparsity
    if p.sparsity_param == "k" and value != p.sparsity:
        raise SaekitError(f"k must be a whole number, got {p.sparsity}")
    sae = replace(base.sae, architecture=p.architecture, n_latents=p.n_latents, **{p.sparsity_param: value})
    return replace(base, sae=sae, out_dir=str(runs_dir / p.name), progress=False)


GRID_FLAGS = {"k": "--ks", "l1_coeff": "--l1-coeffs", "l0_coeff": "--l0-coeffs", "n_latents": "--widths"}


def unused_base_settings(base: TrainConfig, points: list[Point]) -> list[str]:
    """Base settings that no point of the sweep uses: the SAE fields that every point's architecture lacks
    or that the grid replaces in every point, the fields training fits from the data, and the settings
    of another data source. (``sae.architecture`` is exempt: the grid chooses it, and a run's saved
    config.yaml, reused as the base, names one.)"""
    cfgs = []
    for p in points:
        try:
            cfgs.append(point_config(base, p, Path(".")))
        except SaekitError:  # that point fails on its own and is recorded
            pass
    archs = sorted({p.architecture for p in points})
    problems = []
    for name, value in changed_sae_fields(base.sae).items():
        if name == "architecture":
            continue
        kept = [c for c in cfgs if name in c.sae.arch_fields() and getattr(c.sae, name) == value]
        if name == "expansion_factor":  # used only where the width comes from d_in
            kept = [c for c in kept if c.sae.n_latents == 0]
        if kept:
            continue
        if any(name in c.sae.arch_fields() for c in cfgs):
            why = f"every point sets it from {GRID_FLAGS.get(name, 'the grid')}"
        else:
            why = f"no architecture of the sweep ({', '.join(archs)}) has it (it belongs to {', '.join(owners_of(name))})"
        problems.append(f"sae.{name}={value!r} is used by no point of the sweep: {why}")
    for c in cfgs:
        problems += [q for q in overwritten_sae_settings(c) if q not in problems]
    return problems + unused_data_settings(base.data)


def shared_data(base: TrainConfig, out: Path, cache_tokens: int) -> DataConfig:
    """For LM data, harvest once into OUT/store (train split) and train every point from it."""
    if base.data.source != "lm":
        return base.data
    from saekit.data.cache_command import CacheConfig, cache

    cache(CacheConfig(lm=base.data.lm, out=str(out / "store"), split="train", max_tokens=cache_tokens,
                      progress=base.progress))
    return replace(base.data, source="store", store=str(out / "store"))


def run_point(cfg: TrainConfig, eval_tokens: int, evaluate_reconstruction_: bool) -> tuple[Any, dict[str, Any]]:
    """Train one point (its folder is replaced) and, off LM data, evaluate its reconstruction."""
    from saekit.data.factory import make_source
    from saekit.eval.reconstruction import evaluate_reconstruction
    from saekit.eval.splice import density_histogram
    from saekit.train.trainer import train

    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # the sweep's own folder for this point
    sae = train(cfg)
    if not evaluate_reconstruction_:
        return sae, {}
    results, density = evaluate_reconstruction(sae, make_source(cfg.data, "eval"), eval_tokens, cfg.batch_size)
    return sae, {**results, "density_histogram": density_histogram(density)}


def run_sweep(base: TrainConfig, points: list[Point], sweep_dir: str | Path, cache_tokens: int = 500_000,
              eval_tokens: int = 65536, splice_contexts: int = 64, splice_batch_contexts: int = 8) -> list[dict[str, Any]]:
    """Train and evaluate every point; write results.csv, results.json and plots/. Returns the rows.
    Raises SaekitError (after writing the results) when every point failed."""
    base.validate()
    if min(eval_tokens, splice_contexts, splice_batch_contexts, cache_tokens) <= 0:
        raise SaekitError("cache_tokens, eval_tokens, splice_contexts and splice_batch_contexts must be positive")
    if not points:
        raise SaekitError("the grid is empty")
    check_settings_used(base, unused_base_settings(base, points))  # a base setting no point would use
    out = Path(sweep_dir)
    with output_lock(out, "saekit sweep"):
        return _run_sweep(base, points, out, cache_tokens, eval_tokens, splice_contexts, splice_batch_contexts)


def _run_sweep(base: TrainConfig, points: list[Point], out: Path, cache_tokens: int, eval_tokens: int,
               splice_contexts: int, splice_batch_contexts: int) -> list[dict[str, Any]]:
    from saekit.eval.splice import lm_settings, splice_saes

    data = shared_data(base, out, cache_tokens)
    lm = lm_settings(data)
    base = replace(base, data=data)
    rows, trained = [], {}
    for i, p in enumerate(points):
        row: dict[str, Any] = {"name": p.name, "status": "ok", "architecture": p.architecture,
                               "n_latents": p.n_latents, "sparsity_param": p.sparsity_param, "sparsity": p.sparsity}
        print(f"[{i + 1}/{len(points)}] {p.name}", flush=True)
        try:
            sae, metrics = run_point(point_config(base, p, out / "runs"), eval_tokens, lm is None)
            row.update(metrics, n_latents=sae.cfg.n_latents)  # what was trained (the base may say 0: from d_in)
            trained[p.name] = sae
        except Exception as e:  # recorded, the sweep goes on
            row.update(status="failed", error=_one_line(e))
            print(f"  failed: {row['error']}", flush=True)
        rows.append(row)
    if lm is not None and trained:
        spliced = splice_saes(lm, trained, splice_contexts, splice_batch_contexts)
        for row in rows:
            row.update(spliced.get(row["name"], {}))
    write_results(rows, out, base, lm is not None)
    if all(r["status"] == "failed" for r in rows):
        raise SaekitError(f"every point of the sweep failed ({len(rows)}); the first: {rows[0]['error']}")
    return rows


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, SaekitError) else f"{type(e).__name__}: {text}"


def write_results(rows: list[dict[str, Any]], out: Path, base: TrainConfig, lm_data: bool) -> None:
    from saekit.eval.splice import clean_json
    from saekit.report import plots

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in COLUMNS})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_json(out / "results.json", clean_json({"base_config": base.to_dict(), "rows": rows}))
    y, label = ("loss_recovered", "loss recovered (zero ablation)") if lm_data else ("fvu", "FVU")
    plots.frontier_plot(rows, y, out / "plots" / f"l0_vs_{y}.png", title=f"{label} vs L0", ylabel=label)
    plots.gamma_plot(rows, out / "plots" / "gamma_vs_l0.png")
    plots.density_plot(rows, out / "plots" / "density_histograms.png")
    shown = [c for c in COLUMNS if c != "error" and any(r.get(c) is not None for r in rows)]
    print(format_table([{c: r.get(c, "") for c in shown} for r in rows]))
    for r in rows:
        if r["status"] == "failed":
            print(f"{r['name']} failed: {r['error']}")
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'} and {out / 'plots'}/")


def parse(argv: list[str]) -> SweepCommand:
    """As `saekit train`: find --config, load it as the defaults, then parse every flag against it."""
    first, _ = cliparse.cli(SweepCommand, args=[a for a in argv if a not in ("-h", "--help")],
                        return_unknown_args=True, prog="saekit sweep")
    base = load_train_config(first.config) if first.config is not None else TrainConfig()
    return cliparse.cli(SweepCommand, args=argv, default=replace(first, cfg=base), prog="saekit sweep",
                    description="Train and evaluate a grid of SAEs on shared activations.")


def main(argv: list[str]) -> None:
    cmd = parse(argv)
    check_numbers(cmd, "")
    for name in ("widths", "ks"):
        if any(v <= 0 for v in getattr(cmd, name)):
            raise SaekitError(f"--{name} must all be positive, got {' '.join(map(str, getattr(cmd, name)))}")
    for name in ("l1_coeffs", "l0_coeffs"):
        if any(v < 0 for v in getattr(cmd, name)):
            raise SaekitError(f"--{name.replace('_', '-')} must all be >= 0, got {' '.join(map(str, getattr(cmd, name)))}")
    given = any(a == "--sae.architecture" or a.startswith("--sae.architecture=") for a in argv)
    if given and cmd.cfg.sae.architecture not in cmd.architectures:
        raise SaekitError(f"--sae.architecture {cmd.cfg.sae.architecture} is not among --architectures "
                          f"({' '.join(cmd.architectures)}), which alone choose what the sweep trains: add it there "
                          "or drop --sae.architecture")
    check_output_folder(cmd.sweep_dir, "sweep folder")
    points = grid(cmd.cfg, cmd.architectures, cmd.l1_coeffs, cmd.ks, cmd.widths, cmd.l0_coeffs)
    run_sweep(cmd.cfg, points, cmd.sweep_dir, cmd.cache_tokens, cmd.eval_tokens, cmd.splice_contexts,
              cmd.splice_batch_contexts)
