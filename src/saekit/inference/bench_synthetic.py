"""`saekit bench-synthetic`: the synthetic benchmark of O'Neill, Gumran & Klindt (2024).

Runs the three regimes (known codes, known dictionary, unknown codes and dictionary) in the main
setting over several seeds, then a grid N × M for SAE vs MLP vs SC, and writes per-run rows and
mean ± std summaries (CSV + JSON) and quality-versus-FLOPs plots into ``out_dir``. The paper's
published numbers are printed beside ours.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import tyro

from saekit.errors import SaekitError
from saekit.inference import experiments
from saekit.inference.experiments import Hyper, Row
from saekit.io import atomic_write_json, atomic_write_text

# The authors' released results (mean over 5 seeds), main setting N=16, M=8, K=3: (code MCC, dict MCC).
REFERENCE: dict[tuple[str, str], tuple[str, str]] = {
    ("known_codes", "SAE encoder"): ("0.862", "-"),
    ("known_codes", "MLP(h=1024)"): ("0.950", "-"),
    ("known_dictionary", "SAE encoder"): ("0.61-0.69", "1 (given)"),
    ("known_dictionary", "ISTA (true D)"): ("~0.97", "1 (given)"),
    ("known_dictionary", "FISTA (true D)"): ("~0.97", "1 (given)"),
    ("unknown", "SAE"): ("0.566", "0.745"),
    ("unknown", "MLP(h=256)"): ("0.643", "0.851"),
    ("unknown", "SC"): ("0.691", "0.837"),
}
METRICS = ("code_mcc", "dict_mcc", "l0", "train_flops", "infer_flops_per_sample", "total_flops", "seconds")


@dataclass
class Cfg:
    """Settings of the synthetic benchmark."""

    out_dir: Path = Path("out/bench_synthetic")
    """Folder for the CSV/JSON tables and PNG plots."""
    seeds: int = 5
    """Seeds of the main setting (each seed: a new true dictionary, data and initialisation)."""
    n: int = 16
    """N, true atoms, main setting."""
    m: int = 8
    """M, data dimension, main setting."""
    k: int = 3
    """K, active atoms per sample."""
    n_train: int = 1024
    """Training samples."""
    n_test: int = 1024
    """Held-out samples on which code MCC is measured."""
    hyper: Hyper = field(default_factory=Hyper)
    """Method hyperparameters (main setting; the grid overrides steps and sc_rounds)."""
    grid: bool = True
    """Also run the N × M grid for SAE vs MLP vs SC (unknown codes and dictionary)."""
    grid_n: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    """N values of the grid."""
    grid_m: list[int] = field(default_factory=lambda: [8, 16, 32])
    """M values of the grid."""
    grid_seeds: int = 1
    """Seeds per grid cell (fewer than the main setting, to keep the run short)."""
    grid_steps: int = 1500
    """Adam steps per encoder in the grid."""
    grid_sc_rounds: int = 100
    """Sparse-coding rounds in the grid."""
    device: str = "cpu"
    """Torch device ('cpu', 'cuda', ...)."""
    threads: int = 1
    """Torch CPU threads (1 is fastest for these tiny problems on a shared machine); 0 leaves torch's default."""
    plots: bool = True
    """Write PNG plots (matplotlib)."""


