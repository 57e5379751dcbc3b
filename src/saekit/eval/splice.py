"""Downstream evaluation: the language model's loss with an SAE's reconstruction spliced in.

For each batch of held-out contexts the model runs once clean, once with the hooked activation
zero-ablated, once mean-ablated (the mean over the evaluation tokens, from a first cheap pass) and
once per SAE with the reconstruction in its place (a forward hook that replaces the hooked output).

Which positions are replaced: only the *included* tokens, the ones the SAE was trained on. BOS,
special tokens and padding keep their clean activations in every condition (zero and mean ablation
included). The SAE never saw them in training (the BOS residual is a huge outlier in most models), so
replacing them would measure something the SAE was not asked to do, and would let one token per
context dominate the loss.

Which predictions are counted: position t predicting token t+1 counts when token t+1 is included
(a real, non-special target) and position t itself is included (its activation was replaced, so the
prediction can differ from the clean one). Every CE and KL below is a mean over the same positions;
the SAE metrics (L0, FVU, γ, densities) are over the included tokens.

With ``autocast`` (lm.autocast) a float32 model on CUDA runs every forward under bf16 autocast, like
the harvest that made the SAE's training data; the SAE's own encode and decode inside the splice hook
run with autocast off, in fp32 (``saekit.data.autocast``). No effect on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.data.autocast import model_autocast, sae_precision
from saekit.data.harvest import activations_and_grads
from saekit.data.hookpoints import Hookpoint, edited, run_captured
from saekit.data.text import Context, collate
from saekit.errors import SaekitError
from saekit.eval.metrics import ReconstructionStats

# x [n, d] (included tokens, model units) -> (x̂ [n, d], codes [n, M] or None)
Reconstructor = Callable[[Tensor], tuple[Tensor, Tensor | None]]
HIST_EDGES = [round(-8.0 + 0.25 * i, 2) for i in range(33)]  # log10 density bins, -8 .. 0


def as_reconstructor(sae: Any) -> Reconstructor:
    """An SAE (x -> (x̂, f) via its forward) or any callable returning x̂ or (x̂, f)."""
    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        out = sae(x)
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    return run


class WithGradients:
    """Splice ``sae`` encoding with the clean LM-loss gradient: x̂, f = sae(x, g) (a g-SAE at inference).

    g = ∂CE/∂(hooked activation) from one extra clean forward + backward per batch, the next-token CE
    summed over exactly the predictions this evaluation counts (``activations_and_grads`` with the
    included-token mask, as ``saekit cache --grads`` stores it). It
    uses the next-token labels, so it is an oracle-style evaluation; pass the bare SAE for β = 0 (TopK)."""

    def __init__(self, sae: Any) -> None:
        self.sae, self.cfg = sae, sae.cfg


def replaced(hp: Hookpoint, mask: Tensor, fn: Callable[[Tensor], Tensor] | None) -> AbstractContextManager[None]:
    """While inside, the hooked output at ``mask`` [B, T] positions becomes ``fn(rows)``; None: no hook."""
    if fn is None:
        return edited(hp, None)

    def edit(act: Tensor) -> Tensor:
        new = act.clone()
        with sae_precision(act):  # inside an autocast forward: the SAE still computes in fp32
            new[mask] = fn(act[mask].float()).to(act.dtype)
        return new

    return edited(hp, edit)


def _logprobs(model: nn.Module, ids: Tensor, attn: Tensor, sel: Tensor, autocast: bool = True) -> Tensor:
    """log p(· | prefix) at the selected predicting positions [n, V] (float32)."""
    with model_autocast(model, autocast):
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
    return F.log_softmax(logits[sel].float(), dim=-1)


def batches_of(ctxs: list[Context], n: int) -> Iterator[list[Context]]:
    for i in range(0, len(ctxs), n):
        yield ctxs[i:i + n]


@torch.no_grad()
def mean_activation(model: nn.Module, hp: Hookpoint, ctxs: list[Context], batch_contexts: int = 8,
                    autocast: bool = True) -> Tensor:
    """Mean of the hooked activation over the included tokens of ``ctxs`` (float64)."""
    device = next(model.parameters()).device
    total, n = None, 0
    for group in batches_of(ctxs, batch_contexts):
        ids, attn, mask = collate(group)
        with model_autocast(model, autocast):
            acts = run_captured(model, hp, ids.to(device), attn.to(device))[mask.to(device)].double()
        total = acts.sum(0) if total is None else total + acts.sum(0)
        n += acts.shape[0]
    if not n:
        raise SaekitError("the evaluation contexts hold no included tokens")
    return total / n


def check_contexts(ctxs: list[Context], context_length: int) -> None:
    """One clear line when the held-out text does not fill a single context."""
    if not ctxs or all(int(c.attention_mask.sum()) < context_length for c in ctxs):
        got = sum(int(c.attention_mask.sum()) for c in ctxs)
        raise SaekitError(f"the evaluation text is shorter than one context ({got} tokens < context_length="
                          f"{context_length}); use more held-out text or a shorter context")


@torch.no_grad()
def evaluate_splice(model: nn.Module, hp: Hookpoint, saes: dict[str, Any], ctxs: list[Context],
                    batch_contexts: int = 8, n_latents: dict[str, int] | None = None,
                    per_context: bool = False, autocast: bool = True) -> dict[str, dict[str, Any]]:
    """Splice every SAE (or reconstructor) of ``saes`` into ``model`` at ``hp`` on ``ctxs``; one result per name.

    Clean, zero- and mean-ablated runs are shared between the SAEs. ``n_latents`` sizes the density
    statistics for plain callables (an SAE brings its own ``cfg.n_latents``). An SAE wrapped in
    ``WithGradients`` is encoded with the clean LM-loss gradient (one forward + backward per batch).
    ``per_context`` adds each context's counted targets and CE / KL sums (``per_context`` key), the
    input of the paired bootstrap in ``saekit.eval.stats``. ``autocast``: see the module docstring.
    """
    if not ctxs:
        raise SaekitError("no evaluation contexts")
    device = next(model.parameters()).device
    mean = mean_activation(model, hp, ctxs, batch_contexts, autocast).float().to(device)
    batch_grads: dict[str, Tensor] = {}  # the current batch's clean gradients at the included tokens
    recon = {name: (lambda x, s=s: s.sae(x, batch_grads["g"])) if isinstance(s, WithGradients) else as_reconstructor(s)
             for name, s in saes.items()}
    need_grads = any(isinstance(s, WithGradients) for s in saes.values())
    sizes = {name: (s.cfg.n_latents if hasattr(s, "cfg") else (n_latents or {}).get(name, 0)) for name, s in saes.items()}
    stats = {name: ReconstructionStats(max(sizes[name], 1)) for name in saes}
    has_codes = dict.fromkeys(saes, False)
    ce = {k: 0.0 for k in ("clean", "zero", "mean", *(f"sae:{n}" for n in saes))}
    kl = dict.fromkeys(ce, 0.0)
    count = 0
    ctx_count: list[float] = []
    ctx_ce: dict[str, list[float]] = {k: [] for k in ce}
    ctx_kl: dict[str, list[float]] = {k: [] for k in ce}
    for group in batches_of(ctxs, batch_contexts):
        ids, attn, mask = collate(group)
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
        sel = mask[:, :-1] & mask[:, 1:]  # predicting position included, target included
        if not sel.any():
            continue
        targets = ids[:, 1:][sel]
        count += int(sel.sum())
        rows = sel.nonzero()[:, 0]  # the context of every counted prediction
        ctx_count.extend(sel.sum(dim=1).double().tolist())
        clean = _logprobs(model, ids, attn, sel, autocast)
        if need_grads:
            with torch.enable_grad():  # the loss is formed outside the forward's own enable_grad
                batch_grads["g"] = activations_and_grads(model, hp, ids, attn, mask, autocast)[1][mask].float()

        def account(key: str, fn: Callable[[Tensor], Tensor] | None) -> None:
            with replaced(hp, mask, fn):
                lp = clean if fn is None else _logprobs(model, ids, attn, sel, autocast)
            nll = F.nll_loss(lp, targets, reduction="none").double()
            kls = F.kl_div(lp, clean, log_target=True, reduction="none").sum(-1).double()  # p_clean (log p_clean − log p)
            ce[key] += nll.sum().item()
            kl[key] += kls.sum().item()
            if per_context:
                n_ctx = sel.shape[0]
                ctx_ce[key].extend(torch.zeros(n_ctx, dtype=torch.float64, device=nll.device).index_add_(0, rows, nll).tolist())
                ctx_kl[key].extend(torch.zeros(n_ctx, dtype=torch.float64, device=kls.device).index_add_(0, rows, kls).tolist())

        account("clean", None)
        account("zero", torch.zeros_like)
        account("mean", lambda a: mean.expand_as(a))
        for name, fn in recon.items():
            def splice(a: Tensor, name: str = name, fn: Reconstructor = fn) -> Tensor:
                x_hat, f = fn(a)
                has_codes[name] = has_codes[name] or f is not None
                # codes stay on their device (the stats move only their per-latent sums to the CPU)
                codes = f if f is not None else torch.zeros(a.shape[0], stats[name].n_latents, device=a.device)
                stats[name].update(a, x_hat.float(), codes)
                return x_hat
            account(f"sae:{name}", splice)
    if count == 0:
        raise SaekitError("the evaluation contexts have no included next-token targets")
    out = {name: _summarise(ce, kl, count, name, stats[name], has_codes[name]) for name in saes}
    if per_context:
        for name in saes:
            out[name]["per_context"] = {"count": ctx_count, "ce_clean": ctx_ce["clean"], "ce_zero": ctx_ce["zero"],
                                        "ce_mean": ctx_ce["mean"], "ce_sae": ctx_ce[f"sae:{name}"],
                                        "kl_sae": ctx_kl[f"sae:{name}"]}
    return out


def _summarise(ce: dict[str, float], kl: dict[str, float], count: int, name: str, stats: ReconstructionStats,
               has_codes: bool) -> dict[str, Any]:
    c = {k: v / count for k, v in ce.items()}
    clean, zero, mean, sae = c["clean"], c["zero"], c["mean"], c[f"sae:{name}"]
    out: dict[str, Any] = {
        "ce_tokens": count, "ce_clean": clean, "ce_sae": sae, "ce_zero": zero, "ce_mean_ablation": mean,
        "delta_ce": sae - clean, "loss_recovered": _ratio(zero - sae, zero - clean),
        "loss_recovered_mean_ablation": _ratio(mean - sae, mean - clean),
        "kl": kl[f"sae:{name}"] / count, "kl_zero": kl["zero"] / count, "kl_mean_ablation": kl["mean"] / count,
    }
    summary = stats.summary()
    if not has_codes:
        for k in ("l0", "dead_fraction", "dense_fraction"):
            summary.pop(k)
    out.update(summary)
    if has_codes:
        out["density_histogram"] = density_histogram(stats.density())
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def density_histogram(density: Tensor) -> dict[str, Any]:
    """Counts of log10(feature density) in HIST_EDGES bins; dead latents (density 0) counted apart.

    Densities below the first edge go to the first bin."""
    d = density.double()
    alive = d[d > 0]
    logs = alive.log10().clamp(min=HIST_EDGES[0], max=HIST_EDGES[-1])
    counts = torch.histogram(logs, bins=torch.tensor(HIST_EDGES, dtype=torch.float64))[0] if alive.numel() else \
        torch.zeros(len(HIST_EDGES) - 1)
    return {"edges": HIST_EDGES, "counts": [int(v) for v in counts.tolist()], "dead": int((d == 0).sum())}


def clean_json(value: Any) -> Any:
    """NaN/inf floats as None so the JSON is valid everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def held_out_contexts(tokenizer: Any, corpus: str, column: str, context_length: int, eval_fraction: float,
                      n_contexts: int) -> list[Context]:
    """The first ``n_contexts`` contexts of the eval split (the text the SAE was not trained on)."""
    from itertools import islice

    from saekit.data.text import contexts

    if eval_fraction <= 0:
        raise SaekitError("eval_fraction is 0: the corpus has no held-out split to splice on")
    ctxs = list(islice(contexts(tokenizer, corpus, column, context_length, "eval", eval_fraction), n_contexts))
    check_contexts(ctxs, context_length)
    return ctxs


