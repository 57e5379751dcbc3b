"""`saekit eval`: evaluate a saved SAE on held-out data from the source it was trained on (or another)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from saekit.config import DataConfig, load_train_config
from saekit.data.factory import make_source
from saekit.errors import SaekitError
from saekit.io import atomic_write_json
from saekit.report.table import format_table


@dataclass
class EvalCommand:
    sae: Annotated[Path, tyro.conf.Positional]
    """Folder of a saved SAE (model.safetensors + cfg.json), e.g. runs/sae/sae."""
    data: DataConfig | None = None
    """Evaluation data; default: the data section of the run's config.yaml next to the SAE folder."""
    tokens: int = 65536
    """Held-out tokens (activation vectors) to evaluate on."""
    batch_size: int = 4096
    """Tokens per forward."""
    out: Path | None = None
    """JSON output; default: eval.json next to the SAE folder."""
    device: str = "cpu"
    """Device to evaluate on."""


def resolve_data(sae_dir: Path, data: DataConfig | None) -> DataConfig:
    if data is not None:
        return data
    run_cfg = sae_dir.parent / "config.yaml"
    if run_cfg.is_file():
        return load_train_config(run_cfg).data
    raise SaekitError(f"no config.yaml beside {sae_dir}: pass --data.* to say what to evaluate on")


def main(argv: list[str]) -> None:
    from saekit.eval.reconstruction import evaluate_reconstruction, evaluate_recovery
    from saekit.sae import load

    cmd = tyro.cli(EvalCommand, args=argv, prog="saekit eval", description="Evaluate a saved SAE.")
    if cmd.tokens <= 0 or cmd.batch_size <= 0:
        raise SaekitError("--tokens and --batch-size must be positive")
    sae = load(cmd.sae, cmd.device)
    data = resolve_data(cmd.sae, cmd.data)
    source = make_source(data, "eval")
    if source.d_in != sae.cfg.d_in:
        raise SaekitError(f"the SAE expects d_in={sae.cfg.d_in} but the data has width {source.d_in}")
    results, _ = evaluate_reconstruction(sae, source, cmd.tokens, cmd.batch_size)
    if data.source == "synthetic":
        x, codes = source.eval_set(min(cmd.tokens, 8192))
        results.update(evaluate_recovery(sae, x, codes, source.truth.dictionary))
    print(format_table([{"metric": k, "value": v} for k, v in results.items()]))
    out = cmd.out or cmd.sae.parent / "eval.json"
    atomic_write_json(out, {"sae": str(cmd.sae), "architecture": sae.cfg.architecture, **results})
    print(f"wrote {out}")
