"""`saekit cache`: harvest activations (and optionally LM-loss gradients) into an on-disk store.

Writes ``OUT/train/`` and/or ``OUT/eval/`` (the held-out contexts). Each shard is a fixed number
of whole contexts, so an interrupted run, started again with the same flags, skips the contexts
already stored and finishes with exactly the store an uninterrupted run would have written.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from tqdm.auto import tqdm

from saekit import cliparse
from saekit.config import LMConfig
from saekit.data.harvest import harvest
from saekit.data.hookpoints import resolve_hookpoint
from saekit.data.models import load_model
from saekit.data.source import check_finite
from saekit.data.store import StoreWriter
from saekit.data.text import contexts
from saekit.errors import SaekitError
from saekit.io import remove_temporaries
from saekit.lock import output_lock


@dataclass
class CacheConfig:
    lm: Annotated[LMConfig, tyro.conf.arg(name="")] = field(default_factory=LMConfig)
    """Model, hookpoint, corpus and harvesting settings (--with-grads stores gradients too)."""
    out: str = "runs/store"
    """Output folder; the splits go to OUT/train and OUT/eval."""
    split: Literal["train", "eval", "both"] = "both"
    """Which split(s) of the corpus to harvest."""
    max_tokens: int = 1_000_000
    """Stop each split after this many stored tokens; 0 harvests the whole split."""
    shard_tokens: int = 32768
    """Approximate tokens per shard (rounded to whole contexts)."""
    fp16: bool = False
    """Store activations as float16 (gradients stay float32)."""
    overwrite: bool = False
    """Replace an existing store with different settings instead of refusing."""
    progress: bool = True
    """Show a progress bar with tokens/s."""


def _meta(cfg: CacheConfig, split: str, shard_contexts: int) -> dict[str, Any]:
    lm = cfg.lm
    return {"model": lm.model, "hookpoint": lm.hookpoint, "corpus": lm.corpus, "text_column": lm.text_column,
            "context_length": lm.context_length, "eval_fraction": lm.eval_fraction, "split": split,
            "with_grads": lm.with_grads, "max_tokens": cfg.max_tokens, "shard_contexts": shard_contexts,
            "model_dtype": lm.dtype}


def cache(cfg: CacheConfig, model: Any = None, tokenizer: Any = None) -> list[Path]:
    """Write the store(s); returns their folders. ``model``/``tokenizer`` skip loading ``cfg.lm.model``."""
    lm = cfg.lm
    if cfg.max_tokens < 0 or cfg.shard_tokens <= 0 or lm.model_batch_contexts <= 0:
        raise SaekitError("max_tokens must be >= 0; shard_tokens and model_batch_contexts positive")
    with output_lock(cfg.out, "saekit cache"):
        remove_temporaries(cfg.out)
        return _cache(cfg, model, tokenizer)


def _cache(cfg: CacheConfig, model: Any, tokenizer: Any) -> list[Path]:
    lm = cfg.lm
    if model is None or tokenizer is None:
        model, tokenizer = load_model(lm.model, device=lm.device, dtype=lm.dtype)
    hp = resolve_hookpoint(model, lm.hookpoint)
    shard_contexts = max(1, cfg.shard_tokens // lm.context_length)
    splits = ["train", "eval"] if cfg.split == "both" else [cfg.split]
    if cfg.split == "both" and lm.eval_fraction == 0:
        splits = ["train"]
    written = []
    for split in splits:
        path = Path(cfg.out) / split
        writer = StoreWriter(path, _meta(cfg, split, shard_contexts), fp16=cfg.fp16, overwrite=cfg.overwrite)
        if not writer.complete:
            _fill(cfg, writer, model, tokenizer, hp, split, shard_contexts)
        m = writer.manifest
        print(f"{split}: {m['total_tokens']} tokens x d_in={m['d_in']} in {len(m['shards'])} shard(s) -> {path}")
        written.append(path)
    return written


def _fill(cfg: CacheConfig, writer: StoreWriter, model: Any, tokenizer: Any, hp: Any, split: str,
          shard_contexts: int) -> None:
    lm = cfg.lm
    stream = contexts(tokenizer, lm.corpus, lm.text_column, lm.context_length, split, lm.eval_fraction)  # type: ignore[arg-type]
    stream = itertools.islice(stream, writer.total_contexts, None)  # resume: skip what is stored
    bar = tqdm(total=cfg.max_tokens or None, initial=writer.total_tokens, unit="tok", unit_scale=True,
               disable=not cfg.progress, desc=f"cache {split} {lm.hookpoint}")
    try:
        while not (cfg.max_tokens and writer.total_tokens >= cfg.max_tokens):
            group = list(itertools.islice(stream, shard_contexts))
            if not group:
                break
            parts = list(harvest(model, hp, group, lm.model_batch_contexts, with_grads=lm.with_grads, progress=False))
            acts = torch.cat([p.acts for p in parts])
            grads = torch.cat([p.grads for p in parts]) if lm.with_grads else None  # type: ignore[misc]
            check_finite(acts, f"{lm.model} at {lm.hookpoint}")
            left = cfg.max_tokens - writer.total_tokens if cfg.max_tokens else None
            done = left is not None and acts.shape[0] >= left
            if done:
                acts, grads = acts[:left], grads[:left] if grads is not None else None
            writer.write_shard(acts, grads, len(group))
            bar.update(acts.shape[0])
            if done:
                break
    finally:
        bar.close()
    writer.finish()


def main(argv: list[str]) -> None:
    argv = ["--with-grads" if a == "--grads" else a for a in argv]  # the short spelling in `saekit --help`
    cfg = cliparse.cli(CacheConfig, args=argv, prog="saekit cache",
                   description="Harvest activations (and, with --with-grads or --grads, LM-loss gradients) into an on-disk store.")
    cache(cfg)
