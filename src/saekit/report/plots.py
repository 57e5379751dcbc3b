"""Sweep plots (PNG via matplotlib, written atomically): sparsity–fidelity frontiers, γ, feature densities."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saekit.io import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _series(rows: Sequence[dict[str, Any]], y: str) -> dict[str, list[tuple[float, float]]]:
    """Points (l0, y) of the successful rows, one series per architecture and width, sorted by L0."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("status") != "ok" or r.get("l0") is None or r.get(y) is None:
            continue
        out.setdefault(f"{r['architecture']} ({r['n_latents']})", []).append((float(r["l0"]), float(r[y])))
    return {k: sorted(v) for k, v in sorted(out.items())}


def frontier_plot(rows: Sequence[dict[str, Any]], y: str, path: str | Path, title: str = "",
                  ylabel: str | None = None, log_x: bool = True) -> Path:
    """y (loss_recovered, fvu, ...) against L0, a line per architecture and width."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, pts in _series(rows, y).items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def gamma_plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Relative reconstruction bias γ against L0; γ = 1 (unbiased) drawn as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, pts in _series(rows, "gamma").items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("γ = E‖x̂‖² / E[x·x̂]")
    ax.set_title(title or "relative reconstruction bias (1 = unbiased, < 1 = shrinkage)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def density_plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Histograms of log10 feature density, a panel per architecture, a step line per grid point."""
    plt = _pyplot()
    ok = [r for r in rows if r.get("status") == "ok" and r.get("density_histogram")]
    archs = sorted({r["architecture"] for r in ok}) or ["(no successful runs)"]
    fig, axes = plt.subplots(1, len(archs), figsize=(4.5 * len(archs), 3.6), squeeze=False, sharey=True)
    for ax, arch in zip(axes[0], archs):
        for r in (r for r in ok if r["architecture"] == arch):
            h = r["density_histogram"]
            label = f"{r['sparsity_param']}={r['sparsity']:g}, M={r['n_latents']} (dead {h['dead']})"
            ax.stairs(h["counts"], h["edges"], label=label)
        ax.set_title(arch)
        ax.set_xlabel("log10 feature density")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("latents")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


pyplot = _pyplot  # public names for the reproductions' own figures
save_figure = _save
