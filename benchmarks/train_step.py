"""Training-step throughput: one full step (loss forward, backward, parallel-gradient removal, gradient
clipping, Adam, atom renormalisation) per architecture, each configuration in its own process.

    .venv/bin/python benchmarks/train_step.py                 # saekit, big + small configs
    .venv/bin/python benchmarks/train_step.py --configs small # seconds
    .venv/bin/python benchmarks/train_step.py --peers         # also SAELens and sparsify (benchmarks/setup_peers.sh)

Reports tokens/s (batch / median step time), the child's peak RSS (getrusage maxrss) and its RSS
above the post-import baseline, the ratio of the step to the bare dense matmuls of the same shapes
(encoder fwd + its two backward matmuls, decoder fwd + its two backward matmuls) and to the floor
(the encoder-forward matmul + the same optimiser's update). L1 architectures run at "early"
sparsity (tied init, zero biases: about half the codes on) and "trained" sparsity (per-latent
encoder biases set so that L0 ≈ k).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {"big": dict(d_in=576, n_latents=9216, batch=4096, k=32),
           "small": dict(d_in=64, n_latents=512, batch=512, k=8)}
PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"
LR = 1e-6  # tiny, so that the sparsity set up for a configuration holds while it is timed (cost is lr-free)


def rss_now_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux clear_refs 5), so that the peak
    reported covers the timed steps and not the setup (e.g. the quantiles that set trained sparsity)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def warm_runtime(arch: str) -> None:
    """One tiny step of each kernel path, so that the RSS baseline includes torch's one-time runtime
    memory (libraries, autograd engine, thread pools) and not just the imports."""
    import torch

    from saekit.config import SAEConfig, TrainConfig
    from saekit.sae import build_sae
    from saekit.train.trainer import make_optimizer, train_step

    for mode in ("dense", "sparse"):
        sae = build_sae(SAEConfig(architecture=arch, d_in=8, n_latents=16, k=2, kernels=mode))
        opt = make_optimizer(sae, TrainConfig())
        for _ in range(2):
            train_step(sae, opt, torch.randn(32, 8), dead_mask=torch.zeros(16, dtype=torch.bool), grad_clip=1.0)


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def trained_bias(z, target_l0: int):
    """Per-latent bias putting each latent's firing rate at target_l0 / n_latents on this batch."""
    import torch

    q = 1.0 - target_l0 / z.shape[1]
    return -torch.quantile(z[: min(z.shape[0], 4096)], q, dim=0)


