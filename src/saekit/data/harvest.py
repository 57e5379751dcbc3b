"""Activations (and LM-loss gradients) at a hookpoint, for batches of packed contexts.

Without gradients the forward runs under ``torch.no_grad`` and stops right after the hooked block.
With gradients it runs in full: the activation is swapped for a leaf tensor in a hook, the
next-token cross-entropy is summed over the predictions that the splicing evaluation counts
(``saekit.eval.splice``: position t predicting token t+1 where both tokens are included, i.e. neither
BOS, a special token such as an end-of-sequence marker, nor padding), and ``torch.autograd.grad``
gives dCE/d(activation). So the gradient a g-SAE trains with is the gradient of the loss it is
evaluated on. Contexts are independent, so the gradient at a token equals the gradient of its own
context's summed CE. Masked tokens are dropped after the forward.

The loss head is fused (``fused_ce_grad``): instead of the model's [B, T, vocab] logits, the CE
and its gradient with respect to the final hidden state are computed a block of counted positions
at a time, then the backward continues from the hidden state. Same gradient (the softmax's own
formula instead of autograd's), without materialising, copying and zero-filling several
batch x vocab tensors. Used where the logits are exactly ``lm_head(last hidden state)``, which is
checked numerically against the model's own logits on the first batch of each model; anything
else (soft-capped or scaled logits, an unusual head) takes the plain path.

``autocast`` (lm.autocast): a float32 model on CUDA runs its forward under bf16 autocast
(``saekit.data.autocast``); what is returned is float32 as always. No effect on the CPU.
"""

from __future__ import annotations

import time
import weakref
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
    counted, targets = counted_targets(input_ids, attention_mask, mask)
    targets = targets.masked_fill(~counted, -100)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                           reduction="sum")


def activations(model: nn.Module, hp: Hookpoint, input_ids: Tensor, attention_mask: Tensor,
                stop_early: bool = True, autocast: bool = True) -> Tensor:
    """[B, T, d] activations without gradients."""
    with model_autocast(model, autocast):
        return run_captured(model, hp, input_ids, attention_mask, stop_early=stop_early)


def counted_targets(input_ids: Tensor, attention_mask: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """([B, T-1] bool of the counted predictions, [B, T-1] targets); see ``next_token_ce``."""
    if mask is None:
        counted = attention_mask[:, 1:] != 0
    else:
        mask = mask.bool()
        counted = mask[:, :-1] & mask[:, 1:]
    return counted, input_ids[:, 1:]


FUSED_DEFAULT = True  # benchmarks/harvest.py flips it to time the plain path
FUSED_BLOCK_ROWS = 256  # positions per block of the fused loss head: [256, vocab] logits at a time


@torch.no_grad()
def fused_ce_grad(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                  block_rows: int = FUSED_BLOCK_ROWS) -> tuple[Tensor, Tensor]:
    """(summed CE, dCE/d hidden) of rows ``hidden`` [N, d] predicting ``targets`` [N] through the
    head logits = hidden W^T + b, one block of rows at a time:
    CE_n = logsumexp(l_n) − l_n[t_n],  dCE/dh_n = (softmax(l_n) − onehot(t_n)) W."""
    grad = torch.empty_like(hidden)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], block_rows):
        h, t = hidden[start:start + block_rows], targets[start:start + block_rows]
        logits = (torch.addmm(bias, h, weight.T) if bias is not None else h @ weight.T).float()
        top = logits.amax(dim=1, keepdim=True)
        rows = torch.arange(h.shape[0], device=h.device)
        target_logit = logits[rows, t]
        probs = logits.sub_(top).exp_()
        norm = probs.sum(dim=1, keepdim=True)
        total += (norm.log().squeeze(1) + top.squeeze(1) - target_logit).sum()
        probs.div_(norm)
        probs[rows, t] -= 1.0
        grad[start:start + block_rows] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
    return total, grad


def _loss_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(backbone, lm_head) when the model's logits might be lm_head(backbone(...).last_hidden_state)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    backbone = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or backbone is None or backbone is model:
        return None
    return backbone, head


def _plain_activations_and_grads(model, hp, input_ids, attention_mask, mask, autocast=True):
    with torch.enable_grad(), capture(hp, leaf=True) as got, model_autocast(model, autocast):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    acts = got["acts"]
    loss = next_token_ce(logits, input_ids, attention_mask, mask)
    (grads,) = torch.autograd.grad(loss, acts)
    return acts.detach(), grads, loss.detach()


def _fused_activations_and_grads(model, hp, input_ids, attention_mask, mask, autocast=True):
    backbone, head = _loss_head(model)  # type: ignore[misc]
    with torch.enable_grad(), capture(hp, leaf=True) as got, model_autocast(model, autocast):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    acts = got["acts"]
    counted, targets = counted_targets(input_ids, attention_mask, mask)
    rows = hidden[:, :-1][counted]  # [N, d], the positions whose prediction counts
    with model_autocast(model, autocast):  # the head's matmuls as the plain path's lm_head runs them
        loss, d_rows = fused_ce_grad(rows.detach().to(head.weight.dtype), head.weight, head.bias, targets[counted])
    (grads,) = torch.autograd.grad(rows, acts, grad_outputs=d_rows.to(rows.dtype))
    return acts.detach(), grads, loss


_FUSED_OK: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()
"""Per model: whether the fused head gave its loss and gradient on the first batch (checked once)."""


def _agree(plain: tuple[Tensor, Tensor, Tensor], fused: tuple[Tensor, Tensor, Tensor]) -> bool:
    (a0, g0, l0), (a1, g1, l1) = plain, fused
    return (torch.allclose(l0, l1, rtol=1e-4, atol=1e-4) and torch.equal(a0, a1)
            and torch.allclose(g0, g1, rtol=1e-3, atol=1e-3 * float(g0.abs().max()) + 1e-12))


def activations_and_grads(model: nn.Module, hp: Hookpoint, input_ids: Tensor, attention_mask: Tensor,
                          mask: Tensor | None = None, fused: bool | None = None,
                          autocast: bool = True) -> tuple[Tensor, Tensor]:
    """[B, T, d] activations and dCE/d(activations) from one full forward and backward.

    Pass the included-token ``mask`` (as ``harvest_batch`` does) for the CE the splice evaluates; see
    ``next_token_ce``. ``fused``: the fused loss head where it is exact for this model (see the module
    docstring; default ``FUSED_DEFAULT``); False: the model's own logits and autograd. Under autocast only
    the forward and the head's matmuls are inside it (the backward follows their dtypes)."""
    args = (model, hp, input_ids, attention_mask, mask, autocast)
    if fused is None:
        fused = FUSED_DEFAULT
    if fused and _loss_head(model) is None:
        _FUSED_OK[model] = False
    known = _FUSED_OK.get(model)
    if not fused or known is False:
        return _plain_activations_and_grads(*args)[:2]
    if known:
        return _fused_activations_and_grads(*args)[:2]
    # this model's first batch: both ways; the fused head is kept only if it gives the same
    plain = _plain_activations_and_grads(*args)
    try:
        fast = _fused_activations_and_grads(*args)
    except (AttributeError, TypeError, ValueError, RuntimeError):
        fast = None  # a backbone that does not take these arguments or return last_hidden_state
    _FUSED_OK[model] = fast is not None and _agree(plain, fast)
    return (fast if _FUSED_OK[model] else plain)[:2]  # type: ignore[index]


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
