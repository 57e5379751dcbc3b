"""`saekit reproduce gsae`: g-SAE (gradient TopK) vs TopK at equal k (Olmo et al. 2024, arXiv 2411.10397).

The paper's three claims, tested on SmolLM2-135M's residual stream (the paper: GPT-2 small, layer 7):
1. at equal k a g-SAE's reconstruction, spliced into the model, costs less next-token loss than TopK's;
2. g-SAEs have fewer dead latents;
3. g-SAE latents are more effective steering vectors.

The g-SAE score is s = z ⊙ (1 + β |d_i · g|) (DESIGN.md), g = ∂CE/∂x at the hookpoint (next-token CE
summed over the context). Two β families are trained, because β has no meaning without g's units:
* ``norm``: saekit's normalised gradient ĝ = g / E‖g‖ (``grad_scale`` fitted by the trainer), so
  |d_i · ĝ| is O(1/√d) whatever the model;
* ``raw``: the paper's unnormalised g, in the model's own units. saekit trains it as a ``gradient_topk``
  SAE with β_saekit = β_raw · E‖g‖, where E‖g‖ is computed from exactly the sample the trainer fits
  ``grad_scale`` on: then β_saekit |d_i · ĝ| = β_raw |d_i · g| to float rounding (checked on every
  trained SAE from its cfg.json: β_raw = β / (input_scale · grad_scale)).

Plan (every step reused from WORK when already done):
1. one activation store with LM gradients (train split; the model is run once);
2. seed 0: TopK and a g-SAE per β of both families, per k (same width, steps, batch, lr, data order);
3. per (k, family) the β with the lowest spliced ΔCE on the *validation* contexts (with gradients at
   inference) is chosen; TopK and the chosen g-SAEs are trained at every further seed;
4. every chosen SAE is spliced into the model on the *test* contexts (disjoint from validation):
   g-SAEs with the clean LM gradient at inference (``WithGradients``) and bare (β = 0: TopK selection
   on the same weights), with per-context sums for the paired bootstrap; dead latents from the
   trainer's last window (>= 1M tokens at the cpu scale);
5. steering (``saekit steer-eval`` protocol) for TopK and the chosen g-SAEs at each k;
6. intervals (paired bootstrap over test contexts, t over seeds, bootstrap over latents), verdicts,
   README, CSV/JSON, plots.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from saekit.config import DataConfig, LMConfig, SAEConfig, TrainConfig
from saekit.errors import SaekitError
from saekit.reproduce.common import (Claim, Run, Verdict, cached_json, claims_table, final_metrics, fmt, fmt_ci,
                                     markdown_table, train_or_resume, write_csv, write_readme)

Family = Literal["topk", "norm", "raw"]
FAMILIES: tuple[Family, ...] = ("norm", "raw")
FAMILY_LABEL = {"topk": "TopK", "norm": "g-SAE, normalised ĝ = g/E‖g‖", "raw": "g-SAE, paper's raw g",
                "best": "g-SAE, β chosen on validation from both grids"}

PAPER = {
    "delta_ce": "g-SAE reconstructions are more faithful downstream than TopK's at the same k "
                "(lower next-token loss when spliced in; GPT-2 small, layer 7)",
    "dead": "fewer dead latents than TopK",
    "steering": "latents more effective at steering the model's logits in arbitrary contexts",
}


@dataclass
class GSAEScale:
    """One scale of the g-SAE reproduction."""

    lm: LMConfig = field(default_factory=lambda: LMConfig(with_grads=True))
    """Model, hookpoint and corpus; the store is harvested with LM gradients (with_grads must be true)."""
    store: str = "runs/reproduce/stores/smollm2-resid_post.9-grads"
    """Activation store with gradients ('' = WORK/store); relative paths are relative to the working directory."""
    train_tokens: int = 1_048_576
    """Training tokens harvested (activations and gradients)."""
    fp16: bool = True
    """Store activations as float16 (gradients stay float32)."""
    shard_tokens: int = 32768
    """Tokens per store shard."""
    width: int = 4608
    """Latents of every SAE (8 x d_in)."""
    ks: tuple[int, ...] = (16, 32, 64)
    """Latents kept per token; g-SAE and TopK are compared at equal k."""
    norm_betas: tuple[float, ...] = (1.0, 4.0, 16.0)
    """β grid with saekit's normalised gradient ĝ = g / E‖g‖ (seed 0)."""
    raw_betas: tuple[float, ...] = (1.0, 10.0, 100.0)
    """β grid with the paper's raw g (model units, CE summed over the context) (seed 0)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds; the β grid runs at the first, TopK and the chosen β at all."""
    steps: int = 256
    batch_size: int = 4096
    lr: float = 1e-3
    warmup_steps: int = 20
    init_samples: int = 4096
    """Sample for the input scale, b_dec and grad_scale (the trainer's init_samples)."""
    auxk_dead_tokens: int = 262_144
    """AuxK treats a latent as dead after this many tokens without firing (sae.dead_tokens)."""
    dead_window_tokens: int = 1_000_000
    """Reported dead latent: no activation in the trainer's last this many training tokens."""
    validation_contexts: int = 64
    """First held-out contexts: the β of each (k, family) is chosen on them (spliced ΔCE)."""
    test_contexts: int = 128
    """The next held-out contexts: every number a verdict rests on."""
    splice_batch_contexts: int = 8
    n_boot: int = 2000
    """Bootstrap resamples (test contexts; steering latents)."""
    steer_latents: int = 64
    """Latents per SAE for steering (drawn among those firing on the steering contexts)."""
    steer_seeds: tuple[int, ...] = (0,)
    steer_ks: tuple[int, ...] = ()
    """The k whose SAEs are steered (empty: every k); the steering claim is decided over these."""
    pool_families: bool = False
    """One g-SAE per k at the further seeds: the β with the lowest validation ΔCE over *both* grids (the
    two families are the same score with β in different units, so pooling the grids is one finer grid).
    False: the chosen β of each family is carried to every seed (twice the SAEs and splices)."""
    """Training seeds whose SAEs are steered (TopK and the chosen g-SAEs at every k)."""
    steer_alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    """Steering strengths, in units of the mean activation norm."""
    steer_calib_alpha: float = 0.2
    steer_kl_budget: float = 0.25
    """KL budget κ (nats/token) at which a latent's effect on its target tokens is read."""
    steer_calib_contexts: int = 2
    steer_eval_contexts: int = 4
    """Steering contexts (calibration, measurement), drawn from the test contexts."""
    selection_contexts: int = 16
    """First test contexts on which each g-SAE's selection with gradients is compared with β = 0."""
    device: str = "cpu"


