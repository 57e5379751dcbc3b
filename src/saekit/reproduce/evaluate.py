"""Evaluations of trained SAEs that several reproductions share, each cached under WORK/eval/<kind>/NAME.json
(so a killed reproduction redoes at most the SAE it was on): validation statistics on the store's eval split,
dead latents over many store tokens, and the splice into the model on the test contexts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def on_validation(run: Any, name: str, sae: Any, store: Path, n_tokens: int) -> dict[str, Any]:
    """L0, FVU, γ of one SAE on the validation contexts' activations (the first rows of the eval split)."""
    import torch

    from saekit.data.store import StoreSource, store_split_path
    from saekit.eval.metrics import ReconstructionStats
    from saekit.reproduce.common import cached_json

    def compute() -> dict[str, Any]:
        src = StoreSource(store_split_path(store, "eval"))
        x = torch.cat([b.acts for b in src.iter_all(n_tokens)])[:n_tokens]
        stats = ReconstructionStats(sae.cfg.n_latents)
        with torch.no_grad():
            for chunk in x.split(4096):
                x_hat, f = sae(chunk)
                stats.update(chunk, x_hat, f)
        return stats.summary()

    return cached_json(run.work / "eval" / "validation" / f"{name}.json", compute)


def dead_over_store(run: Any, name: str, sae: Any, store: Path, n_tokens: int) -> dict[str, Any]:
    """Share of latents that never fire on the first ``n_tokens`` rows of the train split (after training,
    so it works when an SAE trained on fewer tokens than the trainer's dead window)."""
    import torch

    from saekit.data.store import StoreSource, store_split_path
    from saekit.reproduce.common import cached_json

    def compute() -> dict[str, Any]:
        fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool)
        seen = 0
        with torch.no_grad():
            for batch in StoreSource(store_split_path(store, "train")).iter_all(n_tokens):
                for chunk in batch.acts[:n_tokens - seen].float().split(8192):
                    fired |= (sae.encode(chunk) > 0).any(dim=0)
                    seen += chunk.shape[0]
        return {"dead_fraction": float((~fired).float().mean()), "dead_count_tokens": seen}

    return cached_json(run.work / "eval" / "dead" / f"{name}.json", compute)


def spliced(run: Any, model: Any, hp: Any, saes: dict[str, Any], ctxs: list[Any], batch_contexts: int) -> dict[str, Any]:
    """Splice results (per-context sums included) per SAE, one cached file each; the missing ones are
    evaluated together in one pass over the contexts."""
    from saekit.eval.splice import clean_json, evaluate_splice
    from saekit.io import atomic_write_json

    folder = run.work / "eval" / "splice"
    out: dict[str, Any] = {}
    todo = {}
    for name, sae in saes.items():
        path = folder / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
        else:
            todo[name] = sae
    if todo:
        run.log(f"splicing {len(todo)} SAE(s) into the model on {len(ctxs)} test contexts")
        results = evaluate_splice(model, hp, todo, ctxs, batch_contexts, per_context=True)
        for name, res in results.items():
            atomic_write_json(folder / f"{name}.json", clean_json(res))
            out[name] = json.loads((folder / f"{name}.json").read_text())
    return out
