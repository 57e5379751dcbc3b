"""`saekit reproduce decoupled-synthetic`: the synthetic benchmark of O'Neill, Gumran & Klindt 2024
(arXiv 2411.13117), replacing the old `saekit bench-synthetic`.

The paper's three regimes (known codes; known dictionary; unknown codes and dictionary) in its main
setting N=16, M=8, K=3, and the N × M × K grid (N ∈ {16..256}, M ∈ {8,16,32}, K ∈ {3,6,9}; a cell
with K >= M is not identifiable and is skipped, with the reason in the write-up).

Plan (each step cached under WORK, one JSON per regime, cell and seed, so a killed run continues):
1. per cell and seed a problem: the true dictionary and train / validation / test samples, each from
   its own named stream (``methods.make_problem``);
2. chance levels per cell and seed: random unit dictionaries, and the untrained SAE (its initial
   dictionary and tied-encoder codes);
3. every method of every regime, batched over seeds × λ (``methods``); λ (or the target L0
   of pursuit) chosen per seed on validation code MCC, code MCC reported on test; FLOPs counted;
4. mean and 95% t-interval over seeds; paired differences over seeds for the verdicts; flags where
   a method is not clearly above chance; CSV/JSON, plots, README.

Modules: ``config`` (scales, the paper's numbers), ``methods`` (problems, batched methods per regime,
FLOPs), ``pipeline`` (every regime, cell and seed, cached under WORK), ``verdicts`` (intervals, trends,
verdicts), ``report`` (tables, plots, CSV/JSON, README).
"""

from __future__ import annotations

from saekit.reproduce.decoupled_synthetic.config import SCALES, DecoupledSyntheticScale
from saekit.reproduce.decoupled_synthetic.pipeline import reproduce

__all__ = ["SCALES", "DecoupledSyntheticScale", "reproduce"]
