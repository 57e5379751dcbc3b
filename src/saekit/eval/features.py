"""`saekit features`: what each latent responds to, as JSON and a static HTML dashboard.

For a saved SAE trained on a language model's activations, over ``n_contexts`` held-out contexts (the
eval split of its corpus; only the tokens the SAE is trained on, so no BOS or padding):

1. Statistics of every latent: firing frequency (share of tokens with a nonzero code), mean code when
   firing, largest code. Codes are the plain ``encode`` (a g-SAE without gradients selects like TopK).
2. Latents shown: ``--latents``, else ``n_show`` drawn uniformly (``seed``) from the ones that fired.
3. For each shown latent: its ``n_examples`` top-activating tokens, each with a window of context
   coloured by the latent's code at every token (a second pass over just those contexts), and its direct
   effect on the next-token logits, W_U (w_norm ⊙ d_i / ‖d_i‖) (the final norm's gain, then the
   unembedding): the ``n_logits`` most promoted and most suppressed tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro
from torch import Tensor, nn

from saekit import cliparse
from saekit.config import DataConfig
from saekit.data.hookpoints import Hookpoint, run_captured
from saekit.data.text import Context, collated_batches
from saekit.errors import SaekitError
from saekit.lock import check_output_folder, output_lock


@dataclass
class FeaturesCommand:
    sae: Annotated[Path, tyro.conf.Positional]
    """Folder of a saved SAE trained on LM data (source lm or store)."""
    data: DataConfig | None = None
    """Data the SAE was trained on; default: config.yaml beside the SAE folder."""
    n_contexts: int = 256
    """Held-out contexts to scan."""
    batch_contexts: int = 8
    """Contexts per model forward."""
    latents: tuple[int, ...] = ()
    """Latents to show; default: a random sample of --n-show latents among those that fire."""
    n_show: int = 64
    """How many latents to show when --latents is not given."""
    n_examples: int = 10
    """Top-activating tokens shown per latent."""
    window: int = 12
    """Tokens of context shown before each example's token (and half as many after)."""
    n_logits: int = 8
    """Most promoted and most suppressed next tokens shown per latent."""
    seed: int = 0
    """Seed of the latent sample."""
    out: Path | None = None
    """Output folder (index.html, features.json); default: features/ beside the SAE folder."""
    device: str = "cpu"
    """Device for the model and the SAE."""


class TopActivations:
    """The n largest positive codes of each latent over a stream of tokens, with the tokens' indices."""

    def __init__(self, n_latents: int, n: int) -> None:
        self.values = torch.full((n_latents, n), -math.inf)
        self.tokens = torch.full((n_latents, n), -1, dtype=torch.long)

    def add(self, codes: Tensor, first_token: int) -> None:
        """codes [T, n_latents] of the tokens first_token, first_token + 1, …"""
        k = min(self.values.shape[1], codes.shape[0])
        v, i = codes.topk(k, dim=0)  # [k, n_latents]
        off = v.T <= 0  # only firing tokens are examples
        values = torch.cat([self.values, v.T.masked_fill(off, -math.inf)], dim=1)
        tokens = torch.cat([self.tokens, (i.T + first_token).masked_fill(off, -1)], dim=1)
        best, j = values.topk(self.values.shape[1], dim=1)
        self.values, self.tokens = best, tokens.gather(1, j)


@dataclass
class Scan:
    """Per-latent statistics over the scanned tokens, and where each scanned token sits."""

    n_tokens: int
    fired: Tensor  # [M] tokens with a nonzero code
    code_sum: Tensor  # [M]
    code_max: Tensor  # [M]
    top: TopActivations
    where: Tensor  # [n_tokens, 2]: (context, position) of each scanned token

    @property
    def frequency(self) -> Tensor:
        return self.fired.double() / max(self.n_tokens, 1)

    @property
    def mean_when_firing(self) -> Tensor:
        return self.code_sum.double() / self.fired.clamp_min(1).double()


