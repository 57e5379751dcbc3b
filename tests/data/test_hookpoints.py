from __future__ import annotations

import math

import pytest
import torch

from saekit.data.harvest import activations, activations_and_grads, next_token_ce
from saekit.data.hookpoints import capture, edited, find_blocks, resolve_hookpoint, run_captured
from saekit.errors import SaekitError


def _ids(tokenizer, n=3, T=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, len(tokenizer), (n, T), generator=gen)
    ids[:, 0] = tokenizer.bos_token_id
    return ids, torch.ones_like(ids)


def test_resid_post_equals_hidden_states(tiny_model, tokenizer):
    ids, attn = _ids(tokenizer)
    hs = tiny_model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    # the last entry has the final norm applied in Llama, so compare every layer but the last
    for layer in range(len(find_blocks(tiny_model)) - 1):
        hp = resolve_hookpoint(tiny_model, f"resid_post.{layer}")
        torch.testing.assert_close(run_captured(tiny_model, hp, ids, attn, stop_early=False), hs[layer + 1])


@pytest.mark.parametrize("name", ["resid_post.0", "resid_post.1", "mlp_out.0", "attn_out.1"])
def test_early_stop_matches_full_forward(tiny_model, tokenizer, name):
    ids, attn = _ids(tokenizer, seed=1)
    hp = resolve_hookpoint(tiny_model, name)
    full = activations(tiny_model, hp, ids, attn, stop_early=False)
    early = activations(tiny_model, hp, ids, attn, stop_early=True)
    assert torch.equal(full, early)
    assert full.shape == (3, 12, 32)


def test_mlp_and_attn_out_add_up_to_the_residual(tiny_model, tokenizer):
    ids, attn = _ids(tokenizer, seed=2)
    get = lambda n: activations(tiny_model, resolve_hookpoint(tiny_model, n), ids, attn)  # noqa: E731
    hs = tiny_model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    torch.testing.assert_close(hs[1] + get("attn_out.1") + get("mlp_out.1"), get("resid_post.1"))


def test_early_stop_really_stops(tiny_model, tokenizer):
    ids, attn = _ids(tokenizer)
    calls = []
    h = find_blocks(tiny_model)[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        activations(tiny_model, resolve_hookpoint(tiny_model, "resid_post.0"), ids, attn, stop_early=True)
    finally:
        h.remove()
    assert calls == []


@pytest.mark.parametrize("name", ["resid_post.0", "mlp_out.1"])
def test_grads_equal_autograd_of_ce(tiny_model, tokenizer, name):
    ids, attn = _ids(tokenizer, seed=3)
    attn[2, 9:] = 0  # some padding
    hp = resolve_hookpoint(tiny_model, name)
    acts, grads = activations_and_grads(tiny_model, hp, ids, attn)
    # independent reference: perturb the activation with a zero tensor that requires grad
    delta = torch.zeros_like(acts, requires_grad=True)
    h = hp.module.register_forward_hook(
        lambda m, i, o: (o[0] + delta, *o[1:]) if isinstance(o, tuple) else o + delta)
    try:
        with torch.enable_grad():
            logits = tiny_model(input_ids=ids, attention_mask=attn).logits
            targets = ids[:, 1:].masked_fill(attn[:, 1:] == 0, -100)
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   targets.reshape(-1), reduction="sum", ignore_index=-100)
            (ref,) = torch.autograd.grad(ce, delta)
    finally:
        h.remove()
    torch.testing.assert_close(grads, ref)
    assert grads.abs().sum() > 0
    torch.testing.assert_close(next_token_ce(logits, ids, attn), ce)


def test_bad_hookpoints(tiny_model):
    for bad in ["resid_post.2", "resid_post.-1", "resid_pre.0", "mlp_out", "attn_out.x"]:
        with pytest.raises(SaekitError, match="layer|hookpoint") as e:
            resolve_hookpoint(tiny_model, bad)
        assert "\n" not in str(e.value)
    with pytest.raises(SaekitError, match="0..1"):
        resolve_hookpoint(tiny_model, "mlp_out.7")


