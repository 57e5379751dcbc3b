"""`saekit steer-eval`: how well each latent's decoder direction steers the language model.

Protocol (one saved SAE; every number is a mean over the *included* tokens, the ones the SAE is trained on):

1. Contexts. ``pool`` held-out contexts (the eval split of the SAE's corpus) are shuffled with ``seed`` and
   split into ``calib_contexts`` calibration contexts and ``eval_contexts`` measurement contexts (disjoint).
2. Latents. ``n_latents`` latents are drawn uniformly (``seed``) from those that fire at least once
   (plain encode, no gradients) on the included tokens of the calibration + measurement contexts.
   Latent i's direction u_i = d_i / ‖d_i‖ (its decoder row).
3. Steering. α·m·u_i is added to the hooked activation at every included position (BOS, special tokens and
   padding untouched), where m is the mean ‖x‖ over the included tokens of the measurement contexts, so α
   is in units of a typical activation norm. α runs over ``alphas``.
4. Targets, T = ``n_targets`` tokens per latent, fixed before measuring:
   ``measured`` (default): the T tokens whose log-probability, averaged over the included positions of
   the *calibration* contexts, rises most when steering with α = ``calib_alpha`` (the full downstream
   effect of u_i, through every later layer). ``unembed``: the T largest entries of W_U (w_norm ⊙ u_i),
   the direct path through the final norm's gain and the unembedding only.
5. Measures on the measurement contexts, per α: effect(α) = mean over included positions and over the T
   targets of log p_α(t) − log p_0(t) (nats); KL(α) = mean over included positions of KL(p_0 ‖ p_α).
6. Steering effectiveness (one number per latent) = the effect at a KL budget κ = ``kl_budget``: linear
   interpolation of effect against KL along the path (0, 0), (KL(α_1), effect(α_1)), ... at the first
   segment that reaches κ; NaN (reported as null) when the largest α stays below κ.
"""

from __future__ import annotations

import math
import random
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn

from saekit import cliparse
from saekit.config import DataConfig
from saekit.data.hookpoints import Hookpoint, capture, edited
from saekit.data.text import Context, collated_batches
from saekit.errors import SaekitError


@dataclass
class SteerCommand:
    sae: Annotated[Path, tyro.conf.Positional]
    """Folder of a saved SAE (model.safetensors + cfg.json) trained on LM data (source lm or store)."""
    data: DataConfig | None = None
    """Data the SAE was trained on; default: config.yaml beside the SAE folder."""
    n_latents: int = 32
    """Latents to steer with, drawn among those that fire on the held-out contexts."""
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    """Steering strengths, in units of the mean activation norm at the hookpoint."""
    calib_alpha: float = 1.0
    """Strength used to find the measured target tokens (on the calibration contexts)."""
    targets: Literal["measured", "unembed"] = "measured"
    """How a latent's target tokens are chosen (see the module docstring)."""
    n_targets: int = 10
    """Target tokens per latent."""
    kl_budget: float = 0.5
    """KL budget κ (nats/token) at which the effect is read off: the steering effectiveness."""
    calib_contexts: int = 4
    """Held-out contexts for choosing the target tokens."""
    eval_contexts: int = 8
    """Held-out contexts for measuring effect and KL (disjoint from the calibration ones)."""
    pool: int = 64
    """Held-out contexts shuffled to draw the two sets from."""
    batch_contexts: int = 8
    """Contexts per model forward."""
    seed: int = 0
    """Seed of the context shuffle and the latent draw."""
    out: Path | None = None
    """JSON output; default: steer.json next to the SAE folder."""
    device: str = "cpu"
    """Device for the model and the SAE."""


def added(hp: Hookpoint, delta: Tensor | None) -> AbstractContextManager[None]:
    """While inside, the hooked output gets ``delta`` [B, T, d] added (None: no hook)."""
    return edited(hp, None if delta is None else (lambda act: act + delta.to(act.dtype)))


def _logprobs(model: nn.Module, hp: Hookpoint, batch: tuple[Tensor, Tensor, Tensor], vec: Tensor | None) -> Tensor:
    """log p(next | prefix) [n, V] at the included positions, with ``vec`` added at every included position."""
    ids, attn, mask = batch
    delta = None if vec is None else mask[..., None].float() * vec.float()
    with added(hp, delta):
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    return F.log_softmax(logits[mask].float(), dim=-1)


