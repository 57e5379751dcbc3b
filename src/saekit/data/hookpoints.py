"""Named activation sites in any decoder-only Hugging Face model, read and edited with forward hooks.

Names (DESIGN.md, Hookpoints): ``resid_post.L`` is the residual stream after block L (the block's
output, equal to ``hidden_states[L + 1]`` of ``output_hidden_states`` except that most models apply
their final norm to the last entry); ``attn_out.L`` and ``mlp_out.L`` are exactly what block L's
attention and MLP add to the residual stream, after any post-norm and residual multiplier, so that
resid_pre + attn_out + mlp_out = resid_post (resid_pre being the block's input), for sequential and
parallel blocks alike.

Where that sum is not simply "the attention / MLP module's output", the site is located per block
class (``_SITES``): the post-norms of Gemma2/3, OLMo2/3, EXAONE-4 and GLM-4; the output projections of
Bloom and MPT, whose modules add the residual themselves; OPT's inline ``fc2``; Granite's
``residual_multiplier`` scales the module output. Every ``attn_out`` / ``mlp_out`` hookpoint is then
verified on a short probe forward when it is resolved: if resid_pre + attn_out + mlp_out does not
equal resid_post, the hookpoint is refused with one error naming the family (model_type). A family
whose block cannot be decomposed that way (post-LN OPT, Bloom with
``apply_residual_connection_post_layernorm``) is refused up front; ``resid_post`` always works.

Hooks copy what they capture (Falcon's parallel block adds the attention output into the MLP output
in place after the MLP's hook has run), and an editing hook replaces exactly the tensor that is added.

Why hooks and not ``output_hidden_states``: a hook lets us (1) stop the forward right after the
hooked block when only activations are needed, and (2) replace the activation by a leaf tensor so
``torch.autograd.grad`` gives the LM loss gradient w.r.t. exactly that activation.
"""

from __future__ import annotations

import math
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

# Blocks whose attention / MLP submodule output is not what they add to the residual stream, by block
# class name: (attn_out site, mlp_out site) as dotted paths inside the block (None: the generic lookup).
_SITES: dict[str, tuple[str | None, str | None]] = {
    # BloomAttention / BloomMLP return residual + output: their output projections are what is added
    "BloomBlock": ("self_attention.dense", "mlp.dense_4h_to_h"),
    "MptBlock": (None, "ffn.down_proj"),  # MptMLP returns residual + output
    "OPTDecoderLayer": (None, "fc2"),  # the MLP is inline in the block (fc2's rows are the B*T tokens)
    "Glm4DecoderLayer": ("post_self_attn_layernorm", "post_mlp_layernorm"),
}
# Any block with this submodule (Gemma2/3, OLMo2/3, EXAONE-4, ...) adds post-normed outputs, and its
# ``post_attention_layernorm`` is then the norm after the attention (in Llama-style blocks the same
# name is the norm *before* the MLP).
_POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
_PROBE_TOKENS = 6


@dataclass(frozen=True)
class Hookpoint:
    name: str
    """The name as given, e.g. 'resid_post.9'."""
    kind: str
    """resid_post, mlp_out or attn_out."""
    layer: int
    """Block index (0-based)."""
    module: nn.Module
    """The module whose output (times ``scale``) is the activation."""
    block: nn.Module
    """Block ``layer``: the forward can stop once it has run."""
    family: str = ""
    """The model's ``model_type`` (for messages)."""
    scale: float = 1.0
    """activation = scale * module output (Granite's residual_multiplier); edits are divided by it."""


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


def family(model: nn.Module) -> str:
    """The model's family for messages: its config's ``model_type``, else its class name."""
    return str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)


def _refused(name: str, fam: str, block: nn.Module, why: str) -> SaekitError:
    return SaekitError(f"hookpoint {name!r} is not supported for model family {fam!r} ({type(block).__name__}): "
                       f"{why}; resid_post.L works for every family")


def _not_additive(block: nn.Module) -> str | None:
    """Why this block's output is not its input plus what its attention and MLP add, if it is not."""
    cls = type(block).__name__
    if cls == "OPTDecoderLayer" and not getattr(block, "do_layer_norm_before", True):
        return "its blocks are post-LN (do_layer_norm_before=False), so they add nothing to an unnormed residual stream"
    if cls == "BloomBlock":
        if getattr(block, "apply_residual_connection_post_layernorm", False):
            return "with apply_residual_connection_post_layernorm its blocks carry their normed input, not their input"
        mlp = getattr(block, "mlp", None)
        if getattr(mlp, "pretraining_tp", 1) > 1 and getattr(mlp, "slow_but_exact", False):
            return "with pretraining_tp > 1 and slow_but_exact its output projections are not modules"
    return None