SCALES: dict[str, GSAEScale] = {
    "smoke": GSAEScale(lm=LMConfig(with_grads=True, context_length=32), store="", train_tokens=512,
                       shard_tokens=128, width=256, ks=(16,), norm_betas=(2.0, 16.0), raw_betas=(10.0,),
                       seeds=(0, 1), steps=8, batch_size=256, warmup_steps=1, init_samples=512,
                       auxk_dead_tokens=512, dead_window_tokens=1024, validation_contexts=2, test_contexts=2,
                       splice_batch_contexts=2, n_boot=50, steer_latents=2, steer_alphas=(0.2, 0.8),
                       steer_calib_alpha=0.4, steer_kl_budget=0.05, steer_calib_contexts=1, steer_eval_contexts=1,
                       selection_contexts=1),
    "cpu": GSAEScale(width=2304, norm_betas=(0.5, 4.0, 12.0), raw_betas=(6.0,), pool_families=True, validation_contexts=48,
                     test_contexts=96, splice_batch_contexts=16, steer_ks=(32,), steer_alphas=(0.1, 0.2, 0.4),
                     steer_eval_contexts=3),
    "gpu": GSAEScale(lm=LMConfig(with_grads=True, device="cuda", model_batch_contexts=64),
                     store="runs/reproduce/stores/smollm2-resid_post.9-grads-gpu", train_tokens=20_971_520,
                     shard_tokens=262_144, width=9216, steps=5120, lr=5e-4, warmup_steps=200,
                     auxk_dead_tokens=2_000_000, dead_window_tokens=5_000_000, validation_contexts=256,
                     test_contexts=1024, splice_batch_contexts=32, steer_latents=128, steer_seeds=(0, 1, 2),
                     steer_calib_contexts=4, steer_eval_contexts=16, device="cuda"),
}
# cpu: the Shakespeare train split holds 1.62M tokens; 1,048,576 are harvested and trained on once
# (256 x 4096), so the 1M-token dead window covers all but the first 12 steps. Sized to fit one 3-hour
# session on 2 cores (the harvest with gradients alone runs ~220 tokens/s, 80 min): 2304 latents (4 x d_in),
# a four-step β ladder over both grids (E‖g‖ ≈ 0.35 here, so raw 6 is normalised 2.1: the ladder is 0.5,
# 2.1, 4, 12 in normalised units; an earlier one-seed pilot found 0.5-2 best and 8-32 worse, the three-step
# run chose 4, its top, at k = 32, so 12 brackets it), one g-SAE per k
# carried to every seed (pool_families), 48 validation and 96 test contexts, steering at k = 32 only.
# gpu: needs a corpus of >= 21M tokens (--lm.corpus); Shakespeare would run out at 1.62M.


# ---------------------------------------------------------------------------------------------------
# runs


@dataclass(frozen=True)
class Variant:
    """One SAE recipe: TopK, or a g-SAE of a β family."""

    family: Family
    k: int
    beta: float | None = None

    @property
    def architecture(self) -> str:
        return "topk" if self.family == "topk" else "gradient_topk"

    def name(self, seed: int) -> str:
        if self.family == "topk":
            return f"topk-k{self.k}-s{seed}"
        return f"gsae_{self.family}-k{self.k}-b{self.beta:g}-s{seed}"


def store_path(cfg: GSAEScale, work: Path) -> Path:
    return Path(cfg.store) if cfg.store else Path(work) / "store"


def run_dir(work: Path, v: Variant, seed: int) -> Path:
    return Path(work) / "runs" / v.name(seed)


def saekit_beta(v: Variant, units: dict[str, float]) -> float | None:
    """The ``sae.beta`` that trains ``v``: β itself (normalised), β_raw · E‖g‖ (raw), None (TopK)."""
    if v.family == "topk":
        return None
    assert v.beta is not None
    return v.beta if v.family == "norm" else v.beta * units["mean_grad_norm"]


def train_config(cfg: GSAEScale, work: Path, v: Variant, seed: int, units: dict[str, float]) -> TrainConfig:
    """The training recipe of one SAE; only the architecture and β differ between SAEs of one k."""
    beta = saekit_beta(v, units)
    extra = {} if beta is None else {"beta": beta}
    sae = SAEConfig(architecture=v.architecture, n_latents=cfg.width, k=v.k, dead_tokens=cfg.auxk_dead_tokens,
                    **extra)
    return TrainConfig(sae=sae, data=DataConfig(source="store", store=str(store_path(cfg, work)),
                                                     store_seed=seed),
                       steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                       init_samples=cfg.init_samples, dead_window_tokens=cfg.dead_window_tokens,
                       log_every=max(1, min(10, cfg.steps)), ckpt_every=50, out_dir=str(run_dir(work, v, seed)),
                       seed=seed, device=cfg.device, progress=False)


def grid(cfg: GSAEScale, k: int) -> list[Variant]:
    return ([Variant("topk", k)] + [Variant("norm", k, b) for b in cfg.norm_betas]
            + [Variant("raw", k, b) for b in cfg.raw_betas])


def effective_betas(sae_cfg: Any) -> dict[str, float]:
    """β of a trained g-SAE in both units, from its saved config: score z (1 + β/(s·G) |d · g|)."""
    norm = float(sae_cfg.beta)
    return {"beta_norm": norm, "beta_raw": norm / (float(sae_cfg.input_scale) * float(sae_cfg.grad_scale))}


def gradient_units(store: Path, init_samples: int) -> dict[str, float]:
    """The input scale s and grad_scale G exactly as the trainer fits them (same sample, same first
    batch, same functions), and E‖g‖ = s·G in model units: the factor between raw and normalised β."""
    from saekit.data.factory import make_source
    from saekit.data.source import sample_gradients
    from saekit.sae import architecture_class
    from saekit.train.initialisation import input_scale

    source = make_source(DataConfig(source="store", store=str(store)), "train")
    if not source.has_grads:
        raise SaekitError(f"the store {store} has no gradients: g-SAEs need a store harvested with lm.with_grads")
    sample = source.sample(init_samples)
    s = input_scale(sample)
    grads = sample_gradients(source, sample.shape[0])  # as the trainer's initialise takes them
    probe = replace(SAEConfig(architecture="gradient_topk", beta=1.0), input_scale=s)
    g = architecture_class("gradient_topk").fit_to_sample(probe, sample, grads).grad_scale
    return {"input_scale": s, "grad_scale": g, "mean_grad_norm": s * g,
            "mean_act_norm": float(sample.double().norm(dim=-1).mean()), "sample_tokens": int(sample.shape[0])}


# ---------------------------------------------------------------------------------------------------
# selection and verdicts (pure functions, unit-tested)


def select_beta(validation: dict[float, float | None]) -> float:
    """The β with the lowest validation ΔCE (ties: the smaller β); missing/NaN values never win."""
    ok = {b: v for b, v in validation.items() if v is not None and math.isfinite(v)}
    if not ok:
        raise SaekitError("no β has a finite validation ΔCE to choose from")
    return min(ok, key=lambda b: (ok[b], b))


def pool_choices(chosen: dict[tuple[int, str], float], validation_delta_ce: dict[tuple[int, str], float | None]
                 ) -> dict[tuple[int, str], float]:
    """Keep, per k, only the family whose chosen β has the lowest validation ΔCE (ties: the grid order
    of FAMILIES); ``validation_delta_ce`` maps (k, family) to that chosen β's validation ΔCE."""
    out: dict[tuple[int, str], float] = {}
    for k in sorted({k for k, _ in chosen}):
        cands = [(f, chosen[(k, f)]) for f in FAMILIES if (k, f) in chosen]
        ok = [(f, b) for f, b in cands if _finite(validation_delta_ce.get((k, f)))]
        if not ok:
            raise SaekitError(f"no g-SAE at k={k} has a finite validation ΔCE to choose from")
        f, b = min(ok, key=lambda fb: (validation_delta_ce[(k, fb[0])], FAMILIES.index(fb[0])))  # type: ignore[arg-type]
        out[(k, f)] = b
    return out


def claim_groups(cfg: "GSAEScale", chosen: dict[tuple[int, str], float]) -> dict[str, dict[int, "Variant"]]:
    """The g-SAEs each claim is decided on: per family (its chosen β at every k), or one group "best"
    (the pooled choice per k) when ``cfg.pool_families``."""
    if cfg.pool_families:
        return {"best": {k: Variant(f, k, b) for (k, f), b in sorted(chosen.items())}}  # type: ignore[arg-type]
    return {fam: {k: Variant(fam, k, chosen[(k, fam)]) for k in cfg.ks if (k, fam) in chosen} for fam in FAMILIES}


