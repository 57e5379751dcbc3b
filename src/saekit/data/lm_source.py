"""Training on the fly: a language model's activations as an ActivationSource, through a shuffling buffer.

The buffer is filled with the activations of ``shuffle_buffer_tokens / context_length`` consecutive
contexts (block b of the split), permuted with a seed of (seed, epoch, b), and drained in order;
batches run on across block and epoch boundaries (``store.block_batches``).

Why this design resumes exactly and cheaply: a position is (epoch, block, row). Which contexts
form a block is known from tokenisation alone, so resuming re-tokenises, skips to the block's
first context without running the model, harvests that one block and starts at the row. A resumed
run therefore sees bit-for-bit the batches an uninterrupted one would (same device and dtype).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saekit import distributed
from saekit.config import LMConfig
from saekit.data.harvest import harvest
from saekit.data.hookpoints import resolve_hookpoint, run_captured
from saekit.data.models import load_model
from saekit.data.source import Batch, check_finite
from saekit.data.store import Block, block_batches
from saekit.data.text import Context, contexts
from saekit.errors import SaekitError


class LMSource:
    """Activations (and, with ``cfg.with_grads``, LM-loss gradients) harvested while training."""

    def __init__(self, cfg: LMConfig, split: str = "train", seed: int | None = None, model: Any = None,
                 tokenizer: Any = None, progress: bool = False) -> None:
        if split not in ("train", "eval"):
            raise SaekitError(f"split must be 'train' or 'eval', got {split!r}")
        if cfg.context_length < 2 or cfg.shuffle_buffer_tokens <= 0 or cfg.model_batch_contexts <= 0:
            raise SaekitError("lm.context_length must be >= 2; shuffle_buffer_tokens and model_batch_contexts positive")
        self.cfg, self.split, self.progress = cfg, split, progress
        self.seed = cfg.seed if seed is None else seed
        if model is None or tokenizer is None:
            model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        self.model, self.tokenizer = model, tokenizer
        self.hookpoint = resolve_hookpoint(model, cfg.hookpoint)
        self.has_grads = cfg.with_grads
        self.block_contexts = max(1, cfg.shuffle_buffer_tokens // cfg.context_length)
        self.d_in = self._probe_width()
        self._stream: Iterator[Context] | None = None
        self._next = 0  # index (within the split) of the next context self._stream yields

    def _probe_width(self) -> int:
        device = next(self.model.parameters()).device
        ids = torch.zeros(1, 2, dtype=torch.long, device=device)
        return int(run_captured(self.model, self.hookpoint, ids, torch.ones_like(ids)).shape[-1])

    def _contexts(self) -> Iterator[Context]:
        c = self.cfg
        return contexts(self.tokenizer, c.corpus, c.text_column, c.context_length, self.split,  # type: ignore[arg-type]
                        c.eval_fraction)

    def _take(self, start: int, n: int) -> list[Context]:
        """Contexts [start, start + n) of the split, reusing the open stream when it is already there."""
        if self._stream is None or self._next != start:
            self._stream, self._next = itertools.islice(self._contexts(), start, None), start
        got = list(itertools.islice(self._stream, n))
        self._next += len(got)
        return got

    def _harvest(self, ctxs: list[Context]) -> Block:
        """The activations of ``ctxs`` in order; under torchrun each rank runs the model on its share
        and every rank gets the whole block (so all ranks hold the same shuffle buffer)."""
        mine = distributed.my_share(ctxs)
        parts = list(harvest(self.model, self.hookpoint, mine, self.cfg.model_batch_contexts,
                             with_grads=self.has_grads, progress=self.progress,
                             autocast=self.cfg.autocast)) if mine else []
        empty = torch.zeros(0, self.d_in)
        acts = distributed.all_gather_rows(torch.cat([p.acts for p in parts]) if parts else empty)
        check_finite(acts, f"{self.cfg.model} at {self.cfg.hookpoint}")
        grads = None
        if self.has_grads:
            grads = distributed.all_gather_rows(torch.cat([p.grads for p in parts]) if parts else empty)  # type: ignore[misc]
        return acts, grads

    def _block(self, epoch: int, b: int) -> Block | None:
        ctxs = self._take(b * self.block_contexts, self.block_contexts)
        return self._harvest(ctxs) if ctxs else None

    def batches(self, batch_size: int, position: dict[str, Any] | None = None) -> Iterator[tuple[Batch, dict[str, Any]]]:
        return block_batches(self._block, batch_size, self.seed, position,
                             f"{self.split} split of corpus {self.cfg.corpus!r}")

    def iter_all(self, max_tokens: int | None = None) -> Iterator[Batch]:
        """One pass over the split in order, a block of contexts at a time (for evaluation)."""
        seen, b = 0, 0
        while max_tokens is None or seen < max_tokens:
            block = self._block(0, b)
            if block is None:
                return
            seen += block[0].shape[0]
            b += 1
            yield Batch(*block)

    def sample(self, n: int) -> Tensor:
        """The first n unmasked activations of the split, in order (deterministic)."""
        rows, got, stream = [], 0, self._contexts()
        while got < n:
            ctxs = list(itertools.islice(stream, self.cfg.model_batch_contexts))
            if not ctxs:
                break
            rows.append(self._harvest(ctxs)[0])
            got += rows[-1].shape[0]
        if not rows:
            raise SaekitError(f"the {self.split} split of corpus {self.cfg.corpus!r} has no contexts")
        return torch.cat(rows)[:n]


def open_lm_source(cfg: LMConfig, split: str = "train", seed: int | None = None) -> LMSource:
    """The trainer's entry point: load ``cfg.model`` once and stream activations of ``split``."""
    return LMSource(cfg, split=split, seed=seed)