@torch.no_grad()
def clean_pass(model: nn.Module, hp: Hookpoint, batches: list) -> tuple[list[Tensor], Tensor]:
    """Clean log-probs per batch and the included activations [N, d] (float32)."""
    lps, acts = [], []
    for ids, attn, mask in batches:
        with capture(hp) as got:
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        lps.append(F.log_softmax(logits[mask].float(), dim=-1))
        acts.append(got["acts"][mask].float())
    return lps, torch.cat(acts)


@torch.no_grad()
def mean_logprob_shift(model: nn.Module, hp: Hookpoint, batches: list, clean: list[Tensor], vec: Tensor) -> Tensor:
    """[V] mean over included positions of log p_steered(v) − log p_clean(v)."""
    total, n = None, 0
    for batch, lp0 in zip(batches, clean):
        diff = (_logprobs(model, hp, batch, vec) - lp0).sum(0)
        total = diff if total is None else total + diff
        n += lp0.shape[0]
    return total / n


@torch.no_grad()
def effect_and_kl(model: nn.Module, hp: Hookpoint, batches: list, clean: list[Tensor], vec: Tensor,
                  targets: Tensor) -> tuple[float, float]:
    """(mean over positions and targets of Δ log p(target), mean KL(p_clean ‖ p_steered)) in nats."""
    eff, kl, n = 0.0, 0.0, 0
    for batch, lp0 in zip(batches, clean):
        lp = _logprobs(model, hp, batch, vec)
        eff += (lp[:, targets] - lp0[:, targets]).mean(-1).sum().item()
        kl += F.kl_div(lp, lp0, log_target=True, reduction="sum").item()
        n += lp0.shape[0]
    return eff / n, kl / n


def unembed_effect(model: nn.Module, direction: Tensor) -> Tensor:
    """[V] direct logit effect W_U (w_norm ⊙ u) of a residual direction (final-norm gain, if any, then unembedding)."""
    w_u = model.get_output_embeddings().weight.float()
    norm = None
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and getattr(obj, "weight", None) is not None:
            norm = obj.weight.float()
            break
    u = direction.float().to(w_u.device)
    return w_u @ (u * norm if norm is not None else u)


def effect_at_kl(kls: list[float], effects: list[float], budget: float) -> float:
    """Effect interpolated at KL = budget along (0,0), (kl_1, e_1), ...; NaN if the budget is never reached."""
    pk, pe = 0.0, 0.0
    for k, e in zip(kls, effects):
        if k >= budget:
            t = (budget - pk) / (k - pk) if k > pk else 1.0
            return pe + t * (e - pe)
        pk, pe = k, e
    return float("nan")


def steer_latents(model: nn.Module, hp: Hookpoint, sae: Any, calib: list[Context], evals: list[Context],
                  cfg: SteerCommand, latents: list[int] | None = None) -> dict[str, Any]:
    """Run the protocol for ``latents`` (default: a draw among the latents alive on these contexts)."""
    if not cfg.alphas or cfg.n_targets <= 0 or cfg.kl_budget <= 0:
        raise SaekitError("steer-eval needs at least one alpha, n_targets > 0 and kl_budget > 0")
    device = next(model.parameters()).device
    cal_b, ev_b = collated_batches(calib, cfg.batch_contexts, device), collated_batches(evals, cfg.batch_contexts, device)
    cal_clean, cal_acts = clean_pass(model, hp, cal_b)
    ev_clean, ev_acts = clean_pass(model, hp, ev_b)
    scale = ev_acts.norm(dim=-1).mean().item()
    W = sae.W_dec.detach().float()
    if latents is None:
        with torch.no_grad():
            fired = (sae.encode(torch.cat([cal_acts, ev_acts]).to(W.device)) > 0).any(0)
        alive = fired.nonzero().flatten().tolist()
        if not alive:
            raise SaekitError("no latent fires on the held-out contexts: nothing to steer with")
        latents = sorted(random.Random(cfg.seed).sample(alive, min(cfg.n_latents, len(alive))))
    rows = []
    for i in latents:
        u = W[i] / W[i].norm()
        if cfg.targets == "measured":
            shift = mean_logprob_shift(model, hp, cal_b, cal_clean, cfg.calib_alpha * scale * u)
        else:
            shift = unembed_effect(model, u)
        targets = shift.topk(cfg.n_targets).indices
        effects, kls = [], []
        for a in cfg.alphas:
            e, k = effect_and_kl(model, hp, ev_b, ev_clean, a * scale * u, targets)
            effects.append(e)
            kls.append(k)
        rows.append({"latent": i, "targets": targets.tolist(), "effect": effects, "kl": kls,
                     "effect_at_kl": effect_at_kl(kls, effects, cfg.kl_budget)})
    vals = torch.tensor([r["effect_at_kl"] for r in rows], dtype=torch.float64)
    ok = vals[~vals.isnan()]
    summary = {"n_latents": len(rows), "n_reached_budget": int(ok.numel()),
               "median_effect_at_kl": ok.median().item() if ok.numel() else float("nan"),
               "mean_effect_at_kl": ok.mean().item() if ok.numel() else float("nan")}
    return {"alphas": list(cfg.alphas), "activation_norm": scale, "kl_budget": cfg.kl_budget,
            "targets_method": cfg.targets, "calib_alpha": cfg.calib_alpha, "n_targets": cfg.n_targets,
            "eval_tokens": int(ev_acts.shape[0]), "calib_tokens": int(cal_acts.shape[0]),
            "summary": summary, "latents": rows}