Interval = tuple[str, float | None, float | None]  # (what it resamples, lo, hi)


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def decide(intervals: Sequence[Interval], claim: Literal["below", "above"] = "below") -> tuple[Verdict, str]:
    """Verdict on "the g-SAE − TopK difference is below (or above) 0" from 95% intervals.

    reproduced: every interval lies on the claimed side of 0; not reproduced: every interval lies on
    the other side; otherwise (an interval crosses 0, they disagree, or one is missing) undecided."""
    if not intervals:
        return "undecided at this power", "no interval"
    missing = [name for name, lo, hi in intervals if not (_finite(lo) and _finite(hi))]
    if missing:
        return "undecided at this power", f"no {', '.join(missing)} interval (one seed or no data)"
    shown = "; ".join(f"{name} [{lo:+.4g}, {hi:+.4g}]" for name, lo, hi in intervals)
    # as "below 0": an interval [lo, hi] of the claim "above" is [-hi, -lo] of the claim "below"
    flipped = [(lo, hi) if claim == "below" else (-hi, -lo) for _, lo, hi in intervals]  # type: ignore[operator]
    if all(hi < 0 for lo, hi in flipped):
        return "reproduced", f"every interval {'below' if claim == 'below' else 'above'} 0: {shown}"
    if all(lo > 0 for lo, hi in flipped):
        return "not reproduced", f"every interval on the wrong side of 0: {shown}"
    crossing = [name for name, lo, hi in intervals if lo <= 0 <= hi]  # type: ignore[operator]
    if crossing:
        cross = "interval crosses" if len(crossing) == 1 else "intervals cross"
        return "undecided at this power", f"{', '.join(crossing)} {cross} 0: {shown}"
    return "undecided at this power", f"the intervals disagree in sign: {shown}"


def combine(per_k: dict[int, Verdict]) -> Verdict:
    """One verdict over every k: reproduced only if reproduced at every k, not reproduced if it fails
    at any k (the claim is 'at equal k'), else undecided."""
    values = list(per_k.values())
    if values and all(v == "reproduced" for v in values):
        return "reproduced"
    if any(v == "not reproduced" for v in values):
        return "not reproduced"
    return "undecided at this power"


def difference_of_means(a: Sequence[float], b: Sequence[float], n_boot: int, seed: int,
                        level: float = 0.95) -> dict[str, float]:
    """mean(a) − mean(b) for two independent samples (e.g. two SAEs' latents), with a percentile
    bootstrap interval resampling each sample on its own; NaN bounds when either is empty."""
    from saekit.eval.stats import bootstrap_indices, percentile_interval

    x = np.asarray([v for v in a if _finite(v)], dtype=np.float64)
    y = np.asarray([v for v in b if _finite(v)], dtype=np.float64)
    if x.size == 0 or y.size == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n_a": int(x.size), "n_b": int(y.size)}
    point = float(x.mean() - y.mean())
    ia, ib = bootstrap_indices(x.size, n_boot, 2 * seed), bootstrap_indices(y.size, n_boot, 2 * seed + 1)
    lo, hi = percentile_interval(x[ia].mean(axis=1) - y[ib].mean(axis=1), level)
    return {"value": point, "lo": lo, "hi": hi, "n_a": int(x.size), "n_b": int(y.size)}


def pooled_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], key: str = "ce_sae",
                      n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean over seeds of the per-token difference of ``key`` (SAE a_s − SAE b_s, every seed s spliced on
    the same contexts), with a paired bootstrap interval resampling the contexts jointly for every seed."""
    from saekit.eval.stats import paired_bootstrap

    if len(a) != len(b) or not a:
        raise SaekitError("pooled_difference needs one result per seed for both SAEs")
    count = list(a[0]["per_context"]["count"])
    q: dict[str, Sequence[float]] = {"n": count}
    for i, (ra, rb) in enumerate(zip(a, b)):
        if list(ra["per_context"]["count"]) != count or list(rb["per_context"]["count"]) != count:
            raise SaekitError("the splice results were not measured on the same contexts")
        q[f"a{i}"], q[f"b{i}"] = ra["per_context"][key], rb["per_context"][key]
    m = len(a)
    return paired_bootstrap(q, lambda s: sum(s[f"a{i}"] - s[f"b{i}"] for i in range(m)) / (m * s["n"]), n_boot, seed)


def dead_verdict(gsae: Sequence[float], topk: Sequence[float]) -> tuple[Verdict, str, dict[str, float]]:
    """'Fewer dead latents': t-interval over seeds of the per-seed difference g-SAE − TopK."""
    from saekit.eval.stats import mean_ci

    diff = mean_ci([g - t for g, t in zip(gsae, topk)])
    if all(v == 0 for v in [*gsae, *topk]):
        return "undecided at this power", "no latent is dead in any run of either (nothing to compare)", diff
    verdict, why = decide([("seed", diff["lo"], diff["hi"])], "below")
    return verdict, why, diff


# ---------------------------------------------------------------------------------------------------
# the model and contexts, loaded once and only when something has to be computed


class _LM:
    def __init__(self, cfg: GSAEScale) -> None:
        self.cfg = cfg
        self._loaded: tuple[Any, Any, Any] | None = None
        self._ctxs: tuple[list[Any], list[Any]] | None = None

    def model(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            from saekit.data.hookpoints import resolve_hookpoint
            from saekit.data.models import load_model

            lm = self.cfg.lm
            model, tok = load_model(lm.model, device=lm.device, dtype=lm.dtype)
            self._loaded = (model, tok, resolve_hookpoint(model, lm.hookpoint))
        return self._loaded

    def contexts(self) -> tuple[list[Any], list[Any]]:
        if self._ctxs is None:
            from saekit.reproduce.common import held_out_split

            self._ctxs = held_out_split(self.model()[1], self.cfg.lm, self.cfg.validation_contexts,
                                        self.cfg.test_contexts)
        return self._ctxs


def ensure_grad_store(cfg: GSAEScale, path: Path, lm: _LM) -> Path:
    """The train split of the gradient store, harvested (or finished) with the one loaded model when not
    complete: ``common.ensure_store``'s machinery (``saekit cache``), without loading a second model."""
    from saekit.data.cache_command import CacheConfig, cache
    from saekit.data.store import read_manifest

    try:
        meta = read_manifest(Path(path) / "train")["meta"]
        keys = ("model", "hookpoint", "corpus", "context_length", "eval_fraction")
        if meta.get("with_grads") and meta.get("max_tokens") == cfg.train_tokens and \
                all(meta.get(k) == getattr(cfg.lm, k) for k in keys):
            return Path(path)
    except SaekitError:
        pass  # missing or incomplete: harvest (or resume), and let cache() refuse a mismatched store
    model, tok, _ = lm.model()
    cache(CacheConfig(lm=cfg.lm, out=str(path), split="train", max_tokens=cfg.train_tokens, fp16=cfg.fp16,
                      shard_tokens=cfg.shard_tokens, progress=False), model, tok)
    return Path(path)


def _load(work: Path, v: Variant, seed: int, device: str) -> Any:
    from saekit.sae import load

    return load(run_dir(work, v, seed) / "sae", device=device)


def _digest(names: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:10]