def _validate(cfg: Cfg) -> None:
    if cfg.seeds < 1 or cfg.grid_seeds < 1:
        raise SaekitError("seeds and grid_seeds must be >= 1")
    if min(cfg.n, cfg.m, cfg.k, cfg.n_train, cfg.n_test) < 1 or cfg.k > cfg.n:
        raise SaekitError(f"need n, m, k, n_train, n_test >= 1 and k <= n, got n={cfg.n} m={cfg.m} k={cfg.k}")
    if cfg.grid and (not cfg.grid_n or not cfg.grid_m or min(cfg.grid_n) < cfg.k or min(cfg.grid_m) < 1):
        raise SaekitError(f"grid_n must be >= k={cfg.k} and grid_m >= 1, got {cfg.grid_n} and {cfg.grid_m}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SaekitError(f"device {cfg.device!r} requested but CUDA is not available")


def summarise(rows: list[Row]) -> list[Row]:
    """Mean and sample std (ddof=1; 0 for one seed) of every metric per (regime, method, N, M, K)."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["regime"], r["method"], r["N"], r["M"], r["K"])].append(r)
    out = []
    for (regime, method, n, m, k), rs in groups.items():
        s: Row = {"regime": regime, "method": method, "N": n, "M": m, "K": k, "seeds": len(rs)}
        for key in METRICS:
            vals = [float(r[key]) for r in rs if not math.isnan(float(r[key]))]
            s[f"{key}_mean"] = statistics.fmean(vals) if vals else math.nan
            s[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else math.nan)
        if any("converged" in r for r in rs):
            s["all_converged"] = all(r.get("converged", True) for r in rs)
        out.append(s)
    return out


def _csv(rows: list[Row]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _pm(s: Row, key: str) -> str:
    mean = s[f"{key}_mean"]
    return "-" if math.isnan(mean) else f"{mean:.3f} ± {s[f'{key}_std']:.3f}"


def main_table(summary: list[Row]) -> str:
    """Markdown table of the main setting with the paper's figures beside ours."""
    lines = ["| regime | method | code MCC (ours) | code MCC (paper) | dict MCC (ours) | dict MCC (paper) "
             "| train FLOPs | inference FLOPs / sample | L0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        ref = REFERENCE.get((s["regime"], s["method"]), ("", ""))
        lines.append(f"| {s['regime']} | {s['method']} | {_pm(s, 'code_mcc')} | {ref[0]} | {_pm(s, 'dict_mcc')} "
                     f"| {ref[1]} | {s['train_flops_mean']:.3g} | {s['infer_flops_per_sample_mean']:.3g} "
                     f"| {s['l0_mean']:.2f} |")
    return "\n".join(lines)


def grid_table(summary: list[Row]) -> str:
    """Markdown table of the grid: code / dict MCC per (N, M) and method."""
    lines = ["| N | M | method | code MCC | dict MCC | total FLOPs |", "|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["N"], s["M"], s["method"])):
        lines.append(f"| {s['N']} | {s['M']} | {s['method']} | {_pm(s, 'code_mcc')} | {_pm(s, 'dict_mcc')} "
                     f"| {s['total_flops_mean']:.3g} |")
    return "\n".join(lines)


def run(cfg: Cfg) -> tuple[list[Row], list[Row], float]:
    """Run everything and write the files; returns (main summary, grid summary, seconds)."""
    _validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    main_rows: list[Row] = []
    for seed in range(cfg.seeds):
        p = experiments.make_problem(cfg.n, cfg.m, cfg.k, cfg.n_train, cfg.n_test, seed, cfg.device)
        for regime in (experiments.known_codes, experiments.known_dictionary, experiments.unknown):
            main_rows += regime(p, cfg.hyper)
        print(f"main setting: seed {seed} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    grid_rows: list[Row] = []
    if cfg.grid:
        gh = replace(cfg.hyper, steps=cfg.grid_steps, sc_rounds=cfg.grid_sc_rounds)
        for n in cfg.grid_n:
            for m in cfg.grid_m:
                for seed in range(cfg.grid_seeds):
                    p = experiments.make_problem(n, m, cfg.k, cfg.n_train, cfg.n_test, seed, cfg.device)
                    grid_rows += experiments.unknown(p, gh, methods=("sae", "mlp", "sc"))
                print(f"grid: N={n} M={m} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    main_summary, grid_summary = summarise(main_rows), summarise(grid_rows)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "main_runs.csv", _csv(main_rows))
    atomic_write_text(out / "main_summary.csv", _csv(main_summary))
    atomic_write_text(out / "main_table.md", main_table(main_summary) + "\n")
    if grid_rows:
        atomic_write_text(out / "grid_runs.csv", _csv(grid_rows))
        atomic_write_text(out / "grid_summary.csv", _csv(grid_summary))
        atomic_write_text(out / "grid_table.md", grid_table(grid_summary) + "\n")
    seconds = round(time.perf_counter() - start, 1)
    doc = _jsonable({"config": asdict(cfg), "torch": torch.__version__, "seconds": seconds,
                     "reference": [{"regime": r, "method": m, "code_mcc": c, "dict_mcc": d}
                                   for (r, m), (c, d) in REFERENCE.items()],
                     "main_summary": main_summary, "grid_summary": grid_summary,
                     "main_runs": main_rows, "grid_runs": grid_rows})
    atomic_write_json(out / "results.json", doc)
    if cfg.plots:
        from saekit.inference.bench_plots import plot_grid, plot_main

        plot_main(main_summary, out / "main_quality_vs_flops.png")
        if grid_summary:
            plot_grid(grid_summary, out / "grid_mcc.png")
    return main_summary, grid_summary, seconds


def main(argv: list[str]) -> None:
    cfg = tyro.cli(Cfg, args=argv, prog="saekit bench-synthetic")
    main_summary, grid_summary, seconds = run(cfg)
    print(f"\nMain setting N={cfg.n}, M={cfg.m}, K={cfg.k}, {cfg.seeds} seed(s); mean ± std over seeds; "
          "paper: authors' released results, mean over 5 seeds\n")
    print(main_table(main_summary))
    if grid_summary:
        print(f"\nGrid (unknown codes and dictionary, K={cfg.k}, {cfg.grid_seeds} seed(s), {cfg.grid_steps} steps)\n")
        print(grid_table(grid_summary))
    print(f"\nwrote {cfg.out_dir}/ in {seconds} s")
