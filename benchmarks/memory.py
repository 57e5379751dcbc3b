"""Memory of training steps: peak RSS against the budget, and RSS over many steps (must stay flat).

    .venv/bin/python benchmarks/memory.py                     # 1,000 steps of the small config per architecture
    .venv/bin/python benchmarks/memory.py --config big --steps 20

Each architecture runs in its own process: a fresh batch every step, the Trainer's step function
(``saekit.train.trainer.train_step``) and its dead-latent tracker, at trained sparsity for L1
architectures. Reported: RSS after imports (baseline), after the first step, at the end, the peak
(getrusage maxrss), and the peak above baseline over the budget = weights + Adam state + one batch's
activations and latents (fp32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, reset_peak_rss, rss_now_kb, trained_bias, warm_runtime  # noqa: E402


def child(arch: str, config: str, steps: int, threads: int) -> dict:
    import torch

    from saekit import kernels
    from saekit.config import SAEConfig, TrainConfig
    from saekit.sae import build_sae
    from saekit.train.dead_latents import DeadLatentTracker
    from saekit.train.trainer import make_optimizer, train_step

    torch.set_num_threads(threads)
    c = CONFIGS[config]
    warm_runtime(arch)
    base = rss_now_kb()
    gen = torch.Generator().manual_seed(0)
    sae = build_sae(SAEConfig(architecture=arch, d_in=c["d_in"], n_latents=c["n_latents"], k=c["k"]), seed=0)
    x0 = torch.randn(c["batch"], c["d_in"], generator=gen)
    if arch in ("relu", "gated"):
        with torch.no_grad():
            z = kernels.linear(x0, sae.encoder_weight())
            (sae.b_gate if arch == "gated" else sae.b_enc).copy_(trained_bias(z, c["k"]))
            del z
    opt = make_optimizer(sae, TrainConfig(lr=1e-4))
    tracker = DeadLatentTracker(c["n_latents"])
    del x0
    reset_peak_rss()  # the peak covers the training steps, not the setup
    series, l0 = [], 0.0
    for i in range(steps):
        x = torch.randn(c["batch"], c["d_in"], generator=gen)
        dead = tracker.dead(sae.cfg.dead_tokens) if hasattr(sae.cfg, "dead_tokens") else None
        out = train_step(sae, opt, x, dead_mask=dead, grad_clip=1.0, step=i)
        tracker.update(out.fired(), x.shape[0])
        if i == 0 or (i + 1) % max(steps // 10, 1) == 0:
            l0 = out.l0()
            series.append((i + 1, rss_now_kb()))
        del out
    n_params = sum(p.numel() for p in sae.parameters())
    budget = 4 * (3 * n_params + c["batch"] * (c["d_in"] + c["n_latents"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(arch=arch, config=config, steps=steps, base_kb=base, series=series, peak_kb=peak,
                budget_bytes=budget, l0=l0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--archs", default="relu,gated,topk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.config, args.steps, args.threads)))
        return
    print("| arch | config | steps | L0 | baseline MB | after step 1 MB | end MB | growth step 1→end MB | "
          "peak MB | peak − baseline MB | budget MB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", arch, "--config", args.config,
                               "--steps", str(args.steps), "--threads", str(args.threads)],
                              capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"| {arch} | error: {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(line[7:])
        mb = lambda kb: kb / 1024  # noqa: E731
        first, end = r["series"][0][1], r["series"][-1][1]
        over = r["peak_kb"] * 1024 - r["base_kb"] * 1024
        print(f"| {arch} | {r['config']} | {r['steps']} | {r['l0']:.0f} | {mb(r['base_kb']):.0f} | {mb(first):.0f} | "
              f"{mb(end):.0f} | {mb(end - first):+.1f} | {mb(r['peak_kb']):.0f} | {over / 2**20:.0f} | "
              f"{r['budget_bytes'] / 2**20:.0f} | {over / r['budget_bytes']:.2f} |")
        print("  RSS (step, MB): " + ", ".join(f"{s}:{mb(k):.1f}" for s, k in r["series"]), flush=True)


if __name__ == "__main__":
    main()
