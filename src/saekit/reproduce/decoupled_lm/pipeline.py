"""The decoupled-lm pipeline: the frozen SAE, hyperparameters on validation, test chunks; every step
cached under WORK."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.reproduce.common import choose, log_l0
from saekit.reproduce.decoupled_lm.config import DecoupledLMScale, ITERATIVE, sae_train_config, validate
from saekit.reproduce.decoupled_lm.methods import Encoders, Spec, activation_sums, context_sums, linear_part
from saekit.reproduce.decoupled_lm.report import write_results
from saekit.reproduce.decoupled_lm.search import search
from saekit.reproduce.decoupled_lm.verdicts import analyse


# ---------------------------------------------------------------------------------------------------------
# the pipeline

def reproduce(cfg: DecoupledLMScale, run: Any) -> Path:
    """Run (or continue) the reproduction and write run.out/README.md."""
    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.data.models import load_model
    from saekit.inference.lm import FrozenDictionary
    from saekit.reproduce import common, gated

    validate(cfg)
    gcfg = gated.SCALES[cfg.gated_scale]
    if cfg.sae_width:
        gcfg = replace(gcfg, gated_width=cfg.sae_width)
    gwork = Path(cfg.gated_work) if cfg.gated_work else run.work / "gated"
    model, tokenizer = load_model(gcfg.lm.model, device=gcfg.lm.device, dtype=gcfg.lm.dtype)
    store = gated.prepare_store(gcfg, gwork, model, tokenizer, lambda message: _log(run, message))
    tc = sae_train_config(cfg, gcfg, gwork, run.work)
    _log(run, f"SAE {tc.out_dir}")
    sae = common.train_or_resume(tc).eval().requires_grad_(False).to(cfg.device)
    D = FrozenDictionary.from_sae(sae)
    sae_id = _fingerprint(Path(tc.out_dir) / "sae" / "model.safetensors")
    work = run.work / sae_id
    val_ctxs, test_ctxs = common.held_out_split(tokenizer, gcfg.lm, cfg.validation_contexts, cfg.test_contexts)
    n_val_tokens = sum(int(c.mask.sum()) for c in val_ctxs)
    enc = Encoders(cfg, sae, D)
    lazy_val = _Lazy(lambda: D.scale(_store_rows(store, "eval", n_val_tokens).to(cfg.device)))
    lazy_train = _Lazy(lambda: D.scale(_strided_rows(store, "train", cfg.mlp_train_tokens).to(cfg.device)))

    selection = _select(cfg, run, work / f"select-{_digest([n_val_tokens, cfg.validation_contexts])}", enc,
                        lazy_val, lazy_train, work)
    specs = _specs(cfg, selection)
    for s in specs:  # every MLP on test: trained (or loaded) at its chosen λ and seed
        if s.family.startswith("mlp"):
            _mlp(cfg, run, work, enc, lazy_train, s.family, float(s.param), int(s.seed))
    hp = resolve_hookpoint(model, gcfg.lm.hookpoint)
    chunks = _test(cfg, run, work, enc, specs, model, hp, test_ctxs)
    results = analyse(cfg, specs, chunks)
    results["store_train_tokens"] = common.store_tokens(store, "train")
    return write_results(cfg, run, gcfg, tc, store, specs, selection, results, n_val_tokens)


def _log(run: Any, message: str) -> None:
    started = getattr(run, "started", None)
    run.log(f"[{time.time() - started:.0f} s] {message}" if started else message)


class _Lazy:
    """A value computed on first use (validation / training rows are only read when a step needs them)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make, self.value, self.done = make, None, False

    def __call__(self) -> Any:
        if not self.done:
            self.value, self.done = self.make(), True
        return self.value


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sae-{h.hexdigest()[:12]}"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _store_rows(store: Path, split: str, n: int) -> Tensor:
    """The first ``n`` rows of a store split (the validation contexts' activations, as the Gated reproduction)."""
    from saekit.data.store import StoreSource, store_split_path

    src = StoreSource(store_split_path(store, split))
    if src.total_tokens < n:
        raise SaekitError(f"the {split} split of {store} holds {src.total_tokens} rows; the validation contexts "
                          f"need {n} (fewer validation_contexts, or a bigger store)")
    return torch.cat([b.acts for b in src.iter_all(n)])[:n].float()


