"""The g-SAE reproduction's scales, the SAE recipes (variants) and the β units."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from saekit.config import DataConfig, LMConfig, SAEConfig, TrainConfig
from saekit.errors import SaekitError

Family = Literal["topk", "norm", "raw"]
FAMILIES: tuple[Family, ...] = ("norm", "raw")
FAMILY_LABEL = {"topk": "TopK", "norm": "g-SAE, normalised ĝ = g/E‖g‖", "raw": "g-SAE, paper's raw g",
                "best": "g-SAE, β chosen on validation from both grids"}

PAPER = {
    "delta_ce": "g-SAE reconstructions are more faithful downstream than TopK's at the same k "
                "(lower next-token loss when spliced in; GPT-2 small, layer 7)",
    "dead": "fewer dead latents than TopK",
    "steering": "latents more effective at steering the model's logits in arbitrary contexts",
}


@dataclass
class GSAEScale:
    """One scale of the g-SAE reproduction."""

    lm: LMConfig = field(default_factory=lambda: LMConfig(with_grads=True))
    """Model, hookpoint and corpus; the store is harvested with LM gradients (with_grads must be true)."""
    store: str = "runs/reproduce/stores/smollm2-resid_post.9-grads"
    """Activation store with gradients ('' = WORK/store); relative paths are relative to the working directory."""
    train_tokens: int = 1_048_576
    """Training tokens harvested (activations and gradients)."""
    fp16: bool = True
    """Store activations as float16 (gradients stay float32)."""
    shard_tokens: int = 32768
    """Tokens per store shard."""
    width: int = 4608
    """Latents of every SAE (8 x d_in)."""
    ks: tuple[int, ...] = (16, 32, 64)
    """Latents kept per token; g-SAE and TopK are compared at equal k."""
    norm_betas: tuple[float, ...] = (1.0, 4.0, 16.0)
    """β grid with saekit's normalised gradient ĝ = g / E‖g‖ (seed 0)."""
    raw_betas: tuple[float, ...] = (1.0, 10.0, 100.0)
    """β grid with the paper's raw g (model units, CE summed over the context) (seed 0)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds; the β grid runs at the first, TopK and the chosen β at all."""
    steps: int = 256
    batch_size: int = 4096
    lr: float = 1e-3
    warmup_steps: int = 20
    init_samples: int = 4096
    """Sample for the input scale, b_dec and grad_scale (the trainer's init_samples)."""
    auxk_dead_tokens: int = 262_144
    """AuxK treats a latent as dead after this many tokens without firing (sae.dead_tokens)."""
    dead_window_tokens: int = 1_000_000
    """Reported dead latent: no activation in the trainer's last this many training tokens."""
    validation_contexts: int = 64
    """First held-out contexts: the β of each (k, family) is chosen on them (spliced ΔCE)."""
    test_contexts: int = 128
    """The next held-out contexts: every number a verdict rests on."""
    splice_batch_contexts: int = 8
    n_boot: int = 2000
    """Bootstrap resamples (test contexts; steering latents)."""
    steer_latents: int = 64
    """Latents per SAE for steering (drawn among those firing on the steering contexts)."""
    steer_seeds: tuple[int, ...] = (0,)
    steer_ks: tuple[int, ...] = ()
    """The k whose SAEs are steered (empty: every k); the steering claim is decided over these."""
    pool_families: bool = False
    """One g-SAE per k at the further seeds: the β with the lowest validation ΔCE over *both* grids (the
    two families are the same score with β in different units, so pooling the grids is one finer grid).
    False: the chosen β of each family is carried to every seed (twice the SAEs and splices)."""
    """Training seeds whose SAEs are steered (TopK and the chosen g-SAEs at every k)."""
    steer_alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    """Steering strengths, in units of the mean activation norm."""
    steer_calib_alpha: float = 0.2
    steer_kl_budget: float = 0.25
    """KL budget κ (nats/token) at which a latent's effect on its target tokens is read."""
    steer_calib_contexts: int = 2
    steer_eval_contexts: int = 4
    """Steering contexts (calibration, measurement), drawn from the test contexts."""
    selection_contexts: int = 16
    """First test contexts on which each g-SAE's selection with gradients is compared with β = 0."""
    device: str = "cpu"


