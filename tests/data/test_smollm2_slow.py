"""End-to-end check on the real default model (SmolLM2-135M from its GGUF file; converted once, cached)."""

from __future__ import annotations

import pytest
import torch

from saekit.data.harvest import activations, activations_and_grads
from saekit.data.hookpoints import n_layers, resolve_hookpoint
from saekit.data.models import load_model
from saekit.data.text import contexts


@pytest.mark.slow
def test_smollm2_resid_post_and_grads():
    model, tok = load_model("smollm2-135m")
    assert n_layers(model) == 30 and model.config.hidden_size == 576
    ctx = next(contexts(tok, "shakespeare", "text", 32, "train", 0.05))
    ids, attn = ctx.input_ids[None], ctx.attention_mask[None]
    hp = resolve_hookpoint(model, "resid_post.9")
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    torch.testing.assert_close(activations(model, hp, ids, attn), hs[10])
    acts, grads = activations_and_grads(model, hp, ids, attn)
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=attn, labels=ids).loss
    assert float(loss) < 6.0  # a real, trained model: far below log(49152) ~ 10.8
