import math

import torch

from saekit import losses


def test_squared_error_is_mean_over_tokens_of_sum_over_dims(device):
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], device=device)
    x_hat = torch.tensor([[0.0, 0.0], [1.0, 1.0]], device=device)
    # token 1: 1 + 4 = 5, token 2: 1 + 1 = 2 -> mean 3.5
    assert losses.squared_error(x, x_hat).item() == 3.5


def test_weighted_l1_uses_atom_norms(device):
    f = torch.tensor([[1.0, 2.0], [0.0, 3.0]], device=device)
    norms = torch.tensor([2.0, 0.5], device=device)
    # token 1: 1*2 + 2*0.5 = 3, token 2: 3*0.5 = 1.5 -> 2.25
    assert losses.weighted_l1(f, norms).item() == 2.25


def test_normalized_mse_sums_numerator_and_denominator_separately(device):
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]], device=device)  # mean (2, 0); Σ‖x − x̄‖² = 1 + 1 = 2
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 0.0]], device=device)  # Σ‖x − x̂‖² = 1
    assert losses.normalized_mse(x, x_hat).item() == 0.5


def test_topk_codes_keeps_k_largest_and_relus_them(device):
    z = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-3.0, -1.0, -2.0, -0.5]], device=device)
    f = losses.topk_codes(z, 2).cpu()
    assert torch.equal(f[0], torch.tensor([3.0, 0.0, 2.0, 0.0]))
    assert torch.equal(f[1], torch.zeros(4))  # the two largest are negative: ReLU zeroes them


def test_auxk_reconstructs_residual_from_dead_latents_only(device):
    W = torch.eye(3, device=device)
    z = torch.tensor([[5.0, 1.0, 2.0], [5.0, 3.0, -1.0]], device=device)
    dead = torch.tensor([False, True, True], device=device)
    e = torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 0.0]], device=device)
    # k_aux=1 among dead {1,2}: row 1 picks latent 2 (2.0), row 2 picks latent 1 (3.0)
    e_hat = torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 0.0]], device=device)
    num = (e - e_hat).pow(2).sum()  # 1 + 1 = 2
    den = (e - e.mean(0)).pow(2).sum()  # mean (0, 1.5, 1): 0.25+1 + 0.25+1 = 2.5
    assert math.isclose(losses.auxk_loss(z, e, W, dead, k_aux=1).item(), (num / den).item(), rel_tol=1e-6)


def test_auxk_is_zero_without_dead_latents(device):
    z = torch.randn(4, 3).to(device)
    zeros = torch.zeros(3, dtype=torch.bool, device=device)
    assert losses.auxk_loss(z, torch.randn(4, 3).to(device), torch.eye(3, device=device), zeros, 2).item() == 0.0