def split_contexts(ctxs: list[Context], n_calib: int, n_eval: int, seed: int) -> tuple[list[Context], list[Context]]:
    if n_calib <= 0 or n_eval <= 0:
        raise SaekitError("calib_contexts and eval_contexts must be positive")
    if len(ctxs) < n_calib + n_eval:
        raise SaekitError(f"only {len(ctxs)} held-out contexts for {n_calib} calibration + {n_eval} measurement ones")
    order = list(range(len(ctxs)))
    random.Random(seed).shuffle(order)
    return [ctxs[j] for j in order[:n_calib]], [ctxs[j] for j in order[n_calib:n_calib + n_eval]]


def main(argv: list[str]) -> None:
    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.data.models import load_model
    from saekit.eval.command import resolve_data
    from saekit.eval.splice import clean_json, held_out_contexts, lm_settings
    from saekit.io import atomic_write_json
    from saekit.report.table import format_table
    from saekit.sae import load

    from saekit.eval.command import parse_with_run_data

    cfg = parse_with_run_data(SteerCommand, argv, "saekit steer-eval",
                   "Steer a language model with a sample of an SAE's latents; effect on target tokens vs KL.")
    from saekit.config import check_device, check_numbers

    check_numbers(cfg, "")
    check_device(cfg.device)
    if min(cfg.n_latents, cfg.pool, cfg.batch_contexts) <= 0:
        raise SaekitError("--n-latents, --pool and --batch-contexts must be positive")
    sae = load(cfg.sae, cfg.device)
    lm = lm_settings(resolve_data(cfg.sae, cfg.data))
    if lm is None:
        raise SaekitError("steer-eval needs an SAE trained on language-model data (source lm or store)")
    model, tokenizer = load_model(lm.model, device=cfg.device, dtype=lm.dtype)
    hp = resolve_hookpoint(model, lm.hookpoint)
    pool = held_out_contexts(tokenizer, lm.corpus, lm.text_column, lm.context_length, lm.eval_fraction,
                             max(cfg.pool, cfg.calib_contexts + cfg.eval_contexts))
    calib, evals = split_contexts(pool, cfg.calib_contexts, cfg.eval_contexts, cfg.seed)
    result = steer_latents(model, hp, sae, calib, evals, cfg)
    result = {"sae": str(cfg.sae), "architecture": sae.cfg.architecture, "model": lm.model,
              "hookpoint": lm.hookpoint, **result}
    print(format_table([{"metric": k, "value": v} for k, v in result["summary"].items()]))
    out = cfg.out or cfg.sae.parent / "steer.json"
    atomic_write_json(out, clean_json(result))
    print(f"wrote {out}")
    if not math.isfinite(result["summary"]["median_effect_at_kl"]):
        print(f"note: no latent reached the KL budget {cfg.kl_budget}; raise --alphas or lower --kl-budget")
