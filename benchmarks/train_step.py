"""Training-step throughput: one full step (loss forward, backward, parallel-gradient removal, gradient
clipping, Adam, atom renormalisation) per architecture, each configuration in its own process.

    .venv/bin/python benchmarks/train_step.py                 # saekit, big + small configs
    .venv/bin/python benchmarks/train_step.py --configs small # seconds
    .venv/bin/python benchmarks/train_step.py --peers         # also SAELens and sparsify (benchmarks/setup_peers.sh)
    .venv/bin/python benchmarks/train_step.py --peers --rounds 5 --configs big   # interleaved: A B C A B C ...

With ``--rounds R`` every configuration (library, architecture, kernels, sparsity) runs once per round,
each in its own process, round after round (A B C A B C ...), so a slow spell of a noisy machine falls on
every library alike. Per architecture the report gives the median over rounds of saekit's tokens/s over
the fastest peer's *in the same round*, with the min-max across rounds.

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


def synchronize() -> None:
    """Wait for queued GPU work, so that a step's time is its own (a no-op on the CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t0)
    return times


def reset_peak_memory() -> None:
    reset_peak_rss()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb() -> float | None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


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

    c, device = CONFIGS[spec["config"]], torch.device(spec.get("device", "cpu"))
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
            shift = sae.threshold() if spec["arch"] == "jumprelu" else 0.0  # fire above θ, not above 0
            bias.copy_(trained_bias(z, c["k"]) + shift)
            del z
    sae.to(device)
    x = x.to(device)
    opt = make_optimizer(sae, TrainConfig(lr=LR))
    dead = torch.zeros(c["n_latents"], dtype=torch.bool, device=device) if hasattr(sae.cfg, "dead_tokens") else None
    grads = torch.randn(x.shape, generator=gen).to(device) if sae.needs_gradients else None  # g-SAE: LM gradients
    last = {}
    reset_peak_memory()

    def step():
        last.pop("out", None)  # a loop that keeps no earlier step's output
        last["out"] = train_step(sae, opt, x, sparsity_scale=1.0, dead_mask=dead, grads=grads, grad_clip=1.0)

    times = timed(step, spec["steps"], spec["warmup"])
    peak, gpu = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak_gpu_mb()
    l0 = last["out"].l0()
    # the floor measured here and now (same process, same machine load): encoder-forward matmul + Adam
    enc, buf = sae.encoder_weight().detach(), torch.empty(c["batch"], c["n_latents"], device=device)
    floor = timed(lambda: (torch.mm(x, enc.T, out=buf), opt.step()), max(5, spec["steps"] // 2), 1)
    extra = {}
    if grads is not None:  # g-SAE: its selection needs d_i · g for every latent, a second product of the same size
        W_dec = sae.W_dec.detach()
        extra["floor_select"] = timed(lambda: (torch.mm(x, enc.T, out=buf), torch.mm(grads, W_dec.T, out=buf), opt.step()),
                                      max(5, spec["steps"] // 2), 1)
    n_params = sum(p.numel() for p in sae.parameters())
    budget = 4 * (3 * n_params + c["batch"] * (c["d_in"] + c["n_latents"]))
    return dict(times=times, l0=l0, base_rss_kb=base, budget_bytes=budget, floor=floor, peak_kb=peak,
                peak_gpu_mb=gpu, **extra)


def child_reference(spec: dict) -> dict:
    """Bare matmuls of the step's shapes, and the floor: encoder-forward matmul + optimiser update."""
    import torch

    from saekit.config import SAEConfig, TrainConfig
    from saekit.sae import build_sae
    from saekit.train.trainer import make_optimizer

    c, device = CONFIGS[spec["config"]], torch.device(spec.get("device", "cpu"))
    B, M, d = c["batch"], c["n_latents"], c["d_in"]
    gen = torch.Generator().manual_seed(0)
    x, W_enc, W_dec = (torch.randn(shape, generator=gen).to(device) for shape in ((B, d), (M, d), (M, d)))
    z = torch.randn(B, M, generator=gen).to(device)
    dy = torch.randn(B, d, generator=gen).to(device)

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
        sae = build_sae(SAEConfig(architecture=arch, d_in=d, n_latents=M), seed=0).to(device)
        opt = make_optimizer(sae, TrainConfig())
        for p in sae.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-3
        out[f"adam_{arch}"] = timed(opt.step, spec["steps"], spec["warmup"])
    return out


def child_peer(spec: dict) -> dict:
    sys.path.insert(0, str(HERE))
    import peer_steps  # only importable in the peers' environment

    res = peer_steps.run(spec, CONFIGS[spec["config"]], timed, rss_now_kb, trained_bias, reset_peak_memory)
    res["peak_gpu_mb"] = peak_gpu_mb()
    return res


def child_main(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    kind = spec["kind"]
    result = {"reference": child_reference, "saekit": child_saekit, "peer": child_peer}[kind](spec)
    result["maxrss_kb"] = result.pop("peak_kb", None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps(result))


# ---- parent -----------------------------------------------------------------------------------
PEER_ARCHS = {"saelens": ("relu", "gated", "topk", "jumprelu", "batchtopk", "matryoshka"), "sparsify": ("topk",)}
L1_ARCHS = ("relu", "gated", "jumprelu")  # timed at early (dense) and trained sparsity


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


def plan_jobs(archs: list[str], args) -> list[tuple[str, str, str, str]]:
    """(arch, lib, kernels, sparsity) of every timed configuration; peers run at trained sparsity (their
    dense step costs the same at any sparsity; sparsify is TopK-only)."""
    jobs = []
    for arch in archs:
        sparsities = args.sparsities.split(",") if arch in L1_ARCHS else ["-"]
        jobs += [(arch, "saekit", mode, s) for s in sparsities for mode in args.kernels.split(",")
                 if not (mode == "dense" and s == "early")]  # early codes are dense: auto takes dense
        if args.peers:
            jobs += [(arch, lib, "-", sparsities[-1]) for lib in args.peer_libs.split(",")
                     if arch in PEER_ARCHS.get(lib, ())]
    return jobs


def summarise(config: str, job: tuple, results: list[dict], refs: list[dict]) -> dict:
    """One table row over the rounds: medians of the per-round median step, and the tokens/s range."""
    arch, lib, mode, sparsity = job
    row = dict(config=config, lib=lib, arch=arch, kernels=mode, sparsity=sparsity, rounds=len(results))
    ok = [(res, ref) for res, ref in zip(results, refs) if "error" not in res and "error" not in ref]
    if not ok:
        row["error"] = next((r["error"] for r in results if "error" in r), "reference failed")
        return row
    batch = CONFIGS[config]["batch"]
    steps = [med(res["times"]) for res, _ in ok]
    t = med(steps)
    mm = med([med(ref["matmuls"]) for _, ref in ok])
    floors = [med(res["floor"]) if "floor" in res else med(ref["enc_fwd"]) + med(ref[f"adam_{arch}"]) for res, ref in ok]
    last = ok[-1][0]
    row.update(tok_s=batch / t, tok_s_min=batch / max(steps), tok_s_max=batch / min(steps), step_s=t,
               l0=last.get("l0"), rss_mb=max(r["maxrss_kb"] for r, _ in ok) / 1024,
               rss_over_base_mb=max(r["maxrss_kb"] - r.get("base_rss_kb", 0) for r, _ in ok) / 1024,
               vs_matmuls=t / mm, vs_floor=t / med(floors),
               budget_ratio=(max(r["maxrss_kb"] - r["base_rss_kb"] for r, _ in ok) * 1024 / last["budget_bytes"]
                             if "budget_bytes" in last else None),
               peak_gpu_mb=max((r.get("peak_gpu_mb") or 0) for r, _ in ok) or None,
               per_round_tok_s=[batch / s for s in steps])
    if "floor_select" in last:
        row["vs_floor_select"] = t / med([med(r["floor_select"]) for r, _ in ok])
    return row


def ratios(rows: list[dict]) -> list[dict]:
    """Per architecture and sparsity: saekit (kernels auto) over the fastest peer of the same round."""
    out = []
    for r in rows:
        if r["lib"] != "saekit" or r["kernels"] != "auto" or "error" in r:
            continue
        peers = [p for p in rows if p["lib"] != "saekit" and p["arch"] == r["arch"] and p["config"] == r["config"]
                 and "error" not in p]
        if not peers:
            continue
        per_round = []
        for i, mine in enumerate(r["per_round_tok_s"]):
            best = max((p["per_round_tok_s"][i], p["lib"]) for p in peers if i < len(p["per_round_tok_s"]))
            per_round.append((mine / best[0], best[1]))
        values = [v for v, _ in per_round]
        libs = sorted({lib for _, lib in per_round})
        out.append(dict(config=r["config"], arch=r["arch"], sparsity=r["sparsity"], saekit_tok_s=r["tok_s"],
                        peer=",".join(libs), peer_tok_s=max(p["tok_s"] for p in peers),
                        ratio_median=med(values), ratio_min=min(values), ratio_max=max(values), rounds=len(values)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="big,small")
    ap.add_argument("--archs", default="", help="comma list; default: every registered architecture")
    ap.add_argument("--kernels", default="auto", help="comma list of saekit kernel modes to time, e.g. auto,dense")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="run every configuration once per round, interleaved")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--peers", action="store_true", help="also time SAELens and sparsify (benchmarks/.venv-peers)")
    ap.add_argument("--peer-libs", default="saelens,sparsify", help="which peers --peers runs")
    ap.add_argument("--peers-python", default=str(PEERS_PYTHON), help="the peers' environment's python")
    ap.add_argument("--sparsities", default="early,trained", help="for L1 architectures")
    ap.add_argument("--json", default="", help="write all raw results here (rewritten after every round)")
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
    common = dict(steps=args.steps, warmup=args.warmup, threads=args.threads, device=args.device)
    jobs = plan_jobs(archs, args)
    configs = args.configs.split(",")
    results = {(cfg, job): [] for cfg in configs for job in jobs}
    refs: dict[str, list[dict]] = {cfg: [] for cfg in configs}
    print(f"# {len(jobs)} configurations x {len(configs)} sizes x {args.rounds} rounds; device {args.device}; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    raw = []
    for rnd in range(args.rounds):
        for config in configs:
            ref = spawn(dict(common, kind="reference", config=config, archs=archs))
            refs[config].append(ref)
            raw.append({"round": rnd, "config": config, "reference": ref})
            for job in jobs:
                arch, lib, mode, sparsity = job
                spec = dict(common, config=config, arch=arch, sparsity=sparsity if sparsity != "-" else "trained",
                            kernels=mode if mode != "-" else "auto")
                res = (spawn(dict(spec, kind="saekit")) if lib == "saekit"
                       else spawn(dict(spec, kind="peer", lib=lib), args.peers_python))
                results[(config, job)].append(res)
                raw.append({"round": rnd, "config": config, "lib": lib, **spec, **res})
                took = f"{CONFIGS[config]['batch'] / med(res['times']):,.0f} tok/s" if "error" not in res else res["error"]
                print(f"# round {rnd + 1}/{args.rounds} {config} {lib} {arch} {mode} {sparsity}: {took}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"raw": raw, "args": vars(args)}, indent=1))
    rows = [summarise(config, job, results[(config, job)], refs[config]) for config in configs for job in jobs]
    print("\n| config | library | arch | kernels | sparsity | tokens/s (median) | min-max over rounds | step ms | L0 "
          "| peak RSS MB | over base MB | /budget | /matmuls | /floor |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(format_row(row))
        if "vs_floor_select" in row:
            print(f"#   {row['arch']}: {row['vs_floor_select']:.2f}x the floor plus its selection product "
                  f"(d_i · g for every latent)")
    table = ratios(rows)
    if table:
        print(f"\nsaekit / fastest peer, per round (median and min-max over {args.rounds} rounds):\n")
        print("| config | arch | sparsity | saekit tok/s | fastest peer | peer tok/s | saekit / peer: median | min-max |")
        print("|---|---|---|---:|---|---:|---:|---:|")
        for t in table:
            print(f"| {t['config']} | {t['arch']} | {t['sparsity']} | {t['saekit_tok_s']:,.0f} | {t['peer']} | "
                  f"{t['peer_tok_s']:,.0f} | **{t['ratio_median']:.2f}x** | {t['ratio_min']:.2f}-{t['ratio_max']:.2f}x |")
    for config in configs:
        ok = [r for r in refs[config] if "error" not in r]
        if ok:
            print(f"# {config}: bare matmuls {med([med(r['matmuls']) for r in ok]) * 1e3:.0f} ms; encoder-forward "
                  f"matmul {med([med(r['enc_fwd']) for r in ok]) * 1e3:.0f} ms")
    print(f"# load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratios": table, "raw": raw, "args": vars(args)}, indent=1))


def format_row(r: dict) -> str:
    head = f"| {r['config']} | {r['lib']} | {r['arch']} | {r['kernels']} | {r['sparsity']} |"
    if "error" in r:
        return head + f" error: {r['error']} |"
    budget = f"{r['budget_ratio']:.2f}" if r.get("budget_ratio") is not None else "-"
    l0 = f"{r['l0']:.0f}" if r.get("l0") is not None else "-"
    return (head + f" {r['tok_s']:,.0f} | {r['tok_s_min']:,.0f}-{r['tok_s_max']:,.0f} | {r['step_s'] * 1e3:,.0f} | "
            f"{l0} | {r['rss_mb']:,.0f} | {r['rss_over_base_mb']:,.0f} | {budget} | {r['vs_matmuls']:.2f} | "
            f"{r['vs_floor']:.2f} |")


if __name__ == "__main__":
    main()