class _Unlocatable(Exception):
    """Why a site cannot be located (turned into a SaekitError naming the hookpoint and family)."""


def _site(block: nn.Module, kind: str) -> nn.Module:
    """The module whose output block ``block`` adds to the residual stream as ``kind``."""
    why = _not_additive(block)
    if why:
        raise _Unlocatable(why)
    attn_path, mlp_path = _SITES.get(type(block).__name__, (None, None))
    if all(isinstance(getattr(block, n, None), nn.Module) for n in _POST_NORMS):
        attn_path, mlp_path = attn_path or _POST_NORMS[0], mlp_path or _POST_NORMS[1]
    path, names, what = (attn_path, _ATTN_NAMES, "attention") if kind == "attn_out" else (mlp_path, _MLP_NAMES, "MLP")
    if path is not None:
        module = _get(block, path)
        if not isinstance(module, nn.Module):
            raise _Unlocatable(f"its {what} output module {path} is missing")
        return module
    for n in names:
        sub = getattr(block, n, None)
        if isinstance(sub, nn.Module):
            return sub
    raise _Unlocatable(f"cannot find its {what} submodule (looked for {', '.join(names)})")


def _scale(block: nn.Module) -> float:
    m = getattr(block, "residual_multiplier", None)  # Granite: residual + m * module output
    if m is None:
        return 1.0
    if not isinstance(m, (int, float)) or not math.isfinite(m) or m == 0:
        raise _Unlocatable(f"its residual_multiplier is {m!r}")
    return float(m)


def resolve_hookpoint(model: nn.Module, name: str, verify: bool = True) -> Hookpoint:
    """Parse ``name`` and find its module; bad names and layers are one-line SaekitErrors.

    ``verify``: for attn_out / mlp_out, run a short probe forward (stopped after block L) and refuse
    the hookpoint unless resid_pre + attn_out + mlp_out equals resid_post there.
    """
    blocks = find_blocks(model)
    kind, _, layer_s = name.partition(".")
    if kind not in KINDS or not layer_s.lstrip("-").isdigit():
        raise SaekitError(f"bad hookpoint {name!r}: use one of {', '.join(k + '.L' for k in KINDS)} "
                          f"with L in 0..{len(blocks) - 1}")
    layer = int(layer_s)
    if not 0 <= layer < len(blocks):
        raise SaekitError(f"hookpoint {name!r}: layer {layer} out of range; this model has layers 0..{len(blocks) - 1}")
    block, fam = blocks[layer], family(model)
    if kind == "resid_post":
        return Hookpoint(name, kind, layer, block, block, fam)
    other = "mlp_out" if kind == "attn_out" else "attn_out"
    try:
        scale = _scale(block)
        hp = Hookpoint(name, kind, layer, _site(block, kind), block, fam, scale)
        try:  # the other term of the sum, to verify it
            other_hp = Hookpoint(f"{other}.{layer}", other, layer, _site(block, other), block, fam, scale)
        except _Unlocatable as e:
            raise _Unlocatable(f"it cannot be verified without {other}.{layer}: {e}") from None
    except _Unlocatable as e:
        raise _refused(name, fam, block, str(e)) from None
    if verify:
        _verify(model, hp, other_hp)
    return hp


def n_layers(model: nn.Module) -> int:
    return len(find_blocks(model))


