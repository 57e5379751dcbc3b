"""Learning-rate and sparsity-coefficient schedules, as pure functions of the step."""

from __future__ import annotations

from saekit.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig, last_resample_step: int | None = None) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the final ``decay_fraction``;
    times a fresh linear warm-up after each resampling (Gated SAE paper)."""
    factor = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    decay_steps = int(cfg.decay_fraction * cfg.steps)
    if decay_steps > 0:
        factor *= min(1.0, (cfg.steps - step) / decay_steps)
    if last_resample_step is not None and cfg.resample_warmup_steps > 0:
        factor *= min(1.0, (step - last_resample_step + 1) / cfg.resample_warmup_steps)
    return factor


def sparsity_factor(step: int, cfg: TrainConfig) -> float:
    """λ rises linearly from 0 to its full value over the first ``sparsity_warmup_fraction`` of training."""
    warm = int(cfg.sparsity_warmup_fraction * cfg.steps)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0
