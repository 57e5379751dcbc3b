"""Hookpoints are exact for every supported model family, checked against each model's own forward.

For tiny random models of each family (built from transformers config classes, no hub): resid_post.L
is hidden_states[L + 1]; resid_pre + attn_out.L + mlp_out.L = resid_post.L (DESIGN.md, Hookpoints),
sequential and parallel blocks alike; editing a hookpoint by itself changes nothing and editing it to
zero equals the model with that attention / MLP zeroed; gradients at attn_out / mlp_out are the LM
loss's. Families whose blocks cannot be split that way are refused with one error naming them.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from saekit.data.harvest import activations_and_grads, next_token_ce
from saekit.data.hookpoints import edited, find_blocks, resolve_hookpoint, run_captured
from saekit.errors import SaekitError

V, D, F, H = 64, 32, 64, 4
STD = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=2, num_attention_heads=H,
           max_position_embeddings=64)
GQA = dict(STD, num_key_value_heads=2)
GPT = dict(vocab_size=V, n_embd=D, n_layer=2, n_head=H, n_positions=64)
FALCON = dict(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=H)
BLOOM = dict(vocab_size=V, hidden_size=D, n_layer=2, n_head=H)
OPT = dict(vocab_size=V, hidden_size=D, num_hidden_layers=2, ffn_dim=F, num_attention_heads=H, word_embed_proj_dim=D,
           max_position_embeddings=64)

# family (or family variant) -> (config class, causal-LM class, config kwargs)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", GQA),
    "mistral": ("MistralConfig", "MistralForCausalLM", GQA),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", GQA),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(GQA, head_dim=8)),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(GQA, pad_token_id=0)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(STD, num_key_value_heads=1, head_dim=8)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(GQA, head_dim=8, sliding_window=4)),  # post-norms
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(GQA, head_dim=8, sliding_window=4)),  # post-norms
    "phi": ("PhiConfig", "PhiForCausalLM", STD),  # parallel
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(STD, pad_token_id=0)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", GPT),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", GPT),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM", dict(vocab_size=V, hidden_size=D, num_layers=2, num_heads=H,
                                                          attention_types=[[["global", "local"], 1]], window_size=4,
                                                          max_position_embeddings=64)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(STD, use_parallel_residual=True)),  # Pythia: parallel
    "gpt_neox_sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(STD, use_parallel_residual=False)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(GPT, rotary_dim=4)),  # parallel
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM", dict(GPT, rotary_dim=4, n_ctx=64)),  # parallel
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(FALCON, parallel_attn=True, new_decoder_architecture=False)),
    "falcon_sequential": ("FalconConfig", "FalconForCausalLM",
                          dict(FALCON, parallel_attn=False, new_decoder_architecture=False, alibi=True)),
    "falcon_new_decoder": ("FalconConfig", "FalconForCausalLM",
                           dict(FALCON, num_kv_heads=2, new_decoder_architecture=True)),
    "falcon_new_decoder_1ln": ("FalconConfig", "FalconForCausalLM",
                               dict(FALCON, num_kv_heads=2, new_decoder_architecture=True, num_ln_in_parallel_attn=1)),
    "bloom": ("BloomConfig", "BloomForCausalLM", BLOOM),  # its modules add the residual themselves
    "mpt": ("MptConfig", "MptForCausalLM", dict(vocab_size=V, d_model=D, n_layers=2, n_heads=H, max_seq_len=64)),
    "opt": ("OPTConfig", "OPTForCausalLM", OPT),  # the MLP is inline in the block
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(GQA, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                       shared_expert_intermediate_size=32)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(STD, num_key_value_heads=4)),
    "stablelm_parallel": ("StableLmConfig", "StableLmForCausalLM",
                          dict(STD, num_key_value_heads=4, use_parallel_residual=True)),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", STD),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", STD),  # post-norms
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", dict(STD, sliding_window=4)),  # post-norms
    "cohere": ("CohereConfig", "CohereForCausalLM", STD),  # parallel
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(STD, residual_multiplier=0.5, embedding_multiplier=2.0)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", GQA),
    "persimmon": ("PersimmonConfig", "PersimmonForCausalLM", STD),
    "nemotron": ("NemotronConfig", "NemotronForCausalLM", GQA),
    "glm4": ("Glm4Config", "Glm4ForCausalLM", dict(GQA, pad_token_id=0)),  # post-norms
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM", GQA),  # post-norms
}
PARAMS = [pytest.param(f, id=f) for f in FAMILIES]
TOL = 1e-5


@functools.cache
def build(key: str):
    """The tiny model of FAMILIES[key] (or REFUSED[key]), built once."""
    transformers = pytest.importorskip("transformers")
    cfg_name, model_name, kwargs = (FAMILIES.get(key) or REFUSED[key])[:3]
    if not hasattr(transformers, cfg_name) or not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {cfg_name} / {model_name}")
    cfg = getattr(transformers, cfg_name)(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(cfg).eval()
    model.requires_grad_(False)
    with torch.no_grad():  # random norm weights and biases, so that every norm and bias is visible
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _ids(seed: int = 0, n: int = 2, T: int = 7) -> torch.Tensor:
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def _final_norm(model):
    base = getattr(model, model.base_model_prefix)
    for path in ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "decoder.final_layer_norm"):
        mod = base
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise AssertionError(f"no final norm found in {type(model).__name__}")


def _get(model, name, ids, stop_early=True):
    return run_captured(model, resolve_hookpoint(model, name), ids, torch.ones_like(ids), stop_early=stop_early)


@pytest.mark.parametrize("family", PARAMS)
def test_resid_post_equals_hidden_states(family):
    model, ids = build(family), _ids()
    hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    n = len(find_blocks(model))
    for layer in range(n):
        got = _get(model, f"resid_post.{layer}", ids)
        if layer == n - 1:  # transformers applies the final norm to the last entry
            got = _final_norm(model)(got)
        assert _rel(got, hs[layer + 1]) < TOL, layer


@pytest.mark.parametrize("family", PARAMS)
def test_attn_out_plus_mlp_out_is_what_the_block_adds(family):
    model, ids = build(family), _ids(1)
    hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for layer in range(len(find_blocks(model))):
        attn, mlp = _get(model, f"attn_out.{layer}", ids), _get(model, f"mlp_out.{layer}", ids)
        post = _get(model, f"resid_post.{layer}", ids)
        assert attn.shape == mlp.shape == post.shape == (*ids.shape, D)
        assert _rel(hs[layer] + attn + mlp, post) < TOL, layer  # hs[layer] = resid_pre (embeddings for 0)
        # neither term is the residual stream or the other term in disguise
        assert _rel(mlp, post) > 0.05 and _rel(attn, post) > 0.05 and _rel(attn, mlp) > 0.05
    assert torch.equal(_get(model, "mlp_out.0", ids, stop_early=False), _get(model, "mlp_out.0", ids))


def _zeroed(model, layer: int, kind: str):
    """A copy of ``model`` whose block ``layer`` has every parameter of its attention / MLP set to zero."""
    model = copy.deepcopy(model)
    block = find_blocks(model)[layer]
    names = ("self_attn", "attn", "attention", "self_attention") if kind == "attn_out" else (
        "mlp", "ffn", "feed_forward", "block_sparse_moe")
    mods = [getattr(block, n) for n in names if isinstance(getattr(block, n, None), torch.nn.Module)][:1]
    mods = mods or [block.fc1, block.fc2]  # OPT: the MLP is inline in the block
    with torch.no_grad():
        for mod in mods:
            for p in mod.parameters():
                p.zero_()
    return model


@pytest.mark.parametrize("family", PARAMS)
def test_edits_replace_exactly_what_is_added(family):
    model, ids = build(family), _ids(2)
    clean = _logits(model, ids)
    for name in ("mlp_out.0", "attn_out.1"):
        hp = resolve_hookpoint(model, name)
        with edited(hp, lambda a: a):
            torch.testing.assert_close(_logits(model, ids), clean)
        with edited(hp, torch.zeros_like):
            zero_edit = _logits(model, ids)
        torch.testing.assert_close(zero_edit, _logits(_zeroed(model, hp.layer, hp.kind), ids))
        assert _rel(zero_edit, clean) > 1e-3  # the edit did something


@pytest.mark.parametrize("family", PARAMS)
def test_grads_at_attn_and_mlp_out(family):
    model, ids = build(family), _ids(3)
    attn = torch.ones_like(ids)
    for name in ("mlp_out.1", "attn_out.0"):
        hp = resolve_hookpoint(model, name)
        acts, grads = activations_and_grads(model, hp, ids, attn)
        torch.testing.assert_close(acts, run_captured(model, hp, ids, attn))
        delta = torch.zeros_like(acts, requires_grad=True)  # reference: d CE / d (something added there)
        with torch.enable_grad(), edited(hp, lambda a: a + delta):
            (ref,) = torch.autograd.grad(next_token_ce(_logits(model, ids), ids, attn), delta)
        torch.testing.assert_close(grads, ref)
        assert grads.abs().sum() > 0


REFUSED = {
    "opt_post_ln": ("OPTConfig", "OPTForCausalLM", dict(OPT, do_layer_norm_before=False), "opt", "post-LN"),
    "bloom_residual_post_ln": ("BloomConfig", "BloomForCausalLM",
                               dict(BLOOM, apply_residual_connection_post_layernorm=True), "bloom", "normed input"),
    "bloom_slow_tp": ("BloomConfig", "BloomForCausalLM", dict(BLOOM, pretraining_tp=2, slow_but_exact=True), "bloom",
                      "pretraining_tp"),
    "gemma3n": ("Gemma3nTextConfig", "Gemma3nForCausalLM",  # AltUp and LAuReL: no exact split
                dict(GQA, head_dim=8, sliding_window=4, hidden_size_per_layer_input=8, vocab_size_per_layer_input=V,
                     laurel_rank=4, altup_num_inputs=2, num_kv_shared_layers=0, intermediate_size=[F, F],
                     layer_types=["sliding_attention", "full_attention"], activation_sparsity_pattern=[0.0, 0.0]),
                "gemma3n_text", "cannot locate exactly"),
    "recurrent_gemma": ("RecurrentGemmaConfig", "RecurrentGemmaForCausalLM",  # recurrent blocks, no attention
                        dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=2,
                             num_attention_heads=H, lru_width=D, attention_window_size=4),
                        "recurrent_gemma", "attention submodule"),
}


@pytest.mark.parametrize("variant", list(REFUSED))
def test_families_that_cannot_be_split_are_refused(variant):
    family, why = REFUSED[variant][3:]
    model, ids = build(variant), _ids()
    for name in ("attn_out.1", "mlp_out.0"):
        with pytest.raises(SaekitError, match=why) as e:
            resolve_hookpoint(model, name)
        msg = str(e.value)
        assert f"{name!r}" in msg and f"{family!r}" in msg and "\n" not in msg
    # resid_post still works and is exact
    hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    assert _rel(_get(model, "resid_post.0", ids), hs[1]) < TOL


def test_a_block_the_probe_cannot_split_is_refused(tiny_model):
    """A family unknown to saekit whose block output is not input + attention + MLP (here: a hook that
    rescales Llama's block output) is refused by the probe, not harvested wrongly."""
    block = find_blocks(tiny_model)[1]
    h = block.register_forward_hook(lambda m, i, o: o * 1.5)
    try:
        with pytest.raises(SaekitError, match="'llama'.*cannot locate exactly"):
            resolve_hookpoint(tiny_model, "mlp_out.1")
        resolve_hookpoint(tiny_model, "mlp_out.0")  # block 0 is untouched
        resolve_hookpoint(tiny_model, "mlp_out.1", verify=False)  # no probe: the caller takes responsibility
    finally:
        h.remove()