def splice_group(cfg: GSAEScale, work: Path, lm: _LM, members: dict[str, tuple[Variant, int, bool]],
                 split: Literal["validation", "test"], tag: str) -> dict[str, Any]:
    """Splice a group of SAEs on the validation or test contexts in one pass (shared clean / ablated
    runs); ``members`` name -> (variant, seed, with gradients at inference). Cached under WORK/eval."""
    from saekit.eval.splice import WithGradients, evaluate_splice

    path = Path(work) / "eval" / split / f"{tag}-{_digest(list(members))}.json"

    def compute() -> dict[str, Any]:
        model, _, hp = lm.model()
        val, test = lm.contexts()
        saes: dict[str, Any] = {}
        for name, (v, seed, grads) in members.items():
            sae = _load(work, v, seed, cfg.device)
            saes[name] = WithGradients(sae) if grads else sae
        return evaluate_splice(model, hp, saes, val if split == "validation" else test, cfg.splice_batch_contexts,
                               per_context=True)

    return cached_json(path, compute)


def selection_change(cfg: GSAEScale, work: Path, lm: _LM, variants: Sequence[Variant], seed: int) -> dict[str, Any]:
    """Per g-SAE, the share of the latents it selects with gradients that it would not select at β = 0
    (same weights), on the first ``selection_contexts`` test contexts (their clean LM gradients)."""
    import torch

    from saekit.data.harvest import harvest_batch

    gs = [v for v in variants if v.family != "topk"]
    path = Path(work) / "eval" / "selection" / f"s{seed}-{_digest([v.name(seed) for v in gs])}.json"

    def compute() -> dict[str, Any]:
        model, _, hp = lm.model()
        ctxs = lm.contexts()[1][:cfg.selection_contexts]
        step = cfg.splice_batch_contexts
        parts = [harvest_batch(model, hp, ctxs[i:i + step], with_grads=True) for i in range(0, len(ctxs), step)]
        acts = torch.cat([p.acts for p in parts]).to(cfg.device)
        grads = torch.cat([p.grads for p in parts]).to(cfg.device)  # type: ignore[misc]
        out = {}
        for v in gs:
            sae = _load(work, v, seed, cfg.device)
            with torch.no_grad():
                with_g, bare = sae.encode(acts, grads) > 0, sae.encode(acts) > 0
            changed = (with_g & ~bare).sum(-1).double() / with_g.sum(-1).clamp(min=1).double()
            out[v.name(seed)] = {"changed_fraction": changed.mean().item(), "tokens": int(acts.shape[0])}
        return out

    return cached_json(path, compute)


def steer_one(cfg: GSAEScale, work: Path, lm: _LM, v: Variant, seed: int) -> dict[str, Any]:
    from saekit.eval.steering import SteerCommand, split_contexts, steer_latents

    def compute() -> dict[str, Any]:
        model, _, hp = lm.model()
        _, test = lm.contexts()
        sc = SteerCommand(sae=run_dir(work, v, seed) / "sae", n_latents=cfg.steer_latents, alphas=cfg.steer_alphas,
                          calib_alpha=cfg.steer_calib_alpha, kl_budget=cfg.steer_kl_budget,
                          calib_contexts=cfg.steer_calib_contexts, eval_contexts=cfg.steer_eval_contexts,
                          batch_contexts=cfg.splice_batch_contexts, seed=0, device=cfg.device)
        calib, evals = split_contexts(test, sc.calib_contexts, sc.eval_contexts, sc.seed)
        return steer_latents(model, hp, _load(work, v, seed, cfg.device), calib, evals, sc)

    return cached_json(Path(work) / "eval" / "steer" / f"{v.name(seed)}.json", compute)


def check(cfg: GSAEScale) -> None:
    if not cfg.lm.with_grads:
        raise SaekitError("the g-SAE reproduction needs a store with gradients: lm.with_grads must be true")
    if not cfg.seeds or not cfg.ks or not (cfg.norm_betas or cfg.raw_betas):
        raise SaekitError("need at least one seed, one k and one β")
    if any(k > cfg.width for k in cfg.ks):
        raise SaekitError(f"every k must be <= width={cfg.width}")
    if cfg.steps * cfg.batch_size < cfg.dead_window_tokens:
        raise SaekitError("steps x batch_size must cover the dead-latent window (dead_window_tokens)")
    if not set(cfg.steer_seeds) <= set(cfg.seeds):
        raise SaekitError("steer_seeds must be among seeds")
    if not set(cfg.steer_ks) <= set(cfg.ks):
        raise SaekitError("steer_ks must be among ks")
    if cfg.test_contexts < cfg.steer_calib_contexts + cfg.steer_eval_contexts:
        raise SaekitError("the steering contexts are drawn from the test contexts: too few test contexts")


# ---------------------------------------------------------------------------------------------------
# the reproduction


def reproduce(cfg: GSAEScale, run: Run) -> dict[str, Any]:
    check(cfg)
    work = run.work
    lm = _LM(cfg)
    store = ensure_grad_store(cfg, store_path(cfg, work), lm)
    units = cached_json(work / "eval" / "gradient_units.json", lambda: gradient_units(store, cfg.init_samples))
    run.log(f"store {store}: E‖x‖ = {units['mean_act_norm']:.4g}, "
            f"E‖g‖ = {units['mean_grad_norm']:.4g} (model units)")
    seed0 = cfg.seeds[0]

    def train(v: Variant, seed: int) -> dict[str, float]:
        tcfg = train_config(cfg, work, v, seed, units)
        if not (Path(tcfg.out_dir) / "sae" / "model.safetensors").is_file():
            run.log(f"train {v.name(seed)}")
        sae = train_or_resume(tcfg)
        if v.family == "topk":
            return {}
        eff = effective_betas(sae.cfg)
        want = v.beta if v.family == "raw" else eff["beta_norm"]
        got = eff["beta_raw"] if v.family == "raw" else eff["beta_norm"]
        if v.beta is not None and abs(got - want) > 1e-4 * abs(want):
            run.log(f"warning: {v.name(seed)} trained with {v.family} β = {got:.6g}, not {want:g} "
                    "(the trainer's sample differs from the one E‖g‖ was computed on)")
        return eff

    # 1. the β grid at the first seed, 2. validation splice, 3. choice of β per (k, family)
    betas_used: dict[str, dict[str, float]] = {}
    for k in cfg.ks:
        for v in grid(cfg, k):
            betas_used[v.name(seed0)] = train(v, seed0)
    validation: dict[int, dict[str, Any]] = {}
    chosen: dict[tuple[int, str], float] = {}
    for k in cfg.ks:
        members = {v.name(seed0): (v, seed0, v.family != "topk") for v in grid(cfg, k)}
        validation[k] = splice_group(cfg, work, lm, members, "validation", f"k{k}-s{seed0}")
        for fam in FAMILIES:
            cands = [v for v in grid(cfg, k) if v.family == fam]
            if cands:
                chosen[(k, fam)] = select_beta({v.beta: validation[k][v.name(seed0)]["delta_ce"] for v in cands})
    if cfg.pool_families:
        chosen = pool_choices(chosen, {(k, f): validation[k][Variant(f, k, b).name(seed0)]["delta_ce"]
                                       for (k, f), b in chosen.items()})
    changed: dict[str, Any] = {}
    for k in cfg.ks:
        changed.update(selection_change(cfg, work, lm, grid(cfg, k), seed0))
    final = {k: [Variant("topk", k)] + [Variant(f, k, chosen[(k, f)]) for f in FAMILIES if (k, f) in chosen]
             for k in cfg.ks}
    run.log("chosen on validation: " + ", ".join(f"k={k} {f} β={b:g}" for (k, f), b in chosen.items()))

    # 4. every seed of the chosen SAEs; test splice per seed
    for seed in cfg.seeds[1:]:
        for k in cfg.ks:
            for v in final[k]:
                betas_used[v.name(seed)] = train(v, seed)
    test: dict[int, dict[str, Any]] = {}
    for seed in cfg.seeds:
        members: dict[str, tuple[Variant, int, bool]] = {}
        for k in cfg.ks:
            for v in final[k]:
                if v.family == "topk":
                    members[v.name(seed)] = (v, seed, False)
                else:
                    members[v.name(seed) + "+grads"] = (v, seed, True)
                    members[v.name(seed) + "@bare"] = (v, seed, False)
        run.log(f"test splice, seed {seed}: {len(members)} SAEs")
        test[seed] = splice_group(cfg, work, lm, members, "test", f"s{seed}")

    # 5. steering
    steer: dict[str, dict[str, Any]] = {}
    for seed in cfg.steer_seeds:
        for k in (cfg.steer_ks or cfg.ks):
            for v in final[k]:
                run.log(f"steer {v.name(seed)}")
                steer[v.name(seed)] = steer_one(cfg, work, lm, v, seed)

    # 6. analysis and write-up
    dead = {v.name(s): final_metrics(run_dir(work, v, s)).get("dead_fraction")
            for k in cfg.ks for v in final[k] for s in cfg.seeds}
    result = analyse(cfg, units, validation, chosen, final, test, dead, steer, betas_used, changed)
    write_outputs(cfg, run, result)
    return result


