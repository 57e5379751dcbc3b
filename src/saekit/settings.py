"""Which of a config's settings a run would use, and how a resume differs from the run it continues.

A flag that the chosen architecture or data source ignores, or that training overwrites from the
data, is refused with one line (``check_settings_used``) rather than silently dropped; ``--resume``
with settings other than the checkpoint's is refused naming them (``resume_differences``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from saekit.config import DataConfig, LMConfig, SAEConfig, SyntheticConfig, TrainConfig
from saekit.errors import SaekitError
from saekit.sae import architecture_class, architectures


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def unused_settings(cfg: TrainConfig) -> list[str]:
    """Settings given (differing from their defaults) that the chosen architecture or data source does
    not use, or that training overwrites; one line each. Generic over the architectures' Params."""
    return unused_sae_settings(cfg) + unused_data_settings(cfg.data)


def unused_sae_settings(cfg: TrainConfig) -> list[str]:
    """The SAE part of ``unused_settings``: fields of another architecture, and fields fitted from the data."""
    sae, own = cfg.sae, set(cfg.sae.arch_fields())
    problems = [f"sae.{name} is not used by a {sae.architecture} SAE (it belongs to {', '.join(owners_of(name))})"
                for name in changed_sae_fields(sae) if name not in own]
    return problems + overwritten_sae_settings(cfg)


def changed_sae_fields(sae: SAEConfig) -> dict[str, Any]:
    """The SAE fields whose value differs from SAEConfig's default: the ones a user gave."""
    return {name: getattr(sae, name) for name, default in _defaults(SAEConfig).items() if getattr(sae, name) != default}


def owners_of(name: str) -> list[str]:
    """The architectures that have the SAE field ``name``."""
    return sorted(a for a, c in architectures().items() if name in {f.name for f in dataclasses.fields(c.Params)})


def overwritten_sae_settings(cfg: TrainConfig) -> list[str]:
    """SAE fields given that training fits from the data instead (input_scale when normalizing, an
    architecture's fitted_fields)."""
    problems = []
    sae, defaults = cfg.sae, _defaults(SAEConfig)
    if cfg.normalize_activations and sae.input_scale != defaults["input_scale"]:
        problems.append("sae.input_scale is estimated from the data when normalize_activations is on; "
                        "pass --no-normalize-activations to fix it yourself")
    for name in getattr(architecture_class(sae.architecture), "fitted_fields", ()):
        if getattr(sae, name) != defaults[name]:
            problems.append(f"sae.{name} is estimated from the data by a {sae.architecture} SAE; do not set it")
    return problems


def unused_data_settings(data: DataConfig) -> list[str]:
    """The data part of ``unused_settings``: settings of a data source other than the chosen one."""
    problems = []
    if data.store and data.source != "store":
        problems.append(f"data.store is set but data.source is {data.source!r}; pass --data.source store to train on it")
    if data.source != "synthetic" and data.synthetic != SyntheticConfig():
        problems.append(f"data.synthetic.* is set but data.source is {data.source!r}")
    if data.source == "synthetic" and data.lm != LMConfig():
        problems.append("data.lm.* is set but data.source is 'synthetic'; pass --data.source lm")
    if data.source != "store" and data.store_seed != 0:
        problems.append(f"data.store_seed is set but data.source is {data.source!r}")
    return problems


def check_settings_used(cfg: TrainConfig, problems: list[str] | None = None) -> None:
    """Refuse settings that would be silently ignored: one error line, the first problem and a count."""
    problems = unused_settings(cfg) if problems is None else problems
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SaekitError(f"{problems[0]}{more}")


def resume_differences(saved_sae: SAEConfig, saved_data: DataConfig | None, cfg: TrainConfig) -> list[str]:
    """How the SAE and data settings asked for differ from a checkpoint's (``saved_sae``: its cfg.json;
    ``saved_data``: the run's config.yaml). Settings filled from the data (d_in, n_latents when 0, a
    fitted input_scale) count only where they were given."""
    want, diffs = cfg.sae, []
    if want.architecture != saved_sae.architecture:
        return [f"sae.architecture: {saved_sae.architecture} in the checkpoint, {want.architecture} asked for"]
    fitted = set(getattr(architecture_class(want.architecture), "fitted_fields", ()))
    for name in want.arch_fields():
        a, b = getattr(saved_sae, name), getattr(want, name)
        if name == "expansion_factor" or name in fitted:
            continue
        if name == "d_in" and b == 0:
            continue
        if name == "n_latents" and b == 0:
            b = want.expansion_factor * saved_sae.d_in
        if name == "input_scale" and cfg.normalize_activations:
            continue
        if a != b:
            diffs.append(f"sae.{name}: {a} in the checkpoint, {b} asked for")
    if saved_data is not None:
        diffs += [f"data.{p}" for p in _differences(dataclasses.asdict(saved_data), dataclasses.asdict(cfg.data))]
    return diffs


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in a:
            out += _differences(a[k], b.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [f"{path}: {a!r} in the checkpoint's run, {b!r} asked for"]
