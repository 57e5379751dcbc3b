"""`saekit eval`: evaluate a saved SAE on held-out data from the source it was trained on (or another)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import tyro

from saekit import cliparse
from saekit.config import DataConfig, check_device, check_numbers, load_train_config
from saekit.data.factory import make_source
from saekit.errors import SaekitError
from saekit.io import atomic_write_json
from saekit.report.table import format_table


@dataclass
class EvalCommand:
    sae: Annotated[Path, tyro.conf.Positional]
    """Folder of a saved SAE (model.safetensors + cfg.json), e.g. runs/sae/sae."""
    data: DataConfig | None = None
    """Evaluation data; default: the data section of the run's config.yaml next to the SAE folder."""
    tokens: int = 65536
    """Held-out tokens (activation vectors) to evaluate on, each once (fewer if the held-out data has fewer)."""
    batch_size: int = 4096
    """Tokens per forward."""
    out: Path | None = None
    """JSON output; default: eval.json next to the SAE folder."""
    device: str = "cpu"
    """Device to evaluate on."""
    splice: bool = True
    """For an SAE trained on LM data (source lm or store): also splice it into the model (loss recovered, KL)."""
    splice_contexts: int = 64
    """Held-out contexts for the splicing evaluation."""
    splice_batch_contexts: int = 8
    """Contexts per model forward in the splicing evaluation."""


def parse_with_run_data(cls: type, argv: list[str], prog: str, description: str) -> Any:
    """Parse ``saekit eval|features|steer-eval SAE_DIR [--data.* ...]``: the --data.* flags override the data
    section of the run's config.yaml beside SAE_DIR (no hidden subcommand token). ``cls`` has fields ``sae``
    and ``data: DataConfig | None``; ``data`` is None when there is neither a config.yaml nor a --data flag."""
    cli_cls = dataclasses.make_dataclass(f"{cls.__name__}Cli", [("data", DataConfig, field(default_factory=DataConfig))],
                                         bases=(cls,))
    cli_cls.__doc__ = cls.__doc__
    if any(a in ("-h", "--help") for a in argv):
        return cliparse.cli(cli_cls, args=argv, prog=prog, description=description)
    first, _ = cliparse.cli(cli_cls, args=argv, prog=prog, description=description, return_unknown_args=True)
    run_cfg = Path(first.sae).parent / "config.yaml"
    base = load_train_config(run_cfg).data if run_cfg.is_file() else None
    given = any(a.startswith("--data.") for a in argv)
    parsed = cliparse.cli(cli_cls, args=argv, prog=prog, description=description,
                          default=replace(first, data=base or DataConfig()))
    values = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(cls)}
    values["data"] = parsed.data if (base is not None or given) else None
    return cls(**values)


def resolve_data(sae_dir: Path, data: DataConfig | None) -> DataConfig:
    if data is not None:
        return data
    run_cfg = sae_dir.parent / "config.yaml"
    if run_cfg.is_file():
        return load_train_config(run_cfg).data
    from saekit.interop.command import recorded_data

    recorded = recorded_data(sae_dir)  # a SAELens / sparsify folder that saekit exported says what it read
    if recorded is not None:
        return recorded
    raise SaekitError(f"no config.yaml beside {sae_dir}: pass --data.* to say what to evaluate on")


def main(argv: list[str]) -> None:
    from saekit.eval.reconstruction import evaluate_reconstruction, evaluate_recovery
    from saekit.eval.splice import clean_json, lm_settings, splice_saes
    from saekit.sae import load

    cmd = parse_with_run_data(EvalCommand, argv, "saekit eval", "Evaluate a saved SAE.")
    check_numbers(cmd, "")
    check_device(cmd.device)
    if min(cmd.tokens, cmd.batch_size, cmd.splice_contexts, cmd.splice_batch_contexts) <= 0:
        raise SaekitError("--tokens, --batch-size, --splice-contexts and --splice-batch-contexts must be positive")
    sae = load(cmd.sae, cmd.device)
    data = resolve_data(cmd.sae, cmd.data)
    try:
        source = make_source(data, "eval")
    except SaekitError as e:  # a store cached without its eval split: the splice still measures the SAE
        if not (data.source == "store" and cmd.splice):
            raise
        print(f"note: {e}; the SAE metrics come from the splicing pass on held-out text")
        source = None
    results: dict = {}
    if source is not None:
        if source.d_in != sae.cfg.d_in:
            raise SaekitError(f"the SAE expects d_in={sae.cfg.d_in} but the data has width {source.d_in}")
        results, _ = evaluate_reconstruction(sae, source, cmd.tokens, cmd.batch_size)
        if results["tokens"] < cmd.tokens:
            print(f"note: the held-out data holds {results['tokens']} tokens, fewer than --tokens {cmd.tokens}; "
                  "each was evaluated once")
    if data.source == "synthetic":
        x, codes = source.eval_set(min(cmd.tokens, 8192))
        results.update(evaluate_recovery(sae, x, codes, source.truth.dictionary))
    if results:
        print(format_table([{"metric": k, "value": v} for k, v in results.items()]))
    payload = {"sae": str(cmd.sae), "architecture": sae.cfg.architecture, **results}
    lm = None
    if cmd.splice:
        try:
            lm = lm_settings(data)
        except SaekitError as e:  # a store without LM metadata: the reconstruction metrics still stand
            if data.source != "store" or source is None:
                raise
            why = f"{e}, so there is no language model to splice into"
            print(f"note: the splice evaluation (loss recovered, KL) was skipped: {why}")
            payload["splice_skipped"] = why
    if lm is not None:
        spliced = splice_saes(lm, {"sae": sae}, cmd.splice_contexts, cmd.splice_batch_contexts,
                              model=getattr(source, "model", None), tokenizer=getattr(source, "tokenizer", None))["sae"]
        print(f"\nspliced into {lm.model} at {lm.hookpoint} ({spliced['ce_tokens']} held-out tokens)")
        print(format_table([{"metric": k, "value": v} for k, v in spliced.items() if k != "density_histogram"]))
        payload["splice"] = spliced
    out = cmd.out or cmd.sae.parent / "eval.json"
    atomic_write_json(out, clean_json(payload))
    print(f"wrote {out}")
