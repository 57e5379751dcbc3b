"""The three regimes of O'Neill et al. (2024) on one synthetic problem, one seed: methods -> result rows.

Why one module per concern: this file only *runs* methods and measures them (code MCC on held-out
samples, dictionary MCC, FLOPs); the command in ``bench_synthetic`` loops over seeds and settings,
aggregates and writes files.

Regimes:
- ``known_codes``: encoders regress the true codes (linear-ReLU SAE encoder vs MLP);
- ``known_dictionary``: encoders trained against the true, frozen dictionary, and iterative
  inference (ISTA, FISTA, MP, GP, OMP) on that dictionary;
- ``unknown``: SAE (linear-ReLU encoder + L1, dictionary learned jointly), SAE + ITO (FISTA on the
  SAE's dictionary, warm-started from its codes), MLP encoders + dictionary, sparse coding.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saekit.config import SyntheticConfig
from saekit.data.synthetic import GroundTruth, mix_seed
from saekit.dictionary import Dictionary
from saekit.eval.recovery import code_mcc, dictionary_mcc
from saekit.inference import flops, pursuit, sparse_coding
from saekit.inference.iterative import InferenceResult, fista, ista
from saekit.inference.mlp import MLPEncoder, TrainSettings, train_frozen_dictionary, train_joint, train_supervised


@dataclass
class Hyper:
    """Method hyperparameters shared by every setting."""

    steps: int = 3000
    """Adam steps for every amortised encoder."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 128
    """Mini-batch size."""
    l1: float = 0.1
    """λ for encoders trained with reconstruction + L1 (regimes ii and iii)."""
    mlp_hidden: list[int] = field(default_factory=lambda: [256])
    """Hidden widths of the MLP encoder in regimes ii and iii."""
    mlp_hidden_known_codes: list[int] = field(default_factory=lambda: [1024])
    """Hidden widths of the MLP encoder in regime i (the paper's h=1024)."""
    ito_l1: float = 0.1
    """λ for ISTA/FISTA inference (on the true dictionary, and SAE + ITO)."""
    ito_max_iters: int = 5000
    """Iteration cap of ISTA/FISTA inference."""
    ito_tol: float = 1e-5
    """Relative tolerance of ISTA/FISTA inference."""
    sc_l1: float = 0.1
    """λ of sparse coding (training and test inference)."""
    sc_rounds: int = 200
    """Alternations of sparse coding."""
    sc_code_iters: int = 30
    """FISTA iterations per sparse-coding round."""


@dataclass
class Problem:
    """One synthetic problem: the truth, training and held-out samples."""

    n: int
    m: int
    k: int
    seed: int
    truth: Tensor
    x: Tensor
    codes: Tensor
    x_test: Tensor
    codes_test: Tensor


def make_problem(n: int, m: int, k: int, n_train: int, n_test: int, seed: int, device: str = "cpu") -> Problem:
    """Dictionary and samples from saekit's O'Neill generator (train and test from separate streams)."""
    gt = GroundTruth(SyntheticConfig(generator="oneill", n_features=n, d=m, k=k, seed=seed))
    x, s = gt.sample(n_train, torch.Generator().manual_seed(seed * 1000 + 1))
    xt, st = gt.sample(n_test, torch.Generator().manual_seed(seed * 1000 + 2))
    dev = torch.device(device)
    return Problem(n, m, k, seed, gt.dictionary.to(dev), x.to(dev), s.to(dev), xt.to(dev), st.to(dev))


Row = dict[str, Any]


def init_seed(p: Problem, stream: int) -> int:
    """Seed for a method's initialisation, independent of the generator's own streams: GroundTruth
    draws the true atoms from ``seed`` itself, so a learner seeded with ``seed`` would start *at* the truth."""
    return mix_seed(p.seed, 0x5AE, stream) % (2 ** 62)


def _row(p: Problem, regime: str, method: str, codes: Tensor, atoms: Tensor | None, train_flops: int,
         infer_per_sample: int, seconds: float, **extra: Any) -> Row:
    n_test = p.x_test.shape[0]
    return {"regime": regime, "method": method, "N": p.n, "M": p.m, "K": p.k, "seed": p.seed,
            "code_mcc": code_mcc(p.codes_test.cpu(), codes.detach().cpu()),
            "dict_mcc": math.nan if atoms is None else dictionary_mcc(p.truth.cpu(), atoms.detach().cpu()),
            "train_flops": int(train_flops), "infer_flops_per_sample": int(infer_per_sample),
            "infer_flops_total": int(infer_per_sample) * n_test,
            "total_flops": int(train_flops) + int(infer_per_sample) * n_test,
            "l0": float((codes > 0).float().sum(dim=1).mean()), "seconds": round(seconds, 3), **extra}


def _settings(h: Hyper, seed: int, l1: float | None = None) -> TrainSettings:
    return TrainSettings(steps=h.steps, lr=h.lr, batch_size=h.batch_size, l1=h.l1 if l1 is None else l1, seed=seed)


def _encoder(p: Problem, hidden: list[int], tied_to: Tensor | None = None) -> MLPEncoder:
    torch.manual_seed(init_seed(p, 1))  # nn.Linear draws its initial weights from the global generator
    enc = MLPEncoder(p.m, p.n, hidden).to(p.x.device)
    if tied_to is not None and not hidden:
        enc.tie_to(tied_to)
    return enc


def _name(hidden: list[int]) -> str:
    return "SAE encoder" if not hidden else f"MLP(h={'x'.join(map(str, hidden))})"


