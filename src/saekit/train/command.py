"""`saekit train`: a YAML/JSON config file (--config) plus command-line overrides of any field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from saekit import cliparse
from saekit import distributed
from saekit.config import TrainConfig, load_train_config
from saekit.settings import check_settings_used


@dataclass
class TrainCommand:
    cfg: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    """Training settings (every field can also come from --config)."""
    config: Path | None = None
    """YAML or JSON file with training settings; flags given on the command line override it."""
    resume: bool = False
    """Continue the run in out_dir from its latest checkpoint."""


def parse(argv: list[str]) -> TrainCommand:
    """Two passes: find --config, load it as the defaults, then parse every flag against it."""
    first, _ = cliparse.cli(TrainCommand, args=[a for a in argv if a not in ("-h", "--help")],
                        return_unknown_args=True, prog="saekit train")
    base = load_train_config(first.config) if first.config is not None else TrainConfig()
    return cliparse.cli(TrainCommand, args=argv, default=TrainCommand(cfg=base, config=first.config),
                    prog="saekit train", description="Train a sparse autoencoder.")


def main(argv: list[str]) -> None:
    from saekit.train.trainer import Trainer, run_lock

    cmd = parse(argv)
    cmd.cfg.validate()
    check_settings_used(cmd.cfg)  # a flag the architecture or data source would silently ignore
    with run_lock(cmd.cfg.out_dir):  # rank 0 only, before the process group exists: no rank waits on it
        trainer = Trainer(cmd.cfg, resume=cmd.resume)
        try:
            sae = trainer.run()
        finally:
            distributed.shutdown()
    if trainer.cluster.is_main:
        where = f" ({trainer.cluster.world} processes)" if trainer.cluster.world > 1 else ""
        print(f"saved {sae.cfg.architecture} SAE ({sae.cfg.n_latents} latents, d_in={sae.cfg.d_in}) "
              f"to {Path(cmd.cfg.out_dir) / 'sae'}{where}")
