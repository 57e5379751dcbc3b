"""`saekit export` (saekit -> SAELens / sparsify folder) and `saekit import` (SAELens / sparsify -> saekit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from saekit.errors import SaekitError


@dataclass
class ExportCommand:
    sae: Annotated[Path, tyro.conf.Positional]
    """Folder of a saved SAE (any format saekit.load reads), e.g. runs/sae/sae."""
    format: Literal["saelens", "sparsify"] = "saelens"
    """Target library: saelens (cfg.json + sae_weights.safetensors [+ sparsity.safetensors]) or sparsify
    (cfg.json + sae.safetensors)."""
    out: Path = Path("")
    """Folder to write (required)."""
    frequency_tokens: int = 0
    """SAELens only: measure each latent's firing frequency on this many held-out tokens of the run's data and
    write sparsity.safetensors; 0 uses features/features.json beside the SAE when `saekit features` wrote one."""
    overwrite: bool = False
    """Replace files already in --out."""


@dataclass
class ImportCommand:
    source: Annotated[Path, tyro.conf.Positional]
    """A SAELens or sparsify folder (detected from its files)."""
    out: Path = Path("")
    """Folder to write the saekit SAE to (model.safetensors + cfg.json; required)."""
    overwrite: bool = False
    """Replace an SAE already in --out."""


def run_config(sae_dir: Path) -> Any:
    """The TrainConfig of the run that made the SAE (config.yaml beside its folder), or None."""
    from saekit.config import load_train_config

    path = sae_dir.parent / "config.yaml"
    return load_train_config(path) if path.is_file() else None


def recorded_data(sae_dir: Path) -> Any:
    """The DataConfig a SAELens / sparsify folder exported by saekit carries (``saekit_data``), or None."""
    from saekit.config import DataConfig, from_dict
    from saekit.io import read_json

    cfg_file = sae_dir / "cfg.json"
    if not cfg_file.is_file() or (sae_dir / "model.safetensors").is_file():
        return None
    cfg = read_json(cfg_file)
    if not isinstance(cfg, dict):
        return None
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    data = meta.get("saekit_data", cfg.get("saekit_data"))
    return from_dict(DataConfig, data, f"{cfg_file} saekit_data") if isinstance(data, dict) else None


def lm_metadata(data: Any) -> dict[str, Any]:
    """SAELens metadata fields describing where the activations came from."""
    from saekit.interop.saelens import hook_name

    meta: dict[str, Any] = {}
    if data is None:
        return meta
    lm = data.lm if data.source == "lm" else None
    if data.source == "store" and data.store:
        try:
            from saekit.data.store import read_manifest, store_split_path

            m = read_manifest(store_split_path(data.store, "train"))["meta"]
            meta.update(model_name=m.get("model"), hook_name=hook_name(str(m.get("hookpoint", ""))),
                        context_size=m.get("context_length"), dataset_path=m.get("corpus"))
        except SaekitError:
            pass
    if lm is not None:
        meta.update(model_name=lm.model, hook_name=hook_name(lm.hookpoint), context_size=lm.context_length,
                    dataset_path=lm.corpus)
    return {k: v for k, v in meta.items() if v is not None}


def firing_frequency(sae: Any, sae_dir: Path, tokens: int) -> tuple[torch.Tensor | None, str]:
    """Each latent's firing frequency and where it came from; (None, why) when unknown."""
    import json

    if tokens > 0:
        from saekit.data.factory import make_source
        from saekit.eval.command import resolve_data
        from saekit.eval.reconstruction import evaluate_reconstruction

        source = make_source(resolve_data(sae_dir, None), "eval")
        summary, density = evaluate_reconstruction(sae, source, tokens)
        return density.float(), f"measured on {summary['tokens']} held-out tokens"
    path = sae_dir.parent / "features" / "features.json"
    if path.is_file():
        try:
            freq = json.loads(path.read_text()).get("frequency")
        except json.JSONDecodeError:
            freq = None
        if isinstance(freq, list) and len(freq) == sae.cfg.n_latents:
            return torch.tensor(freq, dtype=torch.float32), f"from {path}"
    return None, "not known (pass --frequency-tokens N to measure it, or run `saekit features` first)"


def _check_out(out: Path, overwrite: bool, names: tuple[str, ...]) -> None:
    if out == Path(""):
        raise SaekitError("--out is required")
    if out.exists() and not out.is_dir():
        raise SaekitError(f"--out {out} is a file")
    taken = [n for n in names if (out / n).exists()]
    if taken and not overwrite:
        raise SaekitError(f"{out} already holds {', '.join(taken)}; pass --overwrite to replace it")


def export_main(argv: list[str]) -> None:
    from saekit.interop import saelens, sparsify
    from saekit.sae import load

    cmd = tyro.cli(ExportCommand, args=argv, prog="saekit export",
                   description="Write a saekit SAE as a SAELens or sparsify folder (input_scale folded into the weights).")
    if cmd.frequency_tokens < 0:
        raise SaekitError("--frequency-tokens must be >= 0")
    module = saelens if cmd.format == "saelens" else sparsify
    _check_out(cmd.out, cmd.overwrite, (module.CFG, module.WEIGHTS))
    sae = load(cmd.sae)
    run = run_config(cmd.sae)
    data = run.data if run is not None else recorded_data(cmd.sae)
    extra: dict[str, Any] = {"saekit_data": data_dict(data)} if data is not None else {}
    if cmd.format == "saelens":
        freq, where = firing_frequency(sae, cmd.sae, cmd.frequency_tokens)
        saelens.export(sae, cmd.out, frequency=freq, metadata={**lm_metadata(data), **extra})
        note = f"; firing frequencies {where}" + (" -> sparsity.safetensors" if freq is not None else "")
    else:
        sparsify.export(sae, cmd.out, extra=extra)
        note = ""
    folded = f"input_scale {sae.cfg.input_scale:.6g} folded into the weights"
    print(f"wrote {cmd.format} folder {cmd.out} ({sae.cfg.architecture} -> "
          f"{saelens.TO_SAELENS.get(sae.cfg.architecture) if cmd.format == 'saelens' else 'topk'}; {folded}{note})")
    if sae.cfg.architecture == "gradient_topk":
        print("note: the g-SAE is exported as a plain TopK SAE (inference without LM gradients, beta = 0)")
    elif cmd.format == "saelens" and sae.cfg.architecture in saelens.NOTES:
        print(f"note: {saelens.NOTES[sae.cfg.architecture]}")


def data_dict(data: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(data)


def import_main(argv: list[str]) -> None:
    from saekit.interop import detect_format, load_foreign

    cmd = tyro.cli(ImportCommand, args=argv, prog="saekit import",
                   description="Convert a SAELens or sparsify folder into a saekit SAE folder.")
    _check_out(cmd.out, cmd.overwrite, ("model.safetensors", "cfg.json"))
    fmt = detect_format(cmd.source)
    if fmt == "saekit":
        raise SaekitError(f"{cmd.source} is already a saekit SAE folder")
    sae = load_foreign(cmd.source, fmt)
    sae.save(cmd.out)
    print(f"wrote saekit {sae.cfg.architecture} SAE ({sae.cfg.n_latents} latents, d_in={sae.cfg.d_in}) to {cmd.out} "
          f"from {fmt} folder {cmd.source}")
