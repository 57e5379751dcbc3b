"""Reconstruction metrics of an SAE over a held-out stream, and ground-truth recovery on synthetic data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from saekit.data.source import ActivationSource, Batch, check_finite
from saekit.errors import SaekitError
from saekit.eval.metrics import ReconstructionStats
from saekit.eval.recovery import code_mcc, dictionary_mcc
from saekit.sae import SparseAutoencoder


@torch.no_grad()
def evaluate_reconstruction(sae: SparseAutoencoder, source: ActivationSource, n_tokens: int,
                            batch_size: int = 4096) -> tuple[dict[str, float], torch.Tensor]:
    """L0, MSE, FVU, γ, cosine, dead/dense fractions over ``n_tokens`` of ``source``; and the density vector.

    Each held-out token counts once: a finite source (a store, an LM split) is read in one pass and
    stops at its end when it holds fewer than ``n_tokens``; ``tokens`` in the summary is the true count."""
    stats = ReconstructionStats(sae.cfg.n_latents)
    device = sae.W_dec.device
    for batch in one_pass(source, n_tokens, batch_size):
        x = batch.acts.to(device, torch.float32)
        check_finite(x, "evaluation batch")
        grads = batch.grads.to(device, torch.float32) if batch.grads is not None and sae.needs_gradients else None
        x_hat, f = sae(x, grads)
        stats.update(x, x_hat, f)
    if stats.tokens == 0:
        raise SaekitError("no held-out activations to evaluate on")
    return stats.summary(), stats.density()


def one_pass(source: ActivationSource, n_tokens: int, batch_size: int) -> Iterator[Batch]:
    """Batches of at most ``batch_size`` rows, ``n_tokens`` rows in all, never a row twice.

    A source with ``iter_all`` (a store, an LM split: finite, read in order) is read once; any other
    (synthetic data: fresh samples) through its stream of batches."""
    blocks: Any = source.iter_all(n_tokens) if hasattr(source, "iter_all") else (b for b, _ in source.batches(batch_size))
    left = n_tokens
    for block in blocks:
        for start in range(0, block.acts.shape[0], batch_size):
            if left <= 0:
                return
            take = min(batch_size, left, block.acts.shape[0] - start)
            rows = slice(start, start + take)
            yield Batch(block.acts[rows], block.grads[rows] if block.grads is not None else None)
            left -= take
        if left <= 0:
            return


@torch.no_grad()
def evaluate_recovery(sae: SparseAutoencoder, x: torch.Tensor, true_codes: torch.Tensor,
                      true_atoms: torch.Tensor) -> dict[str, Any]:
    """Dictionary MCC (atoms vs true atoms) and code MCC (codes vs true codes) on held-out samples."""
    f = sae.encode(x.to(sae.W_dec.device))
    return {"dictionary_mcc": dictionary_mcc(true_atoms, sae.W_dec.detach().cpu()),
            "code_mcc": code_mcc(true_codes, f.cpu())}
