"""The decoupled-synthetic pipeline: every regime, cell and seed run once and cached under WORK, then
the write-up."""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from saekit.reproduce.decoupled_synthetic import methods as sm
from saekit.reproduce.common import cached_json
from saekit.reproduce.decoupled_synthetic.methods import Budget, Row
from saekit.reproduce.decoupled_synthetic.config import DecoupledSyntheticScale, validate
from saekit.reproduce.decoupled_synthetic.report import write_results


# ---------------------------------------------------------------------------------------- running

def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _cell_name(n: int, m: int, k: int) -> str:
    return f"N{n}-M{m}-K{k}"


def _readable(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, json.JSONDecodeError):
        return False


def setting_root(cfg: DecoupledSyntheticScale, work: Path, label: str, budget: Budget) -> Path:
    """Cache folder of one setting: its budget and sample sizes are in the name, so changing them never
    reuses stale results."""
    key = _digest({"budget": asdict(budget), "sizes": [cfg.n_train, cfg.n_validation, cfg.n_test],
                   "draws": cfg.chance_draws, "device": cfg.device})
    return Path(work) / f"{label}-{key}"


def run_cells(cfg: DecoupledSyntheticScale, run: Any, root: Path, cells: Sequence[tuple[int, int, int]],
              seeds: Sequence[int], budget: Budget) -> tuple[list[Row], list[Row]]:
    """Rows and chance levels of ``cells``: each (regime, cell, seed) and each (cell, seed)'s chance levels is
    one JSON under ``root``. Only what is missing from the cache is computed; cells of one N and M (several K)
    and their seeds are computed together as one batch (same shapes), then written one file each."""
    problems: dict[tuple[int, int, int, int], sm.Problem] = {}

    def problem(cell: tuple[int, int, int], s: int) -> sm.Problem:
        if (*cell, s) not in problems:
            problems[(*cell, s)] = sm.make_problem(*cell, s, cfg.n_train, cfg.n_validation, cfg.n_test, cfg.device)
        return problems[(*cell, s)]

    def path(kind: str, cell: tuple[int, int, int], s: int) -> Path:
        return root / kind / _cell_name(*cell) / f"seed{s}.json"

    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for cell in cells:
        groups[cell[:2]].append(cell)
    rows: list[Row] = []
    chance: list[Row] = []
    for (n, m), group in groups.items():
        for cell in group:
            chance += [cached_json(path("chance", cell, s), lambda cell=cell, s=s: sm.chance(problem(cell, s),
                                                                                            cfg.chance_draws))
                       for s in seeds]
        for regime in sm.REGIMES:
            if not sm.regime_methods(regime, budget):
                continue
            missing = [(cell, s) for cell in group for s in seeds if not _readable(path(regime, cell, s))]
            computed: dict[tuple[tuple[int, int, int], int], list[Row]] = {}
            if missing:
                t0 = time.perf_counter()
                out = sm.run_regime(regime, [problem(cell, s) for cell, s in missing], budget)
                computed = dict(zip(missing, out))
                run.log(f"{root.name} N={n} M={m} {regime}: {len(missing)} (K, seed) in {time.perf_counter() - t0:.1f} s")
            for cell in group:
                for s in seeds:
                    rows += cached_json(path(regime, cell, s), lambda cell=cell, s=s: {"rows": computed[(cell, s)]})["rows"]
        problems.clear()
    return rows, chance


def grid_cells(cfg: DecoupledSyntheticScale) -> list[sm.CellSpec]:
    return [sm.cell_spec(n, m, k) for k in cfg.grid_k for m in cfg.grid_m for n in cfg.grid_n]


def reproduce(cfg: DecoupledSyntheticScale, run: Any) -> Path:
    """Run (or continue) the reproduction at one scale and write run.out: README.md, CSV/JSON, plots."""
    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    main_cell = (cfg.n, cfg.m, cfg.k)
    main_root = setting_root(cfg, run.work, "main", cfg.main)
    main_rows, main_chance = run_cells(cfg, run, main_root, [main_cell], cfg.seeds, cfg.main)
    run.log(f"main setting done ({time.perf_counter() - t0:.0f} s)")
    specs = grid_cells(cfg)
    valid = [(c.n, c.m, c.k) for c in specs if not c.skip]
    grid_root = setting_root(cfg, run.work, "grid", cfg.grid)
    grid_rows, grid_chance = run_cells(cfg, run, grid_root, valid, cfg.grid_seeds, cfg.grid)
    run.log(f"grid done ({time.perf_counter() - t0:.0f} s)")
    return write_results(cfg, run, t0, (main_root, grid_root), (main_rows, main_chance), (grid_rows, grid_chance),
                         specs)
