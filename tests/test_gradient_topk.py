import dataclasses

import pytest
import torch

from saekit.config import SAEConfig
from saekit.errors import SaekitError
from saekit.sae import build_sae


def pair(beta=0.0, device="cpu", **kw):
    base = {"d_in": 6, "n_latents": 12, "k": 3, **kw}
    topk = build_sae(SAEConfig(architecture="topk", **base), seed=3)
    gsae = build_sae(SAEConfig(architecture="gradient_topk", beta=beta, **base), seed=3)
    gsae.load_state_dict(topk.state_dict())
    return topk.to(device), gsae.to(device)


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_beta_zero_is_topk_bit_for_bit(kernels, device):
    topk, gsae = pair(0.0, device, kernels=kernels)
    x, g = torch.randn(40, 6).to(device), torch.randn(40, 6).to(device)
    dead = torch.zeros(12, dtype=torch.bool, device=device)
    dead[:5] = True
    a = topk.loss(x, dead_mask=dead)
    b = gsae.loss(x, dead_mask=dead, grad=g)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.x_hat, b.x_hat) and torch.equal(a.loss, b.loss)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(topk.named_parameters(), gsae.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert torch.equal(topk.encode(x), gsae.encode(x, g))


def test_large_gradient_along_an_atom_wins_over_a_slightly_larger_z(device):
    _, gsae = pair(1.0, device, k=1)
    with torch.no_grad():
        gsae.W_dec.copy_(torch.eye(12, 6) + torch.eye(12, 6).roll(6, 0))  # atoms e_0..e_5 twice
        gsae.W_enc.zero_()
        gsae.b_enc.zero_()
        gsae.b_enc[0], gsae.b_enc[1] = 1.05, 1.0  # latent 0 has the larger z
        gsae.b_dec.zero_()
    x = torch.zeros(1, 6, device=device)
    assert gsae.encode(x).nonzero()[:, 1].tolist() == [0]  # without gradients: plain TopK picks latent 0
    g = torch.zeros(1, 6, device=device)
    g[0, 1] = 5.0  # the loss is sensitive along latent 1's atom
    f = gsae.encode(x, g)
    assert f.nonzero()[:, 1].tolist() == [1]
    assert f[0, 1].item() == 1.0  # kept with its value z, not the score


def test_exactly_k_latents_active_with_gradients(device):
    _, gsae = pair(2.0, device, k=4)
    with torch.no_grad():
        gsae.b_enc.fill_(50.0)
    f = gsae.encode(torch.randn(30, 6).to(device), torch.randn(30, 6).to(device))
    assert torch.equal((f != 0).sum(dim=1).cpu(), torch.full((30,), 4))


def test_sparse_and_dense_paths_agree_with_gradients(device):
    _, dense = pair(1.5, device, kernels="dense")
    _, sparse = pair(1.5, device, kernels="sparse")
    sparse.load_state_dict(dense.state_dict())
    x, g = torch.randn(64, 6).to(device), torch.randn(64, 6).to(device)
    a, b = dense.loss(x, grad=g), sparse.loss(x, grad=g)
    assert torch.allclose(a.loss, b.loss, atol=1e-6) and torch.equal(a.codes != 0, b.codes != 0)
    a.loss.backward()
    b.loss.backward()
    for p, q in zip(dense.parameters(), sparse.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)


def test_grad_scale_fitted_from_sample_and_errors():
    from saekit.encoders.gradient_topk import GradientTopKSAE

    cfg = SAEConfig(architecture="gradient_topk", d_in=4, n_latents=8, k=2, input_scale=2.0)
    grads = torch.tensor([[6.0, 8.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])  # norms 10 and 2, /2 -> 5 and 1
    assert GradientTopKSAE.fit_to_sample(cfg, grads, grads).grad_scale == 3.0
    with pytest.raises(SaekitError, match="--grads"):
        GradientTopKSAE.fit_to_sample(cfg, grads, None)
    with pytest.raises(SaekitError, match="beta"):
        dataclasses.replace(cfg, beta=-1.0).validate()


def test_training_without_gradients_is_a_clear_error(tmp_path):
    from saekit.config import DataConfig, SyntheticConfig, TrainConfig
    from saekit.train.trainer import train

    cfg = TrainConfig(sae=SAEConfig(architecture="gradient_topk", n_latents=16, k=2), steps=2, batch_size=32,
                      data=DataConfig(synthetic=SyntheticConfig(n_features=8, d=4, k=2)), progress=False,
                      out_dir=str(tmp_path / "r"))
    with pytest.raises(SaekitError, match="saekit cache --grads"):
        train(cfg)


def test_selection_scores_follow_the_definition(device):
    """s_i = z_i (1 + β |d_i · g| / grad_scale); where z_i > 0 this is the paper's ReLU(z_i)(…)."""
    _, gsae = pair(3.0, device, k=2)
    gsae.cfg = dataclasses.replace(gsae.cfg, grad_scale=2.5)
    gen = torch.Generator().manual_seed(7)
    z, g = torch.randn(9, 12, generator=gen).to(device), torch.randn(9, 6, generator=gen).to(device)
    want = z * (1 + 3.0 * (g @ gsae.W_dec.detach().T).abs() / 2.5)
    torch.testing.assert_close(gsae._scores(z, g).clone(), want)
    z_before = z.clone()
    gsae._scores(z, g)
    assert torch.equal(z, z_before)  # the pre-activations are left as they were
