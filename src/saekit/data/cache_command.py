"""`saekit cache`: harvest activations (and optionally LM-loss gradients) into an on-disk store.

Writes ``OUT/train/`` and/or ``OUT/eval/`` (the held-out contexts). Each shard is a fixed number
of whole contexts, so an interrupted run, started again with the same flags, skips the contexts
already stored and finishes with exactly the store an uninterrupted run would have written.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from tqdm.auto import tqdm

from saekit import cliparse
from saekit.config import LMConfig
from saekit.data.autocast import model_autocast_dtype
from saekit.data.harvest import harvest
from saekit.data.hookpoints import resolve_hookpoint
from saekit.data.models import load_model
from saekit.data.source import check_finite
from saekit.data.store import StoreWriter
from saekit.data.text import contexts
from saekit.errors import SaekitError
from saekit.io import remove_temporaries, replace_dir
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
    """Store activations as float16 (gradients stay float32 unless --grads-fp16)."""
    grads_fp16: bool = False
    """Store LM gradients (--with-grads) as float16: half their disk and read time; the relative error
    this costs is measured in benchmarks/README.md."""
    overwrite: bool = False
    """Replace an existing store with different settings instead of refusing."""
    progress: bool = True
    """Show a progress bar with tokens/s."""


def _meta(cfg: CacheConfig, split: str, shard_contexts: int, autocast: torch.dtype | None = None) -> dict[str, Any]:
    """The store's description. ``autocast``: the dtype the forward autocast to, recorded only when there
    was one (so a CPU or half-precision store's manifest is what it always was, and still resumes)."""
    lm = cfg.lm
    meta = {"model": lm.model, "hookpoint": lm.hookpoint, "corpus": lm.corpus, "text_column": lm.text_column,
            "context_length": lm.context_length, "eval_fraction": lm.eval_fraction, "split": split,
            "with_grads": lm.with_grads, "max_tokens": cfg.max_tokens, "shard_contexts": shard_contexts,
            "model_dtype": lm.dtype}
    if autocast is not None:
        meta["model_autocast"] = str(autocast).removeprefix("torch.")
    return meta


def cache(cfg: CacheConfig, model: Any = None, tokenizer: Any = None) -> list[Path]:
    """Write the store(s); returns their folders. ``model``/``tokenizer`` skip loading ``cfg.lm.model``."""
    lm = cfg.lm
    if cfg.max_tokens < 0 or cfg.shard_tokens <= 0 or lm.model_batch_contexts <= 0:
        raise SaekitError("max_tokens must be >= 0; shard_tokens and model_batch_contexts positive")
    lm.validate("")
    if cfg.grads_fp16 and not lm.with_grads:
        raise SaekitError("--grads-fp16 stores gradients as float16, but this store has none: add --with-grads")
    with output_lock(cfg.out, "saekit cache"):
        remove_temporaries(cfg.out)
        return _cache(cfg, model, tokenizer)


def _cache(cfg: CacheConfig, model: Any, tokenizer: Any) -> list[Path]:
    lm = cfg.lm
    if model is None or tokenizer is None:
        model, tokenizer = load_model(lm.model, device=lm.device, dtype=lm.dtype, progress=cfg.progress)
    hp = resolve_hookpoint(model, lm.hookpoint)
    # a shard no larger than what --max-tokens asks for (whole contexts, at least one)
    wanted = min(cfg.shard_tokens, cfg.max_tokens) if cfg.max_tokens else cfg.shard_tokens
    shard_contexts = max(1, -(-wanted // max(1, lm.context_length - 1)))
    splits = ["train", "eval"] if cfg.split == "both" else [cfg.split]
    if cfg.split == "both" and lm.eval_fraction == 0:
        splits = ["train"]
    written, swaps = [], []
    try:
        for split in splits:
            path = Path(cfg.out) / split
            target = path
            if cfg.overwrite and path.exists():  # the old store stays until the new one is complete
                target = path.with_name(f".{split}.new.tmp")
                shutil.rmtree(target, ignore_errors=True)
                swaps.append((target, path))
            meta = _meta(cfg, split, shard_contexts, model_autocast_dtype(model, lm.autocast))
            writer = StoreWriter(target, meta, fp16=cfg.fp16, grads_fp16=cfg.grads_fp16)
            if not writer.complete:
                _fill(cfg, writer, model, tokenizer, hp, split, shard_contexts)
            m = writer.manifest
            print(f"{split}: {m['total_tokens']} tokens x d_in={m['d_in']} in {len(m['shards'])} shard(s) -> {path}")
            written.append(path)
    except BaseException:
        for target, _ in swaps:
            shutil.rmtree(target, ignore_errors=True)
        raise
    for target, path in swaps:
        replace_dir(target, path)
    return written


def _fill(cfg: CacheConfig, writer: StoreWriter, model: Any, tokenizer: Any, hp: Any, split: str,
          shard_contexts: int) -> None:
    lm = cfg.lm
    fresh = writer.total_contexts == 0
    try:
        _harvest_into(cfg, writer, model, tokenizer, hp, split, shard_contexts)
    except BaseException as e:
        if fresh and not isinstance(e, KeyboardInterrupt):  # nothing worth resuming: leave no store behind
            shutil.rmtree(writer.path, ignore_errors=True)
        raise


def _harvest_into(cfg: CacheConfig, writer: StoreWriter, model: Any, tokenizer: Any, hp: Any, split: str,
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
            left = cfg.max_tokens - writer.total_tokens if cfg.max_tokens else None
            parts, kept = [], 0
            for part in harvest(model, hp, group, lm.model_batch_contexts, with_grads=lm.with_grads, progress=False,
                                autocast=lm.autocast):
                parts.append(part)
                kept += part.acts.shape[0]
                if left is not None and kept >= left:
                    break  # enough tokens: the model does not run over the rest of the shard's contexts
            acts = torch.cat([p.acts for p in parts])
            grads = torch.cat([p.grads for p in parts]) if lm.with_grads else None  # type: ignore[misc]
            check_finite(acts, f"{lm.model} at {lm.hookpoint}")
            done = left is not None and acts.shape[0] >= left
            if done:
                acts, grads = acts[:left], grads[:left] if grads is not None else None
            writer.write_shard(acts, grads, sum(p.n_contexts for p in parts))
            bar.update(acts.shape[0])
            if done:
                break
    finally:
        bar.close()
    least = lm.context_length - 1
    if split == "train" and writer.total_tokens < least:
        raise SaekitError(f"the corpus {lm.corpus!r} yields only {writer.total_tokens} tokens for the {split} split, "
                          f"fewer than one context of {lm.context_length}; use a larger corpus")
    writer.finish()


def main(argv: list[str]) -> None:
    argv = ["--with-grads" if a == "--grads" else a for a in argv]  # the short spelling in `saekit --help`
    cfg = cliparse.cli(CacheConfig, args=argv, prog="saekit cache",
                   description="Harvest activations (and, with --with-grads or --grads, LM-loss gradients) into an on-disk store.")
    cache(cfg)
