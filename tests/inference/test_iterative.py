"""ISTA / FISTA / pursuit: optimality against scikit-learn, speed ordering, exact recovery, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from saekit.config import SyntheticConfig
from saekit.data.synthetic import GroundTruth
from saekit.errors import SaekitError
from saekit.eval.recovery import code_mcc
from saekit.inference import (fista, gradient_pursuit, ista, lipschitz, matching_pursuit, objective,
                              orthogonal_matching_pursuit)

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def _problem(seed: int = 0, n: int = 12, d: int = 6, batch: int = 5,
             device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drawn on the CPU (the same problem on every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = W / W.norm(dim=1, keepdim=True)
    b = 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    codes = torch.rand(batch, n, generator=g, dtype=torch.float64) * (torch.rand(batch, n, generator=g) < 0.3)
    return (codes @ W + b).to(device), W.to(device), b.to(device)


def _sklearn_codes(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, l1: float) -> np.ndarray:
    # sklearn minimises (1/(2 n_rows))‖y − Xw‖² + α‖w‖₁ with X = W_decᵀ [d, n_atoms], n_rows = d;
    # multiplying ours, ‖y − Xw‖² + λ‖w‖₁, by 1/(2d) gives α = λ / (2d).
    d = W.shape[1]
    out = []
    for row in (x - b).numpy():
        m = sklearn_linear.Lasso(alpha=l1 / (2 * d), positive=True, fit_intercept=False, tol=1e-12, max_iter=100_000)
        out.append(m.fit(W.T.numpy(), row).coef_)
    return np.stack(out)


@pytest.mark.parametrize("solver", [ista, fista])
def test_matches_sklearn_nonnegative_lasso(solver) -> None:
    x, W, b = _problem()
    l1 = 0.05
    res = solver(x, W, b, l1=l1, max_iters=50_000, tol=1e-10)
    assert res.converged
    ref = torch.from_numpy(_sklearn_codes(x, W, b, l1))
    assert (res.codes >= 0).all()
    ours, theirs = objective(x, W, b, res.codes, l1), objective(x, W, b, ref, l1)
    assert torch.allclose(ours, theirs, rtol=1e-7, atol=1e-9)
    assert torch.allclose(res.codes, ref, atol=1e-4)


def test_fista_needs_fewer_iterations_than_ista(device) -> None:
    x, W, b = _problem(seed=1, n=12, d=6, batch=8, device=device)
    kw = dict(l1=0.02, max_iters=100_000, tol=1e-8)
    a, f = ista(x, W, b, **kw), fista(x, W, b, **kw)
    plain = fista(x, W, b, restart=False, **kw)
    assert a.converged and f.converged and plain.converged
    assert f.n_iters < a.n_iters and plain.n_iters < a.n_iters
    assert torch.allclose(a.codes, f.codes, atol=1e-4)


def test_warm_start_from_the_optimum_stops_at_once(device) -> None:
    x, W, b = _problem(seed=2, device=device)
    opt = fista(x, W, b, l1=0.05, max_iters=50_000, tol=1e-11).codes
    again = fista(x, W, b, l1=0.05, max_iters=50_000, tol=1e-8, init=opt)
    assert again.n_iters <= 2


def test_not_converging_warns_and_returns(device) -> None:
    x, W, b = _problem(seed=3, device=device)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = ista(x, W, b, l1=0.01, max_iters=3, tol=1e-12)
    assert res.n_iters == 3 and not res.converged


def test_lipschitz_is_largest_eigenvalue() -> None:
    _, W, _ = _problem()
    assert lipschitz(W) == pytest.approx(float(torch.linalg.eigvalsh(W @ W.T)[-1]), rel=1e-10)


@pytest.mark.parametrize("pursuit", [matching_pursuit, gradient_pursuit, orthogonal_matching_pursuit])
def test_pursuit_recovers_exact_codes_on_orthonormal_dictionary(pursuit, device) -> None:
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    codes = torch.zeros(32, 10, dtype=torch.float64)
    idx = torch.rand(32, 10, generator=g).topk(3, dim=1).indices
    codes.scatter_(1, idx, torch.rand(32, 3, generator=g, dtype=torch.float64) + 0.5)
    codes, Q = codes.to(device), Q.to(device)
    out = pursuit(codes @ Q, Q, k=3)
    assert torch.allclose(out, codes, atol=1e-10)
    assert ((out > 0).sum(dim=1) == 3).all()


@pytest.mark.parametrize("pursuit", [matching_pursuit, gradient_pursuit, orthogonal_matching_pursuit])
def test_pursuit_recovers_known_sparse_codes_on_an_overcomplete_dictionary(pursuit, device) -> None:
    """48 random unit atoms in R^24 (2x overcomplete, coherence 0.57), 3 active atoms per sample with
    magnitudes in [0.5, 1.5]: every method finds the true support of nearly every sample; OMP, which
    refits the support by least squares, also the exact magnitudes."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(48, 24, generator=g, dtype=torch.float64)
    W = W / W.norm(dim=1, keepdim=True)
    codes = torch.zeros(200, 48, dtype=torch.float64)
    idx = torch.rand(200, 48, generator=g).topk(3, dim=1).indices
    codes.scatter_(1, idx, torch.rand(200, 3, generator=g, dtype=torch.float64) + 0.5)
    codes, W = codes.to(device), W.to(device)
    out = pursuit(codes @ W, W, k=3)
    assert ((out > 0).sum(dim=1) <= 3).all()
    same_support = ((out > 1e-9) == (codes > 0)).all(dim=1).float().mean().item()
    assert same_support >= 0.95  # measured 0.985 (MP, GP) and 0.99 (OMP)
    assert code_mcc(codes.cpu(), out.cpu()) >= 0.95
    if pursuit is orthogonal_matching_pursuit:
        exact = (out - codes).abs().amax(dim=1).lt(1e-8).float().mean().item()
        assert exact >= 0.95


def test_ito_on_true_dictionary_recovers_codes(device) -> None:
    truth = GroundTruth(SyntheticConfig(n_features=16, d=8, k=3, seed=0))
    x, codes = truth.sample(512, torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fista(x.to(device), truth.dictionary.to(device), l1=0.05, max_iters=5000, tol=1e-5)
    assert res.codes.device.type == device
    assert code_mcc(codes, res.codes.cpu()) >= 0.9


@pytest.mark.parametrize("W, match", [
    (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "zero atom"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "non-finite"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "non-finite"),
])
def test_bad_dictionary(W: torch.Tensor, match: str) -> None:
    x = torch.ones(3, 2)
    for call in (lambda: ista(x, W), lambda: fista(x, W), lambda: matching_pursuit(x, W, k=1)):
        with pytest.raises(SaekitError, match=match):
            call()


def test_bad_inputs() -> None:
    W, x = torch.eye(4), torch.ones(2, 4)
    with pytest.raises(SaekitError, match="target L0"):
        matching_pursuit(x, W, k=5)
    with pytest.raises(SaekitError, match="target L0"):
        orthogonal_matching_pursuit(x, W, k=0)
    with pytest.raises(SaekitError, match="inputs must be"):
        fista(torch.ones(2, 3), W)
    with pytest.raises(SaekitError, match="l1"):
        ista(x, W, l1=-1.0)
    with pytest.raises(SaekitError, match="init"):
        fista(x, W, init=torch.zeros(2, 3))
    with pytest.raises(SaekitError, match="max_iters"):
        fista(x, W, max_iters=0)
