"""The methods of O'Neill, Gumran & Klindt (2024) on one synthetic cell, batched over seeds and λ.

Moved here from ``saekit.inference.experiments`` (the old ``saekit bench-synthetic``) and reworked for
``saekit reproduce decoupled-synthetic``. This file only *runs* methods and measures them; the
reproduction in ``decoupled_synthetic`` loops over cells, caches, aggregates and writes files.

Regimes (the paper's three settings):
- ``known_codes``: encoders regress the true codes (linear-ReLU SAE encoder vs MLP); nothing to tune;
- ``known_dictionary``: encoders trained against the true, frozen dictionary (λ tuned), ISTA/FISTA on
  it (λ tuned), MP/GP/OMP on it (target L0 tuned);
- ``unknown``: SAE (encoder + unit-norm dictionary learned jointly), SAE + ITO (FISTA on the SAE's
  dictionary warm-started from its codes, λ tuned), MLP encoder + dictionary, sparse coding (SC).

**Selection.** Every tuned hyperparameter is chosen per seed as the candidate with the highest code
MCC on the *validation* samples (drawn from their own stream, never trained on); the reported code
MCC is on the *test* samples, from another stream. The truth is known in this benchmark, so code MCC
on held-out samples is the selection criterion for every method alike.

**Randomness.** Every draw comes from a named stream (``saekit.rng``) that includes the cell
(N, M, K) and the seed: the problem ``decoupled.truth`` (then GroundTruth's ``synthetic.atoms``),
samples ``decoupled.train`` / ``decoupled.validation`` / ``decoupled.test``, each method's
initialisation ``decoupled.init.<method>`` and mini-batch order ``decoupled.order.<method>``, the
chance dictionaries ``decoupled.chance``. No two share a state, whatever the seeds.

**Batching.** Tiny problems on a CPU are dominated by per-step overhead, so the E = seeds × λ models
of one method in one cell are trained together as stacked tensors (``EnsembleMLP``,
``train_ensemble``; batched FISTA/ISTA and sparse coding). Losses are summed over members and Adam is
elementwise, so each member follows exactly the updates it would alone (tested against
``saekit.inference.mlp`` and ``saekit.inference.sparse_coding`` to float rounding). FLOPs are counted
per member with ``saekit.inference.flops``, as if trained alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saekit.config import SyntheticConfig
from saekit.data.synthetic import GroundTruth
from saekit.errors import SaekitError
from saekit.eval.recovery import chance_dictionary_mcc, code_mcc, dictionary_mcc
from saekit.inference import flops, pursuit
from saekit.rng import stream, stream_seed

Row = dict[str, Any]

# method key -> (regime, display name); the display name of an MLP carries its hidden widths
METHODS: dict[str, tuple[str, str]] = {
    "known_codes/sae": ("known_codes", "SAE encoder"),
    "known_codes/mlp": ("known_codes", "MLP"),
    "known_dictionary/sae": ("known_dictionary", "SAE encoder"),
    "known_dictionary/mlp": ("known_dictionary", "MLP"),
    "known_dictionary/ista": ("known_dictionary", "ISTA (true D)"),
    "known_dictionary/fista": ("known_dictionary", "FISTA (true D)"),
    "known_dictionary/mp": ("known_dictionary", "MP (true D)"),
    "known_dictionary/gp": ("known_dictionary", "GP (true D)"),
    "known_dictionary/omp": ("known_dictionary", "OMP (true D)"),
    "unknown/sae": ("unknown", "SAE"),
    "unknown/sae_ito": ("unknown", "SAE + ITO (FISTA)"),
    "unknown/mlp": ("unknown", "MLP"),
    "unknown/sc": ("unknown", "SC"),
}
REGIMES = ("known_codes", "known_dictionary", "unknown")


@dataclass
class Budget:
    """Method hyperparameters and budgets of one setting (main setting or grid)."""

    steps: int = 3000
    """Adam steps of every amortised encoder (SAE encoder, MLP; all three regimes)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 128
    """Mini-batch size (>= n_train means full batch)."""
    lambdas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    """Candidate λ of every L1 objective (encoders in regimes ii/iii, ISTA/FISTA, SAE + ITO, SC); one is
    chosen per method and seed on the validation samples."""
    mlp_hidden: tuple[int, ...] = (256,)
    """Hidden widths of the MLP encoder in regimes ii and iii."""
    mlp_hidden_known_codes: tuple[int, ...] = (1024,)
    """Hidden widths of the MLP encoder in regime i (the paper's h=1024)."""
    ito_max_iters: int = 5000
    """Iteration cap of ISTA/FISTA inference (true D, SAE + ITO, SC's codes for new samples)."""
    ito_tol: float = 1e-5
    """Relative tolerance of ISTA/FISTA inference."""
    sc_rounds: int = 200
    """Alternations of sparse coding (FISTA on the training codes, then the MOD dictionary step)."""
    sc_code_iters: int = 30
    """FISTA iterations per sparse-coding round."""
    pursuit_k_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Candidate target L0 of MP/GP/OMP, as multiples of the true K (rounded, clipped to [1, min(N, M − 1)])."""
    lambdas_by_method: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Candidate λ of particular methods (``METHODS`` keys), replacing ``lambdas`` for them."""
    methods: tuple[str, ...] = tuple(METHODS)
    """Method keys to run (see ``METHODS``)."""

    def candidates(self, key: str) -> tuple[float, ...]:
        """The λ candidates of method ``key``."""
        return tuple(self.lambdas_by_method.get(key, self.lambdas))

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise SaekitError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.ito_max_iters < 1:
            raise SaekitError("steps, batch_size, ito_max_iters must be >= 1 and lr > 0")
        bad = [k for k in self.lambdas_by_method if k not in METHODS]
        if bad:
            raise SaekitError(f"lambdas_by_method names unknown method(s) {bad}")
        for key in METHODS:
            lams = self.candidates(key)
            if not lams or any(not (math.isfinite(v) and v >= 0) for v in lams):
                raise SaekitError(f"λ candidates of {key} must be finite numbers >= 0, got {lams}")
        if self.sc_rounds < 1 or self.sc_code_iters < 1 or not self.pursuit_k_factors:
            raise SaekitError("sc_rounds, sc_code_iters must be >= 1 and pursuit_k_factors non-empty")


