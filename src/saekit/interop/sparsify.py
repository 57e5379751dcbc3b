"""EleutherAI sparsify folders: ``cfg.json`` + ``sae.safetensors``.

What ``sparsify.SparseCoder.load_from_disk`` reads (eai-sparsify 1.x, ``sparse_coder.py``): cfg.json is
``SparseCoderConfig`` (``activation`` topk|groupmax, ``expansion_factor``, ``normalize_decoder``,
``num_latents``, ``k``, ``multi_topk``, ``skip_connection``, ``transcode``; unknown keys are dropped)
plus ``d_in``. The weights are the module's state dict: ``encoder.weight`` [num_latents, d_in],
``encoder.bias`` [num_latents], ``W_dec`` [num_latents, d_in], ``b_dec`` [d_in] (and ``W_skip``
[d_in, d_in] with a skip connection). Encoding is ReLU(encoder(x − b_dec)) then the top k, decoding
``Σ top_acts · W_dec[top_indices] + b_dec``: the same codes as saekit's TopK.

saekit -> sparsify: topk -> topk, gradient_topk -> topk (gradient-free inference; saekit's own keys in
cfg.json say so). sparsify (1.3.3) has no ReLU+L1, Gated or JumpReLU SAE and no thresholded activation
(``activation`` is topk or groupmax), so relu, gated, jumprelu, batchtopk and matryoshka go to SAELens only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saekit.errors import SaekitError
from saekit.interop.saelens import GSAE_NOTE
from saekit.interop.weights import Folded, check_finite, fold, unfold
from saekit.io import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from saekit.sae import SparseAutoencoder

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
EXPORTABLE = ("topk", "gradient_topk")


def is_sparsify_dir(path: Path) -> bool:
    return (path / CFG).is_file() and (path / WEIGHTS).is_file()


def export(sae: SparseAutoencoder, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` as a sparsify folder; ``extra``: more keys for cfg.json (sparsify drops unknown keys)."""
    arch = sae.cfg.architecture
    if arch not in EXPORTABLE:
        raise SaekitError(f"sparsify has TopK SAEs only, so saekit's {arch!r} cannot be exported to it "
                          f"(exportable to sparsify: {', '.join(EXPORTABLE)}); use --format saelens")
    f = fold(sae)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unit = bool(torch.allclose(f.W_dec.norm(dim=1), torch.ones(f.n_latents), atol=1e-5))
    cfg: dict[str, Any] = {"activation": "topk", "expansion_factor": max(1, f.n_latents // f.d_in),
                           "normalize_decoder": unit, "num_latents": f.n_latents, "k": f.k, "multi_topk": False,
                           "skip_connection": False, "transcode": False, "d_in": f.d_in,
                           "saekit_architecture": arch, "saekit_cfg": f.cfg, **(extra or {})}
    if arch == "gradient_topk":
        cfg["saekit_note"] = GSAE_NOTE.replace("SAELens", "sparsify")
    atomic_save_tensors(out / WEIGHTS, {"encoder.weight": f.W_enc, "encoder.bias": f.b_enc,
                                        "W_dec": f.W_dec, "b_dec": f.b_dec})
    atomic_write_json(out / CFG, cfg)
    return out


def load(path: str | Path) -> SparseAutoencoder:
    """A saekit TopK SAE with the same codes and reconstructions as sparsify's coder in ``path``."""
    path = Path(path)
    cfg = read_json(path / CFG)
    if not isinstance(cfg, dict) or "d_in" not in cfg:
        raise SaekitError(f"{path / CFG} is not a sparsify config (no d_in)")
    if cfg.get("activation", "topk") != "topk":
        raise SaekitError(f"{path}: sparsify activation {cfg.get('activation')!r} has no saekit equivalent (topk only)")
    if cfg.get("transcode"):
        raise SaekitError(f"{path}: a sparsify transcoder (transcode=true) is not an autoencoder; saekit cannot load it")
    t = load_tensors(path / WEIGHTS)
    check_finite(t, str(path / WEIGHTS))
    t = {k: v.to(torch.float32) for k, v in t.items()}
    missing = [k for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if k not in t]
    if missing:
        raise SaekitError(f"{path / WEIGHTS} lacks {', '.join(missing)} (a decoder-less coder cannot be loaded)")
    if "W_skip" in t and bool(t["W_skip"].abs().max() > 0):
        raise SaekitError(f"{path}: a skip connection (W_skip) has no saekit equivalent")
    W_enc, W_dec = t["encoder.weight"], t["W_dec"]
    if W_enc.shape != W_dec.shape or W_dec.shape[1] != cfg["d_in"]:
        raise SaekitError(f"{path}: tensor shapes do not match cfg.json (d_in={cfg['d_in']})")
    k = cfg.get("k")
    if not isinstance(k, int):
        raise SaekitError(f"{path / CFG}: k must be an integer")
    saekit_cfg = cfg.get("saekit_cfg") if isinstance(cfg.get("saekit_cfg"), dict) else {}
    arch = "gradient_topk" if cfg.get("saekit_architecture") == "gradient_topk" else "topk"
    f = Folded(arch, W_enc, W_dec, t["b_dec"], b_enc=t["encoder.bias"], k=k)
    if saekit_cfg.get("architecture") == arch:
        f.cfg = saekit_cfg
    return unfold(f)