def analyse(cfg: GSAEScale, units: dict[str, float], validation: dict[int, dict[str, Any]],
            chosen: dict[tuple[int, str], float], final: dict[int, list[Variant]], test: dict[int, dict[str, Any]],
            dead: dict[str, float | None], steer: dict[str, dict[str, Any]],
            betas_used: dict[str, dict[str, float]], changed: dict[str, Any] | None = None) -> dict[str, Any]:
    from saekit.eval.stats import mean_ci, paired_difference, splice_intervals

    seeds, nb = list(cfg.seeds), cfg.n_boot
    rows: list[dict[str, Any]] = []  # one per (SAE, inference, seed) on test
    summary: list[dict[str, Any]] = []  # one per (k, variant, inference) over seeds
    comparisons: dict[tuple[int, str, str], dict[str, Any]] = {}
    for k in cfg.ks:
        topk = Variant("topk", k)
        for v in final[k]:
            for inference in (["topk"] if v.family == "topk" else ["grads", "bare"]):
                suffix = "" if v.family == "topk" else ("+grads" if inference == "grads" else "@bare")
                per_seed = []
                for s in seeds:
                    r, t = test[s][v.name(s) + suffix], test[s][topk.name(s)]
                    iv = splice_intervals(r, nb, seed=s)
                    row = {"sae": v.name(s) + suffix, "k": k, "family": v.family, "inference": inference,
                           "seed": s, "beta": v.beta, **betas_used.get(v.name(s), {}),
                           "delta_ce": r["delta_ce"], "delta_ce_lo": iv["delta_ce"]["lo"],
                           "delta_ce_hi": iv["delta_ce"]["hi"], "kl": r["kl"], "kl_lo": iv["kl"]["lo"],
                           "kl_hi": iv["kl"]["hi"], "loss_recovered": r["loss_recovered"],
                           "loss_recovered_lo": iv["loss_recovered"]["lo"],
                           "loss_recovered_hi": iv["loss_recovered"]["hi"], "fvu": r.get("fvu"), "l0": r.get("l0"),
                           "dead_test_tokens": r.get("dead_fraction"), "dead_train_window": dead.get(v.name(s)),
                           "ce_clean": r["ce_clean"], "ce_zero": r["ce_zero"], "ce_tokens": r["ce_tokens"]}
                    if v.family != "topk":
                        dce = paired_difference(r, t, "ce_sae", nb, seed=s)
                        dkl = paired_difference(r, t, "kl_sae", nb, seed=s)
                        row.update({"dce_vs_topk": dce["value"], "dce_vs_topk_lo": dce["lo"], "dce_vs_topk_hi": dce["hi"],
                                    "dkl_vs_topk": dkl["value"], "dkl_vs_topk_lo": dkl["lo"], "dkl_vs_topk_hi": dkl["hi"]})
                    rows.append(row)
                    per_seed.append(row)
                srow: dict[str, Any] = {"k": k, "family": v.family, "beta": v.beta, "inference": inference,
                                        "seeds": len(per_seed)}
                for key in ("delta_ce", "kl", "loss_recovered", "fvu", "l0", "dead_train_window"):
                    srow[key] = mean_ci([r[key] for r in per_seed if r.get(key) is not None])
                if v.family != "topk":
                    srow["dce_vs_topk_seeds"] = mean_ci([r["dce_vs_topk"] for r in per_seed])
                    srow["dce_vs_topk_contexts"] = pooled_difference(
                        [test[s][v.name(s) + suffix] for s in seeds], [test[s][topk.name(s)] for s in seeds],
                        "ce_sae", nb)
                    srow["dkl_vs_topk_seeds"] = mean_ci([r["dkl_vs_topk"] for r in per_seed])
                    comparisons[(k, v.family, inference)] = srow
                summary.append(srow)

    # claims
    per_k: dict[str, dict[str, dict[int, dict[str, Any]]]] = {"delta_ce": {}, "dead": {}, "steering": {}}
    steering_rows: list[dict[str, Any]] = []
    groups = claim_groups(cfg, chosen)
    for fam, members in groups.items():
        for claim in per_k:
            per_k[claim][fam] = {}
        for k, v in members.items():
            topk = Variant("topk", k)
            c = comparisons[(k, v.family, "grads")]
            verdict, why = decide([("seed", c["dce_vs_topk_seeds"]["lo"], c["dce_vs_topk_seeds"]["hi"]),
                                   ("context", c["dce_vs_topk_contexts"]["lo"], c["dce_vs_topk_contexts"]["hi"])])
            per_k["delta_ce"][fam][k] = {"verdict": verdict, "why": why, "seeds": c["dce_vs_topk_seeds"],
                                         "contexts": c["dce_vs_topk_contexts"]}
            g_dead = [dead.get(v.name(s)) for s in seeds]
            t_dead = [dead.get(topk.name(s)) for s in seeds]
            if any(x is None for x in [*g_dead, *t_dead]):
                dv, dw, dd = "undecided at this power", "no dead fraction in the metrics", {}
            else:
                dv, dw, dd = dead_verdict(g_dead, t_dead)  # type: ignore[arg-type]
            per_k["dead"][fam][k] = {"verdict": dv, "why": dw, "diff": dd, "gsae": g_dead, "topk": t_dead}
            intervals: list[Interval] = []
            diffs = []
            for s in cfg.steer_seeds:
                ga, ta = steer.get(v.name(s)), steer.get(topk.name(s))
                if ga is None or ta is None:
                    continue
                ge = [r["effect_at_kl"] for r in ga["latents"]]
                te = [r["effect_at_kl"] for r in ta["latents"]]
                d = difference_of_means(ge, te, nb, seed=s)
                diffs.append(d["value"])
                intervals.append((f"latents (seed {s})", d["lo"], d["hi"]))
                for name, res, eff in ((v.name(s), ga, ge), (topk.name(s), ta, te)):
                    if any(r["sae"] == name for r in steering_rows):
                        continue  # TopK's row, already there from the other family
                    ok = [e for e in eff if _finite(e)]
                    steering_rows.append({"sae": name, "k": k, "family": "topk" if res is ta else v.family, "seed": s,
                                          "latents": len(eff), "reached_budget": len(ok),
                                          "mean_effect_at_kl": float(np.mean(ok)) if ok else None,
                                          "median_effect_at_kl": float(np.median(ok)) if ok else None,
                                          "activation_norm": res["activation_norm"], "_effects": eff,
                                          **({"diff_vs_topk": d} if res is ga else {})})
            if cfg.steer_ks and k not in cfg.steer_ks:
                continue  # not steered at this k: the steering claim is decided over steer_ks
            if len(cfg.steer_seeds) > 1:
                sd = mean_ci(diffs)
                intervals.append(("seed", sd["lo"], sd["hi"]))
            sv, sw = decide(intervals, "above") if intervals else ("undecided at this power", "not steered")
            if len(cfg.steer_seeds) == 1 and intervals:
                sw += f"; one training seed steered (seed {cfg.steer_seeds[0]}): latent intervals only"
            per_k["steering"][fam][k] = {"verdict": sv, "why": sw, "diffs": diffs, "intervals": intervals}

    claims: list[dict[str, Any]] = []
    texts = {"delta_ce": "lower spliced ΔCE than TopK at equal k (gradients at inference)",
             "dead": "fewer dead latents than TopK at equal k",
             "steering": "latents steer more effectively than TopK's (effect on target tokens at a KL budget)"}
    for claim, text in texts.items():
        for fam in groups:
            ks = per_k[claim][fam]
            if not ks:
                continue
            overall = combine({k: e["verdict"] for k, e in ks.items()})
            ours = "; ".join(f"k={k}: {_claim_value(claim, e)}" for k, e in ks.items())
            why = "; ".join(f"k={k} {e['verdict']}: {e['why']}" for k, e in ks.items())
            claims.append({"claim": f"{text} — {FAMILY_LABEL[fam]}", "claim_key": claim, "family": fam,
                           "paper": PAPER[claim], "ours": ours, "verdict": overall, "why": why,
                           "per_k": {str(k): {"verdict": e["verdict"], "why": e["why"]} for k, e in ks.items()}})

    val_rows = []
    for k in cfg.ks:
        for v in grid(cfg, k):
            r = validation[k][v.name(cfg.seeds[0])]
            val_rows.append({"k": k, "family": v.family, "beta": v.beta, **betas_used.get(v.name(cfg.seeds[0]), {}),
                             "delta_ce": r["delta_ce"], "kl": r["kl"], "loss_recovered": r["loss_recovered"],
                             "fvu": r.get("fvu"), "chosen": v.family != "topk" and chosen.get((k, v.family)) == v.beta,
                             "selection_changed": (changed or {}).get(v.name(cfg.seeds[0]), {}).get("changed_fraction")})
    return {"units": units, "chosen": {f"k{k}-{f}": b for (k, f), b in chosen.items()}, "validation": val_rows,
            "test": rows, "summary": summary, "steering": steering_rows, "claims": claims,
            "clean": {"ce_clean": rows[0]["ce_clean"], "ce_zero": rows[0]["ce_zero"],
                      "ce_mean_ablation": test[seeds[0]][rows[0]["sae"]]["ce_mean_ablation"],
                      "test_tokens": rows[0]["ce_tokens"]}}


