"""Decoupled inference on real activations: encoders compared on one trained SAE's frozen dictionary.

Issue 6, part 4 (O'Neill, Gumran & Klindt 2024 on a language model). The dictionary (W_dec, b_dec) of a
trained SAE is frozen; codes come from
- ``sae``: the SAE's own amortised encoder;
- ``sae+refit``: the SAE's support, magnitudes refit by non-negative least squares (λ = 0);
- ``fista λ``: ITO, FISTA on the L1 objective from zero (cold);
- ``fista λ +refit``: the same support with its magnitudes refit (debiased);
- ``sae+ito λ``: FISTA warm-started from the SAE's codes, capped at ``--warm-iters`` iterations;
- ``mp k`` / ``omp k``: matching pursuit / orthogonal matching pursuit to L0 = k;
- ``mlp λ``: an MLP encoder ReLU(W2 ReLU(W1 x)) trained on the frozen dictionary (reconstruction + λ·L1)
  on the store's train split.
Every method is spliced into the model on the same held-out contexts (``evaluate_splice``: loss
recovered, ΔCE, KL) and its FVU and L0 are measured on exactly the spliced tokens. FLOPs are analytic
per token for producing the codes (``saekit.inference.flops``; iterations actually used).

    .venv/bin/python benchmarks/inference_on_lm.py --sae /tmp/g3/sae --store /tmp/store_demo \\
        --out results/decoupled_inference_lm
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit import losses
from saekit.inference import fista, flops, matching_pursuit, orthogonal_matching_pursuit
from saekit.inference.lm import FrozenDictionary, gated_encoder_flops, nnls_on_support, nnls_refit_flops
from saekit.inference.mlp import MLPEncoder, TrainSettings, train_frozen_dictionary
from saekit.io import atomic_write_bytes, atomic_write_json, atomic_write_text

FAMILIES = {  # family -> (colour, marker, label)
    "sae": ("black", "*", "SAE encoder (amortised)"),
    "sae+refit": ("grey", "P", "SAE support + NNLS refit"),
    "fista": ("tab:blue", "o", "ITO: FISTA (cold)"),
    "fista+refit": ("tab:cyan", "o", "ITO: FISTA + refit"),
    "sae+ito": ("tab:purple", "D", "SAE + ITO (FISTA warm)"),
    "mp": ("tab:orange", "^", "matching pursuit"),
    "omp": ("tab:red", "v", "OMP"),
    "mlp": ("tab:green", "s", "MLP (frozen dictionary)"),
}


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


class Method:
    """One encoder: scaled x -> (codes, FLOPs per row for this batch, iterations or None, converged)."""

    def __init__(self, name: str, family: str, param: float | None,
                 encode: Callable[[Tensor], tuple[Tensor, float, int | None, bool]]) -> None:
        self.name, self.family, self.param, self.encode = name, family, param, encode
        self.tokens, self.flops_sum, self.seconds, self.iters, self.converged = 0, 0.0, 0.0, [], True

    def reconstructor(self, D: FrozenDictionary) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        def run(x: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                t0 = time.perf_counter()
                f, fl, it, ok = self.encode(D.scale(x))
                self.seconds += time.perf_counter() - t0
                self.tokens += x.shape[0]
                self.flops_sum += fl * x.shape[0]
                if it is not None:
                    self.iters.append(it)
                self.converged &= ok
                return D.decode(f), f
        return run


def refit_flops(d: int, codes: Tensor, iters: int) -> float:
    """Mean over rows of the refit cost with each row's own support size."""
    sizes = (codes > 0).sum(dim=1).tolist()
    return sum(nnls_refit_flops(d, s, iters) for s in sizes) / max(len(sizes), 1)


