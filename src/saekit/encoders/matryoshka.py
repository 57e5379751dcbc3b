"""Matryoshka SAE (Bussmann et al. 2025), BatchTopK inside: the dictionary's nested prefixes
(latents [0, m_1), [0, m_2), ..., [0, n_latents)) must each reconstruct the input on their own.

Codes are BatchTopK's (the batch's top k·B ReLU pre-activations in training, the global threshold at
inference); the loss sums the NMSE of every prefix's reconstruction x̂_j = b_dec + Σ_{i < m_j} f_i d_i,
plus AuxK on the full reconstruction's residual. (The paper sums squared errors; NMSE keeps the scale
of TopK's loss, so aux_coeff and lr mean the same thing.) The group sizes m_1, m_2 − m_1, ... are
configurable; empty means prefixes of n/8, n/4, n/2 and n latents. Each prefix's NMSE can be weighted
(``prefix_weights``, as dictionary_learning's ``group_weights``); empty means every weight 1, the paper's
plain sum. Weights → 0 on the inner prefixes turn it into BatchTopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit import losses
from saekit.encoders.batchtopk import BatchTopKParams, BatchTopKSAE
from saekit.errors import SaekitError
from saekit.gradient_selection import gradient_aware
from saekit.sae import register
from saekit.statement import Active


@dataclass
class MatryoshkaParams(BatchTopKParams):
    group_sizes: tuple[int, ...] = ()
    """Matryoshka: sizes of the nested groups, summing to n_latents (prefix j = the first j groups);
    empty: prefixes of n/8, n/4, n/2 and n latents."""
    prefix_weights: tuple[float, ...] = ()
    """Matryoshka: weight of each nested prefix's NMSE in the loss, one per prefix (the last = the whole
    dictionary); empty: all 1 (the paper's sum)."""


def prefix_ends(n_latents: int, group_sizes: tuple[int, ...]) -> list[int]:
    """The end of every nested prefix, last = n_latents."""
    if not group_sizes:
        ends = sorted({max(1, n_latents // d) for d in (8, 4, 2)} | {n_latents})
        return ends
    ends, total = [], 0
    for g in group_sizes:
        total += g
        ends.append(total)
    return ends


@register
class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    summary = ("Matryoshka SAE (BatchTopK inside): the NMSE of every nested dictionary prefix is summed, "
               "optionally weighted (Bussmann et al. 2025)")
    Params = MatryoshkaParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        ends = torch.tensor(prefix_ends(cfg.n_latents, tuple(cfg.group_sizes)))
        # [n_prefixes, n_latents] 0/1: latent i belongs to prefix j (not state: derived from cfg)
        self._prefix = (torch.arange(cfg.n_latents).unsqueeze(0) < ends.unsqueeze(1)).float()

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        sizes = tuple(cfg.group_sizes)
        if sizes and (any(g <= 0 for g in sizes) or sum(sizes) != cfg.n_latents):
            raise SaekitError(f"sae.group_sizes must be positive and sum to n_latents={cfg.n_latents}, got {sizes}")
        weights = tuple(cfg.prefix_weights)
        if weights:
            n = len(prefix_ends(cfg.n_latents, sizes))
            if len(weights) != n or any(not w >= 0 for w in weights) or not weights[-1] > 0:
                raise SaekitError(f"sae.prefix_weights needs one weight >= 0 per prefix ({n}), the last > 0, "
                                  f"got {weights}")

    def reconstruction(self, x: Tensor, a: Active, f: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        W_dec, b_dec = self.dictionary.W_dec, self.dictionary.b_dec
        prefix = self._prefix.to(f.device, f.dtype)
        terms: dict[str, Tensor] = {}
        total, x_hat = x.new_zeros(()), None
        weights = tuple(self.cfg.prefix_weights) or (1.0,) * prefix.shape[0]
        for j, ends_at in enumerate(prefix_ends(self.cfg.n_latents, tuple(self.cfg.group_sizes))):
            last = j == prefix.shape[0] - 1
            x_hat = a.decode(f if last else f * a.latent(prefix[j]), W_dec) + b_dec
            nmse = losses.normalized_mse(x, x_hat)
            terms[f"nmse_{ends_at}" if not last else "nmse"] = nmse
            total = total + weights[j] * nmse
        terms["prefix_nmse_sum"] = total
        return total, terms, x_hat


GradientMatryoshkaSAE = register(gradient_aware(MatryoshkaSAE, "gradient_matryoshka"))
