"""A whole training run, saekit against SAELens at equal settings, end to end on one activation store.

saekit runs `saekit train` (its own data reading, schedules, dead-latent tracking, checkpoint at the
end); SAELens runs its training SAE the way its trainer steps it (``training_forward_pass``, firing
statistics, backward, clipping at 1.0, Adam; benchmarks/peer_steps.py) over the same store's shards
in order, with the same batch size, steps, lr, sparsity coefficient and its own L1 warm-up over
the same 5% of steps, on activations scaled by the same input scale (E‖x‖² = d_in, as saekit's
`normalize_activations`). The runs alternate (saekit, SAELens, saekit, ...) for ``--rounds``.
Reports wall seconds, tokens/s, saekit's dense-step share (its timing.json) and each run's final L0.

    .venv/bin/python benchmarks/train_run.py --store runs/bench-store --arch gated --n-latents 2304 \
        --steps 500 --batch 2048 --l1 3.0 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"


def store_batches(store: Path, batch: int):
    """Batches of float32 activations from a saekit store's train shards, in manifest order, cycling."""
    import torch
    from safetensors.torch import load_file

    manifest = json.loads((store / "manifest.json").read_text())
    while True:
        rest = None
        for shard in manifest["shards"]:
            acts = load_file(str(store / shard["file"]))["acts"].float()
            acts = acts if rest is None else torch.cat([rest, acts])
            n = acts.shape[0] // batch * batch
            yield from acts[:n].split(batch)
            rest = acts[n:]


def child_saelens(spec: dict) -> dict:
    """SAELens's training loop body over the store (runs in benchmarks/.venv-peers)."""
    import torch

    sys.path.insert(0, str(HERE))
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    d, m, steps = spec["d_in"], spec["n_latents"], spec["steps"]
    warm = max(1, int(0.05 * steps))
    if spec["arch"] == "gated":
        sae = GatedTrainingSAE(GatedTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=spec["l1"], l1_warm_up_steps=warm))
        betas = (0.0, 0.999)
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=spec["l1"],
                                                            l1_warm_up_steps=warm))
        betas = (0.9, 0.999)
    opt = torch.optim.Adam(sae.parameters(), lr=spec["lr"], betas=betas)
    dead = torch.zeros(m, dtype=torch.bool)
    since_fired = torch.zeros(m)
    start = time.perf_counter()
    batches = store_batches(Path(spec["store"]), spec["batch"])
    l0 = None
    for step in range(steps):
        x = next(batches) * spec["input_scale"]
        coefficients = {name: (v.value if isinstance(v, TrainCoefficientConfig) else v) * min(1.0, (step + 1) / warm)
                        for name, v in sae.get_coefficients().items()}
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                                                       n_training_steps=step, is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().any(0)
            since_fired.add_(x.shape[0])
            since_fired[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step == steps - 1:
            l0 = float((out.feature_acts != 0).sum(-1).float().mean())
    return {"wall_s": time.perf_counter() - start, "l0": l0}


def input_scale(store: Path) -> float:
    """sqrt(d / E‖x‖²) over the store's first shard (saekit's normalisation, for the peer's inputs)."""
    batch = next(store_batches(store, 4096))
    return float((batch.shape[1] / batch.pow(2).sum(1).mean()) ** 0.5)


def run_saekit(spec: dict, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "saekit", "train", "--sae.architecture", spec["arch"],
           "--sae.n-latents", str(spec["n_latents"]), "--sae.l1-coeff", str(spec["l1"]),
           "--data.source", "store", "--data.store", spec["store"], "--steps", str(spec["steps"]),
           "--batch-size", str(spec["batch"]), "--lr", str(spec["lr"]), "--log-every", "50", "--ckpt-every", "0",
           "--no-progress", "--out-dir", str(out)] + spec.get("saekit_args", [])
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    timing = json.loads((out / "timing.json").read_text())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"wall_s": wall, "loop_s": timing["wall_s"], "dense_share_of_wall": timing["dense_share_of_wall"],
            "dense_steps": timing["dense_steps"], "l0": last["l0"], "fvu": last["fvu"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a saekit store's train split (folder with manifest.json)")
    ap.add_argument("--arch", default="gated", choices=["gated", "relu"])
    ap.add_argument("--n-latents", type=int, default=2304)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l1", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="runs/bench-train-run")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child_saelens(json.loads(args.child))))
        return
    store = Path(args.store).resolve()
    manifest = json.loads((store / "manifest.json").read_text())
    spec = dict(store=str(store), arch=args.arch, n_latents=args.n_latents, steps=args.steps, batch=args.batch,
                lr=args.lr, l1=args.l1, threads=args.threads, d_in=manifest["d_in"], input_scale=input_scale(store))
    tokens = args.steps * args.batch
    print(f"# {args.arch}, {args.n_latents} latents, {args.steps} steps x {args.batch} = {tokens:,} tokens from "
          f"{store} ({manifest['total_tokens']:,} tokens); load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for rnd in range(args.rounds):
        mine = run_saekit(spec, Path(args.out) / f"saekit-{rnd}")
        print(f"round {rnd + 1} saekit: {json.dumps(mine)}", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        t0 = time.perf_counter()
        proc = subprocess.run([str(PEERS_PYTHON), __file__, "--store", str(store), "--child", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        peer = json.loads(line[7:]) if line else {"error": (proc.stderr or "no output").strip().splitlines()[-1:]}
        if line:  # the whole process, as saekit's wall_s: imports, set-up, the loop
            peer = {"loop_s": peer.pop("wall_s"), "wall_s": time.perf_counter() - t0, **peer}
        print(f"round {rnd + 1} saelens: {json.dumps(peer)}", flush=True)
        rows.append((mine, peer))
    ok = [(m, p) for m, p in rows if "error" not in m and "error" not in p]
    for key, what in (("wall_s", "whole process"), ("loop_s", "training loop only")):
        if not ok:
            break
        ratios = [p[key] / m[key] for m, p in ok]
        mine, theirs = statistics.median([m[key] for m, _ in ok]), statistics.median([p[key] for _, p in ok])
        print(f"{what}: saekit median {mine:.1f} s ({tokens / mine:,.0f} tokens/s), SAELens {theirs:.1f} s; "
              f"SAELens / saekit per round: median {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds)")


if __name__ == "__main__":
    main()
