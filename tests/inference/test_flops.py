"""FLOP formulas against counts worked out by hand for d=8, n=16."""

from __future__ import annotations

from saekit.inference import flops
from saekit.inference.mlp import MLPEncoder


def test_matmul_convention() -> None:
    assert flops.matmul(4, 8, 16) == 2 * 4 * 8 * 16 == 1024


def test_encoders_by_hand() -> None:
    # linear-ReLU: matmul 2·8·16 = 256, bias 16, ReLU 16
    assert flops.linear_encoder(8, 16) == 288
    # MLP 8 -> 32 -> 16: (512 + 64) + (1024 + 32)
    assert flops.mlp_encoder([8, 32, 16]) == 1632
    assert MLPEncoder(8, 16, [32]).flops() == 1632
    assert MLPEncoder(8, 16, []).flops() == flops.linear_encoder(8, 16)
    assert flops.decoder(16, 8) == 256 + 8


def test_iterative_by_hand() -> None:
    # ISTA step: fW (256) − target (8), rWᵀ (256), update 3·16, clamp 16 -> 584
    assert flops.ista_iteration(16, 8) == 584
    # FISTA: + momentum 48, + restart test 64
    assert flops.fista_iteration(16, 8) == 696
    assert flops.fista_iteration(16, 8, restart=False) == 632
    assert flops.iterative(16, 8, 10, "ista") == 8 + 5840
    assert flops.iterative(16, 8, 10, "fista") == 8 + 6960


def test_pursuit_by_hand() -> None:
    # MP step: corr 256, select 32, coef 1, residual 16 -> 305; 3 steps + centring 8
    assert flops.matching_pursuit(16, 8, 3) == 8 + 3 * 305
    # GP step: 2·256 + 8·16 + 6·8 + 1 = 689
    assert flops.gradient_pursuit(16, 8, 3) == 8 + 3 * 689
    # OMP step 1: 256 + 32 + 2·1·8 + 2·8 + 0 + 2 + 2·8 + 8 = 346
    assert flops.orthogonal_matching_pursuit(16, 8, 1) == 8 + 346


def test_training_and_sparse_coding_by_hand() -> None:
    fwd = flops.autoencoder_forward(flops.linear_encoder(8, 16), 16, 8)
    assert fwd == 288 + 264 + (24 + 32 + 1)
    assert flops.training(fwd, 1000) == 3 * fwd * 1000
    assert flops.supervised_forward(288, 16) == 288 + 80
    # MOD on 10 samples: SᵀS 2·16·10·16 = 5120, SᵀX 2·16·10·8 = 2560, solve 2730 + 4096, norms 384, rescale 160
    assert flops.dictionary_update(10, 16, 8) == 5120 + 2560 + 2730 + 4096 + 384 + 160
    assert flops.sparse_coding_training(10, 16, 8, [2, 3]) == (
        10 * flops.iterative(16, 8, 2) + 10 * flops.iterative(16, 8, 3) + 2 * flops.dictionary_update(10, 16, 8))