def mlp_name(hidden: Sequence[int]) -> str:
    return "SAE encoder" if not hidden else f"MLP(h={'x'.join(map(str, hidden))})"


def display_name(key: str, budget: Budget) -> str:
    regime, name = METHODS[key]
    if key == "known_codes/mlp":
        return mlp_name(budget.mlp_hidden_known_codes)
    if key.endswith("/mlp"):
        return mlp_name(budget.mlp_hidden)
    return name


# ---------------------------------------------------------------------------------------- problems

@dataclass
class Problem:
    """One synthetic problem (cell N, M, K and seed): the truth and three disjoint sample sets."""

    n: int
    m: int
    k: int
    seed: int
    truth: Tensor
    x: Tensor
    codes: Tensor
    x_val: Tensor
    codes_val: Tensor
    x_test: Tensor
    codes_test: Tensor

    @property
    def cell(self) -> tuple[int, int, int]:
        return self.n, self.m, self.k


def problem_stream(name: str, seed: int, n: int, m: int, k: int) -> torch.Generator:
    """The generator of one purpose (``decoupled.<name>``) in one cell and seed."""
    return stream(f"decoupled.{name}", seed, n, m, k)


def make_problem(n: int, m: int, k: int, seed: int, n_train: int, n_val: int, n_test: int,
                 device: str = "cpu") -> Problem:
    """The truth and train / validation / test samples of one cell and seed, each from its own stream."""
    if min(n, m, k, n_train, n_val, n_test) < 1 or k > n:
        raise SaekitError(f"need N, M, K and sample counts >= 1 and K <= N, got N={n} M={m} K={k}")
    gt = GroundTruth(SyntheticConfig(generator="oneill", n_features=n, d=m, k=k,
                                     seed=stream_seed("decoupled.truth", seed, n, m, k)))
    sets = [gt.sample(size, problem_stream(name, seed, n, m, k))
            for name, size in (("train", n_train), ("validation", n_val), ("test", n_test))]
    dev = torch.device(device)
    (x, s), (xv, sv), (xt, st) = [(a.to(dev), b.to(dev)) for a, b in sets]
    return Problem(n, m, k, seed, gt.dictionary.to(dev), x, s, xv, sv, xt, st)


def init_stream(method: str, p: Problem) -> torch.Generator:
    """Initialisation of ``method`` (a ``METHODS`` key) on problem p."""
    return problem_stream(f"init.{method}", p.seed, *p.cell)


def order_seed(method: str, p: Problem) -> int:
    """Seed of the mini-batch order of ``method`` on p (a torch.Generator seed, as TrainSettings.seed)."""
    return stream_seed(f"decoupled.order.{method}", p.seed, *p.cell)


def random_atoms(n: int, m: int, gen: torch.Generator) -> Tensor:
    """Unit-norm Gaussian directions [n, m] (Dictionary.reset_random's distribution)."""
    W = torch.randn(n, m, generator=gen)
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def initial_dictionary(method: str, p: Problem) -> Tensor:
    """The dictionary a method starts from (unknown/sae, unknown/mlp, unknown/sc), on CPU."""
    if method in ("unknown/sae", "unknown/mlp", "unknown/sc"):
        return random_atoms(p.n, p.m, init_stream(method, p))
    raise SaekitError(f"{method} has no initial dictionary of its own")


