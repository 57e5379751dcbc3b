import math

import pytest
import torch

from saekit.eval import metrics


X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])


def test_l0_counts_nonzeros_per_token():
    f = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert metrics.l0(f) == 1.0  # (2 + 0 + 1) / 3


def test_mse_is_per_element():
    x_hat = torch.zeros_like(X)
    # Σ squares = 1 + 1 + 2 + 4 = 8 over 8 elements
    assert metrics.mse(X, x_hat) == 1.0


def test_fvu_and_explained_variance_hand_case():
    x_hat = X.clone()
    x_hat[0, 0] = 0.0  # one squared error of 1
    # mean (1, 0.5); Σ‖x − x̄‖² = (0 + .25) + (1 + .25) + (0 + .25) + (1 + .25) = 3
    assert math.isclose(metrics.fvu(X, x_hat), 1 / 3)
    assert math.isclose(metrics.explained_variance(X, x_hat), 2 / 3)


@pytest.mark.parametrize("c", [0.5, 1.0, 1.7])
def test_gamma_of_scaled_reconstruction_is_the_scale(c):
    assert math.isclose(metrics.relative_reconstruction_bias(X, c * X), c, rel_tol=1e-6)


def test_gamma_hand_case():
    x = torch.tensor([[1.0, 0.0]])
    x_hat = torch.tensor([[1.0, 1.0]])  # ‖x̂‖² = 2, x·x̂ = 1
    assert metrics.relative_reconstruction_bias(x, x_hat) == 2.0


def test_cosine_similarity_hand_case():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # cos = 1/√2 and 1
    assert math.isclose(metrics.cosine_similarity(x, x_hat), (1 / math.sqrt(2) + 1) / 2)


def test_density_dead_and_dense_fractions():
    f = torch.zeros(20, 4)
    f[:, 0] = 1.0  # fires on 100% -> dense
    f[:2, 1] = 1.0  # 10% exactly -> not dense (strictly more than 10%)
    f[:3, 2] = 1.0  # 15% -> dense
    density = metrics.feature_density(f)
    assert torch.allclose(density, torch.tensor([1.0, 0.1, 0.15, 0.0], dtype=torch.float64))
    assert metrics.dead_fraction(density) == 0.25
    assert metrics.dense_fraction(density) == 0.5


def test_streaming_stats_equal_whole_set_metrics():
    x = torch.randn(100, 5)
    x_hat = x + 0.3 * torch.randn(100, 5)
    f = torch.relu(torch.randn(100, 7))
    stats = metrics.ReconstructionStats(7)
    for i in range(0, 100, 30):
        stats.update(x[i:i + 30], x_hat[i:i + 30], f[i:i + 30])
    s = stats.summary()
    assert s["tokens"] == 100
    assert math.isclose(s["fvu"], metrics.fvu(x, x_hat), rel_tol=1e-9)
    assert math.isclose(s["gamma"], metrics.relative_reconstruction_bias(x, x_hat), rel_tol=1e-9)
    assert math.isclose(s["mse"], metrics.mse(x, x_hat), rel_tol=1e-9)
    assert math.isclose(s["l0"], metrics.l0(f), rel_tol=1e-9)
    assert math.isclose(s["cosine_similarity"], metrics.cosine_similarity(x, x_hat), rel_tol=1e-9)
    assert s["dead_fraction"] == metrics.dead_fraction(metrics.feature_density(f))
