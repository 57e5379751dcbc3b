"""Other libraries' SAE formats, in and out: SAELens, EleutherAI sparsify; the SAEBench adapter.

``saekit.load`` (and so every command that takes an SAE folder) recognises a folder by its files:

| files | format |
|---|---|
| ``cfg.json`` + ``model.safetensors`` | saekit |
| ``cfg.json`` + ``sae_weights.safetensors`` | SAELens (v6; earlier layouts as SAELens converts them) |
| ``cfg.json`` + ``sae.safetensors`` | EleutherAI sparsify |

Only JSON and safetensors are read; a folder of PyTorch pickles (``.pt``) is refused with the way
to convert it safely.
"""

from __future__ import annotations

from pathlib import Path

from saekit.errors import SaekitError

FORMATS = ("saekit", "saelens", "sparsify")
PICKLES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def pickle_error(path: Path) -> SaekitError:
    return SaekitError(
        f"{path} is a PyTorch pickle; saekit never unpickles (loading a pickle can run arbitrary code). If you "
        "trust it, convert it once in Python: `import torch; from safetensors.torch import save_file; "
        f"save_file(torch.load('{path.name}', weights_only=True), 'sae_weights.safetensors')` (SAELens tensor names, "
        "beside its cfg.json) and load that folder")


def detect_format(path: str | Path) -> str:
    """'saekit', 'saelens' or 'sparsify' for a folder holding that format; a one-line error otherwise."""
    from saekit.interop import saelens, sparsify

    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in PICKLES:
            raise pickle_error(path)
        raise SaekitError(f"{path} is a file; pass the SAE's folder")
    if not path.is_dir():
        raise SaekitError(f"no SAE folder at {path}")
    if (path / "model.safetensors").is_file():
        return "saekit"
    if saelens.is_saelens_dir(path):
        return "saelens"
    if sparsify.is_sparsify_dir(path):
        return "sparsify"
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLES)
    if pickles:
        raise pickle_error(pickles[0])
    if (path / "cfg.json").is_file():
        return "saekit"  # saekit's loader names the missing weights file
    raise SaekitError(f"no SAE in {path}: expected cfg.json with model.safetensors (saekit), "
                      "sae_weights.safetensors (SAELens) or sae.safetensors (sparsify)")


def load_foreign(path: str | Path, fmt: str):
    """The saekit SAE equivalent to a SAELens or sparsify folder."""
    from saekit.interop import saelens, sparsify

    if fmt == "saelens":
        return saelens.load(path)
    if fmt == "sparsify":
        return sparsify.load(path)
    raise SaekitError(f"unknown SAE format {fmt!r}; choose one of {', '.join(FORMATS)}")