def _claim_value(claim: str, e: dict[str, Any]) -> str:
    if claim == "delta_ce":
        return (f"{fmt_ci(e['seeds'], 4)} (seeds), {fmt_ci(e['contexts'], 4)} (contexts)")
    if claim == "dead":
        g, t = e["gsae"], e["topk"]
        return (f"g-SAE {', '.join(fmt(x, 4) for x in g)} vs TopK {', '.join(fmt(x, 4) for x in t)}; "
                f"diff {fmt_ci(e['diff'], 4)}")
    parts = [f"{fmt(d, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]" for d, (_, lo, hi) in zip(e["diffs"], e["intervals"])]
    return "Δ effect@κ " + ", ".join(parts) if parts else "–"


# ---------------------------------------------------------------------------------------------------
# write-up


def _plt():
    from saekit.report.plots import pyplot

    return pyplot()


def _save(fig: Any, path: Path) -> str:
    from saekit.report.plots import save_figure

    return save_figure(fig, path).name


def _err(ci: dict[str, Any]) -> tuple[float, float, float]:
    v = ci.get("mean", ci.get("value"))
    v = math.nan if v is None else v
    lo, hi = ci.get("lo"), ci.get("hi")
    return v, (v - lo) if _finite(lo) else 0.0, (hi - v) if _finite(hi) else 0.0


def plots(cfg: GSAEScale, out: Path, result: dict[str, Any]) -> list[str]:
    plt = _plt()
    names = []
    styles = {("topk", "topk"): ("k", "-", "TopK"), ("norm", "grads"): ("C0", "-", "g-SAE norm (+grads)"),
              ("norm", "bare"): ("C0", "--", "g-SAE norm (bare, β=0)"),
              ("raw", "grads"): ("C3", "-", "g-SAE raw (+grads)"),
              ("raw", "bare"): ("C3", "--", "g-SAE raw (bare, β=0)")}
    ks = list(cfg.ks)
    # 1. ΔCE, KL, FVU vs k (mean over seeds, t-interval)
    shift = {("topk", "topk"): 0.0, ("norm", "grads"): -0.1, ("norm", "bare"): -0.05, ("raw", "grads"): 0.05,
             ("raw", "bare"): 0.1}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = {"delta_ce": "ΔCE (nats/token)", "kl": "KL(p_clean ‖ p_spliced) (nats/token)", "fvu": "FVU"}
    for metric, ax in zip(("delta_ce", "kl", "fvu"), axes):
        for (fam, inf), (color, ls, label) in styles.items():
            pts = [(r["k"], _err(r[metric])) for r in result["summary"] if r["family"] == fam and r["inference"] == inf]
            if not pts:
                continue
            x = [p[0] * 2 ** shift[(fam, inf)] for p in pts]
            ax.errorbar(x, [p[1][0] for p in pts], yerr=[[p[1][1] for p in pts], [p[1][2] for p in pts]],
                        color=color, ls=ls, marker="s" if inf == "bare" else "o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_title(titles[metric], fontsize=10)
    fig.suptitle("test contexts: mean over training seeds, 95% t-interval", fontsize=10)
    axes[0].legend(fontsize=7)
    names.append(_save(fig, out / "fidelity_vs_k.png"))
    # 2. paired difference to TopK
    fig, ax = plt.subplots(figsize=(6.5, 4))
    offs = {("norm", "grads"): -0.09, ("norm", "bare"): -0.03, ("raw", "grads"): 0.03, ("raw", "bare"): 0.09}
    for (fam, inf), off in offs.items():
        color, ls, label = styles[(fam, inf)]
        pts = [r for r in result["summary"] if r["family"] == fam and r["inference"] == inf]
        if not pts:
            continue
        x = [math.log2(r["k"]) + off for r in pts]
        e = [_err(r["dce_vs_topk_contexts"]) for r in pts]
        ax.errorbar(x, [p[0] for p in e], yerr=[[p[1] for p in e], [p[2] for p in e]], color=color,
                    marker="o" if inf == "grads" else "s", ls="none", capsize=3, label=label)
    ax.axhline(0, color="k", lw=1)
    ax.set_xticks([math.log2(k) for k in ks], [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("ΔCE(g-SAE) − ΔCE(TopK), nats/token")
    ax.set_title("paired difference on test contexts (seed mean, 95% bootstrap)", fontsize=9)
    ax.legend(fontsize=7)
    names.append(_save(fig, out / "dce_vs_topk.png"))
    # 3. validation curves over β (normalised units for both families)
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks):
        vr = [r for r in result["validation"] if r["k"] == k]
        top = [r for r in vr if r["family"] == "topk"]
        if top:
            ax.axhline(top[0]["delta_ce"], color="k", label="TopK")
        for fam, color in (("norm", "C0"), ("raw", "C3")):
            pts = sorted((r["beta_norm"], r["delta_ce"], r["chosen"]) for r in vr if r["family"] == fam)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker="o", label=f"g-SAE {fam}")
                ax.plot([p[0] for p in pts if p[2]], [p[1] for p in pts if p[2]], color=color, marker="*", ms=14, ls="none")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("β in normalised units (raw β × E‖g‖)")
        ax.set_title(f"validation ΔCE, k={k}, seed {cfg.seeds[0]} (★ chosen)", fontsize=9)
    axes[0][0].set_ylabel("ΔCE (nats/token)")
    axes[0][0].legend(fontsize=7)
    names.append(_save(fig, out / "validation_beta.png"))
    # 4. steering ECDFs
    if result["steering"]:
        fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.6), squeeze=False)
        for ax, k in zip(axes[0], ks):
            for r in (r for r in result["steering"] if r["k"] == k):
                eff = sorted(e for e in r["_effects"] if _finite(e)) if "_effects" in r else []
                if eff:
                    ax.plot([eff[0], *eff], [0.0, *((i + 1) / r["latents"] for i in range(len(eff)))],
                            drawstyle="steps-post",
                            color=styles[(r["family"], "topk" if r["family"] == "topk" else "grads")][0],
                            label=f"{r['sae']} (n={r['latents']})")
            ax.set_xlabel(f"effect on targets at KL = {cfg.steer_kl_budget} (nats)")
            ax.set_title(f"steering, k={k}", fontsize=9)
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("fraction of latents (ECDF)")
        names.append(_save(fig, out / "steering.png"))
    return names