def _strided_rows(store: Path, split: str, n: int) -> Tensor:
    """``n`` rows evenly strided over a whole store split (the MLPs' training sample)."""
    from saekit.data.store import StoreSource, store_split_path

    src = StoreSource(store_split_path(store, split))
    total = src.total_tokens
    wanted = torch.linspace(0, total - 1, min(n, total)).round().long() if n < total else torch.arange(total)
    parts, start = [], 0
    for batch in src.iter_all():
        stop = start + batch.acts.shape[0]
        inside = wanted[(wanted >= start) & (wanted < stop)] - start
        if inside.numel():
            parts.append(batch.acts[inside].float())
        start = stop
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------------------
# step 2: hyperparameters on validation

def _select(cfg: DecoupledLMScale, run: Any, folder: Path, enc: Encoders, xval: _Lazy, xtrain: _Lazy,
            work: Path) -> dict[str, Any]:
    """Targets from the SAE's validation L0, then each family's k / λ per target (cached under ``folder``;
    the MLPs' weights under ``work``)."""
    from saekit.reproduce.common import cached_json

    sae_l0 = cached_json(folder / "sae.json", lambda: {"l0": enc.l0(Spec("sae"), xval())})["l0"]
    if not sae_l0 > 0:
        raise SaekitError(f"the SAE fires on no validation token (L0 {sae_l0}); choose another l1")
    targets = {r: r * sae_l0 for r in cfg.l0_ratios}
    out: dict[str, Any] = {"sae_l0": sae_l0, "targets": {str(r): t for r, t in targets.items()}, "families": {}}
    kmax = min(enc.n, enc.d)  # more atoms than dimensions is never needed (and OMP's solve turns singular)
    setups = {  # family -> (ratios, start(target), integer, slope, bounds, spec)
        "omp": (cfg.l0_ratios, lambda t: t, True, 1.0, (1, kmax), lambda p: Spec("omp", p)),
        "mp": (cfg.l0_ratios, lambda t: t, True, 1.0, (1, kmax), lambda p: Spec("mp", p)),
        "fista+refit": (cfg.l0_ratios, lambda t: cfg.lambda_start, False, -1.0, (1e-4, 1e4),
                        lambda p: Spec("fista+refit", p)),
        "sae+ito": ((1.0,), lambda t: cfg.lambda_start, False, -1.0, (1e-4, 1e4), lambda p: Spec("sae+ito", p)),
    }
    for fam, (ratios, start, integer, slope, bounds, make) in setups.items():
        key = _digest([fam, cfg.search_evals, cfg.match_tolerance, cfg.fista_iters, cfg.fista_tol, cfg.ito_iters,
                       cfg.refit_iters, cfg.refit_tol, cfg.lambda_start, list(ratios), sae_l0])

        def compute(fam: str = fam, ratios: tuple = ratios, start: Callable = start, integer: bool = integer,
                    slope: float = slope, bounds: tuple = bounds, make: Callable = make) -> dict[str, Any]:
            t0 = time.perf_counter()
            pts: dict[float, float] = {}
            chosen = {}
            for r in ratios:
                pts = search(lambda p: enc.l0(make(p), xval()), targets[r], start(targets[r]),
                             evals=cfg.search_evals, tolerance=cfg.match_tolerance, integer=integer, slope=slope,
                             bounds=bounds, points=pts)
                chosen[str(r)] = choose(pts, targets[r])
            _log(run, f"validation: {fam}'s {'k' if integer else 'λ'} for L0 targets "
                    f"{[round(targets[r], 1) for r in ratios]}: {len(pts)} evaluations, "
                    f"{time.perf_counter() - t0:.0f} s")
            return {"points": [[p, l0] for p, l0 in sorted(pts.items())], "chosen": chosen}

        out["families"][fam] = cached_json(folder / f"{fam}-{key}.json", compute)
    out["families"]["mlp-sae"] = _select_mlp(cfg, run, folder, work, enc, xval, xtrain, targets[1.0], out)
    return out


