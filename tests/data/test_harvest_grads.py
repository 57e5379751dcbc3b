"""The harvested LM gradient is the gradient of the CE the splice evaluates (saekit.eval.splice): the sum
over predictions from an included position t of an included token t+1, never an end-of-sequence target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saekit.data.harvest import harvest_batch
from saekit.data.hookpoints import resolve_hookpoint
from saekit.data.text import collate, pack


@pytest.fixture(scope="module")
def ctxs(tokenizer):
    """Short documents packed together: EOS between them inside contexts, BOS first, padding at the end."""
    docs = ["the king speaks", "queen of night", "a lord sleeps in my castle", "thy sword", "the sea moon"]
    out = list(pack(tokenizer, docs, context_length=8))
    ids = torch.stack([c.input_ids for c in out])
    assert (ids[:, 1:] == tokenizer.eos_token_id).any() and (torch.stack([c.attention_mask for c in out]) == 0).any()
    return out


def reference_grads(model, hp, ctxs, counted_of):
    """d(summed CE over counted_of(attn, mask))/d(activation) at the included tokens, by a zero perturbation."""
    ids, attn, mask = collate(ctxs)
    with torch.no_grad():
        width = model(input_ids=ids[:, :2], attention_mask=attn[:, :2], output_hidden_states=True).hidden_states[0].shape[-1]
    delta = torch.zeros(*ids.shape, width, requires_grad=True)
    h = hp.module.register_forward_hook(lambda m, i, o: (o[0] + delta, *o[1:]) if isinstance(o, tuple) else o + delta)
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
            sel = counted_of(attn.bool(), mask)
            ce = F.cross_entropy(logits[sel].float(), ids[:, 1:][sel], reduction="sum")
            (g,) = torch.autograd.grad(ce, delta)
    finally:
        h.remove()
    return g[mask]


def splice_counted(attn, mask):
    return mask[:, :-1] & mask[:, 1:]  # evaluate_splice's `sel`


def every_real_target(attn, mask):
    return attn[:, 1:]  # the old definition: every non-padding target, EOS included


@pytest.mark.parametrize("name", ["resid_post.0", "mlp_out.1"])
def test_harvested_grads_are_the_grads_of_the_spliced_ce(tiny_model, ctxs, name):
    hp = resolve_hookpoint(tiny_model, name)
    got = harvest_batch(tiny_model, hp, ctxs, with_grads=True)
    want = reference_grads(tiny_model, hp, ctxs, splice_counted)
    assert got.grads.shape == want.shape == got.acts.shape
    torch.testing.assert_close(got.grads, want, rtol=1e-5, atol=1e-7)
    # the case tells the two definitions apart: with EOS targets the gradient is another one
    old = reference_grads(tiny_model, hp, ctxs, every_real_target)
    assert (old - want).abs().max() > 100 * (got.grads - want).abs().max().clamp_min(1e-9)