# ---- children ---------------------------------------------------------------------------------
def child_saekit(spec: dict) -> dict:
    import torch

    from saekit import kernels
    from saekit.config import SAEConfig, TrainConfig
    from saekit.sae import build_sae
    from saekit.train.trainer import make_optimizer, train_step

    c = CONFIGS[spec["config"]]
    warm_runtime(spec["arch"])
    base = rss_now_kb()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(c["batch"], c["d_in"], generator=gen)
    sae = build_sae(SAEConfig(architecture=spec["arch"], d_in=c["d_in"], n_latents=c["n_latents"],
                              kernels=spec["kernels"], **({"k": c["k"]} if "k" in SAEConfig.__dataclass_fields__ else {})),
                    seed=0)
    if spec["sparsity"] == "trained":
        with torch.no_grad():
            enc = sae.encoder_weight()
            z = kernels.linear(x - sae.b_dec, enc)
            bias = sae.b_gate if spec["arch"] == "gated" else sae.b_enc
            bias.copy_(trained_bias(z, c["k"]))
            del z
    opt = make_optimizer(sae, TrainConfig(lr=LR))
    dead = torch.zeros(c["n_latents"], dtype=torch.bool) if hasattr(sae.cfg, "dead_tokens") else None
    grads = torch.randn(x.shape, generator=gen) if sae.needs_gradients else None  # g-SAE: LM gradients
    last = {}
    reset_peak_rss()

    def step():
        last.pop("out", None)  # a loop that keeps no earlier step's output
        last["out"] = train_step(sae, opt, x, sparsity_scale=1.0, dead_mask=dead, grads=grads, grad_clip=1.0)

    times = timed(step, spec["steps"], spec["warmup"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    l0 = last["out"].l0()
    # the floor measured here and now (same process, same machine load): encoder-forward matmul + Adam
    enc, buf = sae.encoder_weight().detach(), torch.empty(c["batch"], c["n_latents"])
    floor = timed(lambda: (torch.mm(x, enc.T, out=buf), opt.step()), max(5, spec["steps"] // 2), 1)
    extra = {}
    if grads is not None:  # g-SAE: its selection needs d_i · g for every latent, a second product of the same size
        W_dec = sae.W_dec.detach()
        extra["floor_select"] = timed(lambda: (torch.mm(x, enc.T, out=buf), torch.mm(grads, W_dec.T, out=buf), opt.step()),
                                      max(5, spec["steps"] // 2), 1)
    n_params = sum(p.numel() for p in sae.parameters())
    budget = 4 * (3 * n_params + c["batch"] * (c["d_in"] + c["n_latents"]))
    return dict(times=times, l0=l0, base_rss_kb=base, budget_bytes=budget, floor=floor, peak_kb=peak, **extra)


def child_reference(spec: dict) -> dict:
    """Bare matmuls of the step's shapes, and the floor: encoder-forward matmul + optimiser update."""
    import torch

    from saekit.config import SAEConfig, TrainConfig
    from saekit.sae import build_sae
    from saekit.train.trainer import make_optimizer

    c = CONFIGS[spec["config"]]
    B, M, d = c["batch"], c["n_latents"], c["d_in"]
    gen = torch.Generator().manual_seed(0)
    x, W_enc, W_dec = torch.randn(B, d, generator=gen), torch.randn(M, d, generator=gen), torch.randn(M, d, generator=gen)
    z = torch.randn(B, M, generator=gen)
    dy = torch.randn(B, d, generator=gen)

    def matmuls():
        x @ W_enc.T
        z.T @ x
        z @ W_enc
        z @ W_dec
        z.T @ dy
        dy @ W_dec.T

    out = {"matmuls": timed(matmuls, spec["steps"], spec["warmup"]),
           "enc_fwd": timed(lambda: x @ W_enc.T, spec["steps"], spec["warmup"])}
    for arch in spec["archs"]:
        sae = build_sae(SAEConfig(architecture=arch, d_in=d, n_latents=M), seed=0)
        opt = make_optimizer(sae, TrainConfig())
        for p in sae.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        out[f"adam_{arch}"] = timed(opt.step, spec["steps"], spec["warmup"])
    return out


def child_peer(spec: dict) -> dict:
    sys.path.insert(0, str(HERE))
    import peer_steps  # only importable in the peers' environment

    return peer_steps.run(spec, CONFIGS[spec["config"]], timed, rss_now_kb, trained_bias, reset_peak_rss)


def child_main(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    kind = spec["kind"]
    result = {"reference": child_reference, "saekit": child_saekit, "peer": child_peer}[kind](spec)
    result["maxrss_kb"] = result.pop("peak_kb", None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps(result))


# ---- parent -----------------------------------------------------------------------------------
def spawn(spec: dict, python: str = sys.executable) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def med(ts: list[float]) -> float:
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="big,small")
    ap.add_argument("--archs", default="", help="comma list; default: every registered architecture")
    ap.add_argument("--kernels", default="auto", help="comma list of saekit kernel modes to time, e.g. auto,dense")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", action="store_true", help="also time SAELens and sparsify (benchmarks/.venv-peers)")
    ap.add_argument("--peer-libs", default="saelens,sparsify", help="which peers --peers runs")
    ap.add_argument("--sparsities", default="early,trained", help="for L1 architectures")
    ap.add_argument("--json", default="", help="write all raw results here")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    if args.archs:
        archs = args.archs.split(",")
    else:
        from saekit.sae import available_architectures

        archs = available_architectures()
    common = dict(steps=args.steps, warmup=args.warmup, threads=args.threads)
    rows, raw = [], []
    for config in args.configs.split(","):
        ref = spawn(dict(common, kind="reference", config=config, archs=archs))
        raw.append({"config": config, "reference": ref})
        mm = med(ref["matmuls"])
        for arch in archs:
            floor = med(ref["enc_fwd"]) + med(ref[f"adam_{arch}"])
            sparsities = args.sparsities.split(",") if arch in ("relu", "gated", "jumprelu") else ["-"]
            jobs = [("saekit", mode, s) for s in sparsities for mode in args.kernels.split(",")
                    if not (mode == "dense" and s == "early")]  # early codes are dense: auto takes dense
            if args.peers and arch in ("relu", "gated", "topk"):
                # the peers' step costs the same at any sparsity (dense matmuls; sparsify is TopK-only)
                jobs += [(lib, "-", sparsities[-1]) for lib in args.peer_libs.split(",")
                         if lib != "sparsify" or arch == "topk"]
            for lib, mode, sparsity in jobs:
                spec = dict(common, config=config, arch=arch, sparsity=sparsity if sparsity != "-" else "trained",
                            kernels=mode if mode != "-" else "auto")
                if lib == "saekit":
                    res = spawn(dict(spec, kind="saekit"))
                else:
                    res = spawn(dict(spec, kind="peer", lib=lib), str(PEERS_PYTHON))
                raw.append({"config": config, "lib": lib, **spec, **res})
                row = dict(config=config, lib=lib, arch=arch, kernels=mode, sparsity=sparsity)
                if "error" in res:
                    row["error"] = res["error"]
                else:
                    t = med(res["times"])
                    row.update(tok_s=CONFIGS[config]["batch"] / t, step_s=t, l0=res.get("l0"),
                               rss_mb=res["maxrss_kb"] / 1024,
                               rss_over_base_mb=(res["maxrss_kb"] - res.get("base_rss_kb", 0)) / 1024,
                               vs_matmuls=t / mm, vs_floor=t / (med(res["floor"]) if "floor" in res else floor),
                               budget_ratio=((res["maxrss_kb"] - res["base_rss_kb"]) * 1024 / res["budget_bytes"]
                                             if "budget_bytes" in res else None))
                    if "floor_select" in res:
                        row["vs_floor_select"] = t / med(res["floor_select"])
                rows.append(row)
                print(format_row(row), flush=True)
                if "vs_floor_select" in row:
                    print(f"#   {arch}: {row['vs_floor_select']:.2f}x the floor plus its selection product "
                          f"(d_i · g for every latent)", flush=True)
        print(f"# {config}: bare matmuls {mm * 1e3:.0f} ms; encoder-forward matmul {med(ref['enc_fwd']) * 1e3:.0f} ms; "
              + "; ".join(f"adam {a} {med(ref[f'adam_{a}']) * 1e3:.0f} ms" for a in archs), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "raw": raw}, indent=1))


def format_row(r: dict) -> str:
    head = f"| {r['config']} | {r['lib']} | {r['arch']} | {r['kernels']} | {r['sparsity']} |"
    if "error" in r:
        return head + f" error: {r['error']} |"
    budget = f"{r['budget_ratio']:.2f}" if r.get("budget_ratio") is not None else "-"
    l0 = f"{r['l0']:.0f}" if r.get("l0") is not None else "-"
    return (head + f" {r['tok_s']:,.0f} | {r['step_s'] * 1e3:,.0f} | {l0} | {r['rss_mb']:,.0f} | "
            f"{r['rss_over_base_mb']:,.0f} | {budget} | {r['vs_matmuls']:.2f} | {r['vs_floor']:.2f} |")


if __name__ == "__main__":
    main()