SCALES: dict[str, GSAEScale] = {
    "smoke": GSAEScale(lm=LMConfig(with_grads=True, context_length=32), store="", train_tokens=512,
                       shard_tokens=128, width=256, ks=(16,), norm_betas=(2.0, 16.0), raw_betas=(10.0,),
                       seeds=(0, 1), steps=8, batch_size=256, warmup_steps=1, init_samples=512,
                       auxk_dead_tokens=512, dead_window_tokens=1024, validation_contexts=2, test_contexts=2,
                       splice_batch_contexts=2, n_boot=50, steer_latents=2, steer_alphas=(0.2, 0.8),
                       steer_calib_alpha=0.4, steer_kl_budget=0.05, steer_calib_contexts=1, steer_eval_contexts=1,
                       selection_contexts=1),
    "cpu": GSAEScale(width=2304, norm_betas=(0.5, 4.0, 12.0), raw_betas=(6.0,), pool_families=True, validation_contexts=48,
                     test_contexts=96, splice_batch_contexts=16, steer_ks=(32,), steer_alphas=(0.1, 0.2, 0.4),
                     steer_eval_contexts=3),
    "gpu": GSAEScale(lm=LMConfig(with_grads=True, device="cuda", model_batch_contexts=64),
                     store="runs/reproduce/stores/smollm2-resid_post.9-grads-gpu", train_tokens=20_971_520,
                     shard_tokens=262_144, width=9216, steps=5120, lr=5e-4, warmup_steps=200,
                     auxk_dead_tokens=2_000_000, dead_window_tokens=5_000_000, validation_contexts=256,
                     test_contexts=1024, splice_batch_contexts=32, steer_latents=128, steer_seeds=(0, 1, 2),
                     steer_calib_contexts=4, steer_eval_contexts=16, device="cuda"),
}
# cpu: the Shakespeare train split holds 1.62M tokens; 1,048,576 are harvested and trained on once
# (256 x 4096), so the 1M-token dead window covers all but the first 12 steps. Sized to fit one 3-hour
# session on 2 cores (the harvest with gradients alone runs ~220 tokens/s, 80 min): 2304 latents (4 x d_in),
# a four-step β ladder over both grids (E‖g‖ ≈ 0.35 here, so raw 6 is normalised 2.1: the ladder is 0.5,
# 2.1, 4, 12 in normalised units; an earlier one-seed pilot found 0.5-2 best and 8-32 worse, the three-step
# run chose 4, its top, at k = 32, so 12 brackets it), one g-SAE per k
# carried to every seed (pool_families), 48 validation and 96 test contexts, steering at k = 32 only.
# gpu: needs a corpus of >= 21M tokens (--lm.corpus); Shakespeare would run out at 1.62M.


# ---------------------------------------------------------------------------------------------------
# runs


@dataclass(frozen=True)
class Variant:
    """One SAE recipe: TopK, or a g-SAE of a β family."""

    family: Family
    k: int
    beta: float | None = None

    @property
    def architecture(self) -> str:
        return "topk" if self.family == "topk" else "gradient_topk"

    def name(self, seed: int) -> str:
        if self.family == "topk":
            return f"topk-k{self.k}-s{seed}"
        return f"gsae_{self.family}-k{self.k}-b{self.beta:g}-s{seed}"


def store_path(cfg: GSAEScale, work: Path) -> Path:
    return Path(cfg.store) if cfg.store else Path(work) / "store"


def run_dir(work: Path, v: Variant, seed: int) -> Path:
    return Path(work) / "runs" / v.name(seed)


def saekit_beta(v: Variant, units: dict[str, float]) -> float | None:
    """The ``sae.beta`` that trains ``v``: β itself (normalised), β_raw · E‖g‖ (raw), None (TopK)."""
    if v.family == "topk":
        return None
    assert v.beta is not None
    return v.beta if v.family == "norm" else v.beta * units["mean_grad_norm"]


