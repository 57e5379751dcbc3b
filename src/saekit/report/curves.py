"""`saekit plot RUN_DIR`: a run's training curves (loss and its terms, L0, FVU, dead fraction, LR) as one PNG,
drawn from its metrics.jsonl."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from saekit.errors import SaekitError
from saekit.report.plots import pyplot, save_figure

LOSS_TERMS = ("mse", "l1", "aux", "nmse", "auxk")  # the terms an architecture logs beside the total loss
PANELS = (("loss", "loss and its terms", True), ("l0", "L0 (active latents per token)", False),
          ("fvu", "FVU", True), ("dead_fraction", "dead fraction", False), ("lr", "learning rate", False))


@dataclass
class PlotCommand:
    run: Annotated[Path, tyro.conf.Positional]
    """Run folder holding metrics.jsonl (what `saekit train` writes)."""
    out: Path | None = None
    """PNG to write; default: RUN/curves.png."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut by a kill (the last one) is ignored."""
    if not path.is_file():
        raise SaekitError(f"no metrics.jsonl at {path}: pass the folder `saekit train` wrote (its --out-dir)")
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise SaekitError(f"{path}: line {i + 1} is not JSON") from None
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    if not rows:
        raise SaekitError(f"{path} holds no metric rows yet")
    return rows


def _points(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (key, label, log) in zip(axes, PANELS):
        keys = [key, *[t for t in LOSS_TERMS if any(t in r for r in rows)]] if key == "loss" else [key]
        drawn = False
        for k in keys:
            xs, ys = _points(rows, k)
            if xs:
                ax.plot(xs, ys, label=k, lw=1.2)
                drawn = True
        if drawn and log and all(y > 0 for k in keys for y in _points(rows, k)[1]):
            ax.set_yscale("log")
        if key == "loss" and drawn:
            ax.legend(fontsize=7)
        ax.set_title(label if drawn else f"{label} (not logged)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str]) -> None:
    cmd = tyro.cli(PlotCommand, args=argv, prog="saekit plot",
                   description="Draw a run's training curves (loss terms, L0, FVU, dead fraction, LR) to PNG.")
    rows = read_metrics(cmd.run / "metrics.jsonl")
    title = str(cmd.run)
    cfg = cmd.run / "config.yaml"
    if cfg.is_file():
        import yaml

        try:
            sae = (yaml.safe_load(cfg.read_text()) or {}).get("sae", {})
            title = f"{cmd.run}: {sae.get('architecture')} ({sae.get('n_latents')} latents)"
        except yaml.YAMLError:
            pass
    out = plot_curves(rows, cmd.out or cmd.run / "curves.png", title)
    print(f"wrote {out} ({len(rows)} rows, steps {rows[0]['step']}-{rows[-1]['step']})")
