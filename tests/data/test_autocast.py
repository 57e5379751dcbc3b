"""bf16 autocast of the LM forward (saekit.data.autocast): on for a float32 model on CUDA only, the CPU
path bit for bit unchanged, and the SAE inside a splice hook always computing in fp32."""

from __future__ import annotations

import pytest
import torch
from tiny_lm import tiny_llama

from saekit.data.autocast import autocast_dtype, model_autocast, sae_precision
from saekit.data.cache_command import CacheConfig, _meta
from saekit.data.harvest import harvest_batch
from saekit.data.hookpoints import resolve_hookpoint
from saekit.data.text import pack
from saekit.eval.splice import evaluate_splice
from sae_factories import tiny_sae

DOCS = ["the king speaks of night and day", "queen of the sea moon", "a lord sleeps in my castle",
        "thy sword and crown", "the ghost dreams of love and death"]


@pytest.fixture(scope="module")
def ctxs(tokenizer):
    return list(pack(tokenizer, DOCS, context_length=8))


@pytest.mark.parametrize("where, dtype, enabled, bf16, want", [
    ("cuda", torch.float32, True, True, torch.bfloat16),  # the one case that autocasts
    ("cuda:1", torch.float32, True, True, torch.bfloat16),
    ("cuda", torch.float32, False, True, None),  # lm.autocast=false
    ("cuda", torch.float16, True, True, None),  # a half-precision model runs as loaded
    ("cuda", torch.bfloat16, True, True, None),
    ("cuda", torch.float32, True, False, None),  # a GPU without bf16
    ("cpu", torch.float32, True, True, None),
])
def test_autocast_only_for_a_float32_model_on_cuda(where, dtype, enabled, bf16, want):
    assert autocast_dtype(where, dtype, enabled, bf16_supported=bf16) is want


def test_cpu_harvest_is_bit_for_bit_the_same_with_autocast_on_and_off(tiny_model, ctxs):
    seen = []
    hp = resolve_hookpoint(tiny_model, "mlp_out.1")
    handle = hp.module.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    try:
        for with_grads in (False, True):
            on = harvest_batch(tiny_model, hp, ctxs, with_grads=with_grads, autocast=True)
            off = harvest_batch(tiny_model, hp, ctxs, with_grads=with_grads, autocast=False)
            assert torch.equal(on.acts, off.acts)
            assert (on.grads is None) == (not with_grads)
            if with_grads:
                assert torch.equal(on.grads, off.grads)
    finally:
        handle.remove()
    assert seen and not any(seen)


def test_harvest_autocasts_on_cuda_and_returns_float32(tokenizer, ctxs, device):
    """On CUDA the model's forward runs under bf16 autocast (close to fp32, not equal); on CPU it never does."""
    model = tiny_llama(tokenizer).requires_grad_(False).to(device)
    hp = resolve_hookpoint(model, "mlp_out.1")
    seen = []
    handle = hp.module.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cuda")))
    try:
        on = harvest_batch(model, hp, ctxs, with_grads=True, autocast=True)
        n_on = len(seen)
        off = harvest_batch(model, hp, ctxs, with_grads=True, autocast=False)
    finally:
        handle.remove()
    assert seen[:n_on] == [device == "cuda"] * n_on and not any(seen[n_on:])
    for got, ref in ((on.acts, off.acts), (on.grads, off.grads)):
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        assert ((got - ref).norm() / ref.norm()).item() < 0.05  # bf16 keeps ~3 digits
        if device == "cpu":
            assert torch.equal(got, ref)


def test_the_spliced_sae_computes_in_fp32_inside_an_autocast_forward(tokenizer, ctxs, device):
    model = tiny_llama(tokenizer).requires_grad_(False).to(device)
    hp = resolve_hookpoint(model, "resid_post.0")
    sae = tiny_sae("relu", d_in=32, n_latents=64).to(device)
    inside = []

    def recon(x):
        inside.append((torch.is_autocast_enabled("cuda"), x.dtype, (x @ sae.W_enc.T).dtype))
        return sae(x)

    results = {flag: evaluate_splice(model, hp, {"sae": recon}, ctxs, batch_contexts=2, n_latents={"sae": 64},
                                     autocast=flag)["sae"] for flag in (True, False)}
    assert inside and all(entry == (False, torch.float32, torch.float32) for entry in inside)
    on, off = results[True], results[False]
    if device == "cpu":  # autocast changes nothing on the CPU
        for key in ("ce_clean", "ce_sae", "kl", "fvu", "l0"):
            assert on[key] == off[key], key
    else:
        assert on["ce_clean"] == pytest.approx(off["ce_clean"], rel=0.05)


def test_sae_precision_is_a_no_op_outside_a_cuda_autocast():
    with sae_precision(torch.zeros(1)):
        assert not torch.is_autocast_enabled("cuda")
    model = torch.nn.Linear(2, 2)  # a float32 model on the CPU: no autocast
    with model_autocast(model):
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")


def test_a_store_records_autocast_only_when_it_was_used():
    cfg = CacheConfig()
    assert "model_autocast" not in _meta(cfg, "train", 4)  # a CPU store's manifest is unchanged
    assert _meta(cfg, "train", 4, torch.bfloat16)["model_autocast"] == "bfloat16"
