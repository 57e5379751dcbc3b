"""Harvesting throughput of the default model (SmolLM2-135M) on this machine.

Modes: full forward (no early stop), early stop after the hooked block, activations + LM-loss
gradients with the fused loss head (``grads``) and through the model's own logits and autograd
(``grads_plain``). Each runs the whole pipeline (tokenise + pack Shakespeare -> batched forwards ->
mask) and reports stored tokens/s and the share of wall time spent outside the model forward.
``--rounds R`` repeats every mode R times interleaved (A B A B ...) and reports the median and range,
and the median per-round ratio of each mode to the first one.

    .venv/bin/python benchmarks/harvest.py [--hookpoint resid_post.9] [--tokens 16384]
    .venv/bin/python benchmarks/harvest.py --modes grads_plain,grads --rounds 5 --tokens 4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import saekit.data.harvest as H
from saekit.data.hookpoints import n_layers, resolve_hookpoint
from saekit.data.models import load_model
from saekit.data.text import contexts


def pack_rate(tok, args) -> float:
    """Tokenise + pack tokens/s: in the pipeline this work is amortised (one tokenizer call per ~200k
    characters), so it is measured separately and added to each mode's time outside the forward."""
    t0, n = time.perf_counter(), 0
    for c in contexts(tok, "shakespeare", "text", args.context_length, "all", 0.05):
        n += int(c.attention_mask.sum())
        if n >= 200_000:
            break
    return n / (time.perf_counter() - t0)


def run_mode(model, tok, hp, mode: str, args, pack_tps: float) -> dict:
    inside = {"s": 0.0}
    real_acts, real_grads = H.activations, H.activations_and_grads

    def timed(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside["s"] += time.perf_counter() - t0
        return wrapper

    H.activations, H.activations_and_grads = timed(real_acts), timed(real_grads)
    try:
        ctxs = contexts(tok, "shakespeare", "text", args.context_length, "train", 0.05)
        kw = dict(batch_contexts=args.batch_contexts, with_grads=mode.startswith("grads"),
                  stop_early=mode == "early_stop", progress=False)
        H.FUSED_DEFAULT = mode != "grads_plain"
        next(H.harvest(model, hp, ctxs, **kw))  # warm-up batch (not timed; the fused head's check runs here)
        inside["s"] = 0.0
        tokens, t0, last = 0, time.perf_counter(), None
        for out in H.harvest(model, hp, ctxs, **kw):
            tokens += out.acts.shape[0]
            last = out
            if tokens >= args.tokens:
                break
        wall = time.perf_counter() - t0
    finally:
        H.activations, H.activations_and_grads = real_acts, real_grads
        H.FUSED_DEFAULT = True
    total = wall + tokens / pack_tps  # with the amortised tokenise + pack time
    res = {"mode": mode, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / total),
           "outside_forward_share": round(1 - inside["s"] / total, 4)}
    if last is not None and last.grads is not None:
        res.update(fp16_error(last.grads))
    return res


def fp16_error(g: torch.Tensor) -> dict:
    """What storing these gradients as float16 (`saekit cache --grads-fp16`) costs: the per-token
    relative L2 error, and the share of entries below float16's smallest normal number."""
    err = (g.half().float() - g).norm(dim=1) / g.norm(dim=1).clamp_min(1e-30)
    tiny = float((g.abs() < torch.finfo(torch.float16).tiny).float().mean())
    return {"fp16_rel_err_median": float(err.median()), "fp16_rel_err_max": float(err.max()),
            "fp16_subnormal_share": round(tiny, 5)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hookpoint", default="resid_post.9")
    p.add_argument("--tokens", type=int, default=16384, help="stored tokens per mode")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch-contexts", type=int, default=16)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--modes", default="full,early_stop,grads")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    load_s = time.perf_counter() - t0
    hp = resolve_hookpoint(model, args.hookpoint)
    print(f"model {args.model}: {n_layers(model)} layers, loaded in {load_s:.1f} s; hookpoint {hp.name}; "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    pack_tps = pack_rate(tok, args)
    print(f"tokenise + pack: {pack_tps:,.0f} tokens/s")
    modes = args.modes.split(",")
    results = []
    for rnd in range(args.rounds):
        for m in modes:
            r = dict(run_mode(model, tok, hp, m, args, pack_tps), round=rnd)
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.rounds > 1:
        by = {m: [r["tokens_per_s"] for r in results if r["mode"] == m] for m in modes}
        for m in modes:
            ratios = [a / b for a, b in zip(by[m], by[modes[0]])]
            print(f"{m}: median {statistics.median(by[m]):,.0f} tokens/s (range {min(by[m]):,}-{max(by[m]):,}); "
                  f"vs {modes[0]} per round: median {statistics.median(ratios):.2f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f}x)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
