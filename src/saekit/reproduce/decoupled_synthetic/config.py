"""The decoupled-synthetic reproduction's scales, the paper's numbers beside which ours stand, and the
checks of a scale."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from saekit.errors import SaekitError
from saekit.reproduce.decoupled_synthetic.methods import Budget


# as quoted in issue 11 and results/decoupled_inference.md.
PAPER: dict[str, tuple[str, str]] = {
    "known_codes/sae": ("0.862", "–"),
    "known_codes/mlp": ("0.950", "–"),
    "known_dictionary/sae": ("0.61–0.69", "given"),
    "known_dictionary/ista": ("~0.97", "given"),
    "known_dictionary/fista": ("~0.97", "given"),
    "unknown/sae": ("0.566", "0.745"),
    "unknown/mlp": ("0.643", "0.851"),
    "unknown/sc": ("0.691", "0.837"),
}
# results/decoupled_inference.md (old `saekit bench-synthetic`, one λ = 0.1 for all, before the stream
# fix): superseded, shown only to say what changed.
OLD: dict[str, tuple[str, str]] = {
    "known_codes/sae": ("0.847", "–"), "known_codes/mlp": ("0.966", "–"),
    "known_dictionary/sae": ("0.812", "given"), "known_dictionary/mlp": ("0.798", "given"),
    "known_dictionary/ista": ("0.979", "given"), "known_dictionary/fista": ("0.979", "given"),
    "known_dictionary/mp": ("0.891", "given"), "known_dictionary/gp": ("0.898", "given"),
    "known_dictionary/omp": ("0.922", "given"),
    "unknown/sae": ("0.608", "0.765"), "unknown/sae_ito": ("0.611", "0.765"),
    "unknown/mlp": ("0.625", "0.841"), "unknown/sc": ("0.901", "0.955"),
}
GRID_METHODS = ("known_dictionary/sae", "known_dictionary/fista", "known_dictionary/omp",
                "unknown/sae", "unknown/mlp", "unknown/sc")
# three λ per method in the grid, placed where the main setting's and a probe's validation choices fell
GRID_LAMBDAS: dict[str, tuple[float, ...]] = {
    "known_dictionary/sae": (0.3, 1.0, 3.0), "known_dictionary/fista": (0.01, 0.03, 0.1),
    "unknown/sae": (0.1, 0.3, 1.0), "unknown/mlp": (0.03, 0.1, 0.3), "unknown/sc": (0.1, 0.3, 1.0)}
METRICS = ("code_mcc", "dict_mcc", "val_code_mcc", "l0", "train_flops", "infer_flops_per_sample", "total_flops",
           "selection_flops", "seconds")


@dataclass
class DecoupledSyntheticScale:
    """One scale of the decoupled-synthetic reproduction."""

    n: int = 16
    """N, true atoms, main setting."""
    m: int = 8
    """M, data dimension, main setting."""
    k: int = 3
    """K, active atoms per sample, main setting."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds of the main setting (each: a new truth, new samples, new initialisations)."""
    n_train: int = 1024
    """Training samples (every method trains on these only)."""
    n_validation: int = 512
    """Validation samples: λ / target L0 is chosen on their code MCC."""
    n_test: int = 1024
    """Test samples: every reported code MCC."""
    main: Budget = field(default_factory=lambda: Budget(lambdas=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0)))
    """Methods and budget of the main setting (all three regimes, every method)."""
    grid_n: tuple[int, ...] = (16, 32, 64, 128, 256)
    grid_m: tuple[int, ...] = (8, 16, 32)
    grid_k: tuple[int, ...] = (3, 6, 9)
    grid_seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every grid cell."""
    grid: Budget = field(default_factory=lambda: Budget(steps=1000, lambdas=(0.1, 0.3, 1.0),
                                                        lambdas_by_method=dict(GRID_LAMBDAS), ito_max_iters=500,
                                                        ito_tol=1e-4, sc_rounds=30, methods=GRID_METHODS))
    """Methods and budget of the grid."""
    chance_draws: int = 20
    """Random unit dictionaries per cell and seed for the chance level of dictionary MCC."""
    device: str = "cpu"
    threads: int = 1
    """Torch CPU threads (1 is fastest for these tiny problems on a shared machine); 0 leaves torch's default."""
    plots: bool = True


_SMOKE_BUDGET = Budget(steps=30, lambdas=(0.1, 0.3), mlp_hidden=(16,), mlp_hidden_known_codes=(32,), ito_max_iters=100,
                       ito_tol=1e-4, sc_rounds=3, sc_code_iters=5, pursuit_k_factors=(1.0, 2.0))
SCALES: dict[str, DecoupledSyntheticScale] = {
    "smoke": DecoupledSyntheticScale(seeds=(0, 1), n_train=128, n_validation=64, n_test=128, main=_SMOKE_BUDGET,
                                     grid_n=(16, 32), grid_m=(8,), grid_k=(3, 9), grid_seeds=(0, 1),
                                     grid=replace(_SMOKE_BUDGET, steps=20, sc_rounds=2, methods=GRID_METHODS),
                                     chance_draws=5),
    "cpu": DecoupledSyntheticScale(),
    "gpu": DecoupledSyntheticScale(seeds=tuple(range(10)), grid_seeds=tuple(range(5)),
                                   main=Budget(steps=5000, lambdas=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
                                   grid=Budget(steps=3000, lambdas=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0), ito_max_iters=2000,
                                               ito_tol=1e-5, sc_rounds=200,
                                               methods=GRID_METHODS + ("known_dictionary/mlp", "unknown/sae_ito")),
                                   device="cuda", threads=0),
}


def validate(cfg: DecoupledSyntheticScale) -> None:
    cfg.main.validate()
    cfg.grid.validate()
    if not cfg.seeds or min(cfg.n_train, cfg.n_validation, cfg.n_test) < 1:
        raise SaekitError("need at least one seed and n_train, n_validation, n_test >= 1")
    if min(cfg.n, cfg.m, cfg.k) < 1 or cfg.k > cfg.n or cfg.k >= cfg.m:
        raise SaekitError(f"the main setting needs 1 <= K < M and K <= N, got N={cfg.n} M={cfg.m} K={cfg.k}")
    if cfg.grid_n and (not cfg.grid_seeds or min(cfg.grid_n + cfg.grid_m + cfg.grid_k) < 1):
        raise SaekitError("grid values and seeds must be positive")
    if cfg.chance_draws < 2:
        raise SaekitError("chance_draws must be >= 2")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SaekitError(f"device {cfg.device!r} requested but CUDA is not available")
