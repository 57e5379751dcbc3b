"""Resumable checkpoints: everything a killed run needs to finish with the same weights.

Layout: ``checkpoints/step-NNNNNNN/`` holds the SAE (model.safetensors + cfg.json), the optimiser
moments (optimizer.safetensors), tracker and RNG state (trainer.safetensors) and the step, data
position and schedule state (trainer.json). ``checkpoints/latest`` names the newest complete one; it
is rewritten atomically only after that folder is complete, so a kill at any moment leaves a usable
checkpoint.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.errors import SaekitError
from saekit.io import (atomic_save_tensors, atomic_write_json, atomic_write_text, check_finite_tensors, file_sha256,
                       load_tensors, read_json, replace_dir, verify_sha256)
from saekit.sae import SparseAutoencoder, load


@dataclass
class TrainerState:
    """What the loop needs besides weights to continue exactly."""

    step: int
    position: dict[str, Any] | None
    last_resample_step: int | None
    tokens_since_fired: torch.Tensor
    rng_state: torch.Tensor
    resampled: int = 0
    """Latents resampled so far in the run (for the log)."""
    adam_row_ages: torch.Tensor | None = None
    """[n_latents] Adam updates since each recently resampled latent's reset, −1 for the others
    (``FreshAdamRows``); None in checkpoints written before it existed."""


def save_checkpoint(run_dir: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer,
                    state: TrainerState, keep: int = 1) -> Path:
    root = Path(run_dir) / "checkpoints"
    name = f"step-{state.step:08d}"
    tmp = root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sae.save(tmp)
    opt_state = optimizer.state_dict()
    tensors = {f"{i}.{key}": value for i, per_param in opt_state["state"].items()
               for key, value in per_param.items() if torch.is_tensor(value)}
    atomic_save_tensors(tmp / "optimizer.safetensors", tensors)
    extra = {"tokens_since_fired": state.tokens_since_fired, "rng_state": state.rng_state}
    if state.adam_row_ages is not None:
        extra["adam_row_ages"] = state.adam_row_ages
    atomic_save_tensors(tmp / "trainer.safetensors", extra)
    atomic_write_json(tmp / "trainer.json", {
        "sha256": {name: file_sha256(tmp / name) for name in CHECKSUMMED},
        "step": state.step,
        "position": state.position,
        "last_resample_step": state.last_resample_step,
        "resampled": state.resampled,
        "param_groups": opt_state["param_groups"],
    })
    replace_dir(tmp, root / name)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.name != name)[: max(0, _count(root) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


CHECKSUMMED = ("optimizer.safetensors", "trainer.safetensors")  # the SAE's own weights: cfg.json


def _count(root: Path) -> int:
    return len(list(root.glob("step-*")))


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_dir():
        raise SaekitError(f"checkpoint {path} named by {pointer} is missing")
    return path


def load_checkpoint(path: Path, optimizer_factory) -> tuple[SparseAutoencoder, torch.optim.Optimizer, TrainerState]:
    """Rebuild SAE, optimiser (with its moments) and trainer state from a checkpoint folder."""
    sae = load(path)
    meta = read_json(path / "trainer.json")
    if not isinstance(meta, dict):
        raise SaekitError(f"checkpoint {path}: trainer.json is not a mapping")
    sums = meta.get("sha256")
    if sums is not None:  # checkpoints written before checksums were recorded have none to verify
        if not isinstance(sums, dict):
            raise SaekitError(f"checkpoint {path}: trainer.json's sha256 is not a mapping")
        for name in CHECKSUMMED:
            verify_sha256(path / name, sums.get(name), f"{path / 'trainer.json'}")
    optimizer = optimizer_factory(sae)
    saved = load_tensors(path / "optimizer.safetensors")
    check_finite_tensors(saved, str(path / "optimizer.safetensors"))
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in saved.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        extra = load_tensors(path / "trainer.safetensors")
        state = TrainerState(step=int(meta["step"]), position=meta["position"],
                             last_resample_step=meta["last_resample_step"],
                             tokens_since_fired=extra["tokens_since_fired"], rng_state=extra["rng_state"],
                             resampled=int(meta.get("resampled", 0)), adam_row_ages=extra.get("adam_row_ages"))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise SaekitError(f"checkpoint {path} is incomplete or inconsistent: {e}") from None
    return sae, optimizer, state
