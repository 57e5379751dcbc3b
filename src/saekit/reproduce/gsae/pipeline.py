"""The g-SAE reproduction's pipeline: the store with gradients, training, splicing, steering; each step
cached under WORK."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from saekit.errors import SaekitError
from saekit.reproduce.common import Run, cached_json, final_metrics, train_or_resume
from saekit.reproduce.gsae.config import (FAMILIES, GSAEScale, Variant, check, effective_betas, gradient_units, grid,
                                          run_dir, store_path, train_config)
from saekit.reproduce.gsae.verdicts import analyse, pool_choices, select_beta
from saekit.reproduce.gsae.report import write_outputs


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
