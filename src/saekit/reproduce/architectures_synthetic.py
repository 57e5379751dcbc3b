"""Dictionary recovery of an architecture on the O'Neill et al. synthetic ground truth (issue 13).

N=64 true atoms in R^32, K=3 active per sample; 64 latents, k=3 where the architecture has a k.
Seed s sets both the truth (synthetic.seed) and the SAE's initialisation (train seed), so three
seeds are three independent problems. Prints one JSON line per run: dictionary MCC, the chance level
(random unit dictionaries of the same size), L0, FVU, and, for Matryoshka, how well each nested group's
atoms match a true atom (mean over the group of the best |cos| to any true atom).

`saekit reproduce architectures` runs the settings of its scale through ``run``; for exploring one
architecture's settings by hand (results/architectures_synthetic.md was made this way):

    python -m saekit.reproduce.architectures_synthetic --arch matryoshka --seeds 0 1 2 --steps 3000 \
        --sae group_sizes=32,32 --train lr=1e-3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

import torch


def _value(text: str):
    if "," in text:
        return tuple(_value(v) for v in text.split(",") if v)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _pairs(items: list[str]) -> dict:
    return {k: _value(v) for k, v in (item.split("=", 1) for item in items)}


def run(arch: str, seed: int, steps: int, sae_kw: dict, train_kw: dict | None = None,
        data_kw: dict | None = None) -> dict:
    """Train one SAE on the synthetic problem of ``seed`` and measure its dictionary recovery.
    ``data_kw``: SyntheticConfig fields other than the problem's size (e.g. generator="powerlaw")."""
    from saekit.config import DataConfig, SAEConfig, SyntheticConfig, TrainConfig
    from saekit.data.synthetic import SyntheticSource
    from saekit.eval.reconstruction import evaluate_reconstruction
    from saekit.eval.recovery import chance_dictionary_mcc, dictionary_mcc
    from saekit.train.trainer import train

    data = DataConfig(source="synthetic", synthetic=SyntheticConfig(n_features=64, d=32, k=3, seed=seed,
                                                                    **(data_kw or {})))
    kw = dict(sae_kw)
    if arch not in ("relu", "gated", "jumprelu"):
        kw.setdefault("k", 3)
    sae_cfg = SAEConfig(architecture=arch, n_latents=kw.pop("n_latents", 64), **kw)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(sae=sae_cfg, data=data, steps=steps, batch_size=1024, lr=1e-3, log_every=100,
                          ckpt_every=0, progress=False, seed=seed, out_dir=tmp + "/run")
        cfg = replace(cfg, **(train_kw or {}))
        start = time.perf_counter()
        sae = train(cfg)
        seconds = time.perf_counter() - start
    source = SyntheticSource(data.synthetic, split="eval")
    truth = source.truth.dictionary
    W = sae.W_dec.detach().cpu()
    summary, _ = evaluate_reconstruction(sae, source, 16384, 4096)
    out = {"arch": arch, "seed": seed, "steps": steps, "sae": {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in sae_kw.items()},
           "train": train_kw or {}, "data": data_kw or {}, "dict_mcc": round(dictionary_mcc(truth, W), 4),
           "chance": round(chance_dictionary_mcc(truth, W.shape[0], draws=20)["mean"], 4),
           "l0": round(summary["l0"], 3), "fvu": round(summary["fvu"], 4),
           "dead": round(summary["dead_fraction"], 3), "seconds": round(seconds, 1)}
    if data.synthetic.generator == "hierarchical":
        out.update(_firing_f1(sae, source, data.synthetic.group_size))
    if arch.endswith("matryoshka"):
        from saekit.encoders.matryoshka import prefix_ends

        cos = torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(truth, dim=1).T
        best = cos.abs().max(dim=1).values
        ends = prefix_ends(W.shape[0], tuple(sae.cfg.group_sizes))
        starts = [0, *ends[:-1]]
        out["group_best_cos"] = {f"{a}:{b}": round(best[a:b].mean().item(), 3) for a, b in zip(starts, ends)}
        out["dict_mcc_beyond_first_prefix"] = round(dictionary_mcc(truth, W[ends[0]:]), 4)
    return out


def _firing_f1(sae, source, group_size: int, n: int = 16384) -> dict:
    """Absorption on the hierarchical generator: per parent (and per child), the best F1 of one latent's
    firing as a detector of the feature's firing, on held-out samples (``best_firing_f1``), and its chance level
    (latents firing independently at their own rates, ``chance_firing_f1``)."""
    from saekit.eval.recovery import best_firing_f1, chance_firing_f1

    x, codes = source.eval_set(n)
    with torch.no_grad():
        latent_on = sae.encode(x) > 0
    f1, chance = best_firing_f1(codes > 0, latent_on), chance_firing_f1(codes > 0, latent_on)
    parent = torch.zeros(codes.shape[1], dtype=torch.bool)
    parent[::group_size] = True
    return {"parent_f1": round(f1[parent].mean().item(), 4), "child_f1": round(f1[~parent].mean().item(), 4),
            "parent_f1_chance": round(chance[parent].mean().item(), 4),
            "child_f1_chance": round(chance[~parent].mean().item(), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--sae", nargs="*", default=[], help="SAEConfig fields, key=value (tuples: 32,32)")
    p.add_argument("--train", nargs="*", default=[], help="TrainConfig fields, key=value")
    p.add_argument("--data", nargs="*", default=[], help="SyntheticConfig fields, key=value (generator=powerlaw)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        print(json.dumps(run(args.arch, seed, args.steps, _pairs(args.sae), _pairs(args.train), _pairs(args.data))),
              flush=True)


if __name__ == "__main__":
    main()
