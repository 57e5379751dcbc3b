"""g-SAE (gradient TopK, Olmo et al. 2024) vs TopK at equal k on one activation store with LM gradients.

Phases (each skips what is already on disk under --work, so the script can be re-run and resumed):
  train   one TopK SAE per k and one g-SAE per (k, β), same width, steps, batch, lr, seed and store
  recon   FVU, L0 and dead fraction on the whole eval split of the store (g-SAE: with its stored
          gradients and with β = 0, i.e. plain TopK selection on the same weights)
  splice  CE clean / spliced / zero / mean ablation, ΔCE, KL, loss recovered on held-out contexts, all SAEs
          in one pass (g-SAE: `WithGradients` = clean LM gradient at inference, and bare = β = 0)
  steer   `saekit steer-eval` protocol (src/saekit/eval/steering.py) for the SAEs named in --steer
  report  results/gsae_vs_topk.json + plots under results/gsae_vs_topk/

Example (what results/gsae_vs_topk.md reports):
  saekit cache --grads --out runs/gsae/store --split eval --max-tokens 12288 --shard-tokens 4096
  saekit cache --grads --out runs/gsae/store --split train --max-tokens 32512 --shard-tokens 4096
  python benchmarks/gsae_vs_topk.py --ks 16 --phases train &  python benchmarks/gsae_vs_topk.py --ks 32 --phases train
  python benchmarks/gsae_vs_topk.py --phases recon splice     (in parallel with the two --phases steer runs below)
  python benchmarks/gsae_vs_topk.py --phases steer --steer topk_k32
  python benchmarks/gsae_vs_topk.py --phases steer --steer gsae_k32_b1
  python benchmarks/gsae_vs_topk.py --ks 16 32 --betas 8 32 --tag _bigbeta --phases train recon splice
  python benchmarks/gsae_vs_topk.py --betas 0.5 1 2 8 32 --phases report
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from saekit.config import DataConfig, SAEConfig, TrainConfig
from saekit.data.store import StoreSource, store_split_path
from saekit.errors import SaekitError
from saekit.eval.metrics import ReconstructionStats
from saekit.eval.splice import WithGradients, clean_json, evaluate_splice, held_out_contexts, lm_settings
from saekit.io import atomic_write_json
from saekit.sae import load


def names(args) -> dict[str, dict]:
    out = {}
    for k in args.ks:
        out[f"topk_k{k}"] = {"architecture": "topk", "k": k, "beta": None}
        for b in args.betas:
            out[f"gsae_k{k}_b{b:g}"] = {"architecture": "gradient_topk", "k": k, "beta": b}
    return out


def train_all(args) -> None:
    from saekit.train.trainer import train

    for name, spec in names(args).items():
        run = Path(args.work) / name
        if (run / "sae" / "cfg.json").is_file():
            continue
        extra = {"beta": spec["beta"]} if spec["beta"] is not None else {}
        sae = SAEConfig(architecture=spec["architecture"], n_latents=args.width, k=spec["k"],
                        dead_tokens=args.dead_tokens, **extra)
        cfg = TrainConfig(sae=sae, data=DataConfig(source="store", store=args.store), steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup, log_every=20,
                          ckpt_every=0, dead_window_tokens=args.dead_tokens, out_dir=str(run), seed=args.seed,
                          progress=False)
        print(f"train {name}", flush=True)
        train(cfg)


def sae_dir(args, name: str) -> Path:
    return Path(args.work) / name / "sae"


@torch.no_grad()
def recon_all(args) -> dict:
    path = Path(args.work) / f"recon{args.tag}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    reader = StoreSource(store_split_path(args.store, "eval"))
    if not reader.has_grads:
        raise SaekitError("the eval split has no gradients: cache it with `saekit cache --grads`")
    parts = list(reader.iter_all())
    acts, grads = torch.cat([b.acts for b in parts]), torch.cat([b.grads for b in parts])
    for name, spec in names(args).items():
        variants = [("", False)] if spec["beta"] is None else [("+grads", True), ("@beta0", False)]
        for suffix, use in variants:
            if name + suffix in done:
                continue
            sae = load(sae_dir(args, name))
            stats = ReconstructionStats(sae.cfg.n_latents)
            for i in range(0, acts.shape[0], 4096):
                x = acts[i:i + 4096]
                x_hat, f = sae(x, grads[i:i + 4096] if use else None)
                stats.update(x, x_hat, f)
            done[name + suffix] = stats.summary()
            atomic_write_json(path, clean_json(done))
    return done


def splice_all(args) -> dict:
    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.data.models import load_model

    path = Path(args.work) / f"splice{args.tag}.json"
    if path.is_file():
        return json.loads(path.read_text())
    lm = lm_settings(DataConfig(source="store", store=args.store))
    model, tok = load_model(lm.model, dtype=lm.dtype)
    hp = resolve_hookpoint(model, lm.hookpoint)
    saes = {}
    for name, spec in names(args).items():
        sae = load(sae_dir(args, name))
        if spec["beta"] is None:
            saes[name] = sae
        else:
            saes[name + "+grads"], saes[name + "@beta0"] = WithGradients(sae), sae
    ctxs = held_out_contexts(tok, lm.corpus, lm.text_column, lm.context_length, lm.eval_fraction, args.splice_contexts)
    # chunks of contexts evaluated separately, so paired differences between SAEs get a standard error
    step = args.splice_batch_contexts
    chunks = [evaluate_splice(model, hp, saes, ctxs[i:i + step], step) for i in range(0, len(ctxs), step)]
    res = {name: aggregate([c[name] for c in chunks]) for name in saes}
    atomic_write_json(path, clean_json(res))
    return res


def aggregate(parts: list[dict]) -> dict:
    """Token-weighted CE/KL over chunks; ΔCE, loss recovered from the pooled CEs; per-chunk ΔCE and KL kept."""
    n = sum(p["ce_tokens"] for p in parts)
    mean = {k: sum(p[k] * p["ce_tokens"] for p in parts) / n
            for k in ("ce_clean", "ce_sae", "ce_zero", "ce_mean_ablation", "kl", "kl_zero", "kl_mean_ablation", "fvu")}
    return {"ce_tokens": n, **mean, "delta_ce": mean["ce_sae"] - mean["ce_clean"],
            "loss_recovered": (mean["ce_zero"] - mean["ce_sae"]) / (mean["ce_zero"] - mean["ce_clean"]),
            "loss_recovered_mean_ablation": (mean["ce_mean_ablation"] - mean["ce_sae"]) / (mean["ce_mean_ablation"] - mean["ce_clean"]),
            "chunk_tokens": [p["ce_tokens"] for p in parts], "chunk_delta_ce": [p["delta_ce"] for p in parts],
            "chunk_kl": [p["kl"] for p in parts]}


def steer_all(args) -> None:
    from saekit.eval.steering import main as steer_main

    for name in args.steer:
        out = Path(args.work) / name / "steer.json"
        if out.is_file():
            continue
        print(f"steer {name}", flush=True)
        steer_main([str(sae_dir(args, name)), "--n-latents", str(args.steer_latents), "--alphas", *map(str, args.alphas),
                    "--calib-alpha", str(args.calib_alpha), "--kl-budget", str(args.kl_budget),
                    "--calib-contexts", str(args.calib_contexts), "--eval-contexts", str(args.eval_contexts),
                    "--out", str(out), "data:data-config", "--data.source", "store", "--data.store", args.store])


def report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work, figs = Path(args.work), Path(args.out) / "gsae_vs_topk"
    figs.mkdir(parents=True, exist_ok=True)
    recon, splice = {}, {}  # every recon*.json / splice*.json under --work (runs with different --tag)
    for p in sorted(work.glob("recon*.json")):
        recon.update(json.loads(p.read_text()))
    for p in sorted(work.glob("splice*.json")):
        part = json.loads(p.read_text())
        base = {"ce_clean", "ce_zero", "ce_mean_ablation"}
        if splice and any(abs(next(iter(splice.values()))[c] - next(iter(part.values()))[c]) > 1e-6 for c in base):
            raise SaekitError(f"{p} was measured on other contexts than the other splice files")
        splice.update(part)
    train_dead = {}
    for name in names(args):
        rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines() if line]
        train_dead[name] = rows[-1].get("dead_fraction")
    table = []
    for key in splice:
        base = key.split("+")[0].split("@")[0]
        s, r = splice[key], recon.get(key, {})
        table.append({"sae": key, "k": names(args)[base]["k"], "beta": names(args)[base]["beta"],
                      "inference": "grads" if key.endswith("+grads") else ("beta=0" if "@" in key else "topk"),
                      "delta_ce": s["delta_ce"], "kl": s["kl"], "loss_recovered": s["loss_recovered"],
                      "fvu_splice": s["fvu"], "fvu_eval_store": r.get("fvu"), "l0": r.get("l0"),
                      "dead_eval_store": r.get("dead_fraction"), "dead_train_window": train_dead[base],
                      "ce_clean": s["ce_clean"], "ce_zero": s["ce_zero"], "ce_mean": s["ce_mean_ablation"],
                      "chunk_delta_ce": s.get("chunk_delta_ce")})
    steer = {}
    for name in args.steer:
        p = work / name / "steer.json"
        if p.is_file():
            steer[name] = json.loads(p.read_text())
    atomic_write_json(Path(args.out) / "gsae_vs_topk.json", clean_json({"table": table, "steer": steer,
                                                                         "args": vars(args)}))
    print(markdown(table, steer, args))
    # plot 1: ΔCE and KL vs k, per variant
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for metric, ax in zip(("delta_ce", "kl", "fvu_eval_store"), axes):
        variants = sorted({(r["sae"].split("_k")[0], r["beta"], r["inference"]) for r in table}, key=str)
        for arch, beta, inf in variants:
            pts = sorted((r["k"], r[metric]) for r in table
                         if r["sae"].split("_k")[0] == arch and r["beta"] == beta and r["inference"] == inf)
            label = "TopK" if arch == "topk" else f"g-SAE β={beta:g} ({inf})"
            style = {"color": "k", "lw": 2.5, "zorder": 5} if arch == "topk" else {}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls="-" if inf != "beta=0" else "--",
                    label=label, **style)
        ax.set_xlabel("k")
        ax.set_title(metric)
        ax.set_xticks(args.ks)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figs / "fidelity_vs_k.png", dpi=120)
    plt.close(fig)
    if steer:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, res in steer.items():
            vals = sorted(v for v in (r["effect_at_kl"] for r in res["latents"]) if v is not None and math.isfinite(v))
            if vals:
                axes[0].plot(vals, [(i + 1) / len(res["latents"]) for i in range(len(vals))], drawstyle="steps-post",
                             label=f"{name} (n={len(res['latents'])})")
            kl = torch.tensor([r["kl"] for r in res["latents"]]).median(0).values
            eff = torch.tensor([r["effect"] for r in res["latents"]]).median(0).values
            axes[1].plot(kl, eff, marker="o", label=name)
        axes[0].set_xlabel(f"effect on target tokens at KL = {args.kl_budget} nats (nats)")
        axes[0].set_ylabel("fraction of sampled latents (ECDF)")
        axes[1].set_xlabel("median KL(p_clean ‖ p_steered) (nats/token)")
        axes[1].set_ylabel("median Δ log p(targets) (nats)")
        axes[1].set_xscale("log")
        for ax in axes:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figs / "steering.png", dpi=120)
        plt.close(fig)


def _f(v) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def markdown(table: list[dict], steer: dict, args) -> str:
    """The tables of results/gsae_vs_topk.md."""
    cols = ["sae", "inference", "l0", "delta_ce", "kl", "loss_recovered", "fvu_eval_store", "dead_eval_store",
            "dead_train_window"]
    topk = {r["k"]: r for r in table if r["inference"] == "topk"}
    for r in table:  # paired ΔCE difference to TopK at the same k, mean ± SE over context chunks
        base = topk.get(r["k"])
        if base is not None and r["chunk_delta_ce"] and r is not base:
            d = torch.tensor(r["chunk_delta_ce"]) - torch.tensor(base["chunk_delta_ce"])
            r["dce_vs_topk"] = f"{d.mean().item():+.4f} ± {d.std().item() / math.sqrt(len(d)):.4f}"
    cols.insert(4, "dce_vs_topk")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_f(r.get(c)) for c in cols) + " |" for r in sorted(table, key=lambda r: (r["k"], r["sae"]))]
    r0 = table[0]
    lines.append(f"\nCE clean {r0['ce_clean']:.4f}, zero-ablation {r0['ce_zero']:.4f}, mean-ablation {r0['ce_mean']:.4f}")
    if steer:
        from scipy.stats import mannwhitneyu

        lines += ["", "| sae | latents | reached κ | median effect@κ | mean effect@κ | "
                  + " | ".join(f"median KL α={a:g}" for a in args.alphas) + " | "
                  + " | ".join(f"median effect α={a:g}" for a in args.alphas) + " |",
                  "|" + "---|" * (5 + 2 * len(args.alphas))]
        vals = {}
        for name, res in steer.items():
            v = [r["effect_at_kl"] for r in res["latents"] if r["effect_at_kl"] is not None]
            vals[name] = v
            kl = torch.tensor([r["kl"] for r in res["latents"]]).median(0).values.tolist()
            eff = torch.tensor([r["effect"] for r in res["latents"]]).median(0).values.tolist()
            sm = res["summary"]
            lines.append(f"| {name} | {sm['n_latents']} | {sm['n_reached_budget']} | {_f(sm['median_effect_at_kl'])} | "
                         f"{_f(sm['mean_effect_at_kl'])} | " + " | ".join(_f(x) for x in kl) + " | "
                         + " | ".join(_f(x) for x in eff) + " |")
        if len(vals) == 2 and all(len(v) > 0 for v in vals.values()):
            a, b = vals.values()
            lines.append(f"\nMann-Whitney U (two-sided) on effect@κ, {' vs '.join(vals)}: "
                         f"p = {mannwhitneyu(a, b).pvalue:.3g}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="runs/gsae/store")
    p.add_argument("--work", default="runs/gsae/sweep")
    p.add_argument("--out", default="results")
    p.add_argument("--ks", type=int, nargs="+", default=[16, 32])
    p.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 8.0, 32.0])
    p.add_argument("--width", type=int, default=2304)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--dead-tokens", type=int, default=32512, help="AuxK and dead-fraction window (tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splice-contexts", type=int, default=16)
    p.add_argument("--splice-batch-contexts", type=int, default=2)
    p.add_argument("--steer", nargs="*", default=["topk_k32", "gsae_k32_b1", "gsae_k32_b32"])
    p.add_argument("--steer-latents", type=int, default=32)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--calib-alpha", type=float, default=0.2)
    p.add_argument("--kl-budget", type=float, default=0.25)
    p.add_argument("--calib-contexts", type=int, default=2)
    p.add_argument("--eval-contexts", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix of recon/splice JSON files, for a later batch of SAEs")
    p.add_argument("--phases", nargs="+", default=["train", "recon", "splice", "steer", "report"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    phases = {"train": train_all, "recon": recon_all, "splice": splice_all, "steer": steer_all, "report": report}
    for ph in args.phases:
        phases[ph](args)


if __name__ == "__main__":
    main()
