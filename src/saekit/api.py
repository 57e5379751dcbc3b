"""The Python entry point for training on one's own activations: ``saekit.train(...)``.

    import saekit, torch
    acts = torch.randn(20_000, 64)                       # or a numpy array / memmap, or "acts.npy"
    sae = saekit.train(acts, architecture="topk", k=8, n_latents=256, steps=200, out_dir="runs/mine")
    codes = sae.encode(acts[:10])

The run folder is the one `saekit train` writes (sae/, checkpoints/, metrics.jsonl, config.yaml), and
config.yaml records what the SAE was trained on, so `saekit eval runs/mine/sae` works on it: an
array that lives in a .npy file is recorded by path; one held only in memory is recorded by shape and
dtype, and its held-out rows (the last ``data.array.eval_fraction``, 5% by default) are written to
``OUT/heldout.safetensors`` for evaluation.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from saekit.config import SAEConfig, TrainConfig
from saekit.settings import check_settings_used, unused_sae_settings, unused_settings
from saekit.errors import SaekitError
from saekit.sae import SparseAutoencoder

HELDOUT = "heldout.safetensors"


def _apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Keyword arguments set fields of TrainConfig (steps, lr, out_dir, ...) or of its SAEConfig
    (architecture, k, n_latents, l1_coeff, ...)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"sae"}
    sae_fields = {f.name for f in dataclasses.fields(SAEConfig)}
    top = {k: v for k, v in overrides.items() if k in train_fields}
    sae = {k: v for k, v in overrides.items() if k in sae_fields and k not in train_fields}
    unknown = sorted(set(overrides) - set(top) - set(sae))
    if unknown:
        raise SaekitError(f"saekit.train: unknown setting(s) {', '.join(unknown)} (neither a TrainConfig nor an "
                          "SAEConfig field)")
    for key, value in top.items():  # a dict for a nested config (log={"wandb_project": ...}) updates its fields
        current = getattr(cfg, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            bad = sorted(set(value) - {f.name for f in dataclasses.fields(current)})
            if bad:
                raise SaekitError(f"saekit.train: unknown {key} setting(s) {', '.join(bad)}")
            top[key] = replace(current, **value)
    cfg = replace(cfg, **top)
    return replace(cfg, sae=replace(cfg.sae, **sae)) if sae else cfg


def _is_source(obj: Any) -> bool:
    return callable(getattr(obj, "batches", None)) and callable(getattr(obj, "sample", None))


def api_wording(message: str) -> str:
    """A settings message in the Python API's terms: ``--no-foo-bar`` -> ``foo_bar=False``,
    ``--data.source store`` -> ``data.source='store'`` (the checks are shared with the CLI)."""
    message = re.sub(r"--no-([a-z0-9-]+)", lambda m: f"{m.group(1).replace('-', '_')}=False", message)
    return re.sub(r"--([a-z0-9_.-]+) ([A-Za-z0-9_./-]+)",
                  lambda m: f"{m.group(1).replace('-', '_')}={m.group(2)!r}", message)


def train(*args: Any, source: Any = None, cfg: TrainConfig | None = None, grads: Any = None, resume: bool = False,
          **overrides: Any) -> SparseAutoencoder:
    """Train an SAE and return it (also saved to ``OUT/sae``).

    ``source``: a [n_tokens, d_in] torch tensor, numpy array or memmap, a .npy / .safetensors file, or
    any ``ActivationSource``; None reads ``cfg.data``. ``grads``: matching LM-loss gradients (for
    gradient_topk). ``cfg``: a TrainConfig (default: TrainConfig()); keyword arguments override its
    fields and its SAE's (``steps=500, architecture="gated", l1_coeff=2.0``). ``resume=True``
    continues the run in ``out_dir`` from its latest checkpoint.

    Positional arguments are the source and/or the config, in either order:
    ``saekit.train(acts)``, ``saekit.train(acts, cfg)``, ``saekit.train(cfg, source=acts)``.
    """
    from saekit.data.arrays import ArraySource, split_rows
    from saekit.train.trainer import Trainer

    if len(args) > 2:
        raise SaekitError("saekit.train takes at most two positional arguments (the source and the config)")
    for arg in args:
        if isinstance(arg, TrainConfig):
            if cfg is not None:
                raise SaekitError("saekit.train: two configs given")
            cfg = arg
        else:
            if source is not None:
                raise SaekitError("saekit.train: two sources given")
            source = arg
    if cfg is not None and not isinstance(cfg, TrainConfig):
        raise SaekitError(f"saekit.train: cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg = _apply_overrides(cfg if cfg is not None else TrainConfig(), overrides)
    # a setting the architecture would silently ignore; cfg.data only matters when no source is given
    try:
        check_settings_used(cfg, unused_settings(cfg) if source is None else unused_sae_settings(cfg))
    except SaekitError as e:
        raise SaekitError(f"saekit.train: {api_wording(str(e))}") from None
    out = Path(cfg.out_dir)
    heldout = None
    if source is None:
        if grads is not None:
            raise SaekitError("saekit.train: grads were given without activations (source)")
        src = None
    elif _is_source(source):
        if grads is not None:
            raise SaekitError("saekit.train: grads go with an array source; an ActivationSource yields its own")
        src = source
    else:
        frac = cfg.data.array.eval_fraction
        whole = ArraySource(source, grads, seed=cfg.data.store_seed)
        cut = split_rows(whole.acts.shape[0], frac)
        eval_path = ""
        if cut < whole.acts.shape[0] and not whole.path:  # in memory: keep the held-out rows with the run
            eval_path = str((out / HELDOUT).resolve())
            heldout = ArraySource(source, grads, start=cut)
        src = ArraySource(whole.acts, whole.grads, seed=cfg.data.store_seed, stop=cut, eval_fraction=frac,
                          eval_path=eval_path)
        src.path = whole.path  # a memmap's file (ArraySource of an array view cannot see it)
        src.grads_path = whole.grads_path
    trainer = Trainer(cfg, src, resume=resume, resume_hint="pass resume=True")
    if heldout is not None:
        _write_heldout(out / HELDOUT, heldout)
    return trainer.run()


def _write_heldout(path: Path, source: Any) -> None:
    import torch

    from saekit.io import atomic_save_tensors

    batches = list(source.iter_all())
    tensors = {"acts": torch.cat([b.acts for b in batches])}
    if source.has_grads:
        tensors["grads"] = torch.cat([b.grads for b in batches])
    atomic_save_tensors(path, tensors, metadata={"what": "held-out activations of this run, for saekit eval"})
