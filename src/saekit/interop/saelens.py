"""SAELens (v6) folders: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

What SAELens's ``SAE.load_from_disk`` reads (sae_lens 6.x, ``saes/sae.py`` and the architectures in
``saes/``): a flat cfg.json with ``architecture`` (standard, gated, topk, jumprelu, ...), ``d_in``,
``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, the architecture's own fields (``k``, ``rescale_acts_by_decoder_norm`` for
topk) and a free-form ``metadata`` dict (``sae_lens_version`` decides whether the pre-6.0 renames
apply; ``model_name``, ``hook_name``, ... describe the hookpoint). The weights use SAELens's
layout: ``W_enc`` is [d_in, d_sae] (saekit's transposed), ``W_dec`` [d_sae, d_in], ``b_dec``
[d_in], and ``b_enc`` (standard, topk, jumprelu) or ``b_gate``, ``r_mag``, ``b_mag`` (gated), and
``threshold`` [d_sae] (jumprelu). Encoding is ``(x − b_dec·apply_b_dec_to_input) @ W_enc + b`` then the
activation; decoding ``f @ W_dec + b_dec``. JumpReLU's activation is ``ReLU(z) · 1[z > threshold]``
(``saes/jumprelu_sae.py``), which is saekit's ``z · 1[z > θ]`` for every θ ≥ 0; it has no decoder-norm
rescaling at inference (only ``fold_W_dec_norm`` on request, which rescales the threshold with b_enc).
SAELens itself saves its trained BatchTopK and Matryoshka-BatchTopK SAEs as jumprelu with the global
threshold in every latent. ``sparsity.safetensors`` holds ``sparsity``: log10 of each latent's firing
frequency (+1e-10).

| saekit | SAELens | |
|---|---|---|
| relu | standard | |
| gated | gated | |
| topk | topk | |
| gradient_topk | topk | gradient-free inference (β = 0), said in the metadata |
| jumprelu | jumprelu | θ = exp(log θ) |
| batchtopk, matryoshka | jumprelu | the global inference θ in every latent; an inference-time conversion |
| gradient_batchtopk, gradient_matryoshka | jumprelu | likewise, and gradient-free (β = 0) |

input_scale is folded into the weights (``saekit.interop.weights``); thresholds are in code units and do
not change. Importing, SAELens's standard, gated, topk and jumprelu become relu, gated, topk and jumprelu
(a jumprelu threshold ≤ 0 is stored as ``weights.TINY``: the same codes), unless ``metadata.saekit_cfg``
names the saekit architecture the folder was exported from, which is then restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.interop.weights import GLOBAL, Folded, check_finite, fold, unfold
from saekit.io import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from saekit.sae import SparseAutoencoder

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"
SAELENS_VERSION = "6.0.0"  # the config layout written (>= 6.0: no pre-6 renames on load)
TO_SAELENS = {"relu": "standard", "gated": "gated", "topk": "topk", "gradient_topk": "topk", "jumprelu": "jumprelu",
              **{arch: "jumprelu" for arch in GLOBAL}}
GSAE_NOTE = ("saekit g-SAE (gradient TopK) exported as a plain TopK SAE: SAELens encodes without the LM "
             "gradient, which is the g-SAE's inference with beta = 0; saekit.load of this folder restores the "
             "gradient-aware selection (saekit_cfg)")
BATCHTOPK_NOTE = ("saekit {arch} SAE exported as a JumpReLU SAE with its global inference threshold in every latent: "
                  "an inference-time conversion (the same codes per token as saekit's inference; training's "
                  "batch-wide top k*B selection{extra} is not represented); saekit.load of this folder restores "
                  "the {arch} SAE (saekit_cfg)")
NOTES = {"gradient_topk": GSAE_NOTE,
         "batchtopk": BATCHTOPK_NOTE.format(arch="batchtopk", extra=""),
         "matryoshka": BATCHTOPK_NOTE.format(arch="matryoshka", extra=" and the nested-prefix losses"),
         "gradient_batchtopk": BATCHTOPK_NOTE.format(arch="gradient_batchtopk", extra=" and the LM gradient "
                                                     "(inference with beta = 0)"),
         "gradient_matryoshka": BATCHTOPK_NOTE.format(arch="gradient_matryoshka", extra=", the nested-prefix "
                                                      "losses and the LM gradient (inference with beta = 0)")}


def is_saelens_dir(path: Path) -> bool:
    return (path / CFG).is_file() and (path / WEIGHTS).is_file()


def hook_name(hookpoint: str) -> str | None:
    """saekit's hookpoint (resid_post.L, attn_out.L, mlp_out.L) in TransformerLens naming."""
    kind, _, layer = hookpoint.partition(".")
    names = {"resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
    if kind in names and layer.isdigit():
        return f"blocks.{layer}.{names[kind]}"
    return None


def export(sae: SparseAutoencoder, out: str | Path, *, frequency: Tensor | None = None,
           metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` as a SAELens folder at ``out``; ``frequency``: each latent's firing frequency, if known."""
    arch = sae.cfg.architecture
    if arch not in TO_SAELENS:
        raise SaekitError(f"SAELens has no equivalent of saekit's {arch!r} here (exportable: "
                          f"{', '.join(TO_SAELENS)})")
    f = fold(sae)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": f.W_enc.T.contiguous(), "W_dec": f.W_dec, "b_dec": f.b_dec}
    if f.b_enc is not None:
        tensors["b_enc"] = f.b_enc
    if arch == "gated":
        tensors.update(b_gate=f.b_gate, r_mag=f.r_mag, b_mag=f.b_mag)
    if f.threshold is not None:
        tensors["threshold"] = f.threshold
    meta = {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": None,
            "saekit_architecture": arch, "saekit_cfg": f.cfg, **(metadata or {})}
    if f.threshold_updates is not None:
        meta["saekit_threshold_updates"] = f.threshold_updates
    if arch in NOTES:
        meta["saekit_note"] = NOTES[arch]
    cfg: dict[str, Any] = {"architecture": TO_SAELENS[arch], "d_in": f.d_in, "d_sae": f.n_latents,
                           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
                           "normalize_activations": "none", "reshape_activations": "none", "metadata": meta}
    if TO_SAELENS[arch] == "topk":
        cfg.update(k=f.k, rescale_acts_by_decoder_norm=False)
    atomic_save_tensors(out / WEIGHTS, tensors)
    if frequency is not None:
        if frequency.shape != (f.n_latents,):
            raise SaekitError(f"firing frequencies have shape {tuple(frequency.shape)}, expected ({f.n_latents},)")
        atomic_save_tensors(out / SPARSITY, {"sparsity": torch.log10(frequency.float() + 1e-10)})
    atomic_write_json(out / CFG, cfg)
    return out


def load(path: str | Path) -> SparseAutoencoder:
    """A saekit SAE (input_scale 1) with the same encode/decode as SAELens's SAE in ``path``."""
    path = Path(path)
    cfg = read_json(path / CFG)
    if not isinstance(cfg, dict):
        raise SaekitError(f"{path / CFG} is not a SAELens config (expected a JSON object)")
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if not version or _major(version) < 6:  # pre-6.0 layout: SAELens's own renames
        cfg = {**cfg, "architecture": cfg.get("architecture", "standard")}
        if cfg.get("activation_fn_str", cfg.get("activation_fn")) == "topk":
            cfg["architecture"] = "topk"
            cfg.setdefault("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    arch = cfg.get("architecture")
    t = load_tensors(path / WEIGHTS)
    check_finite(t, str(path / WEIGHTS))
    t = {k: v.to(torch.float32) for k, v in t.items()}
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, "expected_average_only_in"):  # the latter is applied by the data loader, not the SAE
        raise SaekitError(f"{path}: normalize_activations={norm!r} is applied inside SAELens's SAE at run time and "
                          "has no saekit equivalent; fold it first (SAELens: sae.fold_activation_norm_scaling_factor "
                          "or fold_activation_whitening) and save again")
    if cfg.get("finetuning_scaling_factor") or "scaling_factor" in t and not torch.all(t["scaling_factor"] == 1):
        raise SaekitError(f"{path}: a finetuning scaling factor is not supported; fold it into W_dec first")
    for key in ("W_enc", "W_dec", "b_dec"):
        if key not in t:
            raise SaekitError(f"{path / WEIGHTS} has no {key} tensor (holds {', '.join(sorted(t))})")
    W_enc, W_dec, b_dec = t["W_enc"].T.contiguous(), t["W_dec"], t["b_dec"]
    d_in, d_sae = int(W_dec.shape[1]), int(W_dec.shape[0])
    if (cfg.get("d_in"), cfg.get("d_sae")) != (d_in, d_sae) or tuple(W_enc.shape) != (d_sae, d_in) \
            or tuple(b_dec.shape) != (d_in,):
        raise SaekitError(f"{path}: tensors do not match cfg.json (d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')})")
    # saekit's encoders always read x − b_dec; SAELens's may not: move b_dec·W_enc into the biases
    shift = torch.zeros(d_sae) if cfg.get("apply_b_dec_to_input", True) else -(W_enc @ b_dec)
    saekit_cfg = meta.get("saekit_cfg") if isinstance(meta.get("saekit_cfg"), dict) else {}
    wanted = meta.get("saekit_architecture")
    if arch == "standard":
        f = Folded("relu", W_enc, W_dec, b_dec, b_enc=_need(t, "b_enc", path) - shift)
    elif arch == "topk":
        b_enc = _need(t, "b_enc", path) - shift
        if cfg.get("rescale_acts_by_decoder_norm"):  # TopK over z·‖d_i‖, decoded with W_dec/‖d_i‖: fold the norms
            norms = W_dec.norm(dim=1)
            W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
        k = cfg.get("k")
        if not isinstance(k, int):
            raise SaekitError(f"{path / CFG}: a topk SAE needs an integer k")
        f = Folded("gradient_topk" if wanted == "gradient_topk" else "topk", W_enc, W_dec, b_dec, b_enc=b_enc, k=k)
    elif arch == "gated":
        r_mag = _need(t, "r_mag", path)
        f = Folded("gated", W_enc, W_dec, b_dec, b_gate=_need(t, "b_gate", path) - shift, r_mag=r_mag,
                   b_mag=_need(t, "b_mag", path) - shift * r_mag.exp())
    elif arch == "jumprelu":
        f = _jumprelu(t, W_enc, W_dec, b_dec, shift, path, wanted, saekit_cfg, meta)
    else:
        raise SaekitError(f"{path}: SAELens architecture {arch!r} has no saekit equivalent yet "
                          "(supported: standard, gated, topk, jumprelu)")
    if saekit_cfg.get("architecture") == f.architecture:
        f.cfg = saekit_cfg
    elif arch == "standard" and isinstance(cfg.get("l1_coefficient"), (int, float)):
        f.cfg = {"l1_coeff": float(cfg["l1_coefficient"])}
    return unfold(f)


def _jumprelu(t: dict[str, Tensor], W_enc: Tensor, W_dec: Tensor, b_dec: Tensor, shift: Tensor, path: Path,
              wanted: Any, saekit_cfg: dict[str, Any], meta: dict[str, Any]) -> Folded:
    """saekit's jumprelu, or the batchtopk-like SAE the folder was exported from when its metadata says so
    and its thresholds are one value ≥ 0 (what such an export writes)."""
    theta = _need(t, "threshold", path)
    if tuple(theta.shape) != (W_dec.shape[0],):
        raise SaekitError(f"{path / WEIGHTS}: threshold has shape {tuple(theta.shape)}, expected ({W_dec.shape[0]},)")
    b_enc = _need(t, "b_enc", path) - shift
    updates = meta.get("saekit_threshold_updates")
    if wanted in GLOBAL and saekit_cfg.get("architecture") == wanted and bool((theta == theta[0]).all()) \
            and float(theta[0]) >= 0:
        return Folded(wanted, W_enc, W_dec, b_dec, b_enc=b_enc, threshold=theta,
                      threshold_updates=updates if isinstance(updates, int) else None)
    return Folded("jumprelu", W_enc, W_dec, b_dec, b_enc=b_enc, threshold=theta)


def _need(t: dict[str, Tensor], key: str, path: Path) -> Tensor:
    if key not in t:
        raise SaekitError(f"{path / WEIGHTS} has no {key} tensor (holds {', '.join(sorted(t))})")
    return t[key]


def _major(version: Any) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def read_frequency(path: str | Path) -> Tensor | None:
    """Firing frequencies from ``sparsity.safetensors`` (10^sparsity), or None."""
    f = Path(path) / SPARSITY
    if not f.is_file():
        return None
    t = load_tensors(f)
    if "sparsity" not in t:
        return None
    return torch.pow(10.0, t["sparsity"].double()).sub(1e-10).clamp_min(0).float()

