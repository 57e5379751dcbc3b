"""Amortised encoders ReLU(W_L … ReLU(W_1 x)) and their three training regimes.

Why an MLP: the linear-ReLU SAE encoder provably has an amortisation gap (O'Neill et al. 2024);
hidden layers give the encoder room to approximate the sparse-inference map. With
``hidden=[]`` the same class *is* the linear-ReLU SAE encoder ReLU(W x + b), so every regime
below compares the two on identical code paths.

Regimes (the paper's three settings):
- ``train_supervised``: the true codes are known; regress them (‖f − s‖², see the function for
  how a dead output unit is kept trainable).
- ``train_frozen_dictionary``: the dictionary is known and frozen; minimise ‖x − fW − b‖² + λ‖f‖₁.
- ``train_joint``: neither is known; learn the encoder and a unit-norm dictionary together
  (the gradient's component along each atom is removed and atoms re-projected after every step).
Losses are per-sample sums, averaged over the batch. Training is mini-batch Adam on the device of x.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.inference import flops
from saekit.inference.iterative import check_dictionary


class MLPEncoder(nn.Module):
    """Codes f = ReLU(... ReLU(W_1 x + b_1) ...) with widths [d_in, *hidden, n_latents]."""

    def __init__(self, d_in: int, n_latents: int, hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        self.widths = [d_in, *hidden, n_latents]
        if any(w < 1 for w in self.widths):
            raise SaekitError(f"MLP widths must all be >= 1, got {self.widths}")
        layers: list[nn.Module] = []
        for a, b in zip(self.widths[:-1], self.widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def pre_activations(self, x: Tensor) -> Tensor:
        """The last layer's input to its ReLU: forward(x) == pre_activations(x).relu()."""
        return self.net[:-1](x)

    def flops(self) -> int:
        """Inference FLOPs per sample (see flops.mlp_encoder)."""
        return flops.mlp_encoder(self.widths)

    @torch.no_grad()
    def tie_to(self, W_dec: Tensor) -> None:
        """Linear encoder only: start each latent's row at its atom (the usual tied SAE initialisation)."""
        if len(self.widths) != 2:
            raise SaekitError("tie_to needs a linear encoder (hidden=[])")
        self.net[0].weight.copy_(W_dec)
        self.net[0].bias.zero_()


    @torch.no_grad()
    def start_from_linear(self, W: Tensor, b: Tensor, b_in: Tensor | None = None) -> None:
        """One hidden layer of width 2·d_in: start as exactly the linear encoder ReLU(W (x − b_in) + b).

        The hidden layer holds ReLU(x − b_in) and ReLU(b_in − x) (W_1 = [I; −I]), from which the output
        layer [W, −W] rebuilds W (x − b_in). Training then starts from a working encoder, with every
        latent that the linear one uses alive, instead of from random weights."""
        d, n = self.widths[0], self.widths[-1]
        if self.widths != [d, 2 * d, n] or W.shape != (n, d) or b.shape != (n,):
            raise SaekitError(f"start_from_linear needs widths [d, 2d, n] and W [n, d], b [n]; got {self.widths}, "
                              f"{tuple(W.shape)}, {tuple(b.shape)}")
        eye = torch.eye(d, dtype=W.dtype, device=W.device)
        shift = b_in if b_in is not None else torch.zeros(d, dtype=W.dtype, device=W.device)
        first, last = self.net[0], self.net[2]
        first.weight.copy_(torch.cat([eye, -eye]))
        first.bias.copy_(torch.cat([-shift, shift]))
        last.weight.copy_(torch.cat([W, -W], dim=1))
        last.bias.copy_(b)