def chance(p: Problem, draws: int) -> Row:
    """Chance levels of problem p: random unit dictionaries (dictionary MCC) and the untrained SAE
    (the regime-iii SAE's initial dictionary with its tied encoder ReLU(x Wᵀ): dictionary and test code MCC)."""
    truth = p.truth.cpu()
    rnd = chance_dictionary_mcc(truth, p.n, draws, stream_seed("decoupled.chance", p.seed, *p.cell) % (2 ** 40))
    W0 = initial_dictionary("unknown/sae", p)
    codes0 = (p.x_test.cpu() @ W0.T).relu()
    return {"N": p.n, "M": p.m, "K": p.k, "seed": p.seed, "random_dict_mcc": rnd["mean"],
            "random_dict_mcc_sd": rnd["sd"], "random_dict_mcc_max": rnd["max"], "draws": draws,
            "untrained_sae_dict_mcc": dictionary_mcc(truth, W0),
            "untrained_sae_code_mcc": code_mcc(p.codes_test.cpu(), codes0),
            "untrained_sae_l0": float((codes0 > 0).float().sum(dim=1).mean())}


# ---------------------------------------------------------------------------------- batched models

class EnsembleMLP:
    """E independent encoders ReLU(W_L … ReLU(W_1 x + b_1) …) in stacked tensors W_l [E, out, in].

    ``hidden=()`` is the linear-ReLU SAE encoder. Inputs are [E, B, d]: member e encodes x[e]."""

    def __init__(self, widths: Sequence[int], weights: list[Tensor], biases: list[Tensor]) -> None:
        self.widths = list(widths)
        self.weights = [w.detach().clone().requires_grad_(True) for w in weights]
        self.biases = [b.detach().clone().requires_grad_(True) for b in biases]

    @classmethod
    def initialise(cls, d: int, n: int, hidden: Sequence[int], gens: Sequence[torch.Generator], repeat: int,
                   device: torch.device) -> "EnsembleMLP":
        """One draw per generator (nn.Linear's default U(±1/√fan_in) for weights and biases), each
        repeated ``repeat`` times (members that differ only in λ start from the same encoder)."""
        widths = [d, *hidden, n]
        if any(w < 1 for w in widths):
            raise SaekitError(f"MLP widths must all be >= 1, got {widths}")
        weights, biases = [], []
        per_gen: list[list[tuple[Tensor, Tensor]]] = []
        for g in gens:
            layers = []
            for a, b in zip(widths[:-1], widths[1:]):
                bound = 1.0 / math.sqrt(a)
                layers.append(((torch.rand(b, a, generator=g) * 2 - 1) * bound,
                               (torch.rand(b, generator=g) * 2 - 1) * bound))
            per_gen.append(layers)
        for li in range(len(widths) - 1):
            weights.append(torch.stack([lay[li][0] for lay in per_gen]).repeat_interleave(repeat, 0).to(device))
            biases.append(torch.stack([lay[li][1] for lay in per_gen]).repeat_interleave(repeat, 0).to(device))
        return cls(widths, weights, biases)

    @torch.no_grad()
    def tie_to(self, W_dec: Tensor) -> None:
        """Linear encoder only: rows start at the atoms W_dec [E, n, d], biases at 0 (tied SAE init)."""
        if len(self.widths) != 2:
            raise SaekitError("tie_to needs a linear encoder (hidden=())")
        self.weights[0].copy_(W_dec)
        self.biases[0].zero_()

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[Tensor]:
        return [*self.weights, *self.biases]

    def pre_activations(self, x: Tensor) -> Tensor:
        h = x
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
            if i < last:
                h = h.relu()
        return h

    def __call__(self, x: Tensor) -> Tensor:
        return self.pre_activations(x).relu()

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self(x)

    def flops(self) -> int:
        """Inference FLOPs per sample of one member (flops.mlp_encoder)."""
        return flops.mlp_encoder(self.widths)


def _batch_indices(n: int, bs: int, gens: Sequence[torch.Generator], steps: int) -> list[Tensor | None]:
    """Per step the [S, bs] rows of each generator's shuffled epochs (saekit.inference.mlp._loop's order)."""
    if bs >= n:
        return [None] * steps
    orders = [torch.randperm(n, generator=g) for g in gens]
    pos, out = 0, []
    for _ in range(steps):
        if pos + bs > n:
            orders, pos = [torch.randperm(n, generator=g) for g in gens], 0
        out.append(torch.stack([o[pos:pos + bs] for o in orders]))
        pos += bs
    return out