def build_methods(sae: Any, D: FrozenDictionary, args: argparse.Namespace, mlps: dict[float, MLPEncoder]) -> list[Method]:
    n, d = D.n_latents, D.d_in
    W, b = D.W_dec, D.b_dec
    enc_flops = gated_encoder_flops(d, n) if sae.cfg.architecture == "gated" else flops.linear_encoder(d, n)
    out: list[Method] = [Method("sae", "sae", None, lambda xs: (sae.encode_scaled(xs), enc_flops, None, True))]

    def sae_refit(xs: Tensor) -> tuple[Tensor, float, int | None, bool]:
        f = sae.encode_scaled(xs)
        r = nnls_on_support(xs, W, b, f, max_iters=args.refit_iters, tol=args.refit_tol)
        return r.codes, enc_flops + refit_flops(d, f, r.n_iters), r.n_iters, r.converged
    out.append(Method("sae+refit", "sae+refit", None, sae_refit))

    last: dict[float, tuple[Tensor, Any]] = {}  # λ -> (batch, FISTA result): '+refit' reuses the cold solve

    def solve(xs: Tensor, lam: float) -> Any:
        if lam in last and last[lam][0].shape == xs.shape and torch.equal(last[lam][0], xs):
            return last[lam][1]
        r = fista(xs, W, b, l1=lam, max_iters=args.ito_iters, tol=args.ito_tol)
        last[lam] = (xs.clone(), r)
        return r

    for lam in args.lambdas:
        def cold(xs: Tensor, lam: float = lam) -> tuple[Tensor, float, int | None, bool]:
            r = solve(xs, lam)
            return r.codes, flops.iterative(n, d, r.n_iters), r.n_iters, r.converged

        def cold_refit(xs: Tensor, lam: float = lam) -> tuple[Tensor, float, int | None, bool]:
            r = solve(xs, lam)
            q = nnls_on_support(xs, W, b, r.codes, max_iters=args.refit_iters, tol=args.refit_tol)
            fl = flops.iterative(n, d, r.n_iters) + refit_flops(d, r.codes, q.n_iters)
            return q.codes, fl, r.n_iters, r.converged and q.converged

        def warm(xs: Tensor, lam: float = lam) -> tuple[Tensor, float, int | None, bool]:
            f = sae.encode_scaled(xs)
            r = fista(xs, W, b, l1=lam, max_iters=args.warm_iters, tol=args.ito_tol, init=f)
            return r.codes, enc_flops + flops.iterative(n, d, r.n_iters), r.n_iters, r.converged
        out += [Method(f"fista λ={lam:g}", "fista", lam, cold), Method(f"fista λ={lam:g} +refit", "fista+refit", lam, cold_refit),
                Method(f"sae+ito λ={lam:g} ({args.warm_iters} it)", "sae+ito", lam, warm)]
    for k in args.mp_k:
        out.append(Method(f"mp k={k}", "mp", k, lambda xs, k=k: (matching_pursuit(xs, W, b, k=k),
                                                                  flops.matching_pursuit(n, d, k), None, True)))
    for k in args.omp_k:
        out.append(Method(f"omp k={k}", "omp", k, lambda xs, k=k: (orthogonal_matching_pursuit(xs, W, b, k=k),
                                                                    flops.orthogonal_matching_pursuit(n, d, k), None, True)))
    for lam, mlp in mlps.items():
        label = "mlp from sae" if args.mlp_init == "sae" else "mlp"
        name = f"{label} → omp k={lam:g} codes" if args.mlp_objective == "omp" else f"{label} λ={lam:g}"
        out.append(Method(name, "mlp", lam, lambda xs, mlp=mlp: (mlp(xs), mlp.flops(), None, True)))
        if args.mlp_objective == "omp":  # a regression leaves many small positive outputs: keep the k largest
            k = int(lam)
            out.append(Method(f"{name}, top {k}", "mlp", lam, lambda xs, mlp=mlp, k=k: (
                losses.topk_codes(mlp(xs), k), mlp.flops() + n, None, True)))  # + one comparison per latent
    return out


