"""saekit SAEs as plain model-unit tensors, and back: what every export and import shares.

saekit keeps ``input_scale`` s inside the SAE: codes are f = enc(s·x) with the encoder reading
s·x − b_dec, and x̂ = (f W_dec + b_dec) / s. Folding s into the weights gives an SAE that takes
model-unit activations and returns the same codes and reconstructions:

    encoder rows  W ← s·W        (so (s·x − b_dec) Wᵀ = (x − b_dec/s)(s·W)ᵀ)
    b_dec         ← b_dec / s
    W_dec         ← W_dec / s
    encoder biases unchanged (b_enc, b_gate, b_mag, r_mag)
    thresholds unchanged         (JumpReLU's θ, BatchTopK's global θ: they compare pre-activations z,
                                  and z is the same function of x before and after folding)

For the gradient-aware g-SAE the score z (1 + β |W_dec g / s| / grad_scale) is also unchanged once
W_dec is divided by s and g is taken in model units, so a folded g-SAE with input_scale 1 selects
the same latents with gradients too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from saekit.config import SAEConfig
from saekit.errors import SaekitError
from saekit.sae import SparseAutoencoder, architecture_class

PER_LATENT = ("jumprelu",)  # f = z ⊙ H(z − θ), θ = exp(log_threshold) per latent
GLOBAL = ("batchtopk", "matryoshka", "gradient_batchtopk", "gradient_matryoshka")  # one θ for every latent
THRESHOLDED = PER_LATENT + GLOBAL
LINEAR = ("relu", "topk", "gradient_topk", *THRESHOLDED)  # affine encoder W_enc, b_enc on x − b_dec
GATED = ("gated",)
TINY = torch.finfo(torch.float32).tiny
"""Smallest threshold saekit stores (log θ must be finite): z ⊙ H(z − TINY) differs from ReLU(z) only
for 0 < z ≲ 1.2e-38, so a threshold ≤ 0 (whose JumpReLU is ReLU) is stored as log TINY."""


@dataclass
class Folded:
    """An SAE in model units with input_scale folded in; encoder matrices are [n_latents, d_in]."""

    architecture: str
    W_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    b_enc: Tensor | None = None
    b_gate: Tensor | None = None
    r_mag: Tensor | None = None
    b_mag: Tensor | None = None
    k: int | None = None
    threshold: Tensor | None = None
    """Per-latent JumpReLU threshold θ in code units (jumprelu, and the global θ of batchtopk-like SAEs
    repeated for every latent)."""
    threshold_updates: int | None = None
    """batchtopk-like SAEs: how many training batches the moving average of θ has seen."""
    cfg: dict[str, Any] = field(default_factory=dict)
    """saekit's hyperparameters (the SAE's cfg.to_dict() with input_scale = 1)."""

    @property
    def d_in(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def n_latents(self) -> int:
        return int(self.W_dec.shape[0])


def fold(sae: SparseAutoencoder) -> Folded:
    """Model-unit tensors of ``sae`` (float32, on the CPU), input_scale folded in."""
    arch = sae.cfg.architecture
    s = float(sae.cfg.input_scale)
    t = {k: v.detach().to("cpu", torch.float32) for k, v in sae.state_dict().items()}
    W_dec, b_dec = t["dictionary.W_dec"] / s, t["dictionary.b_dec"] / s
    cfg = replace(sae.cfg, input_scale=1.0).to_dict()
    if arch in LINEAR:
        out = Folded(arch, t["W_enc"] * s, W_dec, b_dec, b_enc=t["b_enc"].clone(),
                     k=int(sae.cfg.k) if arch not in ("relu", *PER_LATENT) else None, cfg=cfg)
        if arch in PER_LATENT:
            out.threshold = t["log_threshold"].exp()
        elif arch in GLOBAL:
            out.threshold = t["threshold"].expand(out.n_latents).clone()
            out.threshold_updates = int(sae.state_dict()["threshold_updates"])  # int64, not via float32
        return out
    if arch in GATED:
        return Folded(arch, t["W_gate"] * s, W_dec, b_dec, b_gate=t["b_gate"].clone(), r_mag=t["r_mag"].clone(),
                      b_mag=t["b_mag"].clone(), cfg=cfg)
    raise SaekitError(f"architecture {arch!r} has no export yet (supported: {', '.join(LINEAR + GATED)})")


def unfold(f: Folded) -> SparseAutoencoder:
    """A saekit SAE (input_scale 1) from model-unit tensors; hyperparameters from ``f.cfg`` where given."""
    known = architecture_class(f.architecture)
    base = {k: v for k, v in f.cfg.items() if k != "architecture"}
    base.update(architecture=f.architecture, d_in=f.d_in, n_latents=f.n_latents, input_scale=1.0)
    if f.k is not None:
        base["k"] = f.k
    if f.architecture == "relu":
        base.setdefault("unit_norm_atoms", False)
    fields = set(SAEConfig.__dataclass_fields__)
    cfg = SAEConfig(**{k: v for k, v in base.items() if k in fields})
    cfg = SAEConfig.from_dict(cfg.to_dict())  # the architecture's own fields only, type-checked
    cfg.validate()
    sae = known(cfg)
    state = {"dictionary.W_dec": f.W_dec, "dictionary.b_dec": f.b_dec}
    if f.architecture in LINEAR:
        state.update(W_enc=f.W_enc, b_enc=f.b_enc)
        if f.architecture in THRESHOLDED and f.threshold is None:
            raise SaekitError(f"a {f.architecture} SAE needs its threshold")
        if f.architecture in PER_LATENT:
            state["log_threshold"] = exact_log(f.threshold.clamp_min(TINY))
        elif f.architecture in GLOBAL:
            theta = f.threshold.reshape(-1)
            if theta.numel() == 0 or not bool((theta == theta[0]).all()):
                raise SaekitError(f"a {f.architecture} SAE has one threshold for every latent; these differ")
            updates = f.threshold_updates if f.threshold_updates is not None else int(theta[0] > 0)
            state.update(threshold=theta[0].clone(), threshold_updates=torch.tensor(updates, dtype=torch.int64))
    else:
        state.update(W_gate=f.W_enc, b_gate=f.b_gate, r_mag=f.r_mag, b_mag=f.b_mag)
    expected = sae.state_dict()
    for name, value in state.items():
        if value is None or tuple(value.shape) != tuple(expected[name].shape):
            got = None if value is None else tuple(value.shape)
            raise SaekitError(f"{name} has shape {got}, expected {tuple(expected[name].shape)}")
    sae.load_state_dict({k: (v if k == "threshold_updates" else v.to(torch.float32)).contiguous()
                         for k, v in state.items()})
    return sae


def exact_log(theta: Tensor) -> Tensor:
    """log θ in float32 such that exp gives back exactly θ where some float32 does (θ > 0).

    float32 log then exp misses θ by an ulp for a few % of values; the nearest floats around the
    float64 log find one that hits it. saekit's exported thresholds are exps of float32s, so
    saekit -> SAELens -> saekit keeps them bit for bit (and re-exporting gives identical bytes); a
    foreign θ that no float32's exp equals gets the closest one (relative error ~1e-7·|log θ|)."""
    theta = theta.to(torch.float32)
    start = theta.double().log().float()
    best, err = start, (start.exp() - theta).abs()
    for direction in (float("inf"), float("-inf")):
        c = start
        for _ in range(3):
            c = torch.nextafter(c, torch.full_like(c, direction))
            e = (c.exp() - theta).abs()
            better = e < err
            best, err = torch.where(better, c, best), torch.where(better, e, err)
    return best


def check_finite(tensors: dict[str, Tensor], where: str) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SaekitError(f"{where}: tensor {name} contains NaN or inf")
