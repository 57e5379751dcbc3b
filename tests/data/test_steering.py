"""Steering evaluation and gradient-aware splicing on the tiny random Llama model of conftest.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from saekit.config import SAEConfig
from saekit.data.hookpoints import resolve_hookpoint
from saekit.data.text import collated_batches, pack
from saekit.errors import SaekitError
from saekit.eval.splice import WithGradients, evaluate_splice
from saekit.eval.steering import (SteerCommand, effect_and_kl, effect_at_kl, split_contexts, steer_latents,
                                  unembed_effect, clean_pass)
from saekit.sae import build_sae

WORDS = "the king queen lord lady speaks sleeps dreams of and to a in my thy night day sword crown".split()


@pytest.fixture(scope="module")
def ctxs(tokenizer):
    idx = torch.randint(len(WORDS), (60, 9), generator=torch.Generator().manual_seed(3))
    text = "\n".join(" ".join(WORDS[i] for i in row) for row in idx.tolist())
    return list(pack(tokenizer, [text], context_length=24))[:6]


def sae_pair(beta: float, k: int = 4):
    """A TopK SAE and a gradient_topk SAE with the same random weights (input_scale 0.5)."""
    topk = build_sae(SAEConfig(architecture="topk", d_in=32, n_latents=64, k=k, input_scale=0.5), seed=1)
    g = build_sae(SAEConfig(architecture="gradient_topk", d_in=32, n_latents=64, k=k, input_scale=0.5,
                            beta=beta, grad_scale=0.3), seed=1)
    g.load_state_dict(topk.state_dict())
    return topk, g


def test_alpha_zero_gives_zero_kl_and_effect(tiny_model, ctxs):
    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    topk, _ = sae_pair(0.0)
    cfg = SteerCommand(sae=None, alphas=(0.0,), n_targets=3, kl_budget=0.1)  # type: ignore[arg-type]
    out = steer_latents(tiny_model, hp, topk, ctxs[:2], ctxs[2:], cfg, latents=[0, 5])
    for row in out["latents"]:
        assert row["effect"] == [0.0] and row["kl"] == [0.0]
        assert math.isnan(row["effect_at_kl"])  # the budget is never reached


def test_unembedding_direction_raises_its_token(tiny_model, ctxs):
    hp = resolve_hookpoint(tiny_model, "resid_post.1")  # the last block: the direct path is the whole path
    batches = collated_batches(ctxs, 3)
    clean, acts = clean_pass(tiny_model, hp, batches)
    token = 7
    u = tiny_model.get_output_embeddings().weight[token].float()
    u = u / u.norm()
    scale = acts.norm(dim=-1).mean().item()
    effects = []
    for a in (0.5, 1.0, 2.0):
        e, kl = effect_and_kl(tiny_model, hp, batches, clean, a * scale * u, torch.tensor([token]))
        assert kl > 0
        effects.append(e)
    assert effects[0] > 0 and effects[0] < effects[1] < effects[2]
    assert unembed_effect(tiny_model, u)[token] > 0


def test_steer_latents_measured_and_unembed_targets(tiny_model, ctxs):
    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    topk, _ = sae_pair(0.0)
    for method in ("measured", "unembed"):
        cfg = SteerCommand(sae=None, alphas=(0.5, 1.0, 4.0), n_targets=2, kl_budget=1e-3,  # type: ignore[arg-type]
                           n_latents=3, targets=method)
        out = steer_latents(tiny_model, hp, topk, ctxs[:2], ctxs[2:], cfg)
        assert out["summary"]["n_latents"] == 3 and out["eval_tokens"] > 0
        for row in out["latents"]:
            assert len(row["targets"]) == 2 and all(k > 0 for k in row["kl"])
    # measured targets are chosen to rise: at the calibration strength on other contexts they mostly do
    assert out["summary"]["n_reached_budget"] >= 1


def test_steering_adds_alpha_times_mean_norm_times_the_unit_atom_at_included_positions_only(tiny_model, ctxs):
    """What block 1 receives when steering at resid_post.0 is the clean activation plus exactly
    α·m·d_i/‖d_i‖ at the included positions and nothing elsewhere, m = mean ‖x‖ over the included tokens
    of the measurement contexts; in order: two clean passes, the calibration pass at calib_alpha, then
    one measurement pass per α."""
    from saekit.data.hookpoints import find_blocks, run_captured
    from saekit.data.text import collate

    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    topk, _ = sae_pair(0.0)
    with torch.no_grad():
        topk.W_dec[5] *= 3.0  # a non-unit atom: the direction is normalised, the size is α·m
    cal, ev = ctxs[:2], ctxs[2:5]
    inputs = []
    hook = find_blocks(tiny_model)[1].register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True)
    try:
        cfg = SteerCommand(sae=None, alphas=(0.5, 2.0), calib_alpha=1.5, n_targets=2, kl_budget=0.1)  # type: ignore[arg-type]
        steer_latents(tiny_model, hp, topk, cal, ev, cfg, latents=[5])
    finally:
        hook.remove()
    batches = [collate(cal), collate(ev)]
    clean = {k: run_captured(tiny_model, hp, ids, attn) for k, (ids, attn, _) in enumerate(batches)}
    ev_mask = batches[1][2]
    m = clean[1][ev_mask].norm(dim=-1).mean()
    u = topk.W_dec[5].detach() / topk.W_dec[5].detach().norm()
    assert len(inputs) == 5
    for got, (which, alpha) in zip(inputs, [(0, 0.0), (1, 0.0), (0, 1.5), (1, 0.5), (1, 2.0)]):
        mask = batches[which][2]
        expected = alpha * m * mask[..., None].float() * u
        torch.testing.assert_close(got - clean[which], expected, rtol=1e-5, atol=1e-7)
        assert torch.equal(got[~mask], clean[which][~mask])  # BOS and padding untouched


def test_a_latent_whose_atom_writes_one_token_steers_towards_that_token(tiny_model, tokenizer, ctxs):
    """At the last block the residual goes through the final norm's gain w and W_U: an atom d with
    W_U (w ⊙ d) ∝ e_t (built here by least squares) promotes token t alone on the direct path, so both
    target methods pick t first (measured at a small calib_alpha: at larger ones the norm's 1/rms, which
    flattens every logit, lifts the rarest tokens as much), and its log-probability rises with α."""
    hp = resolve_hookpoint(tiny_model, "resid_post.1")
    topk, _ = sae_pair(0.0)
    token = tokenizer.convert_tokens_to_ids("crown")
    w_u = tiny_model.get_output_embeddings().weight.float()
    gain = tiny_model.model.norm.weight.float()
    onehot = torch.zeros(w_u.shape[0])
    onehot[token] = 1.0
    d = torch.linalg.lstsq(w_u * gain, onehot[:, None]).solution[:, 0]  # (W_U diag(w)) d = e_t
    torch.testing.assert_close(unembed_effect(tiny_model, d), onehot, atol=1e-4, rtol=0)
    with torch.no_grad():
        topk.W_dec[9] = d / d.norm()
    for method in ("unembed", "measured"):
        cfg = SteerCommand(sae=None, alphas=(0.25, 0.5, 1.0), calib_alpha=0.25, n_targets=1,  # type: ignore[arg-type]
                           kl_budget=0.05, targets=method)
        (row,) = steer_latents(tiny_model, hp, topk, ctxs[:2], ctxs[2:], cfg, latents=[9])["latents"]
        assert row["targets"] == [token]
        assert 0 < row["effect"][0] < row["effect"][1] < row["effect"][2]
        assert 0 < row["kl"][0] < row["kl"][1] < row["kl"][2]


def test_effect_at_kl_interpolates():
    assert effect_at_kl([0.1, 0.3], [1.0, 2.0], 0.2) == pytest.approx(1.5)
    assert effect_at_kl([0.2], [4.0], 0.1) == pytest.approx(2.0)  # from the origin
    assert math.isnan(effect_at_kl([0.1], [1.0], 0.5))


def test_split_contexts_disjoint_and_errors(ctxs):
    a, b = split_contexts(ctxs, 2, 3, seed=0)
    assert len(a) == 2 and len(b) == 3 and not {id(c) for c in a} & {id(c) for c in b}
    with pytest.raises(SaekitError, match="held-out contexts"):
        split_contexts(ctxs, 4, 4, seed=0)


def test_gradient_splicing_with_beta_zero_equals_topk(tiny_model, ctxs):
    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    topk, g0 = sae_pair(0.0)
    res = evaluate_splice(tiny_model, hp, {"topk": topk, "g0": WithGradients(g0)}, ctxs, batch_contexts=3)
    for key in ("ce_sae", "kl", "fvu", "l0", "delta_ce"):
        assert res["topk"][key] == res["g0"][key]


def test_gradient_splicing_uses_the_gradients(tiny_model, ctxs):
    hp = resolve_hookpoint(tiny_model, "resid_post.0")
    _, g = sae_pair(50.0, k=2)
    res = evaluate_splice(tiny_model, hp, {"plain": g, "grads": WithGradients(g)}, ctxs, batch_contexts=3)
    assert res["plain"]["ce_clean"] == res["grads"]["ce_clean"]
    assert res["plain"]["fvu"] != res["grads"]["fvu"]
    assert res["grads"]["l0"] == pytest.approx(2.0)


def test_training_gradient_topk_on_a_store_without_grads_names_cache_grads(tmp_path, model_dir, corpus_dir,
                                                                         tiny_model, tokenizer):
    from saekit.config import DataConfig, LMConfig, TrainConfig
    from saekit.data.cache_command import CacheConfig, cache
    from saekit.train.trainer import train

    lm = LMConfig(model=str(model_dir), hookpoint="resid_post.0", corpus=str(corpus_dir), context_length=16)
    cache(CacheConfig(lm=lm, out=str(tmp_path / "store"), split="train", max_tokens=256, progress=False),
          tiny_model, tokenizer)
    cfg = TrainConfig(sae=SAEConfig(architecture="gradient_topk", n_latents=64, k=4), steps=2, batch_size=32,
                      data=DataConfig(source="store", store=str(tmp_path / "store")), progress=False,
                      out_dir=str(tmp_path / "run"))
    with pytest.raises(SaekitError, match="saekit cache --grads"):
        train(cfg)
    # and with the gradients stored, the same config trains
    cache(CacheConfig(lm=replace(lm, with_grads=True), out=str(tmp_path / "gstore"), split="train", max_tokens=256,
                      progress=False), tiny_model, tokenizer)
    train(replace(cfg, data=DataConfig(source="store", store=str(tmp_path / "gstore"))))