def write_outputs(cfg: GSAEScale, run: Run, result: dict[str, Any]) -> None:
    from saekit.eval.splice import clean_json
    from saekit.io import atomic_write_json

    out = run.out
    write_csv(out / "gsae_test.csv", result["test"])
    write_csv(out / "gsae_validation.csv", result["validation"])
    flat = []
    for r in result["summary"]:
        f = {k: v for k, v in r.items() if not isinstance(v, dict)}
        for key, ci in r.items():
            if isinstance(ci, dict):
                f[key] = ci.get("mean", ci.get("value"))
                f[key + "_lo"], f[key + "_hi"] = ci.get("lo"), ci.get("hi")
        flat.append(f)
    write_csv(out / "gsae_summary.csv", flat)
    write_csv(out / "gsae_steering.csv", [{k: v for k, v in r.items() if not k.startswith("_") and k != "diff_vs_topk"}
                                          for r in result["steering"]])
    atomic_write_json(out / "gsae.json", clean_json({"command": run.command, "scale": run.scale, **result}))
    pngs = plots(cfg, out, result)
    write_readme(run, "g-SAE (gradient TopK) vs TopK — Olmo et al. 2024 (arXiv 2411.10397)",
                 sections(cfg, run, result, pngs), cfg)


def sections(cfg: GSAEScale, run: Run, result: dict[str, Any], pngs: list[str]) -> list[str]:
    u, c = result["units"], result["clean"]
    n_grid = len(cfg.ks) * (1 + len(cfg.norm_betas) + len(cfg.raw_betas))
    per_k_gsaes = 1 if cfg.pool_families else (1 if cfg.norm_betas else 0) + (1 if cfg.raw_betas else 0)
    n_more = len(cfg.ks) * (1 + per_k_gsaes) * (len(cfg.seeds) - 1)
    pool_text = (", then per k the better of the two families' choices (the two grids are one score with β in "
                 "different units, so pooling them is one finer grid); only that g-SAE goes on"
                 if cfg.pool_families else "")
    s = []
    s.append(f"""## What this tests

The three claims of Olmo et al. 2024 (*Features that Make a Difference*, arXiv 2411.10397; GPT-2 small,
layer 7), on {cfg.lm.model} `{cfg.lm.hookpoint}`, corpus `{cfg.lm.corpus}`: at equal k a g-SAE
(1) splices with less next-token loss than TopK, (2) has fewer dead latents, (3) has latents that steer
more effectively. The g-SAE picks the k latents with the largest z_i (1 + β |d_i · g|), g = ∂CE/∂x at the
hookpoint (next-token cross-entropy summed over the context, from a clean forward and backward), and
keeps them with their values z_i. The paper uses the gradient at inference too; so does "+grads" here
(`WithGradients`: one clean forward + backward per batch, which uses the next-token labels). "bare" is
the same weights encoded without gradients (β = 0: TopK selection).

### Which β is which

* **norm** (saekit's default): ĝ = g / grad_scale, grad_scale = E‖g‖ in the SAE's normalised input units,
  fitted by the trainer on its initial sample, so |d_i · ĝ| is O(1/√d).
  Grid {', '.join(f'{b:g}' for b in cfg.norm_betas)}.
* **raw** (the paper's score, DESIGN.md): g in the model's own units, unit-norm atoms d_i. Trained as
  `gradient_topk` with `sae.beta` = β_raw · E‖g‖, E‖g‖ computed from exactly the sample the trainer
  fits grad_scale on, so β·|d_i·ĝ| = β_raw·|d_i·g| (checked on every SAE: β_raw = beta / (input_scale ·
  grad_scale) from its cfg.json; the CSVs list `beta_norm` and `beta_raw` of each). Grid
  {', '.join(f'{b:g}' for b in cfg.raw_betas)}.
* On this store E‖x‖ = {fmt(u['mean_act_norm'], 4)}, E‖g‖ = {fmt(u['mean_grad_norm'], 4)} (model units,
  first {u['sample_tokens']} tokens), input_scale s = {fmt(u['input_scale'], 4)}: a raw β equals a normalised
  β of β_raw × {fmt(u['mean_grad_norm'], 4)}. The paper's own β values are for GPT-2's gradients and do not
  transfer; both grids here are ours.

## What was run

1. One store of {cfg.train_tokens:,} training tokens with gradients (`{store_label(cfg, run)}`; fp16
   activations, fp32 gradients), context length {cfg.lm.context_length}.
2. Seed {cfg.seeds[0]}: TopK and one g-SAE per β of both grids at k ∈ {{{', '.join(map(str, cfg.ks))}}}
   ({n_grid} SAEs). All SAEs: {cfg.width} latents, {cfg.steps} steps × {cfg.batch_size} tokens
   ({cfg.steps * cfg.batch_size:,} tokens), Adam lr {cfg.lr:g}, {cfg.warmup_steps} warm-up steps, AuxK with a
   dead threshold of {cfg.auxk_dead_tokens:,} tokens, activations normalised, b_dec at the geometric median; the
   seed sets the initialisation and the data order, so the SAEs of one seed see the same batches.
3. β chosen per (k, family) by the lowest spliced ΔCE (+grads) on the {cfg.validation_contexts} **validation**
   contexts{pool_text}; TopK and the chosen g-SAEs trained at seeds {', '.join(map(str, cfg.seeds[1:])) or '–'} ({n_more} SAEs).
4. Every chosen SAE spliced on the {cfg.test_contexts} **test** contexts (disjoint from validation; {c['test_tokens']:,}
   predicted tokens): CE clean {fmt(c['ce_clean'], 4)}, zero-ablation {fmt(c['ce_zero'], 4)}, mean-ablation
   {fmt(c['ce_mean_ablation'], 4)} nats/token. Dead latents: the trainer's last metrics row (no activation in the
   last {cfg.dead_window_tokens:,} training tokens).
5. Steering (`saekit steer-eval` protocol, `src/saekit/eval/steering.py`): {cfg.steer_latents} latents per SAE for
   TopK and the chosen g-SAEs at k ∈ {{{', '.join(map(str, cfg.steer_ks or cfg.ks))}}}, training seed(s) {', '.join(map(str, cfg.steer_seeds))}; α ∈
   {{{', '.join(f'{a:g}' for a in cfg.steer_alphas)}}} × mean ‖x‖, targets = the 10 tokens promoted most at α =
   {cfg.steer_calib_alpha:g} on {cfg.steer_calib_contexts} calibration contexts, effect read at KL κ =
   {cfg.steer_kl_budget:g} nats/token on {cfg.steer_eval_contexts} measurement contexts (both drawn from the test
   contexts).

Intervals are 95%: "seeds" = Student t over the {len(cfg.seeds)} training seeds of the per-seed paired
difference; "contexts" = paired bootstrap ({cfg.n_boot} resamples) over test contexts of the seed-mean difference,
every SAE and seed resampled with the same contexts; steering = bootstrap over latents (independent per SAE).
A claim is **reproduced** when every interval lies on the claimed side of 0, **not reproduced** when every
interval lies on the other side, **undecided at this power** otherwise; over k it is reproduced only if it is at
every k and not reproduced if it fails at any.
""")
    s.append("## Verdicts\n\n" + claims_table([Claim(x["claim"], x["paper"], x["ours"], x["verdict"], x["why"])
                                                for x in result["claims"]]) + "\n")
    per_k_rows = [(x["claim_key"], FAMILY_LABEL[x["family"]], k, f"**{e['verdict']}**", e["why"])
                  for x in result["claims"] for k, e in x["per_k"].items()]
    s.append("### Per k\n\n" + markdown_table(per_k_rows, ["claim", "g-SAE", "k", "verdict", "why"]) + "\n")
    s.append(fidelity_section(result))
    s.append(validation_section(cfg, result))
    s.append(steering_section(cfg, result))
    if pngs:
        s.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in pngs) + "\n")
    s.append(f"""## Caveats

* The "+grads" splice uses the next-token labels at inference (as the paper does); "bare" does not.
* A training seed sets both the initialisation and the data order (independent streams; `data.store_seed`):
  TopK and the g-SAEs of one seed see the same batches in the same order (the comparison is paired), and the
  seed intervals cover initialisation and data order. grad_scale is fitted on the gradients of the sample's
  own rows, so it, and hence each β, is the same in every seed.
{ladder_edges(result)}* {len(cfg.seeds)} seeds; the β grid and the choice of β use seed {cfg.seeds[0]} only; steering covers seed(s)
  {', '.join(map(str, cfg.steer_seeds))} only (so its intervals do not cover training noise unless several are listed).
* {cfg.train_tokens:,} training tokens is far below the paper's scale; dead-latent dynamics that need many tokens
  cannot show.

Files: `gsae_test.csv` (every SAE × inference × seed on test), `gsae_summary.csv` (seed means with intervals),
`gsae_validation.csv` (the β grid), `gsae_steering.csv`, `gsae.json` (everything, with the verdicts).
""")
    return s


