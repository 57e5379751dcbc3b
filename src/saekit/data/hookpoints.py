"""Named activation sites in any decoder-only Hugging Face model, read with forward hooks.

Names: ``resid_post.L`` (the residual stream after block L, equal to ``hidden_states[L + 1]`` of
``output_hidden_states``, except that some models apply a final norm to the last entry),
``mlp_out.L`` and ``attn_out.L`` (the outputs of block L's MLP and attention, before they are added
to the residual stream).

Why hooks and not ``output_hidden_states``: a hook lets us (1) stop the forward right after the
hooked block when only activations are needed, and (2) replace the activation by a leaf tensor so
``torch.autograd.grad`` gives the LM loss gradient w.r.t. exactly that activation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saekit.errors import SaekitError

KINDS = ("resid_post", "mlp_out", "attn_out")
# Where the list of blocks lives, for the common families (dotted attribute paths, tried in order).
_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
                "transformer.layers", "transformer.blocks", "model.language_model.layers", "layers", "h")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "mlp_block")
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")


@dataclass(frozen=True)
class Hookpoint:
    name: str
    """The name as given, e.g. 'resid_post.9'."""
    kind: str
    """resid_post, mlp_out or attn_out."""
    layer: int
    """Block index (0-based)."""
    module: nn.Module
    """The module whose output is the activation."""
    block: nn.Module
    """Block ``layer``: the forward can stop once it has run."""


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, in order, for any decoder-only model."""
    for path in _BLOCK_PATHS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    lists = [m for m in lists if n is None or len(m) == n] or lists
    if not lists:
        raise SaekitError(f"cannot find the transformer blocks of {type(model).__name__}")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _child(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        sub = getattr(block, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise SaekitError(f"cannot find the {what} submodule of {type(block).__name__} (looked for {', '.join(names)})")


def resolve_hookpoint(model: nn.Module, name: str) -> Hookpoint:
    """Parse ``name`` and find its module; bad names and layers are one-line SaekitErrors."""
    blocks = find_blocks(model)
    kind, _, layer_s = name.partition(".")
    if kind not in KINDS or not layer_s.lstrip("-").isdigit():
        raise SaekitError(f"bad hookpoint {name!r}: use one of {', '.join(k + '.L' for k in KINDS)} "
                          f"with L in 0..{len(blocks) - 1}")
    layer = int(layer_s)
    if not 0 <= layer < len(blocks):
        raise SaekitError(f"hookpoint {name!r}: layer {layer} out of range; this model has layers 0..{len(blocks) - 1}")
    block = blocks[layer]
    module = {"resid_post": lambda: block, "mlp_out": lambda: _child(block, _MLP_NAMES, "MLP"),
              "attn_out": lambda: _child(block, _ATTN_NAMES, "attention")}[kind]()
    return Hookpoint(name, kind, layer, module, block)


def n_layers(model: nn.Module) -> int:
    return len(find_blocks(model))


class _StopForward(Exception):
    """Raised by a hook to end the forward once the hooked block has run (never escapes)."""


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture(hp: Hookpoint, stop_early: bool = False, leaf: bool = False) -> Iterator[dict[str, Tensor]]:
    """Inside the block, every forward stores the activation in ``captured["acts"]``.

    ``stop_early``: abort the forward after block ``hp.layer`` (use ``run_captured``).
    ``leaf``: replace the activation by a detached leaf with ``requires_grad`` so the rest of the
    forward builds a graph from it; ``torch.autograd.grad(loss, captured["acts"])`` then works.
    """
    captured: dict[str, Tensor] = {}

    def on_module(_m: nn.Module, _inp: Any, output: Any) -> Any:
        act = _first(output)
        if leaf:
            act = act.detach().requires_grad_(True)
        captured["acts"] = act
        if stop_early and hp.module is hp.block:
            raise _StopForward
        if leaf:
            return (act, *output[1:]) if isinstance(output, tuple) else act
        return None

    def on_block(_m: nn.Module, _inp: Any, _out: Any) -> None:
        raise _StopForward

    handles = [hp.module.register_forward_hook(on_module)]
    if stop_early and hp.module is not hp.block:
        handles.append(hp.block.register_forward_hook(on_block))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@contextmanager
def edited(hp: Hookpoint, edit: Callable[[Tensor], Tensor] | None) -> Iterator[None]:
    """Inside the block, the hooked output is replaced by ``edit(output)`` (splicing, steering); None: no hook."""
    if edit is None:
        yield
        return

    def on_module(_m: nn.Module, _inp: Any, output: Any) -> Any:
        new = edit(_first(output))
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = hp.module.register_forward_hook(on_module)
    try:
        yield
    finally:
        handle.remove()


def run_captured(model: nn.Module, hp: Hookpoint, input_ids: Tensor, attention_mask: Tensor | None = None,
                 stop_early: bool = True) -> Tensor:
    """Activations [B, T, d] at ``hp`` for one batch, without gradients."""
    with torch.no_grad(), capture(hp, stop_early=stop_early) as got:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    if "acts" not in got:
        raise SaekitError(f"hookpoint {hp.name} was never reached in the forward pass")
    return got["acts"]