def train_config(cfg: GSAEScale, work: Path, v: Variant, seed: int, units: dict[str, float]) -> TrainConfig:
    """The training recipe of one SAE; only the architecture and β differ between SAEs of one k."""
    beta = saekit_beta(v, units)
    extra = {} if beta is None else {"beta": beta}
    sae = SAEConfig(architecture=v.architecture, n_latents=cfg.width, k=v.k, dead_tokens=cfg.auxk_dead_tokens,
                    **extra)
    return TrainConfig(sae=sae, data=DataConfig(source="store", store=str(store_path(cfg, work)),
                                                     store_seed=seed),
                       steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                       init_samples=cfg.init_samples, dead_window_tokens=cfg.dead_window_tokens,
                       log_every=max(1, min(10, cfg.steps)), ckpt_every=50, out_dir=str(run_dir(work, v, seed)),
                       seed=seed, device=cfg.device, progress=False)


def grid(cfg: GSAEScale, k: int) -> list[Variant]:
    return ([Variant("topk", k)] + [Variant("norm", k, b) for b in cfg.norm_betas]
            + [Variant("raw", k, b) for b in cfg.raw_betas])


def effective_betas(sae_cfg: Any) -> dict[str, float]:
    """β of a trained g-SAE in both units, from its saved config: score z (1 + β/(s·G) |d · g|)."""
    norm = float(sae_cfg.beta)
    return {"beta_norm": norm, "beta_raw": norm / (float(sae_cfg.input_scale) * float(sae_cfg.grad_scale))}


def gradient_units(store: Path, init_samples: int) -> dict[str, float]:
    """The input scale s and grad_scale G exactly as the trainer fits them (same sample, same first
    batch, same functions), and E‖g‖ = s·G in model units: the factor between raw and normalised β."""
    from saekit.data.factory import make_source
    from saekit.data.source import sample_gradients
    from saekit.sae import architecture_class
    from saekit.train.initialisation import input_scale

    source = make_source(DataConfig(source="store", store=str(store)), "train")
    if not source.has_grads:
        raise SaekitError(f"the store {store} has no gradients: g-SAEs need a store harvested with lm.with_grads")
    sample = source.sample(init_samples)
    s = input_scale(sample)
    grads = sample_gradients(source, sample.shape[0])  # as the trainer's initialise takes them
    probe = replace(SAEConfig(architecture="gradient_topk", beta=1.0), input_scale=s)
    g = architecture_class("gradient_topk").fit_to_sample(probe, sample, grads).grad_scale
    return {"input_scale": s, "grad_scale": g, "mean_grad_norm": s * g,
            "mean_act_norm": float(sample.double().norm(dim=-1).mean()), "sample_tokens": int(sample.shape[0])}


def check(cfg: GSAEScale) -> None:
    if not cfg.lm.with_grads:
        raise SaekitError("the g-SAE reproduction needs a store with gradients: lm.with_grads must be true")
    if not cfg.seeds or not cfg.ks or not (cfg.norm_betas or cfg.raw_betas):
        raise SaekitError("need at least one seed, one k and one β")
    if any(k > cfg.width for k in cfg.ks):
        raise SaekitError(f"every k must be <= width={cfg.width}")
    if cfg.steps * cfg.batch_size < cfg.dead_window_tokens:
        raise SaekitError("steps x batch_size must cover the dead-latent window (dead_window_tokens)")
    if not set(cfg.steer_seeds) <= set(cfg.seeds):
        raise SaekitError("steer_seeds must be among seeds")
    if not set(cfg.steer_ks) <= set(cfg.ks):
        raise SaekitError("steer_ks must be among ks")
    if cfg.test_contexts < cfg.steer_calib_contexts + cfg.steer_eval_contexts:
        raise SaekitError("the steering contexts are drawn from the test contexts: too few test contexts")
