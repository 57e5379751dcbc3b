"""Ground-truth recovery: MCC between true and learned atoms or codes, matched by the Hungarian algorithm."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def pearson_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of every column of a [n, p] with every column of b [n, q] -> [p, q].

    A constant column has no defined correlation; it is given 0.
    """
    a = a.double() - a.double().mean(dim=0)
    b = b.double() - b.double().mean(dim=0)
    na, nb = a.norm(dim=0), b.norm(dim=0)
    corr = (a.T @ b) / (na[:, None] * nb[None, :])
    return torch.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)


def matched_mcc(corr: Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean |corr| over the one-to-one matching that maximises it (min(p, q) pairs)."""
    abs_corr = corr.abs().cpu().numpy()
    rows, cols = linear_sum_assignment(abs_corr, maximize=True)
    return float(abs_corr[rows, cols].mean()), rows, cols


def dictionary_mcc(true_atoms: Tensor, learned_atoms: Tensor) -> float:
    """MCC between true atoms [N, M] and learned atoms [L, M] (rows), correlated across the M dimensions."""
    return matched_mcc(pearson_matrix(true_atoms.T, learned_atoms.T))[0]


def code_mcc(true_codes: Tensor, learned_codes: Tensor) -> float:
    """MCC between true codes [n, N] and learned codes [n, L], correlated across samples."""
    return matched_mcc(pearson_matrix(true_codes, learned_codes))[0]


def random_unit_dictionary(n_atoms: int, d: int, seed: int = 0) -> Tensor:
    """Gaussian directions on the unit sphere, from the ``chance.dictionary`` stream."""
    from saekit.rng import stream

    atoms = torch.randn(n_atoms, d, generator=stream("chance.dictionary", seed, n_atoms, d), dtype=torch.float64)
    return (atoms / atoms.norm(dim=1, keepdim=True)).float()


def chance_dictionary_mcc(true_atoms: Tensor, n_latents: int, draws: int = 20, seed: int = 0) -> dict[str, float]:
    """Dictionary MCC of random unit dictionaries of ``n_latents`` atoms against ``true_atoms``: mean, sd, max.

    The level a learned dictionary must clear before its MCC says anything: with few dimensions a
    random dictionary already correlates well with the truth (about 0.67 at N=16, M=8)."""
    values = np.array([dictionary_mcc(true_atoms, random_unit_dictionary(n_latents, true_atoms.shape[1], seed + i))
                       for i in range(draws)])
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if draws > 1 else 0.0,
            "max": float(values.max()), "draws": draws}


def best_firing_f1(true_on: Tensor, latent_on: Tensor) -> Tensor:
    """Per true feature, the best F1 of any single latent's firing as a detector of that feature's firing.

    ``true_on`` [n, F] and ``latent_on`` [n, L] are boolean (active or not per sample). F1 = 2·TP /
    (#feature on + #latent on). A feature absorbed into several latents (each firing on part of its
    occurrences, e.g. a parent split across latents for parent+child) has no latent with a high F1;
    a feature with a latent of its own has F1 near 1. A feature that never fires gets 0."""
    t, f = true_on.float(), latent_on.float()
    tp = t.T @ f  # [F, L]
    denom = t.sum(dim=0)[:, None] + f.sum(dim=0)[None, :]
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return f1.max(dim=1).values


def chance_firing_f1(true_on: Tensor, latent_on: Tensor) -> Tensor:
    """Per true feature, the best *expected* F1 of a latent firing independently of it at the latent's own
    rate: max_j 2·p·q_j / (p + q_j), p the feature's and q_j latent j's firing rate (expected TP = n·p·q_j).

    The chance level beside ``best_firing_f1``: what the latents' firing rates alone would score. An
    always-on latent (q = 1) scores 2p / (1 + p), so a frequent feature is easy to "detect"."""
    p = true_on.double().mean(dim=0)[:, None]
    q = latent_on.double().mean(dim=0)[None, :]
    denom = p + q
    f1 = torch.where(denom > 0, 2 * p * q / denom.clamp(min=1e-300), torch.zeros_like(denom))
    return f1.max(dim=1).values.float()