def _timed_ito(fn: Callable[[], InferenceResult]) -> tuple[InferenceResult, float]:
    t = time.perf_counter()
    with warnings.catch_warnings():  # non-convergence is recorded in the row, not printed
        warnings.simplefilter("ignore", RuntimeWarning)
        res = fn()
    return res, time.perf_counter() - t


def known_codes(p: Problem, h: Hyper) -> list[Row]:
    """Regime (i): supervised encoders predicting the true codes."""
    rows = []
    for hidden in ([], h.mlp_hidden_known_codes):
        t = time.perf_counter()
        enc = _encoder(p, hidden)
        res = train_supervised(enc, p.x, p.codes, _settings(h, p.seed))
        with torch.no_grad():
            f = enc(p.x_test)
        rows.append(_row(p, "known_codes", _name(hidden), f, None, res.train_flops, enc.flops(),
                         time.perf_counter() - t))
    return rows


def known_dictionary(p: Problem, h: Hyper) -> list[Row]:
    """Regime (ii): encoders trained against the true frozen dictionary, and ITO on it."""
    rows = []
    D = p.truth
    for hidden in ([], h.mlp_hidden):
        t = time.perf_counter()
        enc = _encoder(p, hidden, tied_to=D)
        res = train_frozen_dictionary(enc, p.x, D, None, _settings(h, p.seed))
        with torch.no_grad():
            f = enc(p.x_test)
        rows.append(_row(p, "known_dictionary", _name(hidden), f, D, res.train_flops, enc.flops(),
                         time.perf_counter() - t))
    for name, solver in (("ISTA", ista), ("FISTA", fista)):
        out, sec = _timed_ito(lambda s=solver: s(p.x_test, D, l1=h.ito_l1, max_iters=h.ito_max_iters, tol=h.ito_tol))
        rows.append(_row(p, "known_dictionary", f"{name} (true D)", out.codes, D, 0,
                         flops.iterative(p.n, p.m, out.n_iters, name.lower()), sec, iters=out.n_iters,
                         converged=out.converged))
    for name, fn, cost in (("MP", pursuit.matching_pursuit, flops.matching_pursuit),
                           ("GP", pursuit.gradient_pursuit, flops.gradient_pursuit),
                           ("OMP", pursuit.orthogonal_matching_pursuit, flops.orthogonal_matching_pursuit)):
        t = time.perf_counter()
        codes = fn(p.x_test, D, k=p.k)
        rows.append(_row(p, "known_dictionary", f"{name} (true D, k=K)", codes, D, 0, cost(p.n, p.m, p.k),
                         time.perf_counter() - t))
    return rows


def unknown(p: Problem, h: Hyper, methods: tuple[str, ...] = ("sae", "sae_ito", "mlp", "sc")) -> list[Row]:
    """Regime (iii): neither codes nor dictionary known. ``methods`` picks a subset (the grid uses sae, mlp, sc)."""
    rows = []
    if "sae" in methods or "sae_ito" in methods:
        t = time.perf_counter()
        dic = Dictionary(p.n, p.m).to(p.x.device)
        dic.reset_random(torch.Generator().manual_seed(init_seed(p, 2)))  # drawn on CPU, copied in place
        enc = _encoder(p, [], tied_to=dic.W_dec.detach())
        res = train_joint(enc, dic, p.x, _settings(h, p.seed))
        with torch.no_grad():
            f = enc(p.x_test)
        W = dic.W_dec.detach()
        sec = time.perf_counter() - t
        if "sae" in methods:
            rows.append(_row(p, "unknown", "SAE", f, W, res.train_flops, enc.flops(), sec))
        if "sae_ito" in methods:
            out, s2 = _timed_ito(lambda: fista(p.x_test, W, l1=h.ito_l1, max_iters=h.ito_max_iters, tol=h.ito_tol,
                                               init=f))
            rows.append(_row(p, "unknown", "SAE + ITO (FISTA)", out.codes, W, res.train_flops,
                             enc.flops() + flops.iterative(p.n, p.m, out.n_iters, "fista"), sec + s2,
                             iters=out.n_iters, converged=out.converged))
    if "mlp" in methods:
        t = time.perf_counter()
        dic = Dictionary(p.n, p.m).to(p.x.device)
        dic.reset_random(torch.Generator().manual_seed(init_seed(p, 2)))
        enc = _encoder(p, h.mlp_hidden)
        res = train_joint(enc, dic, p.x, _settings(h, p.seed))
        with torch.no_grad():
            f = enc(p.x_test)
        rows.append(_row(p, "unknown", _name(h.mlp_hidden), f, dic.W_dec, res.train_flops, enc.flops(),
                         time.perf_counter() - t))
    if "sc" in methods:
        t = time.perf_counter()
        sc = sparse_coding.learn(p.x, p.n, sparse_coding.SCSettings(rounds=h.sc_rounds, code_iters=h.sc_code_iters,
                                                                    l1=h.sc_l1, seed=init_seed(p, 3)))
        out, _ = _timed_ito(lambda: sparse_coding.infer(p.x_test, sc.dictionary, h.sc_l1, h.ito_max_iters, h.ito_tol))
        rows.append(_row(p, "unknown", "SC", out.codes, sc.dictionary, sc.train_flops,
                         flops.iterative(p.n, p.m, out.n_iters, "fista"), time.perf_counter() - t,
                         iters=out.n_iters, converged=out.converged))
    return rows
