"""bf16 autocast for the language model's forward on CUDA, as peers do; the SAE itself stays in fp32.

Why: a float32 model's matmuls run several times faster in bf16 on a GPU, and an SAE only needs the
activations to the precision they are stored at (fp32, or fp16 in a store). Autocast changes the
forward's arithmetic, not the weights, so one loaded model serves both. It applies only where it
helps and is safe: a float32 model on a CUDA device with bf16 support. A model loaded in half
precision (lm.dtype float16 / bfloat16) already runs in its own dtype and is left alone (bf16
autocast would quietly turn fp16 matmuls into bf16 ones); on the CPU nothing changes at all.

Work that runs *inside* the model's forward on behalf of the SAE (a splice hook encoding and decoding
the activation) leaves autocast with ``sae_precision``, so SAE arithmetic is fp32 on every path.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn


def autocast_dtype(device: torch.device | str, weight_dtype: torch.dtype, enabled: bool = True,
                   bf16_supported: bool | None = None) -> torch.dtype | None:
    """The dtype a model's forward autocasts to (bfloat16), or None where it runs as loaded.

    ``bf16_supported``: whether the CUDA device has bf16 (asked of torch when None)."""
    if not enabled or torch.device(device).type != "cuda" or weight_dtype != torch.float32:
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else None


def model_autocast_dtype(model: nn.Module, enabled: bool = True) -> torch.dtype | None:
    """``autocast_dtype`` for a loaded model, judged by its first parameter (device and dtype)."""
    p = next(model.parameters(), None)
    return None if p is None else autocast_dtype(p.device, p.dtype, enabled)


def model_autocast(model: nn.Module, enabled: bool = True) -> AbstractContextManager:
    """The context a model forward runs in: bf16 autocast for a float32 model on CUDA, else nothing."""
    dtype = model_autocast_dtype(model, enabled)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()


def sae_precision(t: Tensor) -> AbstractContextManager:
    """Autocast off for SAE work on ``t``'s device inside an autocast model forward (a splice hook)."""
    if t.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.autocast("cuda", enabled=False)
    return nullcontext()
