"""Training-step throughput under torchrun: the big TopK config, the global batch split across processes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/distributed_step.py                                # 1 process
    OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc-per-node 2 benchmarks/distributed_step.py  # 2 processes

Each process runs the Trainer's step (``train_step`` with the DDP-wrapped loss, as ``Trainer`` does) on
its slice of a fixed 4,096-token batch; reported by rank 0: the median step over 8 after 2 warm-up steps,
global tokens/s, and the time of one all_reduce of a buffer the size of the SAE's gradients.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS  # noqa: E402

from saekit.config import SAEConfig, TrainConfig  # noqa: E402
from saekit.distributed import from_env, shutdown  # noqa: E402
from saekit.sae import build_sae  # noqa: E402
from saekit.train.trainer import make_optimizer, train_step  # noqa: E402


def main() -> None:
    cluster = from_env("cpu")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    c = CONFIGS["big"]
    x = torch.randn(c["batch"], c["d_in"], generator=torch.Generator().manual_seed(0))[cluster.shard_rows(c["batch"])]
    sae = build_sae(SAEConfig(architecture="topk", d_in=c["d_in"], n_latents=c["n_latents"], k=c["k"]), seed=0)
    opt = make_optimizer(sae, TrainConfig(lr=1e-6))
    loss_fn = cluster.wrap(sae)
    dead = torch.zeros(c["n_latents"], dtype=torch.bool)
    times = []
    for i in range(10):
        t0 = time.perf_counter()
        train_step(sae, opt, x, dead_mask=dead, grad_clip=1.0, loss_fn=loss_fn)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    line = (f"processes {cluster.world} x {torch.get_num_threads()} threads: step {step * 1e3:.0f} ms, "
            f"{c['batch'] / step:,.0f} tokens/s")
    if cluster.world > 1:
        buf = torch.randn(sum(p.numel() for p in sae.parameters()))
        t0 = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(buf)
        line += f"; all_reduce of {buf.numel() * 4 / 2**20:.0f} MiB: {(time.perf_counter() - t0) / 5 * 1e3:.0f} ms"
    if cluster.is_main:
        print(line, flush=True)
    shutdown()


if __name__ == "__main__":
    main()
