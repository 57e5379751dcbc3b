"""PNG plots of the synthetic benchmark: quality versus FLOPs (main setting) and MCC over the N × M grid.

Kept apart from the benchmark so that running it without plots never imports matplotlib. Images
are rendered to memory and written atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from saekit.io import atomic_write_bytes

Row = dict[str, Any]
_MARKERS = {"known_codes": "s", "known_dictionary": "^", "unknown": "o"}


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_main(summary: list[Row], path: Path) -> None:
    """Code and dictionary MCC (mean ± std over seeds) against total FLOPs (training + test inference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(summary):
        x = max(s["total_flops_mean"], 1.0)
        for ax, key in zip(axes, ("code_mcc", "dict_mcc")):
            if math.isnan(s[f"{key}_mean"]):
                continue
            ax.errorbar(x, s[f"{key}_mean"], yerr=s[f"{key}_std"], fmt=_MARKERS.get(s["regime"], "o"),
                        color=cmap(i % 20), capsize=3, label=f"{s['regime']}: {s['method']}")
    for ax, title in zip(axes, ("code MCC (held-out samples)", "dictionary MCC")):
        ax.set_xscale("log")
        ax.set_xlabel("total FLOPs (training + inference on the test set)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    n, m, k = summary[0]["N"], summary[0]["M"], summary[0]["K"]
    fig.suptitle(f"O'Neill et al. synthetic benchmark, N={n}, M={m}, K={k} (mean ± std over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    _save(fig, path)


def plot_grid(summary: list[Row], path: Path) -> None:
    """Code MCC (top) and dictionary MCC (bottom) against N, one column per M, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = sorted({s["M"] for s in summary})
    methods = sorted({s["method"] for s in summary})
    fig, axes = plt.subplots(2, len(ms), figsize=(4.5 * len(ms), 7), squeeze=False, sharey="row")
    for j, m in enumerate(ms):
        for method in methods:
            pts = sorted((s["N"], s) for s in summary if s["M"] == m and s["method"] == method)
            for row, key in enumerate(("code_mcc", "dict_mcc")):
                ax = axes[row][j]
                ax.errorbar([n for n, _ in pts], [s[f"{key}_mean"] for _, s in pts],
                            yerr=[s[f"{key}_std"] for _, s in pts], marker="o", capsize=3, label=method)
                ax.set_xscale("log", base=2)
                ax.set_xlabel("N (true atoms)")
                ax.set_ylabel("code MCC" if key == "code_mcc" else "dictionary MCC")
                ax.set_title(f"M = {m}")
                ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Unknown codes and dictionary, K={summary[0]['K']}")
    fig.tight_layout()
    _save(fig, path)