def test_captured_and_edited_tensors_are_copies(tiny_model, tokenizer):
    """A model that adds into a module's output in place after the hook (Falcon's parallel block does)
    changes neither what was captured nor a tensor that an edit returned."""
    ids, attn = _ids(tokenizer, seed=4)
    hp = resolve_hookpoint(tiny_model, "mlp_out.0")
    clean = run_captured(tiny_model, hp, ids, attn)
    fixed = torch.zeros_like(clean)
    for ctx in (capture(hp), edited(hp, lambda act: fixed)):
        with ctx as got:
            h = hp.module.register_forward_hook(lambda m, i, o: o.add_(1.0))  # runs after saekit's hook
            try:
                tiny_model(input_ids=ids, attention_mask=attn)
            finally:
                h.remove()
        if got is not None:
            torch.testing.assert_close(got["acts"], clean)
    assert torch.equal(fixed, torch.zeros_like(clean))


def test_fused_ce_grad_hand_case_and_blocks():
    from saekit.data.harvest import fused_ce_grad

    # one row, vocab 2, W = I: logits = h = (0, ln 3): softmax (1/4, 3/4), target 0
    h, W = torch.tensor([[0.0, math.log(3.0)]]), torch.eye(2)
    loss, grad = fused_ce_grad(h, W, None, torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(4.0))  # −log(1/4)
    torch.testing.assert_close(grad, torch.tensor([[-0.75, 0.75]]))  # (p − onehot) W
    gen = torch.Generator().manual_seed(0)
    h, W, b = torch.randn(10, 6, generator=gen), torch.randn(50, 6, generator=gen), torch.randn(50, generator=gen)
    t = torch.randint(0, 50, (10,), generator=gen)
    leaf = h.clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(leaf @ W.T + b, t, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, leaf)
    loss, grad = fused_ce_grad(h, W, b, t, block_rows=3)  # blocks of 3, 3, 3, 1 rows
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, ref_grad)


def test_fused_loss_head_is_used_for_a_llama_and_equals_autograd(tiny_model, tokenizer):
    from saekit.data import harvest

    ids, attn = _ids(tokenizer, seed=5)
    attn[1, 7:] = 0
    mask = attn.bool().clone()
    mask[:, 0] = False  # BOS excluded, as harvest_batch does
    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    fast = activations_and_grads(tiny_model, hp, ids, attn, mask)
    assert harvest._FUSED_OK[tiny_model] is True  # the check on the first batch passed: the fused head ran
    plain = activations_and_grads(tiny_model, hp, ids, attn, mask, fused=False)
    assert torch.equal(fast[0], plain[0])
    torch.testing.assert_close(fast[1], plain[1])
    assert fast[1].abs().sum() > 0
    # the last position predicts nothing and no earlier position attends to it: its gradient is exactly 0
    assert torch.equal(fast[1][0, -1], torch.zeros_like(fast[1][0, -1]))


def test_a_model_whose_logits_are_not_the_plain_head_takes_the_plain_path(tiny_model, tokenizer, monkeypatch):
    from saekit.data import harvest

    ids, attn = _ids(tokenizer, seed=6)
    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    real_forward = tiny_model.forward

    def scaled(*a, **k):  # logits scaled after the head, as Cohere does (Gemma 2 soft-caps them)
        out = real_forward(*a, **k)
        out.logits = 2.0 * out.logits
        return out

    monkeypatch.setattr(tiny_model, "forward", scaled)
    harvest._FUSED_OK.pop(tiny_model, None)
    acts, grads = activations_and_grads(tiny_model, hp, ids, attn)
    assert harvest._FUSED_OK[tiny_model] is False
    plain = activations_and_grads(tiny_model, hp, ids, attn, fused=False)
    torch.testing.assert_close(grads, plain[1])
    harvest._FUSED_OK.pop(tiny_model, None)
