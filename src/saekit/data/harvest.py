"""Activations (and LM-loss gradients) at a hookpoint, for batches of packed contexts.

Without gradients the forward runs under ``torch.no_grad`` and stops right after the hooked block.
With gradients it runs in full: the activation is swapped for a leaf tensor in a hook, the
next-token cross-entropy is summed over the predictions that the splicing evaluation counts
(``saekit.eval.splice``: position t predicting token t+1 where both tokens are included, i.e. neither
BOS, a special token such as an end-of-sequence marker, nor padding), and ``torch.autograd.grad``
gives dCE/d(activation). So the gradient a g-SAE trains with is the gradient of the loss it is
evaluated on. Contexts are independent, so the gradient at a token equals the gradient of its own
context's summed CE. Masked tokens are dropped after the forward.

``autocast`` (lm.autocast): a float32 model on CUDA runs its forward under bf16 autocast
(``saekit.data.autocast``); what is returned is float32 as always. No effect on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.data.autocast import model_autocast
from saekit.data.hookpoints import Hookpoint, capture, run_captured
from saekit.data.text import Context, collate


@dataclass
class Harvested:
    acts: Tensor
    """[N, d] activations of the unmasked tokens, in context order then token order."""
    grads: Tensor | None
    """[N, d] dCE/d(acts) when requested (CE over the splice's counted predictions)."""
    n_contexts: int
    """Contexts this came from."""


def next_token_ce(logits: Tensor, input_ids: Tensor, attention_mask: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy of predicting token t+1 from position t, summed: with ``mask`` (the included
    tokens, [B, T] bool) over the splice's counted predictions, mask[t] and mask[t+1]; without it over
    every real (non-padding) target token."""
    if mask is None:
        counted = attention_mask[:, 1:] != 0
    else:
        mask = mask.bool()
        counted = mask[:, :-1] & mask[:, 1:]
    targets = input_ids[:, 1:].masked_fill(~counted, -100)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                           reduction="sum")


def activations(model: nn.Module, hp: Hookpoint, input_ids: Tensor, attention_mask: Tensor,
                stop_early: bool = True, autocast: bool = True) -> Tensor:
    """[B, T, d] activations without gradients."""
    with model_autocast(model, autocast):
        return run_captured(model, hp, input_ids, attention_mask, stop_early=stop_early)


def activations_and_grads(model: nn.Module, hp: Hookpoint, input_ids: Tensor, attention_mask: Tensor,
                          mask: Tensor | None = None, autocast: bool = True) -> tuple[Tensor, Tensor]:
    """[B, T, d] activations and dCE/d(activations) from one full forward and backward.

    Pass the included-token ``mask`` (as ``harvest_batch`` does) for the CE the splice evaluates; see
    ``next_token_ce``. Under autocast only the forward is inside it (the backward follows its dtypes)."""
    with torch.enable_grad(), capture(hp, leaf=True) as got, model_autocast(model, autocast):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    acts = got["acts"]
    loss = next_token_ce(logits, input_ids, attention_mask, mask)
    (grads,) = torch.autograd.grad(loss, acts)
    return acts.detach(), grads


def harvest_batch(model: nn.Module, hp: Hookpoint, ctxs: list[Context], with_grads: bool = False,
                  stop_early: bool = True, autocast: bool = True) -> Harvested:
    """Unmasked activations (and gradients) of one model batch, as float32 rows on the CPU."""
    device = next(model.parameters()).device
    ids, attn, mask = collate(ctxs)
    ids, attn, keep = ids.to(device), attn.to(device), mask.to(device)
    if with_grads:
        acts, grads = activations_and_grads(model, hp, ids, attn, keep, autocast=autocast)
    else:
        acts, grads = activations(model, hp, ids, attn, stop_early=stop_early, autocast=autocast), None
    out_acts = acts[keep].float().cpu()
    out_grads = grads[keep].float().cpu() if grads is not None else None
    return Harvested(out_acts, out_grads, len(ctxs))


def batched(ctxs: Iterable[Context], n: int) -> Iterator[list[Context]]:
    group: list[Context] = []
    for c in ctxs:
        group.append(c)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


class Throughput:
    """Counts tokens and the time spent inside model forwards, for the progress bar and benchmarks."""

    def __init__(self) -> None:
        self.tokens = 0
        self.model_s = 0.0
        self.start = time.perf_counter()

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.start

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.wall_s, 1e-9)


def harvest(model: nn.Module, hp: Hookpoint, ctxs: Iterable[Context], batch_contexts: int = 16,
            with_grads: bool = False, stop_early: bool = True, progress: bool = True,
            total_tokens: int | None = None, stats: Throughput | None = None,
            autocast: bool = True) -> Iterator[Harvested]:
    """Harvest model batch by model batch; a tqdm bar shows tokens/s (tokens actually kept)."""
    stats = stats or Throughput()
    bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, disable=not progress, desc=f"harvest {hp.name}")
    try:
        for group in batched(ctxs, batch_contexts):
            t0 = time.perf_counter()
            out = harvest_batch(model, hp, group, with_grads=with_grads, stop_early=stop_early, autocast=autocast)
            stats.model_s += time.perf_counter() - t0
            stats.tokens += out.acts.shape[0]
            bar.update(out.acts.shape[0])
            yield out
    finally:
        bar.close()
