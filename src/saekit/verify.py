"""`saekit verify PATH`: check everything about a store, an SAE, a checkpoint or a training run, eagerly.

The checks that training and loading make lazily (a shard's sha256, shape and finiteness are checked
only when training first reads it) are all made now: for a store every shard is read, hashed and
scanned for NaN/inf; for an SAE folder its strict cfg.json, checksum and finite weights; for a
checkpoint also its optimiser and trainer state; for a run folder its config.yaml, sae/ and latest
checkpoint. Exit code 0 when everything is sound, else one ``saekit: error:`` line and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from saekit import cliparse
from saekit.errors import SaekitError


@dataclass
class VerifyCommand:
    path: Annotated[Path, tyro.conf.Positional]
    """A store (written by `saekit cache`: the folder with train/ and eval/, or one split), an SAE folder,
    a checkpoint folder or a training run's output folder."""


def verify_store(path: Path) -> str:
    from saekit.data.source import check_finite
    from saekit.data.store import StoreSource

    source = StoreSource(path)
    for i in range(len(source.shards)):
        _, grads = source.load_shard(i)  # sha256, shape and finite activations
        if grads is not None:
            check_finite(grads.float(), str(path / source.shards[i]["file"]))
    return f"store {path}: {len(source.shards)} shard(s), {source.total_tokens} tokens x d_in={source.d_in}"


def verify_sae(path: Path) -> str:
    from saekit.sae import load

    sae = load(path)
    return f"SAE {path}: {sae.cfg.architecture}, d_in={sae.cfg.d_in}, n_latents={sae.cfg.n_latents}"


def verify_checkpoint(path: Path) -> str:
    import torch

    from saekit.train.checkpoint import load_checkpoint

    sae, _, state = load_checkpoint(path, lambda s: torch.optim.Adam(s.parameters()))
    return f"checkpoint {path}: step {state.step}, {sae.cfg.architecture}"


def verify(path: Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise SaekitError(f"nothing to verify at {path}")
    if (path / "manifest.json").is_file():
        return [verify_store(path)]
    if (path / "trainer.json").is_file():
        return [verify_checkpoint(path)]
    if (path / "cfg.json").is_file():
        return [verify_sae(path)]
    splits = [path / s for s in ("train", "eval") if (path / s / "manifest.json").is_file()]
    if splits:
        return [verify_store(s) for s in splits]
    if (path / "config.yaml").is_file() or (path / "checkpoints").is_dir():
        from saekit.config import load_train_config
        from saekit.train.checkpoint import latest_checkpoint

        lines = []
        if (path / "config.yaml").is_file():
            load_train_config(path / "config.yaml").validate()
            lines.append(f"config {path / 'config.yaml'}")
        ckpt = latest_checkpoint(path)
        if ckpt is not None:
            lines.append(verify_checkpoint(ckpt))
        if (path / "sae").is_dir():
            lines.append(verify_sae(path / "sae"))
        return lines
    raise SaekitError(f"{path} is neither an activation store, an SAE folder, a checkpoint nor a training run")


def main(argv: list[str]) -> None:
    cmd = cliparse.cli(VerifyCommand, args=argv, prog="saekit verify",
                       description="Check a store, SAE, checkpoint or run folder completely (checksums, shapes, NaN).")
    for line in verify(cmd.path):
        print(f"ok: {line}")