def lm_settings(data: Any) -> Any:
    """The LMConfig an SAE's training data names (source lm, or a store's manifest), or None (synthetic)."""
    from dataclasses import replace

    from saekit.config import LMConfig
    from saekit.data.store import read_manifest, store_split_path

    if data.source == "lm":
        return data.lm
    if data.source != "store":
        return None
    for split in ("train", "eval"):
        try:
            meta = read_manifest(store_split_path(data.store, split))["meta"]
            break
        except SaekitError:
            continue
    else:
        raise SaekitError(f"no activation store at {data.store!r} to read the model and hookpoint from")
    keys = ("model", "hookpoint", "corpus", "text_column", "context_length", "eval_fraction")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise SaekitError(f"the manifest of store {data.store} does not name {', '.join(missing)}")
    return replace(LMConfig(), **{k: meta[k] for k in keys}, dtype=meta.get("model_dtype", "float32"))


def splice_saes(lm: Any, saes: dict[str, Any], n_contexts: int = 64, batch_contexts: int = 8,
                model: Any = None, tokenizer: Any = None) -> dict[str, dict[str, Any]]:
    """Load ``lm.model`` (unless given), check every SAE fits its hookpoint, splice them on held-out text."""
    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.data.models import load_model

    if n_contexts <= 0 or batch_contexts <= 0:
        raise SaekitError("splice contexts and batch contexts must be positive")
    if model is None or tokenizer is None:
        model, tokenizer = load_model(lm.model, device=lm.device, dtype=lm.dtype)
    hp = resolve_hookpoint(model, lm.hookpoint)
    device = next(model.parameters()).device
    probe = torch.zeros(1, 2, dtype=torch.long, device=device)
    width = int(run_captured(model, hp, probe, torch.ones_like(probe)).shape[-1])
    for name, sae in saes.items():
        d_in = sae.cfg.d_in if hasattr(sae, "cfg") else width
        if d_in != width:
            raise SaekitError(f"SAE {name!r} has d_in={d_in} but {lm.model} at {lm.hookpoint} has width {width}")
    ctxs = held_out_contexts(tokenizer, lm.corpus, lm.text_column, lm.context_length, lm.eval_fraction, n_contexts)
    return evaluate_splice(model, hp, saes, ctxs, batch_contexts, autocast=getattr(lm, "autocast", True))