def _mlp_key(cfg: DecoupledLMScale, family: str, lam: float, seed: int) -> str:
    return _digest([family, float(lam), seed, cfg.mlp_steps, cfg.mlp_batch, cfg.mlp_lr, cfg.mlp_train_tokens,
                    cfg.mlp_hidden if family == "mlp" else "2d"])


def _mlp(cfg: DecoupledLMScale, run: Any, work: Path, enc: Encoders, xtrain: _Lazy, family: str, lam: float,
         seed: int) -> dict[str, Any]:
    """Train (or load) one MLP encoder on the frozen dictionary; registers it with ``enc``; returns its info."""
    from saekit.inference.mlp import MLPEncoder, TrainSettings, train_frozen_dictionary
    from saekit.io import atomic_save_tensors, atomic_write_json, load_tensors, read_json

    lam = float(lam)
    folder = work / "mlp" / f"{family}-l1_{lam:.4g}-s{seed}-{_mlp_key(cfg, family, lam, seed)}"
    d, n = enc.d, enc.n
    hidden = [2 * d] if family == "mlp-sae" else [cfg.mlp_hidden]
    torch.manual_seed(seed)
    mlp = MLPEncoder(d, n, hidden).to(enc.D.W_dec.device)
    if (folder / "info.json").is_file() and (folder / "model.safetensors").is_file():
        mlp.load_state_dict(load_tensors(folder / "model.safetensors"))
        info = read_json(folder / "info.json")
    else:
        if family == "mlp-sae":
            mlp.start_from_linear(*linear_part(enc.sae))
        x = xtrain()
        t0 = time.perf_counter()
        res = train_frozen_dictionary(mlp, x, enc.D.W_dec, enc.D.b_dec, TrainSettings(
            steps=cfg.mlp_steps, lr=cfg.mlp_lr, batch_size=cfg.mlp_batch, l1=lam, seed=seed))
        _log(run, f"trained {family} λ={lam:.4g} seed {seed} ({cfg.mlp_steps} steps x {cfg.mlp_batch}): "
                f"{time.perf_counter() - t0:.0f} s")
        info = {"family": family, "lambda": lam, "seed": seed, "widths": mlp.widths, "final_loss": res.final_loss,
                "samples_seen": res.samples_seen, "train_flops": res.train_flops,
                "seconds": time.perf_counter() - t0}
        atomic_save_tensors(folder / "model.safetensors", {k: v.detach() for k, v in mlp.state_dict().items()})
        atomic_write_json(folder / "info.json", info)
    mlp.eval().requires_grad_(False)
    enc.mlps[(family, lam, seed)] = mlp
    return info


def _select_mlp(cfg: DecoupledLMScale, run: Any, folder: Path, work: Path, enc: Encoders, xval: _Lazy,
                xtrain: _Lazy, target: float, sel: dict[str, Any]) -> dict[str, Any]:
    """The SAE-started MLP's λ: trainings at the first seed, the first at FISTA+refit's matched λ, the next
    along FISTA's validation slope (then interpolated); the λ whose validation L0 is nearest the target."""
    from saekit.reproduce.common import cached_json

    fista = sel["families"]["fista+refit"]
    start = float(fista["chosen"]["1.0"])
    pts = {float(p): float(l0) for p, l0 in fista["points"]}
    slope = -1.0
    if len(pts) >= 2:  # FISTA's local log-log slope near the target, the first guess for the MLP's
        near = sorted(pts, key=lambda p: abs(log_l0(pts[p]) - math.log(target)))[:2]
        if near[0] != near[1] and pts[near[0]] != pts[near[1]] and min(pts[near[0]], pts[near[1]]) > 0:
            s = (log_l0(pts[near[0]]) - log_l0(pts[near[1]])) / (math.log(near[0]) - math.log(near[1]))
            slope = s if s < 0 else slope
    seed = cfg.mlp_seeds[0]
    key = _digest([_mlp_key(cfg, "mlp-sae", 0.0, seed), cfg.mlp_search_trainings, cfg.match_tolerance, target, start,
                   slope])

    def measure(lam: float) -> float:
        _mlp(cfg, run, work, enc, xtrain, "mlp-sae", lam, seed)
        return enc.l0(Spec("mlp-sae", float(lam), seed), xval())

    def compute() -> dict[str, Any]:
        found = search(measure, target, start, evals=cfg.mlp_search_trainings, tolerance=cfg.match_tolerance,
                       slope=slope)
        return {"points": [[p, l0] for p, l0 in sorted(found.items())], "chosen": {"1.0": choose(found, target)},
                "slope_from_fista": slope}

    return cached_json(folder / f"mlp-sae-{key}.json", compute)