@dataclass
class TrainSettings:
    """Optimisation settings shared by every regime."""

    steps: int = 2000
    """Adam steps."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 1024
    """Samples per step (>= the data size means full batch)."""
    l1: float = 0.1
    """λ of the L1 penalty (unused when training on known codes)."""
    seed: int = 0
    """Seed of the mini-batch order."""


@dataclass
class TrainResult:
    """Final loss, samples processed (for FLOP counts) and analytic training FLOPs."""

    final_loss: float
    samples_seen: int
    train_flops: int


def _loop(params: list[Tensor], n: int, device: torch.device, batch_loss: Callable[[Tensor], Tensor],
          s: TrainSettings, before_step: Callable[[], None] | None = None,
          after_step: Callable[[], None] | None = None) -> tuple[float, int]:
    """Mini-batch Adam over shuffled epochs of n rows; returns (last loss, samples seen)."""
    if s.steps < 1 or s.batch_size < 1 or not s.lr > 0:
        raise SaekitError(f"training needs steps >= 1, batch_size >= 1 and lr > 0, got {s}")
    opt = torch.optim.Adam(params, lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed)
    bs = min(s.batch_size, n)
    order, pos, seen, loss = torch.randperm(n, generator=gen), 0, 0, torch.tensor(float("nan"))
    for _ in range(s.steps):
        if bs == n:
            idx = None
        else:
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos:pos + bs].to(device)
            pos += bs
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step()
        opt.step()
        if after_step is not None:
            after_step()
        seen += bs
    return float(loss.detach()), seen


def _rows(t: Tensor, idx: Tensor | None) -> Tensor:
    return t if idx is None else t[idx]


def _check_data(x: Tensor, d_in: int) -> None:
    if x.ndim != 2 or x.shape[1] != d_in or x.shape[0] == 0:
        raise SaekitError(f"training data must be [n > 0, {d_in}], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise SaekitError("training data has non-finite (NaN or inf) entries")


def train_supervised(encoder: MLPEncoder, x: Tensor, codes: Tensor, s: TrainSettings) -> TrainResult:
    """Regime (i), known codes: minimise ‖encoder(x) − codes‖², with one change that keeps the
    minimiser: where a true code is active (s > 0) the error is taken on the pre-activation z
    instead of ReLU(z). Why: with (ReLU(z) − s)² an output unit whose z is negative on every sample
    gets no gradient and is dead for good (we saw 4 of 16 outputs die with h=1024); (z − s)² pulls it
    back, and both losses are zero exactly when ReLU(z) = s. Inactive targets keep ReLU(z)²."""
    _check_data(x, encoder.widths[0])
    if codes.shape != (x.shape[0], encoder.widths[-1]):
        raise SaekitError(f"codes must have shape ({x.shape[0]}, {encoder.widths[-1]}), got {tuple(codes.shape)}")

    def batch_loss(idx: Tensor | None) -> Tensor:
        z, target = encoder.pre_activations(_rows(x, idx)), _rows(codes, idx)
        return (torch.where(target > 0, z, z.relu()) - target).pow(2).sum(dim=1).mean()

    loss, seen = _loop(list(encoder.parameters()), x.shape[0], x.device, batch_loss, s)
    fwd = flops.supervised_forward(encoder.flops(), encoder.widths[-1])
    return TrainResult(loss, seen, flops.training(fwd, seen))


def _recon_l1(f: Tensor, x: Tensor, W: Tensor, b: Tensor | None, l1: float) -> Tensor:
    x_hat = f @ W + b if b is not None else f @ W
    return ((x - x_hat).pow(2).sum(dim=1) + l1 * f.abs().sum(dim=1)).mean()


def train_frozen_dictionary(encoder: MLPEncoder, x: Tensor, W_dec: Tensor, b_dec: Tensor | None,
                            s: TrainSettings) -> TrainResult:
    """Regime (ii), known dictionary: minimise ‖x − encoder(x) W_dec − b_dec‖² + λ‖encoder(x)‖₁."""
    check_dictionary(W_dec, b_dec)
    _check_data(x, encoder.widths[0])
    if W_dec.shape != (encoder.widths[-1], encoder.widths[0]):
        raise SaekitError(f"dictionary shape {tuple(W_dec.shape)} does not fit encoder widths {encoder.widths}")
    W = W_dec.detach()
    b = None if b_dec is None else b_dec.detach()

    def batch_loss(idx: Tensor | None) -> Tensor:
        xb = _rows(x, idx)
        return _recon_l1(encoder(xb), xb, W, b, s.l1)

    loss, seen = _loop(list(encoder.parameters()), x.shape[0], x.device, batch_loss, s)
    n, d = W.shape
    return TrainResult(loss, seen, flops.training(flops.autoencoder_forward(encoder.flops(), n, d), seen))


def train_joint(encoder: MLPEncoder, dictionary: Dictionary, x: Tensor, s: TrainSettings,
                learn_bias: bool = False) -> TrainResult:
    """Regime (iii), unknown codes and dictionary: encoder and unit-norm atoms learned together.

    ``learn_bias=False`` keeps b_dec fixed (the synthetic data has none to find).
    """
    _check_data(x, encoder.widths[0])
    if (dictionary.n_latents, dictionary.d_in) != (encoder.widths[-1], encoder.widths[0]):
        raise SaekitError(f"dictionary [{dictionary.n_latents}, {dictionary.d_in}] does not fit encoder "
                          f"widths {encoder.widths}")
    dictionary.normalize_()
    params = list(encoder.parameters()) + [dictionary.W_dec] + ([dictionary.b_dec] if learn_bias else [])

    def batch_loss(idx: Tensor | None) -> Tensor:
        xb = _rows(x, idx)
        b = dictionary.b_dec if learn_bias else dictionary.b_dec.detach()
        return _recon_l1(encoder(xb), xb, dictionary.W_dec, b, s.l1)

    loss, seen = _loop(params, x.shape[0], x.device, batch_loss, s,
                       before_step=dictionary.remove_parallel_grad_, after_step=dictionary.normalize_)
    n, d = dictionary.n_latents, dictionary.d_in
    return TrainResult(loss, seen, flops.training(flops.autoencoder_forward(encoder.flops(), n, d), seen))