@torch.no_grad()
def scan(model: nn.Module, hp: Hookpoint, sae: nn.Module, ctxs: list[Context], batch_contexts: int,
         n_examples: int) -> Scan:
    """Encode the included tokens of ``ctxs`` (model run only up to the hookpoint) and collect statistics."""
    device = next(model.parameters()).device
    m = sae.cfg.n_latents
    fired = torch.zeros(m, dtype=torch.long)
    code_sum, code_max = torch.zeros(m, dtype=torch.float64), torch.zeros(m)
    top, where, n = TopActivations(m, n_examples), [], 0
    for b, (ids, attn, mask) in enumerate(collated_batches(ctxs, batch_contexts, device)):
        acts = run_captured(model, hp, ids, attn)
        codes = sae.encode(acts[mask].float()).cpu()
        fired += (codes > 0).sum(0)
        code_sum += codes.sum(0, dtype=torch.float64)
        code_max = torch.maximum(code_max, codes.amax(0))
        top.add(codes, n)
        rows, cols = mask.cpu().nonzero(as_tuple=True)
        where.append(torch.stack([rows + b * batch_contexts, cols], dim=1))
        n += codes.shape[0]
    return Scan(n, fired, code_sum, code_max, top, torch.cat(where) if where else torch.zeros(0, 2, dtype=torch.long))


def choose_latents(frequency: Tensor, requested: tuple[int, ...], n_show: int, seed: int) -> list[int]:
    """The requested latents, else ``n_show`` drawn uniformly from those that fired, in index order."""
    m = frequency.numel()
    if requested:
        bad = [i for i in requested if not 0 <= i < m]
        if bad:
            raise SaekitError(f"--latents {bad} out of range: the SAE has {m} latents")
        return sorted(set(requested))
    alive = (frequency > 0).nonzero().flatten().tolist()
    return sorted(random.Random(seed).sample(alive, min(n_show, len(alive))))


@torch.no_grad()
def example_windows(model: nn.Module, hp: Hookpoint, sae: nn.Module, ctxs: list[Context], result: Scan,
                    shown: list[int], window: int, decode: Any, batch_contexts: int) -> dict[int, list[dict[str, Any]]]:
    """For each shown latent, its top examples as token windows with the latent's code at every token."""
    refs = {i: [(float(v), int(t)) for v, t in zip(result.top.values[i], result.top.tokens[i]) if v > 0]
            for i in shown}
    needed = sorted({int(result.where[t, 0]) for examples in refs.values() for _, t in examples})
    device = next(model.parameters()).device
    codes_of: dict[int, Tensor] = {}  # context -> [T, len(shown)] codes (NaN where a token is not encoded)
    cols = torch.tensor(shown, dtype=torch.long)
    for start in range(0, len(needed), batch_contexts):
        group = needed[start:start + batch_contexts]
        ((ids, attn, mask),) = collated_batches([ctxs[c] for c in group], len(group), device)
        acts = run_captured(model, hp, ids, attn)
        full = torch.full((*mask.shape, len(shown)), math.nan)
        full[mask.cpu()] = sae.encode(acts[mask].float()).cpu().index_select(1, cols)
        codes_of.update({c: full[j] for j, c in enumerate(group)})
    column = {latent: j for j, latent in enumerate(shown)}
    out: dict[int, list[dict[str, Any]]] = {}
    for latent, examples in refs.items():
        rows = []
        for value, token in examples:
            c, pos = (int(v) for v in result.where[token])
            ctx = ctxs[c]
            lo, hi = max(0, pos - window), min(int(ctx.attention_mask.sum()), pos + window // 2 + 1)
            ids = ctx.input_ids[lo:hi].tolist()
            acts = codes_of[c][lo:hi, column[latent]].tolist()
            rows.append({"value": value, "context": ctx.index, "position": pos, "focus": pos - lo,
                         "tokens": [decode(t) for t in ids],
                         "codes": [None if math.isnan(a) else a for a in acts]})
        out[latent] = rows
    return out


def logit_effects(model: nn.Module, sae: nn.Module, shown: list[int], n: int, decode: Any) -> dict[int, dict[str, Any]]:
    """Each shown latent's most promoted and suppressed next tokens by its direct logit effect."""
    from saekit.eval.steering import unembed_effect

    out = {}
    for i in shown:
        atom = sae.dictionary.W_dec[i].detach()
        effect = unembed_effect(model, atom / atom.norm().clamp_min(1e-12)).cpu()
        k = min(n, effect.numel())
        up, down = effect.topk(k), (-effect).topk(k)
        out[i] = {"promoted": [[decode(int(t)), float(v)] for v, t in zip(up.values, up.indices)],
                  "suppressed": [[decode(int(t)), float(-v)] for v, t in zip(down.values, down.indices)]}
    return out


def feature_report(model: nn.Module, tokenizer: Any, hp: Hookpoint, sae: nn.Module, ctxs: list[Context],
                   cfg: FeaturesCommand) -> dict[str, Any]:
    """Everything the dashboard shows, as a JSON-able dict."""
    cache: dict[int, str] = {}

    def decode(t: int) -> str:
        if t not in cache:
            cache[t] = tokenizer.decode([t], clean_up_tokenization_spaces=False)
        return cache[t]

    result = scan(model, hp, sae, ctxs, cfg.batch_contexts, cfg.n_examples)
    if result.n_tokens == 0:
        raise SaekitError("the held-out contexts hold no tokens the SAE is trained on")
    freq, mean, peak = result.frequency, result.mean_when_firing, result.code_max
    shown = choose_latents(freq, cfg.latents, cfg.n_show, cfg.seed)
    windows = example_windows(model, hp, sae, ctxs, result, shown, cfg.window, decode, cfg.batch_contexts)
    logits = logit_effects(model, sae, shown, cfg.n_logits, decode)
    alive = freq > 0
    summary = {"tokens": result.n_tokens, "contexts": len(ctxs), "latents": int(freq.numel()),
               "dead_fraction": 1.0 - alive.double().mean().item(), "mean_l0": float(result.fired.sum()) / result.n_tokens,
               "median_frequency_of_live": float(freq[alive].median()) if alive.any() else 0.0}
    latents = [{"index": i, "frequency": float(freq[i]), "mean_when_firing": float(mean[i]), "max": float(peak[i]),
                "examples": windows[i], **logits[i]} for i in shown]
    return {"summary": summary, "latents": latents, "frequency": freq.tolist()}


def write_features(sae: nn.Module, lm: Any, model: nn.Module, tokenizer: Any,
                   cfg: FeaturesCommand) -> tuple[dict[str, Any], Path]:
    """Scan ``lm``'s held-out text with ``sae``; write index.html and features.json. Returns (report, folder)."""
    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.eval.splice import clean_json, held_out_contexts
    from saekit.io import atomic_write_json, atomic_write_text
    from saekit.report.dashboard import render_dashboard

    hp = resolve_hookpoint(model, lm.hookpoint)
    ctxs = held_out_contexts(tokenizer, lm.corpus, lm.text_column, lm.context_length, lm.eval_fraction, cfg.n_contexts)
    report = {"sae": str(cfg.sae), "architecture": sae.cfg.architecture, "model": lm.model,
              "hookpoint": lm.hookpoint, **feature_report(model, tokenizer, hp, sae, ctxs, cfg)}
    out = cfg.out or cfg.sae.parent / "features"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "features.json", clean_json(report))
    atomic_write_text(out / "index.html", render_dashboard(report))
    return report, out