def linear_part(sae: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, b, b_in) of a ReLU encoder ReLU(W (x_s − b_in) + b) with the SAE's support, in scaled units.

    Gated: exp(r_mag) ⊙ π_gate = π_mag − θ, so ReLU(exp(r_mag) ⊙ π_gate) fires exactly where the Gated
    SAE does, with its magnitudes lowered by the JumpReLU threshold θ. ReLU / TopK: the encoder itself
    (TopK's selection is not linear; its ReLU part is the start)."""
    with torch.no_grad():
        if sae.cfg.architecture == "gated":
            scale = sae.r_mag.exp()
            return scale[:, None] * sae.W_gate, scale * sae.b_gate, sae.b_dec.clone()
        return sae.W_enc.clone(), sae.b_enc.clone(), sae.b_dec.clone()


def train_mlps(D: FrozenDictionary, store: str, args: argparse.Namespace,
               sae: Any = None) -> tuple[dict[float, MLPEncoder], list[dict]]:
    from saekit.data.store import open_store_source

    src = open_store_source(store, "train", expected_d_in=D.d_in)
    x = D.scale(src.sample(args.mlp_train_tokens))
    mlps, info = {}, []
    if args.mlp_objective == "omp":  # regime (i): regress OMP's codes (an unbiased sparse solution)
        return train_mlp_on_omp(D, x, args, sae)
    for lam in args.mlp_lambdas:
        torch.manual_seed(args.seed)
        if args.mlp_init == "sae":  # one hidden layer of 2·d_in, starting as the SAE's own encoder
            enc = MLPEncoder(D.d_in, D.n_latents, [2 * D.d_in])
            enc.start_from_linear(*linear_part(sae))
        else:
            enc = MLPEncoder(D.d_in, D.n_latents, ints(args.mlp_hidden))
        t0 = time.perf_counter()
        res = train_frozen_dictionary(enc, x, D.W_dec, D.b_dec, TrainSettings(
            steps=args.mlp_steps, lr=args.mlp_lr, batch_size=args.mlp_batch, l1=lam, seed=args.seed))
        enc.eval().requires_grad_(False)
        info.append({"lambda": lam, "final_loss": res.final_loss, "samples_seen": res.samples_seen,
                     "train_flops": res.train_flops, "seconds": time.perf_counter() - t0, "widths": enc.widths})
        print(f"mlp λ={lam:g}: {time.perf_counter() - t0:.0f} s, final loss {res.final_loss:.2f}", flush=True)
        mlps[lam] = enc
    return mlps, info


def train_mlp_on_omp(D: FrozenDictionary, x: torch.Tensor, args: argparse.Namespace,
                     sae: Any) -> tuple[dict[float, MLPEncoder], list[dict]]:
    """An MLP trained to output the codes OMP (k = --mlp-omp-k) finds on the training tokens."""
    from saekit.inference.mlp import train_supervised

    t0 = time.perf_counter()
    targets = torch.cat([orthogonal_matching_pursuit(x[i:i + 1024], D.W_dec, D.b_dec, k=args.mlp_omp_k)
                         for i in range(0, x.shape[0], 1024)])
    omp_s = time.perf_counter() - t0
    print(f"OMP targets for {x.shape[0]} tokens: {omp_s:.0f} s", flush=True)
    torch.manual_seed(args.seed)
    if args.mlp_init == "sae":
        enc = MLPEncoder(D.d_in, D.n_latents, [2 * D.d_in])
        enc.start_from_linear(*linear_part(sae))
    else:
        enc = MLPEncoder(D.d_in, D.n_latents, ints(args.mlp_hidden))
    t0 = time.perf_counter()
    res = train_supervised(enc, x, targets, TrainSettings(steps=args.mlp_steps, lr=args.mlp_lr,
                                                         batch_size=args.mlp_batch, seed=args.seed))
    enc.eval().requires_grad_(False)
    info = [{"objective": f"omp k={args.mlp_omp_k}", "final_loss": res.final_loss, "samples_seen": res.samples_seen,
             "train_flops": res.train_flops, "seconds": time.perf_counter() - t0, "omp_seconds": omp_s,
             "widths": enc.widths}]
    print(f"mlp on OMP codes: {time.perf_counter() - t0:.0f} s, final loss {res.final_loss:.2f}", flush=True)
    return {float(args.mlp_omp_k): enc}, info


def lm_of_store(store: str) -> Any:
    from saekit.eval.splice import lm_settings

    return lm_settings(SimpleNamespace(source="store", store=store))


ROW_KEYS = ["method", "family", "param", "l0", "fvu", "loss_recovered", "delta_ce", "kl", "ce_sae",
            "flops_per_token", "iters_mean", "iters_max", "converged", "encode_seconds", "tokens", "ce_tokens",
            "gamma", "dead_fraction"]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return f"{v:.3e}" if (abs(v) >= 1e4 or (0 < abs(v) < 1e-3)) else f"{v:.4f}"
    return "" if v is None else str(v)


def write_tables(rows: list[dict], out: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_KEYS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "table.csv", buf.getvalue())
    head = ["method", "L0", "FVU", "loss recovered", "ΔCE (nats)", "KL", "FLOPs/token", "iters", "encode s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        it = "" if r["iters_mean"] is None else f"{r['iters_mean']:.0f} (max {r['iters_max']})"
        lines.append(f"| {r['method']} | {r['l0']:.1f} | {r['fvu']:.4f} | {r['loss_recovered']:.4f} | "
                     f"{r['delta_ce']:.4f} | {r['kl']:.4f} | {r['flops_per_token']:.2e} | {it} | {r['encode_seconds']:.1f} |")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [("l0", "fvu", "L0 (mean active latents per token)", "FVU", False, "fvu_vs_l0.png"),
             ("l0", "loss_recovered", "L0 (mean active latents per token)", "loss recovered", False,
              "loss_recovered_vs_l0.png"),
             ("flops_per_token", "fvu", "inference FLOPs per token (codes)", "FVU", True, "fvu_vs_flops.png")]
    for xk, yk, xl, yl, logx, name in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for fam, (colour, marker, label) in FAMILIES.items():
            pts = sorted((r[xk], r[yk]) for r in rows if r["family"] == fam)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour, label=label,
                    markersize=10 if fam == "sae" else 6, linestyle="-" if len(pts) > 1 else "none")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"frozen Gated-SAE dictionary, SmolLM2-135M resid_post.9 ({rows[0]['tokens']} held-out tokens)",
                     fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sae", required=True, help="folder of a trained SAE (cfg.json + model.safetensors)")
    p.add_argument("--store", required=True, help="activation store the SAE was trained on (names model and hookpoint)")
    p.add_argument("--out", required=True, help="output folder for table.csv/md, results.json and PNGs")
    p.add_argument("--contexts", type=int, default=32, help="held-out contexts spliced (same for every method)")
    p.add_argument("--batch-contexts", type=int, default=8)
    p.add_argument("--lambdas", type=floats, default=floats("1,2,4"), help="L1 λ of ITO (FISTA), scaled units")
    p.add_argument("--ito-iters", type=int, default=100, help="FISTA iteration cap (cold)")
    p.add_argument("--ito-tol", type=float, default=1e-3, help="FISTA relative-change tolerance")
    p.add_argument("--warm-iters", type=int, default=25, help="FISTA iteration cap when warm-started from the SAE")
    p.add_argument("--refit-iters", type=int, default=50)
    p.add_argument("--refit-tol", type=float, default=1e-4)
    p.add_argument("--mp-k", type=ints, default=ints("16,43,96"))
    p.add_argument("--omp-k", type=ints, default=ints("16,43"))
    p.add_argument("--mlp-lambdas", type=floats, default=floats("2,4"))
    p.add_argument("--mlp-hidden", default="1024", help="comma-separated hidden widths (with --mlp-init random)")
    p.add_argument("--mlp-objective", default="l1", choices=["l1", "omp"],
                   help="l1: reconstruction + λ·L1 on the frozen dictionary; omp: regress OMP's codes (--mlp-omp-k)")
    p.add_argument("--mlp-omp-k", type=int, default=43)
    p.add_argument("--mlp-init", default="random", choices=["random", "sae"],
                   help="sae: one hidden layer of 2·d_in that starts as the SAE's encoder (its support exactly)")
    p.add_argument("--mlp-steps", type=int, default=400)
    p.add_argument("--mlp-batch", type=int, default=512)
    p.add_argument("--mlp-lr", type=float, default=1e-3)
    p.add_argument("--mlp-train-tokens", type=int, default=65536)
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated method families to run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        return run(args, argv if argv is not None else sys.argv[1:])
    except SaekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.data.models import load_model
    from saekit.eval.splice import clean_json, evaluate_splice, held_out_contexts
    from saekit.sae import load

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sae = load(args.sae).eval().requires_grad_(False)
    D = FrozenDictionary.from_sae(sae)
    lm = lm_of_store(args.store)
    print(f"SAE {sae.cfg.architecture} {D.n_latents} latents; {lm.model} {lm.hookpoint}", flush=True)
    families = [f for f in args.families.split(",") if f]
    if unknown := sorted(set(families) - set(FAMILIES)):
        raise SaekitError(f"unknown method families {unknown}; choose from {', '.join(FAMILIES)}")
    mlps, mlp_info = train_mlps(D, args.store, args, sae) if args.mlp_lambdas and "mlp" in families else ({}, [])
    methods = [m for m in build_methods(sae, D, args, mlps) if m.family in families]
    model, tok = load_model(lm.model, device="cpu", dtype=lm.dtype)
    hp = resolve_hookpoint(model, lm.hookpoint)
    ctxs = held_out_contexts(tok, lm.corpus, lm.text_column, lm.context_length, lm.eval_fraction, args.contexts)
    t_splice = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is recorded per method instead
        res = evaluate_splice(model, hp, {m.name: m.reconstructor(D) for m in methods}, ctxs, args.batch_contexts,
                              n_latents={m.name: D.n_latents for m in methods})
    splice_s = time.perf_counter() - t_splice
    rows = []
    for m in methods:
        r = res[m.name]
        rows.append({"method": m.name, "family": m.family, "param": m.param, "l0": r["l0"], "fvu": r["fvu"],
                     "loss_recovered": r["loss_recovered"], "delta_ce": r["delta_ce"], "kl": r["kl"],
                     "ce_sae": r["ce_sae"], "flops_per_token": m.flops_sum / max(m.tokens, 1),
                     "iters_mean": (sum(m.iters) / len(m.iters)) if m.iters else None,
                     "iters_max": max(m.iters) if m.iters else None, "converged": m.converged,
                     "encode_seconds": m.seconds, "tokens": r["tokens"], "ce_tokens": r["ce_tokens"],
                     "gamma": r["gamma"], "dead_fraction": r["dead_fraction"]})
    ref = res[methods[0].name]
    reference = {k: ref[k] for k in ("ce_clean", "ce_zero", "ce_mean_ablation", "kl_zero", "kl_mean_ablation", "ce_tokens")}
    write_tables(rows, out)
    plot(rows, out)
    atomic_write_json(out / "results.json", clean_json({
        "command": "benchmarks/inference_on_lm.py " + " ".join(argv), "args": {k: v for k, v in vars(args).items()},
        "sae": {"path": args.sae, **json.loads(json.dumps(vars(sae.cfg), default=str))},
        "lm": {"model": lm.model, "hookpoint": lm.hookpoint, "corpus": lm.corpus, "context_length": lm.context_length,
               "eval_fraction": lm.eval_fraction, "contexts": len(ctxs)},
        "reference": reference, "mlp_training": mlp_info, "rows": rows,
        "seconds": {"total": time.perf_counter() - t_start, "splice": splice_s},
        "env": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
    }))
    print(open(out / "table.md").read())
    print(f"reference: {reference}; total {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