def _specs(cfg: DecoupledLMScale, sel: dict[str, Any]) -> list[Spec]:
    """Every method on test: at ratio 1 the spliced ones (and plain FISTA, MP: FVU only), other ratios on
    the frontier contexts. A parameter chosen for several ratios is one method."""
    specs: dict[str, Spec] = {}

    def add(spec: Spec) -> None:
        old = specs.get(spec.name)
        if old is None:
            specs[spec.name] = spec
        else:  # the same method reached from two targets: spliced/full-test wins
            specs[spec.name] = Spec(old.family, old.param, old.seed, old.spliced or spec.spliced,
                                    old.frontier and spec.frontier, tuple(sorted(set(old.targets + spec.targets))))

    add(Spec("sae", spliced=True, targets=(1.0,)))
    add(Spec("sae+refit", spliced=True, targets=(1.0,)))
    fams = sel["families"]
    for r in cfg.l0_ratios:
        one = r == 1.0
        for fam in ("omp", "mp", "fista+refit"):
            p = float(fams[fam]["chosen"][str(r)])
            # MP is frontier-only (FVU on the frontier contexts) at every ratio: too costly for all of test
            add(Spec(fam, p, spliced=one and fam in ITERATIVE, frontier=not one or fam == "mp", targets=(r,)))
            if fam == "fista+refit":  # plain FISTA at the same λ shares the solve: FVU only
                add(Spec("fista", p, frontier=not one, targets=(r,)))
        if one:
            add(Spec("sae+ito", float(fams["sae+ito"]["chosen"]["1.0"]), spliced=True, targets=(1.0,)))
    lam = float(fams["mlp-sae"]["chosen"]["1.0"])
    for s in cfg.mlp_seeds:
        add(Spec("mlp-sae", lam, s, spliced=True, targets=(1.0,)))
    for s in cfg.mlp_random_seeds:  # FVU only: one seed at the cpu scale
        add(Spec("mlp", lam, s, targets=(1.0,)))
    return list(specs.values())


# ---------------------------------------------------------------------------------------------------------
# step 3: test chunks

class _Replay:
    """A reconstructor that returns precomputed x̂ batch by batch, checking it is fed the captured rows."""

    def __init__(self, inputs: list[Tensor], outputs: list[Tensor], name: str) -> None:
        self.inputs, self.outputs, self.name, self.i = inputs, outputs, name, 0

    def __call__(self, x: Tensor) -> tuple[Tensor, None]:
        i = self.i
        self.i += 1
        if i >= len(self.inputs) or x.shape != self.inputs[i].shape or not torch.allclose(
                x, self.inputs[i].to(x.device), rtol=1e-4, atol=1e-3):
            raise SaekitError(f"splice of {self.name!r}: batch {i} is not the captured activations")
        return self.outputs[i].to(x.device), None