def train_ensemble(enc: EnsembleMLP, x: Tensor, gens: Sequence[torch.Generator], repeat: int, steps: int,
                   lr: float, batch_size: int, *, codes: Tensor | None = None, dictionary: Tensor | None = None,
                   learn_dictionary: bool = False, l1: Tensor | None = None) -> tuple[Tensor, int, Tensor | None]:
    """Mini-batch Adam for every member at once; returns (last loss per member, samples seen per member,
    the learned dictionary or None).

    x [S, n, d] holds each seed's training samples; member e = s·repeat + j trains on x[s] in the order
    of ``gens[s]``. Exactly one of three objectives (the regimes of ``saekit.inference.mlp``):
    - ``codes`` [S, n, N]: known codes, ‖z − s‖² where s > 0 and ReLU(z)² elsewhere (train_supervised);
    - ``dictionary`` [E, N, d] frozen: ‖x − f D‖² + λ_e ‖f‖₁ (train_frozen_dictionary);
    - ``dictionary`` with ``learn_dictionary``: the same loss, atoms learned on the unit sphere
      (parallel gradient removed before, atoms re-projected after every step; train_joint).
    Losses are per-sample sums averaged over the batch, then summed over members."""
    S, n, d = x.shape
    E = enc.members
    if S * repeat != E or len(gens) != S:
        raise SaekitError(f"{E} members do not match {S} seeds x {repeat}")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise SaekitError(f"training needs steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    bs = min(batch_size, n)
    D = None
    if dictionary is not None:
        D = dictionary.detach().clone()
        if learn_dictionary:
            D = D / D.norm(dim=2, keepdim=True).clamp_min(1e-12)
            D.requires_grad_(True)
    params = enc.parameters() + ([D] if learn_dictionary and D is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    lam = None if l1 is None else l1.to(x).view(E, 1)
    rows = torch.arange(S, device=x.device)[:, None]
    loss_e = torch.full((E,), math.nan)
    for idx in _batch_indices(n, bs, gens, steps):
        if idx is None:
            xb = x.repeat_interleave(repeat, 0)
            tb = None if codes is None else codes.repeat_interleave(repeat, 0)
        else:
            idx = idx.to(x.device)
            xb = x[rows, idx].repeat_interleave(repeat, 0)
            tb = None if codes is None else codes[rows, idx].repeat_interleave(repeat, 0)
        if tb is not None:
            z = enc.pre_activations(xb)
            loss_e = (torch.where(tb > 0, z, z.relu()) - tb).pow(2).sum(dim=2).mean(dim=1)
        else:
            assert D is not None and lam is not None
            f = enc(xb)
            loss_e = ((xb - torch.bmm(f, D)).pow(2).sum(dim=2) + lam * f.abs().sum(dim=2)).mean(dim=1)
        opt.zero_grad(set_to_none=True)
        loss_e.sum().backward()
        if learn_dictionary and D is not None and D.grad is not None:
            with torch.no_grad():
                dots = (D.grad * D).sum(dim=2, keepdim=True)
                D.grad.sub_(D * dots / D.pow(2).sum(dim=2, keepdim=True).clamp_min(1e-24))
        opt.step()
        if learn_dictionary and D is not None:
            with torch.no_grad():
                D.div_(D.norm(dim=2, keepdim=True).clamp_min(1e-12))
    return loss_e.detach().cpu(), steps * bs, (D.detach() if learn_dictionary and D is not None else None)


@dataclass
class BatchedInference:
    """Codes [E, n, N], iterations run per member, and whether each member's every row met the tolerance."""

    codes: Tensor
    n_iters: list[int]
    converged: list[bool]


def lipschitz_batched(W: Tensor) -> Tensor:
    """L_e = λ_max(W_e W_eᵀ) per member [E] (float64), from the smaller Gram matrix."""
    W = W.double()
    gram = W @ W.transpose(1, 2) if W.shape[1] <= W.shape[2] else W.transpose(1, 2) @ W
    return torch.linalg.eigvalsh(gram)[:, -1]


@torch.no_grad()
def proximal_batched(x: Tensor, W: Tensor, l1: Tensor, max_iters: int, tol: float, init: Tensor | None = None,
                     accelerated: bool = True) -> BatchedInference:
    """Non-negative ISTA (``accelerated=False``) or FISTA with gradient restart, member e on (x[e], W[e], λ_e).

    The same iteration, step 1/(2L), threshold and stopping rule as ``saekit.inference.iterative``
    (a member stops, and is frozen, once every one of its rows has converged); no bias (the data has none)."""
    E, n, _ = x.shape
    N = W.shape[1]
    if W.shape[0] != E or l1.shape != (E,):
        raise SaekitError(f"x {tuple(x.shape)}, W {tuple(W.shape)} and l1 {tuple(l1.shape)} disagree on members")
    if max_iters < 1 or not tol > 0:
        raise SaekitError(f"max_iters must be >= 1 and tol > 0, got {max_iters}, {tol}")
    W = W.detach()
    target = x.to(W.dtype)
    step64 = 1.0 / (2.0 * lipschitz_batched(W))
    # the gradient step −2s·(fW − x)Wᵀ with 2s folded into Wᵀ, and the threshold λs, per member
    Wt_step = W.transpose(1, 2) * (2.0 * step64).to(W.dtype).view(E, 1, 1)
    thresh = (l1.double().to(step64.device) * step64).to(W.dtype).view(E, 1, 1)
    f = torch.zeros(E, n, N, dtype=W.dtype, device=W.device) if init is None else init.detach().to(W.dtype).clamp_min(0)
    y = f.clone()
    t = torch.ones(E, n, 1, dtype=W.dtype, device=W.device)
    iters = [max_iters] * E
    converged = [False] * E
    active = torch.arange(E, device=W.device)
    for it in range(1, max_iters + 1):
        full = active.numel() == E
        fa, ya, ta = (f, y, t) if full else (f[active], y[active], t[active])
        Wa, Wsa, tg, tha = (W, Wt_step, target, thresh) if full else (W[active], Wt_step[active], target[active],
                                                                    thresh[active])
        residual = torch.baddbmm(tg, ya, Wa, alpha=1.0, beta=-1.0)  # fW − x
        f_new = torch.baddbmm(ya, residual, Wsa, alpha=-1.0).sub_(tha).clamp_min_(0)
        d = f_new - fa
        if accelerated:
            uphill = torch.linalg.vecdot(ya - f_new, d).unsqueeze(2) > 0
            ta = ta.masked_fill(uphill, 1.0)
            t_new = (1.0 + torch.sqrt(1.0 + 4.0 * ta * ta)) / 2.0
            y_new = torch.addcmul(f_new, (ta - 1.0) / t_new, d)
        else:
            t_new, y_new = ta, f_new
        done = (torch.linalg.vector_norm(d, dim=2)
                <= tol * torch.linalg.vector_norm(f_new, dim=2).clamp_min(1.0)).all(dim=1)
        if full:
            f, y, t = f_new, y_new, t_new
        else:
            f[active], y[active], t[active] = f_new, y_new, t_new
        if bool(done.any()):
            for e in active[done].tolist():
                iters[e], converged[e] = it, True
            active = active[~done]
            if active.numel() == 0:
                break
    return BatchedInference(f, iters, converged)


@torch.no_grad()
def sparse_coding_batched(x: Tensor, n_atoms: int, l1: Tensor, rounds: int, code_iters: int,
                          gens: Sequence[torch.Generator], ridge: float = 1e-6) -> tuple[Tensor, list[int]]:
    """Alternating sparse coding (``saekit.inference.sparse_coding.learn``) for every member at once:
    warm-started FISTA on all training codes, then the MOD step W = (SᵀS + εI)⁻¹SᵀX, dead atoms restarted
    at a random training sample (from the member's generator), atoms to unit norm, codes scaled up.

    x [E, n, d] (member e's data), ``gens`` one generator per member (it draws the initial atoms, then the
    restarts). Returns (dictionaries [E, n_atoms, d], training FLOPs per member)."""
    E, n, d = x.shape
    if len(gens) != E or l1.shape != (E,):
        raise SaekitError(f"{E} members need {E} generators and λ values")
    if n_atoms < 1 or rounds < 1 or code_iters < 1:
        raise SaekitError("sparse coding needs n_atoms, rounds and code_iters >= 1")
    W = torch.stack([random_atoms(n_atoms, d, g) for g in gens]).to(x)
    S: Tensor | None = None
    iters: list[list[int]] = [[] for _ in range(E)]
    eye = torch.eye(n_atoms, dtype=x.dtype, device=x.device)
    for _ in range(rounds):
        res = proximal_batched(x, W, l1, code_iters, 1e-6, init=S)
        S = res.codes
        for e in range(E):
            iters[e].append(res.n_iters[e])
        St = S.transpose(1, 2)
        W = torch.linalg.solve(St @ S + ridge * eye, St @ x)
        usage = S.sum(dim=1)
        for e in (usage <= 0).any(dim=1).nonzero().flatten().tolist():
            dead = (usage[e] <= 0).nonzero().flatten()
            rows = torch.randint(0, n, (dead.numel(),), generator=gens[e]).to(x.device)
            W[e, dead] = x[e, rows] + 1e-3 * torch.randn(dead.numel(), d, generator=gens[e]).to(x)
        norms = W.norm(dim=2).clamp_min(1e-12)
        W = W / norms[:, :, None]
        S = S * norms[:, None, :]
    return W, [flops.sparse_coding_training(n, n_atoms, d, its) for its in iters]


# ----------------------------------------------------------------------------------------- regimes

def _l0(codes: Tensor) -> float:
    return float((codes > 0).float().sum(dim=-1).mean())


def _mcc(true: Tensor, codes: Tensor) -> float:
    return code_mcc(true.cpu(), codes.detach().cpu())


def select(values: Sequence[Any], val_scores: Sequence[float]) -> int:
    """Index of the candidate with the highest validation score (the first on ties; NaN never wins)."""
    if not values or len(values) != len(val_scores):
        raise SaekitError("one validation score per candidate is needed")
    best, best_score = 0, -math.inf
    for i, s in enumerate(val_scores):
        if s is not None and math.isfinite(s) and s > best_score:
            best, best_score = i, s
    return best


def _row(p: Problem, key: str, budget: Budget, codes_test: Tensor, atoms: Tensor | None, *, train_flops: int,
         infer_per_sample: int, param: str = "", values: Sequence[Any] = (), val_scores: Sequence[float] = (),
         chosen: int = 0, selection_flops: int = 0, seconds: float = 0.0, **extra: Any) -> Row:
    regime = METHODS[key][0]
    n_test = p.x_test.shape[0]
    return {"regime": regime, "method": display_name(key, budget), "key": key, "N": p.n, "M": p.m, "K": p.k,
            "seed": p.seed, "param": param, "value": values[chosen] if values else None,
            "candidates": [[v, s] for v, s in zip(values, val_scores)],
            "val_code_mcc": val_scores[chosen] if val_scores else None,
            "code_mcc": _mcc(p.codes_test, codes_test),
            "dict_mcc": None if atoms is None else dictionary_mcc(p.truth.cpu(), atoms.detach().cpu()),
            "l0": _l0(codes_test), "train_flops": int(train_flops), "infer_flops_per_sample": int(infer_per_sample),
            "infer_flops_total": int(infer_per_sample) * n_test,
            "total_flops": int(train_flops) + int(infer_per_sample) * n_test,
            "selection_flops": int(selection_flops), "seconds": round(seconds, 3), **extra}


def _stack(ps: Sequence[Problem], attr: str) -> Tensor:
    return torch.stack([getattr(p, attr) for p in ps])


def _lams(values: Sequence[float], S: int, device: torch.device) -> Tensor:
    """λ of every member (seed-major: member s·L + j has candidate j)."""
    return torch.tensor(list(values) * S, dtype=torch.float64, device=device)


def known_codes(ps: Sequence[Problem], budget: Budget) -> list[list[Row]]:
    """Regime (i): supervised encoders predicting the true codes (no hyperparameter is tuned)."""
    out: list[list[Row]] = [[] for _ in ps]
    x, codes = _stack(ps, "x"), _stack(ps, "codes")
    dev = x.device
    for key, hidden in (("known_codes/sae", ()), ("known_codes/mlp", budget.mlp_hidden_known_codes)):
        if key not in budget.methods:
            continue
        t0 = time.perf_counter()
        enc = EnsembleMLP.initialise(ps[0].m, ps[0].n, hidden, [init_stream(key, p) for p in ps], 1, dev)
        gens = [torch.Generator().manual_seed(order_seed(key, p)) for p in ps]
        _, seen, _ = train_ensemble(enc, x, gens, 1, budget.steps, budget.lr, budget.batch_size, codes=codes)
        f = enc.encode(_stack(ps, "x_test"))
        train = flops.training(flops.supervised_forward(enc.flops(), ps[0].n), seen)
        sec = (time.perf_counter() - t0) / len(ps)
        for s, p in enumerate(ps):
            out[s].append(_row(p, key, budget, f[s], None, train_flops=train, infer_per_sample=enc.flops(),
                                    selection_flops=train, seconds=sec))
    return out


def _encoders_on_dictionary(ps: Sequence[Problem], budget: Budget, key: str, hidden: Sequence[int],
                            D0: Tensor, learn: bool, tie: bool) -> tuple[EnsembleMLP, Tensor, int, float]:
    """Train E = seeds × λ encoders (and, with ``learn``, their dictionaries) from D0 [S, N, M]."""
    lams = budget.candidates(key)
    L = len(lams)
    x = _stack(ps, "x")
    t0 = time.perf_counter()
    enc = EnsembleMLP.initialise(ps[0].m, ps[0].n, hidden, [init_stream(key, p) for p in ps], L, x.device)
    D = D0.repeat_interleave(L, 0)
    if tie:
        enc.tie_to(D)
    gens = [torch.Generator().manual_seed(order_seed(key, p)) for p in ps]
    _, seen, learned = train_ensemble(enc, x, gens, L, budget.steps, budget.lr, budget.batch_size, dictionary=D,
                                      learn_dictionary=learn, l1=_lams(lams, len(ps), x.device))
    return enc, (learned if learned is not None else D), seen, time.perf_counter() - t0


def _encoder_rows(ps: Sequence[Problem], budget: Budget, key: str, enc: EnsembleMLP, D: Tensor, seen: int,
                  seconds: float, report_atoms: bool) -> tuple[list[Row], list[int]]:
    """Choose λ per seed on validation, report on test; returns rows and the chosen member per seed."""
    lams = budget.candidates(key)
    L, N, M = len(lams), ps[0].n, ps[0].m
    fv = enc.encode(_stack(ps, "x_val").repeat_interleave(L, 0))
    ft = enc.encode(_stack(ps, "x_test").repeat_interleave(L, 0))
    train = flops.training(flops.autoencoder_forward(enc.flops(), N, M), seen)
    rows, chosen = [], []
    for s, p in enumerate(ps):
        scores = [_mcc(p.codes_val, fv[s * L + j]) for j in range(L)]
        j = select(lams, scores)
        e = s * L + j
        chosen.append(e)
        rows.append(_row(p, key, budget, ft[e], D[e] if report_atoms else None, train_flops=train,
                         infer_per_sample=enc.flops(), param="λ", values=lams, val_scores=scores, chosen=j,
                         selection_flops=L * (train + enc.flops() * p.x_val.shape[0]), seconds=seconds / len(ps)))
    return rows, chosen


def _iterative_rows(ps: Sequence[Problem], budget: Budget, key: str, W: Tensor, accelerated: bool,
                    init_val: Tensor | None = None, init_test: Tensor | None = None, train_flops: int = 0,
                    base_infer: int = 0, report_atoms: bool = False) -> list[Row]:
    """ISTA/FISTA with λ chosen on validation: W [S, N, M] one dictionary per seed; init_* [S, n, N] warm starts."""
    lams = budget.candidates(key)
    L, S, N, M = len(lams), len(ps), ps[0].n, ps[0].m
    t0 = time.perf_counter()
    name = "fista" if accelerated else "ista"
    lam = _lams(lams, S, W.device)
    val = proximal_batched(_stack(ps, "x_val").repeat_interleave(L, 0), W.repeat_interleave(L, 0), lam,
                           budget.ito_max_iters, budget.ito_tol,
                           None if init_val is None else init_val.repeat_interleave(L, 0), accelerated)
    choice = []
    scores_all = []
    for s, p in enumerate(ps):
        scores = [_mcc(p.codes_val, val.codes[s * L + j]) for j in range(L)]
        choice.append(select(lams, scores))
        scores_all.append(scores)
    lam_test = torch.tensor([lams[j] for j in choice], dtype=torch.float64, device=W.device)
    test = proximal_batched(_stack(ps, "x_test"), W, lam_test, budget.ito_max_iters, budget.ito_tol, init_test,
                            accelerated)
    sec = (time.perf_counter() - t0) / S
    rows = []
    for s, p in enumerate(ps):
        per = base_infer + flops.iterative(N, M, test.n_iters[s], name)
        n_val = p.x_val.shape[0]
        sel = sum(n_val * (base_infer + flops.iterative(N, M, val.n_iters[s * L + j], name)) for j in range(L))
        rows.append(_row(p, key, budget, test.codes[s], W[s] if report_atoms else None, train_flops=train_flops,
                         infer_per_sample=per, param="λ", values=lams, val_scores=scores_all[s],
                         chosen=choice[s], selection_flops=sel, seconds=sec, iters=test.n_iters[s],
                         converged=test.converged[s],
                         val_converged=all(val.converged[s * L:(s + 1) * L])))
    return rows


def pursuit_ks(k: int, n: int, m: int, factors: Sequence[float]) -> list[int]:
    """Candidate target L0 values: round(f·K) for each factor, clipped to [1, min(N, M − 1)] (M atoms already
    span R^M, and more make OMP's least squares singular), without repeats; K itself (< M) is never clipped."""
    return list(dict.fromkeys(min(n, max(m - 1, k), max(1, round(f * k))) for f in factors))


def known_dictionary(ps: Sequence[Problem], budget: Budget) -> list[list[Row]]:
    """Regime (ii): encoders trained against the true frozen dictionary, ITO and pursuit on it."""
    out: list[list[Row]] = [[] for _ in ps]
    truth = _stack(ps, "truth")
    for key, hidden, tie in (("known_dictionary/sae", (), True), ("known_dictionary/mlp", budget.mlp_hidden, False)):
        if key in budget.methods:
            enc, D, seen, sec = _encoders_on_dictionary(ps, budget, key, hidden, truth, learn=False, tie=tie)
            rows, _ = _encoder_rows(ps, budget, key, enc, D, seen, sec, report_atoms=False)
            for s, r in enumerate(rows):
                out[s].append(r)
    for key, acc in (("known_dictionary/ista", False), ("known_dictionary/fista", True)):
        if key in budget.methods:
            for s, r in enumerate(_iterative_rows(ps, budget, key, truth, acc)):
                out[s].append(r)
    for key, fn, cost in (("known_dictionary/mp", pursuit.matching_pursuit, flops.matching_pursuit),
                          ("known_dictionary/gp", pursuit.gradient_pursuit, flops.gradient_pursuit),
                          ("known_dictionary/omp", pursuit.orthogonal_matching_pursuit,
                           flops.orthogonal_matching_pursuit)):
        if key not in budget.methods:
            continue
        for s, p in enumerate(ps):
            t0 = time.perf_counter()
            ks = pursuit_ks(p.k, p.n, p.m, budget.pursuit_k_factors)
            scores = [_mcc(p.codes_val, fn(p.x_val, p.truth, k=k)) for k in ks]
            j = select(ks, scores)
            codes = fn(p.x_test, p.truth, k=ks[j])
            sel = sum(p.x_val.shape[0] * cost(p.n, p.m, k) for k in ks)
            out[s].append(_row(p, key, budget, codes, None, train_flops=0, infer_per_sample=cost(p.n, p.m, ks[j]),
                                    param="k", values=ks, val_scores=scores, chosen=j, selection_flops=sel,
                                    seconds=time.perf_counter() - t0))
    return out


def unknown(ps: Sequence[Problem], budget: Budget) -> list[list[Row]]:
    """Regime (iii): neither codes nor dictionary known."""
    out: list[list[Row]] = [[] for _ in ps]
    dev = ps[0].x.device
    S, N, M = len(ps), ps[0].n, ps[0].m
    if "unknown/sae" in budget.methods or "unknown/sae_ito" in budget.methods:
        D0 = torch.stack([initial_dictionary("unknown/sae", p) for p in ps]).to(dev)
        enc, D, seen, sec = _encoders_on_dictionary(ps, budget, "unknown/sae", (), D0, learn=True, tie=True)
        rows, chosen = _encoder_rows(ps, budget, "unknown/sae", enc, D, seen, sec, report_atoms=True)
        if "unknown/sae" in budget.methods:
            for s, r in enumerate(rows):
                out[s].append(r)
        if "unknown/sae_ito" in budget.methods:
            idx = torch.tensor(chosen, device=dev)
            L = len(budget.candidates("unknown/sae"))
            W = D[idx]
            init_val = enc.encode(_stack(ps, "x_val").repeat_interleave(L, 0))[idx]
            init_test = enc.encode(_stack(ps, "x_test").repeat_interleave(L, 0))[idx]
            train = rows[0]["train_flops"]
            ito = _iterative_rows(ps, budget, "unknown/sae_ito", W, True, init_val, init_test, train_flops=train,
                                  base_infer=enc.flops(), report_atoms=True)
            for s, (r, sae_row) in enumerate(zip(ito, rows)):
                r["sae_lambda"] = sae_row["value"]
                r["selection_flops"] += sae_row["selection_flops"]
                out[s].append(r)
    if "unknown/mlp" in budget.methods:
        D0 = torch.stack([initial_dictionary("unknown/mlp", p) for p in ps]).to(dev)
        enc, D, seen, sec = _encoders_on_dictionary(ps, budget, "unknown/mlp", budget.mlp_hidden, D0, learn=True,
                                                    tie=False)
        rows, _ = _encoder_rows(ps, budget, "unknown/mlp", enc, D, seen, sec, report_atoms=True)
        for s, r in enumerate(rows):
            out[s].append(r)
    if "unknown/sc" in budget.methods:
        t0 = time.perf_counter()
        lams = budget.candidates("unknown/sc")
        L = len(lams)
        x = _stack(ps, "x").repeat_interleave(L, 0)
        gens = [init_stream("unknown/sc", p) for p in ps for _ in range(L)]  # same start for every λ of a seed
        lam = _lams(lams, S, dev)
        W, train = sparse_coding_batched(x, N, lam, budget.sc_rounds, budget.sc_code_iters, gens)
        val = proximal_batched(_stack(ps, "x_val").repeat_interleave(L, 0), W, lam, budget.ito_max_iters,
                               budget.ito_tol)
        scores_all = [[_mcc(p.codes_val, val.codes[s * L + j]) for j in range(L)] for s, p in enumerate(ps)]
        choice = [select(lams, scores) for scores in scores_all]
        members = [s * L + j for s, j in enumerate(choice)]
        lam_test = torch.tensor([lams[j] for j in choice], dtype=torch.float64, device=dev)
        test = proximal_batched(_stack(ps, "x_test"), W[members], lam_test, budget.ito_max_iters, budget.ito_tol)
        sec = (time.perf_counter() - t0) / S
        for s, p in enumerate(ps):
            e, n_val = members[s], p.x_val.shape[0]
            sel = sum(train[s * L + j] + n_val * flops.iterative(N, M, val.n_iters[s * L + j], "fista")
                      for j in range(L))
            out[s].append(_row(p, "unknown/sc", budget, test.codes[s], W[e], train_flops=train[e],
                                    infer_per_sample=flops.iterative(N, M, test.n_iters[s], "fista"), param="λ",
                                    values=lams, val_scores=scores_all[s], chosen=choice[s],
                                    selection_flops=sel, seconds=sec, iters=test.n_iters[s],
                                    converged=test.converged[s]))
    return out


REGIME_FUNCTIONS = {"known_codes": known_codes, "known_dictionary": known_dictionary, "unknown": unknown}


def regime_methods(regime: str, budget: Budget) -> list[str]:
    return [k for k in budget.methods if METHODS[k][0] == regime]


def run_regime(regime: str, ps: Sequence[Problem], budget: Budget) -> list[list[Row]]:
    """Every method of ``regime`` in ``budget.methods`` on the problems ``ps`` (several seeds, and possibly
    several K, of one N and M: they share shapes, so they train as one ensemble); rows aligned with ``ps``."""
    if not ps or len({(p.n, p.m) for p in ps}) != 1:
        raise SaekitError("run_regime needs problems of one N and M")
    budget.validate()
    return REGIME_FUNCTIONS[regime](ps, budget)


@dataclass
class CellSpec:
    """One cell of the grid and whether it is run."""

    n: int
    m: int
    k: int
    skip: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def cell_spec(n: int, m: int, k: int) -> CellSpec:
    """Whether a cell makes sense: K >= M is skipped (not identifiable); K > M/2 is kept with a note."""
    if k >= m:
        return CellSpec(n, m, k, skip=f"K={k} >= M={m}: any M atoms in general position span R^M, so a sample has "
                                      "many K-sparse codes and the true one is not identifiable")
    if k > n:
        return CellSpec(n, m, k, skip=f"K={k} > N={n}: fewer atoms than active atoms")
    note = (f"K={k} > M/2: beyond the worst-case uniqueness bound (spark), identifiable only almost surely"
            if 2 * k > m else "")
    return CellSpec(n, m, k, note=note)
