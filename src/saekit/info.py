"""`saekit info DIR`: what a saved SAE is, without training anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from saekit import cliparse
from saekit.report.table import format_table


@dataclass
class InfoCommand:
    sae: Annotated[Path, tyro.conf.Positional]
    """Folder of a saved SAE (model.safetensors + cfg.json)."""


def main(argv: list[str]) -> None:
    from saekit.sae import load

    cmd = cliparse.cli(InfoCommand, args=argv, prog="saekit info", description="Describe a saved SAE.")
    sae = load(cmd.sae)
    print(f"{cmd.sae}: {sae.cfg.architecture} SAE")
    print(format_table([{"field": k, "value": v} for k, v in sae.cfg.to_dict().items()]))
    rows = [{"tensor": name, "shape": "x".join(map(str, t.shape)), "mean |w|": t.abs().mean().item()}
            for name, t in sae.state_dict().items()]
    print()
    print(format_table(rows))
    norms = sae.W_dec.detach().norm(dim=1)
    print(f"\natom norms: min {norms.min().item():.4f}, max {norms.max().item():.4f}; "
          f"parameters: {sum(p.numel() for p in sae.parameters()):,}")
