"""Decoupled inference on a trained SAE's frozen dictionary (saekit.inference.lm): the model-unit wrapper,
splicing an arbitrary encoder, the NNLS refit, an MLP on a frozen dictionary. Tiny problems, no 135M model."""

from __future__ import annotations

import pytest
import torch

from saekit.config import SyntheticConfig
from saekit.data.synthetic import GroundTruth
from saekit.errors import SaekitError
from saekit.eval.metrics import fvu
from saekit.inference import fista, flops, objective
from saekit.inference.lm import FrozenDictionary, gated_encoder_flops, nnls_on_support, nnls_refit_flops
from saekit.inference.mlp import MLPEncoder, TrainSettings, train_frozen_dictionary
from sae_factories import tiny_sae


def test_frozen_dictionary_reproduces_the_sae(device) -> None:
    sae = tiny_sae("gated", d_in=8, n_latents=24, input_scale=0.37).to(device)
    D = FrozenDictionary.from_sae(sae)
    x = 3 * torch.randn(50, 8).to(device)
    x_hat, f = D.reconstructor(sae.encode_scaled)(x)
    ref_hat, ref_f = sae(x)
    assert torch.allclose(f, ref_f) and torch.allclose(x_hat, ref_hat, atol=1e-6)
    assert (D.n_latents, D.d_in) == (24, 8)
    assert torch.allclose(D.decode(f), sae.decode(f), atol=1e-6)


def test_splicing_a_reconstruct_callable_matches_the_sae(device) -> None:
    """evaluate_splice takes any callable x -> (x̂, f); the frozen-dictionary path of the SAE's own encoder
    must give the SAE's numbers exactly (same tokens, same CE, KL, FVU, L0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from saekit.data.hookpoints import resolve_hookpoint
    from saekit.data.text import Context
    from saekit.eval.splice import evaluate_splice

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False).to(device)  # on CUDA: under bf16 autocast
    gen = torch.Generator().manual_seed(1)
    ctxs = []
    for i in range(4):
        ids = torch.cat([torch.tensor([1]), torch.randint(4, 40, (15,), generator=gen)])
        attn = torch.ones(16, dtype=torch.long)
        ctxs.append(Context(i, ids, attn, ids != 1))  # BOS keeps its clean activation
    sae = tiny_sae("gated", d_in=16, n_latents=48, input_scale=0.5).to(device)
    D = FrozenDictionary.from_sae(sae)
    hp = resolve_hookpoint(model, "resid_post.0")
    res = evaluate_splice(model, hp, {"sae": sae, "frozen": D.reconstructor(sae.encode_scaled)}, ctxs,
                          batch_contexts=2, n_latents={"frozen": 48})
    a, b = res["sae"], res["frozen"]
    for key in ("ce_sae", "loss_recovered", "delta_ce", "kl", "fvu", "l0", "gamma", "tokens", "ce_tokens"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert a["ce_sae"] != a["ce_clean"]  # the SAE is not the identity: the comparison is not vacuous


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    truth = GroundTruth(SyntheticConfig(n_features=24, d=12, k=3, seed=0))
    x, codes = truth.sample(300, torch.Generator().manual_seed(1))
    return x, truth.dictionary, codes


def test_nnls_refit_keeps_support_and_lowers_the_error(problem, device) -> None:
    x, W = (t.to(device) for t in problem[:2])
    b = 0.1 * torch.randn(W.shape[1]).to(device)
    xb = x + b
    r = fista(xb, W, b, l1=0.3, max_iters=2000, tol=1e-7)
    q = nnls_on_support(xb, W, b, r.codes, max_iters=3000, tol=1e-6, chunk=64)
    assert q.converged and q.codes.shape == r.codes.shape and (q.codes >= 0).all()
    assert not ((q.codes > 0) & (r.codes == 0)).any()  # the support never grows
    err_before = objective(xb, W, b, r.codes, 0.0)
    err_after = objective(xb, W, b, q.codes, 0.0)
    assert (err_after <= err_before + 1e-5).all() and err_after.mean() < 0.9 * err_before.mean()  # L1 shrinkage removed
    # on a row whose refit stays strictly positive, it is the least-squares solution on that support
    i = int(((q.codes > 0).sum(1) == (r.codes > 0).sum(1)).nonzero()[0])
    sup = (q.codes[i] > 0).nonzero().flatten()
    ls = torch.linalg.lstsq(W[sup].T, (xb[i] - b)[:, None]).solution.flatten()
    assert torch.allclose(q.codes[i, sup], ls, atol=1e-4)


def test_nnls_refit_errors_and_empty_rows(problem, device) -> None:
    x, W = (t.to(device) for t in problem[:2])
    zero = torch.zeros(3, W.shape[0], device=device)
    assert (nnls_on_support(x[:3], W, None, zero).codes == 0).all()
    with pytest.raises(SaekitError, match="codes must have shape"):
        nnls_on_support(x[:3], W, None, torch.zeros(2, W.shape[0], device=device))


def test_mlp_on_a_frozen_dictionary_beats_its_untrained_self(problem) -> None:
    x, W, _ = problem
    torch.manual_seed(0)
    enc = MLPEncoder(W.shape[1], W.shape[0], [64])
    with torch.no_grad():
        before = fvu(x, enc(x) @ W)
    train_frozen_dictionary(enc, x, W, None, TrainSettings(steps=300, lr=3e-3, batch_size=128, l1=0.05))
    with torch.no_grad():
        after = fvu(x, enc(x) @ W)
    assert after < 0.5 * before and after < 0.5


def test_flop_helpers() -> None:
    d, n = 576, 2304
    assert gated_encoder_flops(d, n) == flops.linear_encoder(d, n) + 4 * n + 2 * d
    assert nnls_refit_flops(d, 10, 5) == 2 * 100 * d + 2 * 10 * d + d + 9 * 1000 + 5 * (200 + 120)
    assert nnls_refit_flops(d, 9.2, 5) == nnls_refit_flops(d, 10, 5)  # a fractional support rounds up
    assert nnls_refit_flops(d, 20, 5) > nnls_refit_flops(d, 10, 5)
