import math

import torch

from saekit.eval.recovery import code_mcc, dictionary_mcc, matched_mcc, pearson_matrix


def test_pearson_matrix_hand_case():
    a = torch.tensor([[1.0], [2.0], [3.0]])
    b = torch.tensor([[2.0, 3.0, 1.0], [4.0, 2.0, 1.0], [6.0, 1.0, 1.0]])  # +1, −1, constant
    corr = pearson_matrix(a, b)
    assert torch.allclose(corr, torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64))


def test_matching_is_one_to_one_and_maximises_mean_abs_corr():
    corr = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    # greedy would take 0.9 then 0.1 (mean 0.5); Hungarian takes 0.8 + 0.85
    value, rows, cols = matched_mcc(corr)
    assert math.isclose(value, 0.825, rel_tol=1e-6)
    assert sorted(cols.tolist()) == [0, 1]


def test_dictionary_mcc_ignores_permutation_sign_and_scale():
    true = torch.randn(6, 10)
    learned = -3.0 * true[torch.randperm(6)]
    assert math.isclose(dictionary_mcc(true, learned), 1.0, rel_tol=1e-9)


def test_code_mcc_with_extra_learned_latents():
    codes = torch.rand(200, 3)
    learned = torch.cat([torch.rand(200, 2), codes[:, [2, 0, 1]] * 5], dim=1)
    assert math.isclose(code_mcc(codes, learned), 1.0, rel_tol=1e-9)


def test_best_firing_f1_on_a_hand_case():
    """Feature 0 has a latent of its own (F1 1); feature 1 is split over two latents, each on half its
    occurrences (F1 2·2 / (4 + 2) = 2/3); feature 2 never fires (0)."""
    import torch

    from saekit.eval.recovery import best_firing_f1

    true_on = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    latent_on = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    f1 = best_firing_f1(true_on, latent_on)
    assert torch.allclose(f1, torch.tensor([1.0, 2 / 3, 0.0]))
