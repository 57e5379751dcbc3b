"""The analytic FLOP counts against counts of the actual computation.

Matrix products are counted by torch's FlopCounterMode while the real code runs (2·m·k·n per product,
any batch size); the elementwise work of the per-step cores is counted by a dispatch mode written here
that charges 1 FLOP per output element of every elementwise aten op and 1 per input element of every
reduction (the convention of ``saekit.inference.flops``). What the formulas leave out on purpose is
named where it shows up: the step size (eigvalsh of the Gram matrix, once per dictionary), convergence
tests and input validation.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from saekit.inference import (fista, flops, gradient_pursuit, ista, matching_pursuit, orthogonal_matching_pursuit,
                              sparse_coding)
from saekit.inference.iterative import _prox_grad
from saekit.inference.mlp import MLPEncoder

B, N, D = 5, 16, 8  # samples, atoms, input dimension

aten = torch.ops.aten
ELEMENTWISE = {aten.add, aten.sub, aten.mul, aten.div, aten.clamp_min, aten.relu, aten.where, aten.gt, aten.lt,
               aten.pow, aten.sqrt, aten.neg, aten.abs}
MATMUL = {aten.mm, aten.bmm}


class ElementwiseCount(TorchDispatchMode):
    """FLOPs of elementwise ops (1 per output element), plus the bias add fused into addmm."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in ELEMENTWISE or packet in (aten.add_, aten.sub_, aten.mul_, aten.clamp_min_):
            self.total += out.numel()
        elif packet is aten.addmm:  # bias + product: the product is FlopCounterMode's
            self.total += out.numel()
        elif packet not in MATMUL and packet not in (aten.t, aten.detach, aten.view, aten.permute, aten.transpose,
                                                      aten.expand, aten._unsafe_view, aten.randn):
            raise AssertionError(f"uncounted op {packet} in a counted core")
        return out


def matmul_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def elementwise_flops(fn) -> int:
    with ElementwiseCount() as counter:
        fn()
    return counter.total


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(N, D, generator=g, dtype=torch.float64)
    return torch.randn(B, D, generator=g, dtype=torch.float64), W / W.norm(dim=1, keepdim=True)


def gram_setup() -> int:
    """The step size of ISTA/FISTA: the smaller Gram matrix (D x D here), once per call, not per sample."""
    return 2 * D * N * D


@pytest.mark.parametrize("hidden", [[], [32], [24, 12]])
def test_mlp_encoder_counts_equal_the_forward(hidden) -> None:
    enc = MLPEncoder(D, N, hidden)
    x = torch.randn(B, D)
    with torch.no_grad():
        total = matmul_flops(lambda: enc(x)) + elementwise_flops(lambda: enc(x))
    assert total == B * enc.flops() == B * flops.mlp_encoder(enc.widths)
    if not hidden:
        assert enc.flops() == flops.linear_encoder(D, N)


def test_decoder_count_equals_f_W_plus_b() -> None:
    f, W, b = torch.rand(B, N), torch.randn(N, D), torch.randn(D)
    assert matmul_flops(lambda: f @ W + b) + elementwise_flops(lambda: f @ W + b) == B * flops.decoder(N, D)


def test_ista_step_core_is_counted_exactly(problem) -> None:
    x, W = problem
    f = torch.rand(B, N, dtype=torch.float64)
    core = lambda: _prox_grad(f, x, W, 0.1, 0.01)  # noqa: E731
    assert matmul_flops(core) + elementwise_flops(core) == B * flops.ista_iteration(N, D)


@pytest.mark.parametrize("method, solver", [("ista", ista), ("fista", fista)])
@pytest.mark.parametrize("iters", [1, 4])
def test_iterative_matmuls_per_iteration(problem, method, solver, iters) -> None:
    """The products of ISTA/FISTA: two per iteration and sample, plus the once-per-call step size."""
    x, W = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tol = 1e-30 never converges: exactly `iters` run
        counted = matmul_flops(lambda: solver(x, W, l1=0.1, max_iters=iters, tol=1e-30))
    per_sample = flops.iterative(N, D, iters, method)
    # the formula's elementwise share, by hand: x − b once (D); per iteration fW − target (D), the update
    # f − 2s·g − s·λ and the clamp (4N); FISTA's momentum (3N) and restart test (4N)
    elementwise = D + iters * (D + 4 * N + (7 * N if method == "fista" else 0))
    assert counted == B * (per_sample - elementwise) + gram_setup()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_pursuit_matmuls_per_step(problem, k) -> None:
    x, W = problem
    # elementwise shares by hand (see each formula): MP 2N + 1 + 2D per step, GP 8N + 6D + 1 per step,
    # OMP per step t: 2N + 2t² (solve, approximate) + ⅔t³ + 2tD (residual) + D; all with D once for x − b
    assert matmul_flops(lambda: matching_pursuit(x, W, k=k)) == B * (
        flops.matching_pursuit(N, D, k) - D - k * (2 * N + 1 + 2 * D))
    assert matmul_flops(lambda: gradient_pursuit(x, W, k=k)) == B * (
        flops.gradient_pursuit(N, D, k) - D - k * (8 * N + 6 * D + 1))
    omp_elementwise = D + sum(2 * N + (2 * t ** 3) // 3 + 2 * t * t + 2 * t * D + D for t in range(1, k + 1))
    assert matmul_flops(lambda: orthogonal_matching_pursuit(x, W, k=k)) == B * (
        flops.orthogonal_matching_pursuit(N, D, k) - omp_elementwise)


def test_sparse_coding_training_matmuls(problem) -> None:
    """Two rounds of 3 FISTA iterations on 10 samples, each followed by a MOD step (SᵀS, SᵀX)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, D, generator=g, dtype=torch.float64)
    s = sparse_coding.SCSettings(rounds=2, code_iters=3, l1=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        counted = matmul_flops(lambda: sparse_coding.learn(x, N, s))
        res = sparse_coding.learn(x, N, s)
    assert res.code_iters == [3, 3]
    analytic = flops.sparse_coding_training(10, N, D, res.code_iters)
    mod_products = 2 * N * 10 * N + 2 * N * 10 * D
    fista_products = 10 * 3 * 4 * N * D
    # everything but the products, by hand: per round 10 samples' FISTA elementwise work, the solve
    # (⅔N³ + 2N²D), the atom norms (3ND) and the code rescaling (10·N)
    rest = 2 * (10 * (D + 3 * (D + 11 * N)) + (2 * N ** 3) // 3 + 2 * N * N * D + 3 * N * D + 10 * N)
    assert analytic == 2 * (fista_products + mod_products) + rest
    # the step size of every round's FISTA is not in the analytic count
    assert counted == 2 * (fista_products + mod_products + gram_setup())
