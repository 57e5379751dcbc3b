"""Where the sparse kernels stop paying: one training step, sparse vs dense kernels, against code density.

    .venv/bin/python benchmarks/kernel_crossover.py --arch relu --tokens 2048 --latents 2304
    .venv/bin/python benchmarks/kernel_crossover.py --arch gated --tokens 4096 --latents 9216 --densities 0.12,0.2,0.3

For each density the encoder (gate) biases are set per latent so that each latent fires on that share
of a fixed random batch (d_in = 576); the step is ``train_step`` (clip 1.0, Adam, lr 1e-7 so the
density holds); median of 3 steps after one warm-up, 2 threads. ``sae.kernels = auto`` switches at
``saekit.kernels.SPARSE_MAX_DENSITY``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import trained_bias  # noqa: E402

from saekit import kernels  # noqa: E402
from saekit.config import SAEConfig, TrainConfig  # noqa: E402
from saekit.sae import build_sae  # noqa: E402
from saekit.train.trainer import make_optimizer, train_step  # noqa: E402


def step_ms(arch: str, mode: str, x: torch.Tensor, n_latents: int, density: float) -> tuple[float, float]:
    sae = build_sae(SAEConfig(architecture=arch, d_in=x.shape[1], n_latents=n_latents, kernels=mode), seed=0)
    with torch.no_grad():
        z = kernels.linear(x - sae.b_dec, sae.encoder_weight())
        (sae.b_gate if arch == "gated" else sae.b_enc).copy_(trained_bias(z, max(1, int(density * n_latents))))
    opt = make_optimizer(sae, TrainConfig(lr=1e-7))
    train_step(sae, opt, x, grad_clip=1.0)
    times, out = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        out = train_step(sae, opt, x, grad_clip=1.0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out.l0()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="relu", choices=["relu", "gated"])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--latents", type=int, default=2304)
    ap.add_argument("--densities", default="0.02,0.05,0.08,0.12,0.2,0.3,0.4")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.tokens, 576, generator=torch.Generator().manual_seed(0))
    print("| arch | tokens x latents | density | L0 | sparse ms | dense ms | dense / sparse |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for density in (float(v) for v in args.densities.split(",")):
        sparse, l0 = step_ms(args.arch, "sparse", x, args.latents, density)
        dense, _ = step_ms(args.arch, "dense", x, args.latents, density)
        print(f"| {args.arch} | {args.tokens} x {args.latents} | {density:.2f} | {l0:.0f} | {sparse:,.0f} | "
              f"{dense:,.0f} | {dense / sparse:.2f} |", flush=True)


if __name__ == "__main__":
    main()