def _test(cfg: DecoupledLMScale, run: Any, work: Path, enc: Encoders, specs: list[Spec], model: Any, hp: Any,
          ctxs: list[Any]) -> list[dict[str, Any]]:
    from saekit.reproduce.common import cached_json

    key = _digest([[asdict(s) for s in specs], [c.index for c in ctxs], cfg.splice_batch_contexts, cfg.chunk_contexts,
                   cfg.frontier_contexts, cfg.fista_iters, cfg.fista_tol, cfg.ito_iters, cfg.refit_iters,
                   cfg.refit_tol])
    out = []
    for c0 in range(0, len(ctxs), cfg.chunk_contexts):
        chunk = ctxs[c0:c0 + cfg.chunk_contexts]
        path = work / "test" / key / f"chunk-{c0 // cfg.chunk_contexts:03d}.json"
        out.append(cached_json(path, lambda c0=c0, chunk=chunk: _chunk(cfg, run, enc, specs, model, hp, chunk, c0,
                                                                         len(ctxs))))
    return out


@torch.no_grad()
def _chunk(cfg: DecoupledLMScale, run: Any, enc: Encoders, specs: list[Spec], model: Any, hp: Any,
           chunk: list[Any], first: int, total: int) -> dict[str, Any]:
    """One chunk of test contexts: capture, encode every method, splice the spliced ones."""
    from saekit.data.hookpoints import run_captured
    from saekit.data.text import collate
    from saekit.eval.splice import batches_of, evaluate_splice

    t0 = time.perf_counter()
    device = next(model.parameters()).device
    groups = list(batches_of(chunk, cfg.splice_batch_contexts))
    inputs, counts = [], []
    for g in groups:
        ids, attn, mask = collate(g)
        acts = run_captured(model, hp, ids.to(device), attn.to(device))
        inputs.append(acts[mask.to(device)].float())
        counts.append([int(m.sum()) for m in mask])
    all_counts = [n for cs in counts for n in cs]
    acts = activation_sums(torch.cat(inputs), all_counts)
    in_frontier = [first + i * cfg.splice_batch_contexts < cfg.frontier_contexts for i in range(len(groups))]
    stats: dict[str, dict[str, Any]] = {}
    recon: dict[str, list[Tensor]] = {}
    active = [s for s in specs if not s.frontier or any(in_frontier)]
    for s in active:
        stats[s.name] = {"sums": {k: [] for k in ("n", "sse", "l0", "xh", "hh")}, "flops": 0.0, "rows": 0,
                         "iters": [], "converged": True, "seconds": 0.0, "fired": set(), "contexts": []}
    for i, (x, cs) in enumerate(zip(inputs, counts)):
        xs = enc.D.scale(x.to(enc.D.W_dec.device))
        memo: dict = {}
        for s in active:
            if s.frontier and not in_frontier[i]:
                continue
            st = stats[s.name]
            t = time.perf_counter()
            codes, fl, it, ok = enc.encode(s, xs, memo)
            st["seconds"] += time.perf_counter() - t
            x_hat = enc.D.decode(codes).to(x.device)
            sums = context_sums(x, x_hat, codes, cs)
            for k, v in sums.items():
                st["sums"][k].extend(v)
            st["contexts"].extend(range(first + i * cfg.splice_batch_contexts,
                                        first + i * cfg.splice_batch_contexts + len(cs)))
            st["flops"] += fl * x.shape[0]
            st["rows"] += x.shape[0]
            if it is not None:
                st["iters"].append(it)
            st["converged"] = st["converged"] and ok
            st["fired"].update((codes > 0).any(0).nonzero().flatten().tolist())
            if s.spliced:
                recon.setdefault(s.name, []).append(x_hat.float().cpu())
    for st in stats.values():
        st["fired"] = sorted(st["fired"])
    spliced = [s.name for s in specs if s.spliced]
    t1 = time.perf_counter()
    results = evaluate_splice(model, hp, {name: _Replay(inputs, recon[name], name) for name in spliced}, chunk,
                              cfg.splice_batch_contexts, n_latents=dict.fromkeys(spliced, 1), per_context=True)
    _log(run, f"test contexts {first}–{first + len(chunk) - 1} of {total}: {len(active)} methods encoded in "
            f"{t1 - t0:.0f} s, {len(spliced)} spliced in {time.perf_counter() - t1:.0f} s")
    splice = {name: results[name]["per_context"] for name in spliced}
    return {"first": first, "contexts": len(chunk), "activations": acts, "methods": stats, "splice": splice,
            "seconds": time.perf_counter() - t0}
