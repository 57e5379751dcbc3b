"""Typed configs. The CLI (tyro) and YAML/JSON config files are generated from these dataclasses.

``SAEConfig`` is assembled from the common fields below plus every registered architecture's
``Params`` dataclass, so a new architecture brings its hyperparameters with it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import dacite
import tyro
import yaml

from saekit.errors import SaekitError
from saekit.sae import architecture_class, architectures


@dataclass
class CommonSAEFields:
    architecture: str = "topk"
    """Architecture name: one of the registered ones (relu, gated, topk, ...)."""
    d_in: int = 0
    """Width of the activations; 0 takes it from the data."""
    n_latents: int = 0
    """Number of dictionary atoms (latents); 0 means expansion_factor * d_in."""
    expansion_factor: int = 8
    """Used when n_latents is 0."""
    input_scale: float = 1.0
    """Inputs are multiplied by this inside the SAE; the trainer sets it so that E|x|^2 = d_in."""


def _merge_params() -> type:
    bases: list[type] = []
    seen: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(CommonSAEFields)}
    for name, cls in sorted(architectures().items()):
        if cls.Params in bases:
            continue
        for f in dataclasses.fields(cls.Params):
            other = seen.get(f.name)
            if other is not None and (other.default != f.default or other.type != f.type):
                raise TypeError(f"architecture {name}: field {f.name} clashes with another architecture's")
            seen[f.name] = f
        bases.append(cls.Params)
    # a Params class extended by another architecture's (GradientTopK < TopK) is already in its MRO
    leaves = [b for b in bases if not any(o is not b and issubclass(o, b) for o in bases)]
    return type("SAEConfigBase", (*reversed(leaves), CommonSAEFields), {})


def architecture_help() -> str:
    """The help of sae.architecture: every registered architecture, what it is and its own fields."""
    common = {f.name for f in dataclasses.fields(CommonSAEFields)}
    lines = []
    for name, cls in sorted(architectures().items()):
        summary = cls.summary or (sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0].rstrip(".")
        own = [f.name for f in dataclasses.fields(cls.Params) if f.name not in common]
        lines.append(f"{name}: {summary} [fields: {', '.join(own) or 'none'}]")
    return "Architecture, one of the registered ones -- " + "; ".join(lines) + "."


@dataclass
class SAEConfig(_merge_params()):  # type: ignore[misc]
    """Hyperparameters of one SAE: the common fields and every architecture's own."""

    architecture: Annotated[str, tyro.conf.arg(help=architecture_help(), metavar="{" + ",".join(sorted(architectures())) + "}")] = "topk"  # type: ignore[assignment]

    def arch_fields(self) -> list[str]:
        common = [f.name for f in dataclasses.fields(CommonSAEFields)]
        own = [f.name for f in dataclasses.fields(architecture_class(self.architecture).Params)]
        return common + [n for n in own if n not in common]

    def to_dict(self) -> dict[str, Any]:
        """The architecture's own fields only; round-trips through ``from_dict``."""
        return {name: getattr(self, name) for name in self.arch_fields()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        return from_dict(cls, data, "sae")

    @classmethod
    def from_saved(cls, data: Any, where: str) -> "SAEConfig":
        """Strict loading of a saved cfg.json: the architecture's fields (common + its ``Params``), each
        present, typed and valid, and no other; any problem is one SaekitError naming ``where``."""
        if not isinstance(data, dict):
            raise SaekitError(f"{where}: expected a mapping, got {type(data).__name__}")
        arch = data.get("architecture")
        if not isinstance(arch, str):
            raise SaekitError(f"{where}: no architecture named (field 'architecture')")
        try:
            architecture_class(arch)
        except SaekitError as e:
            raise SaekitError(f"{where}: {e}") from None
        wanted = cls(architecture=arch).arch_fields()
        missing = [n for n in wanted if n not in data]
        if missing:
            raise SaekitError(f"{where}: missing field(s) {', '.join(missing)} (the file is damaged or was edited)")
        extra = sorted(set(data) - set(wanted))
        if extra:
            raise SaekitError(f"{where}: field(s) {', '.join(extra)} do not belong to a {arch} SAE")
        cfg = from_dict(cls, data, where)
        try:
            cfg.validate()
        except SaekitError as e:
            raise SaekitError(f"{where}: {e}") from None
        return cfg

    def resolved(self, d_in: int) -> "SAEConfig":
        """Fill d_in / n_latents from the data, refusing a mismatch."""
        if self.d_in not in (0, d_in):
            raise SaekitError(f"sae.d_in={self.d_in} does not match the data's width {d_in}")
        n = self.n_latents or self.expansion_factor * d_in
        out = dataclasses.replace(self, d_in=d_in, n_latents=n)
        out.validate()
        return out

    def validate(self) -> None:
        cls = architecture_class(self.architecture)
        check_numbers(self, "sae")
        if self.d_in <= 0 or self.n_latents <= 0:
            raise SaekitError("sae.d_in and sae.n_latents must be positive")
        if not (self.input_scale > 0 and math.isfinite(self.input_scale)):
            raise SaekitError(f"sae.input_scale must be a positive finite number, got {self.input_scale}")
        cls.validate(self)


@dataclass
class SyntheticConfig:
    generator: Literal["oneill", "powerlaw", "hierarchical"] = "oneill"
    """oneill: K atoms chosen uniformly per sample (O'Neill et al.); powerlaw: power-law frequencies, correlated;
    hierarchical: groups of a parent and its children, a child fires only with its parent."""
    n_features: int = 64
    """N, the number of true atoms."""
    d: int = 32
    """M, the dimension of the samples."""
    k: int = 3
    """K, active atoms per sample (oneill: exactly; powerlaw, hierarchical: in expectation)."""
    n_samples: int = 0
    """Size of a fixed training set cycled in epochs; 0 draws fresh samples for every batch."""
    seed: int = 0
    """Seed of the true dictionary and of the samples."""
    powerlaw_exponent: float = 1.0
    """powerlaw: feature i fires with probability proportional to (i+1)^-exponent."""
    correlation: float = 0.5
    """powerlaw: correlation of the latent Gaussians that decide which features co-fire (within groups)."""
    group_size: int = 4
    """powerlaw: features are correlated within consecutive groups of this size; hierarchical: each consecutive
    group is one parent (its first feature) and group_size − 1 children."""


@dataclass
class LMConfig:
    model: str = "smollm2-135m"
    """Hugging Face id, local folder, .gguf file, or the built-in default 'smollm2-135m'."""
    hookpoint: str = "resid_post.9"
    """Where to read activations: resid_post.L, mlp_out.L or attn_out.L."""
    corpus: str = "shakespeare"
    """Text: a local .txt/.jsonl/.parquet file or folder, a Hugging Face dataset name, or a bundled corpus:
    'shakespeare', 'kjv' or both joined with '+' ('shakespeare+kjv')."""
    text_column: str = "text"
    """Column holding the text in jsonl/parquet/HF datasets."""
    context_length: int = 128
    """Tokens per packed context."""
    eval_fraction: float = 0.05
    """Share of the corpus held out for evaluation."""
    with_grads: bool = False
    """Also harvest the gradient of the next-token cross-entropy w.r.t. the activations."""
    model_batch_contexts: int = 16
    """Contexts per model forward while harvesting."""
    shuffle_buffer_tokens: int = 65536
    """Tokens held in the shuffling buffer when training on the fly."""
    seed: int = 0
    """Seed of the shuffling buffer's permutations when training on the fly."""
    device: str = "cpu"
    """Device for the language model."""
    dtype: str = "float32"
    """Model dtype (float32 on CPU; bfloat16/float16 on GPU)."""
    autocast: bool = True
    """A float32 model on CUDA runs its forward under bf16 autocast (activations and gradients are stored
    as before, the SAE stays fp32); no effect on CPU or for a float16/bfloat16 model."""

    def validate(self, where: str = "lm") -> None:
        check_numbers(self, where)
        p = f"{where}." if where else ""
        if self.context_length < 2:
            raise SaekitError(f"{p}context_length must be at least 2, got {self.context_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise SaekitError(f"{p}eval_fraction must lie in [0, 1), got {self.eval_fraction}")
        for name in ("model_batch_contexts", "shuffle_buffer_tokens"):
            if getattr(self, name) <= 0:
                raise SaekitError(f"{p}{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16"):
            raise SaekitError(f"{p}dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        check_device(self.device, f"{p}device")


@dataclass
class ArrayConfig:
    path: str = ""
    """A .npy (memory-mapped) or .safetensors file of [n_tokens, d_in] activations; '' when the run was
    given an in-memory array (see ``description``)."""
    grads: str = ""
    """Optional file of the matching LM-loss gradients (same shape)."""
    eval_path: str = ""
    """File of held-out activations for evaluation; '' holds out the last ``eval_fraction`` of ``path``."""
    eval_fraction: float = 0.05
    """Share of the rows (the last ones) held out for evaluation; 0 trains on every row."""
    description: str = ""
    """What the activations were (shape, dtype, where from): recorded by ``saekit.train``."""


@dataclass
class DataConfig:
    source: Literal["synthetic", "store", "lm", "array", "custom"] = "synthetic"
    """Where activations come from: a synthetic generator, an on-disk store, a language model on the fly,
    an array of activations (a file, or in memory through ``saekit.train``), or a custom Python source."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Synthetic ground truth settings (source=synthetic)."""
    store: str = ""
    """Path of an activation store written by `saekit cache` (source=store)."""
    store_seed: int = 0
    """Seed of the store reader's shard order and row permutations (source=store or array): the data order,
    independent of the SAE's initialisation seed."""
    lm: LMConfig = field(default_factory=LMConfig)
    """Language-model settings (source=lm, and for `saekit cache`)."""
    array: ArrayConfig = field(default_factory=ArrayConfig)
    """An array of activations (source=array)."""
    description: str = ""
    """source=custom: the Python source object a run was given (it cannot be rebuilt from this file)."""


@dataclass
class LogConfig:
    wandb_project: str = ""
    """Weights & Biases project to log every metrics.jsonl row to; '' (the default) logs to no tracker.
    Needs the optional extra: pip install 'saekit[wandb]'."""
    wandb_entity: str = ""
    """W&B entity (team or user); '' is wandb's default."""
    wandb_run_name: str = ""
    """W&B run name; '' uses the name of out_dir."""
    wandb_mode: Literal["", "online", "offline"] = ""
    """W&B mode; '' leaves it to wandb (the WANDB_MODE environment variable, else online)."""


@dataclass
class TrainConfig:
    sae: SAEConfig = field(default_factory=SAEConfig)
    """The SAE to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """The activation source."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 4096
    """Tokens (activation vectors) per step."""
    lr: float = 3e-4
    """Peak Adam learning rate."""
    adam_beta1: float | None = None
    """Adam beta1; None uses the architecture's default (0 for gated, 0.9 otherwise)."""
    adam_beta2: float | None = None
    """Adam beta2; None uses the architecture's default (0.999)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0."""
    decay_fraction: float = 0.2
    """The learning rate decays linearly to 0 over this final share of the steps."""
    sparsity_warmup_fraction: float = 0.05
    """The sparsity coefficient rises linearly from 0 over this first share of the steps (L1 architectures)."""
    resample_every: int = 0
    """Resample dead latents every this many steps (L1 architectures); 0 never resamples."""
    resample_until_fraction: float = 0.5
    """No resampling after this share of the steps."""
    resample_warmup_steps: int = 100
    """After a resampling the learning rate warms up again over this many steps (as in the Gated SAE paper)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    normalize_activations: bool = True
    """Scale inputs by a constant (estimated on a sample) so that E|x|^2 = d_in; stored as sae.input_scale."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Initial decoder bias, computed on a sample of the data."""
    init_samples: int = 4096
    """Samples used for the b_dec initialisation and the input scale."""
    dead_window_tokens: int = 1_000_000
    """A latent that has not fired in this many tokens counts as dead in the logs."""
    log_every: int = 10
    """Append metrics to metrics.jsonl every this many steps."""
    ckpt_every: int = 200
    """Write a resumable checkpoint every this many steps (and at the end); 0 only at the end."""
    keep_checkpoints: int = 1
    """How many of the newest checkpoints to keep."""
    out_dir: str = "runs/sae"
    """Output folder: sae/ (final weights), checkpoints/, metrics.jsonl, config.yaml."""
    seed: int = 0
    """Seed for initialisation and every random choice in training."""
    device: str = "cpu"
    """Device for the SAE."""
    progress: bool = True
    """Show a progress bar."""
    log: LogConfig = field(default_factory=LogConfig)
    """Experiment tracking beside metrics.jsonl (off by default)."""

    def validate(self) -> None:
        check_numbers(self, "")
        positive = {"steps": self.steps, "batch_size": self.batch_size, "init_samples": self.init_samples,
                    "log_every": self.log_every, "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value <= 0:
                raise SaekitError(f"{name} must be positive, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SaekitError(f"lr must be a positive number, got {self.lr}")
        for name in ("decay_fraction", "sparsity_warmup_fraction", "resample_until_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SaekitError(f"{name} must lie in [0, 1], got {v}")
        for name in ("warmup_steps", "resample_every", "resample_warmup_steps", "ckpt_every"):
            if getattr(self, name) < 0:
                raise SaekitError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise SaekitError(f"{name} must lie in [0, 1), got {v}")
        if self.grad_clip < 0:
            raise SaekitError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.dead_window_tokens <= 0:
            raise SaekitError(f"dead_window_tokens must be positive, got {self.dead_window_tokens}")
        architecture_class(self.sae.architecture)
        check_device(self.device)
        if self.data.source == "lm":
            self.data.lm.validate("data.lm")
        s = self.data.synthetic
        if min(s.n_features, s.d, s.k) <= 0 or s.n_samples < 0 or s.group_size <= 0:
            raise SaekitError("data.synthetic: n_features, d, k and group_size must be positive, n_samples >= 0")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sae"] = self.sae.to_dict()
        return out


def check_device(device: str, where: str = "device") -> None:
    """Refuse a device torch cannot use here (a typo, or cuda on a machine without CUDA)."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise SaekitError(f"{where}: unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SaekitError(f"{where}={device} but no CUDA device is available here; use cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SaekitError(f"{where}={device} but MPS is not available here; use cpu")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Strict dict -> dataclass: unknown fields and wrong types are one-line SaekitErrors."""
    if not isinstance(data, dict):
        raise SaekitError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        return dacite.from_dict(cls, data, config=dacite.Config(strict=True, cast=[tuple],
                                                                type_hooks={float: _to_float, int: _to_int}))
    except dacite.UnexpectedDataError as e:
        raise SaekitError(f"{where}: unknown field(s) {', '.join(sorted(e.keys))}") from None
    except dacite.WrongTypeError as e:
        raise SaekitError(f"{where}: field {e.field_path!r} should be {_type_name(e.field_type)}, "
                          f"got {e.value!r}") from None
    except dacite.DaciteError as e:
        raise SaekitError(f"{where}: {e}") from None


class _NotA:
    """What a hook hands dacite for a value of the wrong kind, so that it reports a type error."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _to_float(value: Any) -> Any:
    """Ints are floats; a number YAML 1.1 reads as a string (``1e-3``) is too; bools are not numbers."""
    if isinstance(value, bool):
        return _NotA(value)
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _to_int(value: Any) -> Any:
    """``steps: true`` is not 1: bools are not ints."""
    return _NotA(value) if isinstance(value, bool) else value


def check_numbers(obj: Any, where: str) -> None:
    """Refuse NaN and infinite values in every float field of a (nested) config dataclass or tuple."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            check_numbers(getattr(obj, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            check_numbers(v, where)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise SaekitError(f"{where} must be a finite number, got {obj}")


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a YAML or JSON training config (JSON is YAML)."""
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SaekitError(f"config file {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    cfg = from_dict(TrainConfig, data, str(path))
    return cfg


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
