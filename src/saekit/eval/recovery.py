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