class _StopForward(Exception):
    """Raised by a hook to end the forward once the hooked block has run (never escapes)."""


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _block_input(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs.get("hidden_states")


@contextmanager
def _on_activation(hp: Hookpoint, fn: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """Inside the block, every forward calls ``fn(activation)`` with the activation as [..., T, d] (the
    module output reshaped to the block input's shape where it has flattened tokens, times ``hp.scale``);
    a tensor returned replaces the activation, i.e. the module output becomes ``returned / scale``."""
    shape: dict[str, torch.Size] = {}

    def on_block_input(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _block_input(args, kwargs)
        if isinstance(x, Tensor):
            shape["x"] = x.shape

    def on_module(_m: nn.Module, _inp: Any, output: Any) -> Any:
        out = _first(output)
        act = out
        want = shape.get("x")
        if want is not None and act.shape != want and act.numel() == math.prod(want):
            act = act.reshape(want)
        if hp.scale != 1.0:
            act = act * hp.scale
        new = fn(act)
        if new is None:
            return None
        new = (new / hp.scale if hp.scale != 1.0 else new).reshape(out.shape)
        return (new, *output[1:]) if isinstance(output, (tuple, list)) else new

    handles = [hp.module.register_forward_hook(on_module)]
    if hp.module is not hp.block:
        handles.append(hp.block.register_forward_pre_hook(on_block_input, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _stop_after_block(hp: Hookpoint, stop: bool) -> Iterator[None]:
    def on_block(_m: nn.Module, _inp: Any, _out: Any) -> None:
        raise _StopForward

    handle = hp.block.register_forward_hook(on_block) if stop else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def capture(hp: Hookpoint, stop_early: bool = False, leaf: bool = False) -> Iterator[dict[str, Tensor]]:
    """Inside the block, every forward stores a copy of the activation in ``captured["acts"]``.

    ``stop_early``: abort the forward after block ``hp.layer`` (use ``run_captured``).
    ``leaf``: replace the activation by a detached leaf with ``requires_grad`` so the rest of the
    forward builds a graph from it; ``torch.autograd.grad(loss, captured["acts"])`` then works.
    """
    captured: dict[str, Tensor] = {}

    def on_act(act: Tensor) -> Tensor | None:
        if not leaf:
            captured["acts"] = act.clone()  # a copy: the model may add into its output in place later
            return None
        captured["acts"] = act.detach().clone().requires_grad_(True)
        return captured["acts"].clone()  # the forward continues from a non-leaf (in-place adds allowed)

    with _on_activation(hp, on_act), _stop_after_block(hp, stop_early):
        yield captured


@contextmanager
def edited(hp: Hookpoint, edit: Callable[[Tensor], Tensor] | None) -> Iterator[None]:
    """Inside the block, the activation (what the block adds to the residual stream, or the residual
    stream itself) is replaced by ``edit(activation)`` (splicing, steering); None: no hook."""
    if edit is None:
        yield
        return
    # a copy, so that in-place additions in the model never write into a tensor the edit returned
    with _on_activation(hp, lambda act: edit(act).clone()):
        yield


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


def _verify(model: nn.Module, hp: Hookpoint, other: Hookpoint) -> None:
    """Refuse ``hp`` unless block input + attn_out + mlp_out equals the block output on a probe."""
    seen: dict[str, Tensor] = {}

    def on_block_input(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _block_input(args, kwargs)
        if isinstance(x, Tensor):
            seen["pre"] = x.detach().clone()

    def on_block(_m: nn.Module, _inp: Any, output: Any) -> None:
        seen["post"] = _first(output).detach().clone()
        raise _StopForward

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None) or getattr(getattr(model, "config", None), "vocab_size", None) or 2
    ids = torch.randint(0, int(vocab), (1, _PROBE_TOKENS), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    h_pre = hp.block.register_forward_pre_hook(on_block_input, with_kwargs=True)
    try:
        model.eval()
        with torch.no_grad(), capture(hp) as a, capture(other) as b:
            h_post = hp.block.register_forward_hook(on_block)  # after the capture hooks: runs last
            try:
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            except _StopForward:
                pass
            finally:
                h_post.remove()
    except Exception as e:
        raise _refused(hp.name, hp.family, hp.block, "a probe forward to verify the hookpoint failed: "
                       f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}") from None
    finally:
        h_pre.remove()
        model.train(was_training)
    if not all(k in seen for k in ("pre", "post")) or "acts" not in a or "acts" not in b:
        raise _refused(hp.name, hp.family, hp.block, "its block input, output or attention / MLP outputs were "
                       "not all seen in a probe forward")
    post = seen["post"].double()
    err = ((seen["pre"].double() + a["acts"].double() + b["acts"].double() - post).norm()
           / post.norm().clamp_min(1e-30)).item()
    tol = 1e-4 if seen["post"].dtype in (torch.float32, torch.float64) else 2e-2
    if not err <= tol:
        raise _refused(hp.name, hp.family, hp.block, f"cannot locate exactly what its blocks' attention and MLP add "
                       f"to the residual stream (resid_pre + attn_out + mlp_out is off resid_post by {err:.1e}, "
                       "relative, on a probe)")