def main(argv: list[str]) -> None:
    from saekit.data.models import load_model
    from saekit.eval.command import resolve_data
    from saekit.eval.splice import lm_settings
    from saekit.report.table import format_table
    from saekit.sae import load

    from saekit.eval.command import parse_with_run_data

    cfg = parse_with_run_data(FeaturesCommand, argv, "saekit features",
                   "What each latent responds to: statistics, top-activating contexts, logit effects; "
                               "JSON and an HTML dashboard.")
    from saekit.config import check_device, check_numbers

    check_numbers(cfg, "")
    check_device(cfg.device)
    if min(cfg.n_contexts, cfg.batch_contexts, cfg.n_show, cfg.n_examples, cfg.n_logits) <= 0 or cfg.window < 0:
        raise SaekitError("--n-contexts, --batch-contexts, --n-show, --n-examples, --n-logits must be positive "
                          "and --window >= 0")
    sae = load(cfg.sae, cfg.device)
    choose_latents(torch.ones(sae.cfg.n_latents), cfg.latents, 1, 0)  # bad --latents: say so before the model loads
    lm = lm_settings(resolve_data(cfg.sae, cfg.data))
    if lm is None:
        raise SaekitError("features needs an SAE trained on language-model data (source lm or store)")
    out = check_output_folder(cfg.out or cfg.sae.parent / "features")  # before ~20 s of model loading
    with output_lock(out, "saekit features"):
        model, tokenizer = load_model(lm.model, device=cfg.device, dtype=lm.dtype)
        report, out = write_features(sae, lm, model, tokenizer, cfg)
    print(format_table([{"metric": k, "value": v} for k, v in report["summary"].items()]))
    print(f"wrote {out / 'index.html'} ({len(report['latents'])} latents) and {out / 'features.json'}")