def ladder_edges(result: dict[str, Any]) -> str:
    """A caveat line per k whose chosen β is the ladder's smallest or largest (in normalised units, both
    grids pooled): its optimum may lie outside the ladder. Empty when every choice is interior."""
    lines = []
    for k in sorted({r["k"] for r in result["validation"]}):
        rows = [r for r in result["validation"] if r["k"] == k and r.get("beta_norm") is not None]
        chosen = [r for r in rows if r["chosen"]]
        if len(rows) < 2 or not chosen:
            continue
        b, ladder = chosen[0]["beta_norm"], sorted(r["beta_norm"] for r in rows)
        if b in (ladder[0], ladder[-1]):
            end = "largest" if b == ladder[-1] else "smallest"
            lines.append(f"* k={k}: the chosen β ({b:.4g} normalised) is the ladder's {end} "
                         f"({', '.join(f'{x:.3g}' for x in ladder)}): the best β may lie beyond it.\n")
    return "".join(lines)


def store_label(cfg: GSAEScale, run: Run) -> str:
    return cfg.store or str(Path(run.work) / "store")


def fidelity_section(result: dict[str, Any]) -> str:
    rows = []
    for r in result["summary"]:
        how = "+grads" if r["inference"] == "grads" else "bare"
        label = "TopK" if r["family"] == "topk" else f"{r['family']} β={r['beta']:g} ({how})"
        rows.append((r["k"], label, fmt_ci(r["delta_ce"], 4), fmt_ci(r.get("dce_vs_topk_seeds"), 4),
                     fmt_ci(r.get("dce_vs_topk_contexts"), 4), fmt_ci(r["kl"], 4), fmt_ci(r.get("dkl_vs_topk_seeds"), 4),
                     fmt_ci(r["loss_recovered"], 4), fmt_ci(r["fvu"], 3), fmt(r["l0"].get("mean"), 1),
                     fmt_ci(r["dead_train_window"], 4)))
    return ("## Downstream fidelity and dead latents (test contexts)\n\n" + markdown_table(
        rows, ["k", "SAE", "ΔCE [seeds]", "ΔCE − TopK [seeds]", "ΔCE − TopK [contexts]", "KL [seeds]",
               "KL − TopK [seeds]", "loss recovered", "FVU", "L0", "dead (train window)"]) + "\n")


def validation_section(cfg: GSAEScale, result: dict[str, Any]) -> str:
    rows = [(r["k"], r["family"], fmt(r["beta"], 3) if r["beta"] is not None else "–", fmt(r.get("beta_norm"), 4),
             fmt(r.get("beta_raw"), 4), fmt(r["delta_ce"], 4), fmt(r["kl"], 4), fmt(r["fvu"], 3),
             fmt(100 * r["selection_changed"], 1) + "%" if r.get("selection_changed") is not None else "–",
             "**chosen**" if r["chosen"] else "") for r in result["validation"]]
    return (f"## β chosen on the validation contexts (seed {cfg.seeds[0]}, +grads)\n\n"
            + markdown_table(rows, ["k", "family", "β", "β (normalised units)", "β (raw units)", "ΔCE", "KL", "FVU",
                                    "selection changed by g", ""]) + "\n"
            + f"\n\"selection changed by g\": the share of the latents a g-SAE selects with gradients that the same "
            f"weights would not select at β = 0, on the first {cfg.selection_contexts} test context(s) (how much the "
            "gradient term actually does at that β).\n")


def steering_section(cfg: GSAEScale, result: dict[str, Any]) -> str:
    rows = []
    for r in result["steering"]:
        d = r.get("diff_vs_topk")
        rows.append((r["k"], r["sae"], r["latents"], r["reached_budget"], fmt(r["mean_effect_at_kl"], 3),
                     fmt(r["median_effect_at_kl"], 3), fmt_ci(d, 3) if d else "–"))
    return (f"## Steering (effect on target tokens at KL = {cfg.steer_kl_budget:g} nats/token)\n\n"
            + markdown_table(rows, ["k", "SAE", "latents", "reached κ", "mean effect@κ", "median effect@κ",
                                    "mean − TopK [latents]"]) + "\n")
