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


def test_chance_firing_f1_hand_case_and_independent_latents():
    """Feature rates 1/2 and 0: latents at rates 1/4 and 1 give max(2·½·¼/¾, 2·½·1/(3/2)) = 2/3, and 0 for a
    feature that never fires. Latents firing independently of the features score about that chance level
    with best_firing_f1, while a latent copying a feature scores 1."""
    import torch

    from saekit.eval.recovery import best_firing_f1, chance_firing_f1

    true_on = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    latent_on = torch.tensor([[1, 1], [0, 1], [0, 1], [0, 1]], dtype=torch.bool)
    assert torch.allclose(chance_firing_f1(true_on, latent_on), torch.tensor([2 / 3, 0.0]))
    g = torch.Generator().manual_seed(0)
    n = 200_000
    feats = torch.rand(n, 3, generator=g) < torch.tensor([0.3, 0.1, 0.02])
    independent = torch.rand(n, 4, generator=g) < torch.tensor([0.5, 0.2, 0.05, 0.01])
    chance = chance_firing_f1(feats, independent)
    assert torch.allclose(best_firing_f1(feats, independent), chance, atol=0.01)
    # the most frequent latent (q = 1/2) is every feature's best: 2·p·½ / (p + ½)
    assert torch.allclose(chance, torch.tensor([2 * p * 0.5 / (p + 0.5) for p in (0.3, 0.1, 0.02)]), atol=0.01)
    copies = torch.cat([independent, feats[:, :1]], dim=1)
    assert best_firing_f1(feats, copies)[0] == 1.0 and chance_firing_f1(feats, copies)[0] < 1.0
