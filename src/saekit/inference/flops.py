"""Analytic FLOP counts for sparse inference and for training, per method.

Why analytic: wall-clock time on 2 CPU cores says little about compute-optimal inference; the
paper's comparison (quality versus FLOPs) needs counts that are exact functions of the shapes and
of the iterations actually used.

Conventions (every count is per sample unless its name says total):
- a matrix product [n, a] × [a, b] costs 2·n·a·b FLOPs (one multiply and one add per term);
- an elementwise operation (add, subtract, scale, ReLU/clamp, compare, square) costs 1 FLOP per
  element; a reduction over m elements costs m; an argmax over m costs m;
- convergence checks of the iterative solvers and optimiser updates (Adam) are not counted;
- training: one step on one sample costs ``BACKWARD_FACTOR`` × its forward FLOPs (forward 1×,
  backward 2×: gradients with respect to activations and to weights).
Shapes: d = input dimension, n = number of atoms (latents), widths = [d, h1, …, n] for an MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

BACKWARD_FACTOR = 3


def matmul(n: int, a: int, b: int) -> int:
    """[n, a] × [a, b]."""
    return 2 * n * a * b


def mlp_encoder(widths: Sequence[int]) -> int:
    """ReLU(W_L … ReLU(W_1 x + b_1) … + b_L): per layer a matmul, a bias add and a ReLU.

    widths = [d, n] is the linear-ReLU SAE encoder: 2dn + 2n.
    """
    return sum(matmul(1, a, b) + 2 * b for a, b in zip(widths[:-1], widths[1:]))


def linear_encoder(d: int, n: int) -> int:
    """SAE encoder ReLU(W_enc x + b_enc): 2dn + 2n."""
    return mlp_encoder([d, n])


def decoder(n: int, d: int) -> int:
    """x̂ = f W_dec + b_dec: 2nd + d."""
    return matmul(1, n, d) + d


def reconstruction_l1_loss(n: int, d: int) -> int:
    """‖x − x̂‖² + λ‖f‖₁: difference, square, sum (3d) and |f|, sum, scale (2n + 1)."""
    return 3 * d + 2 * n + 1


def ista_iteration(n: int, d: int) -> int:
    """r = fW − (x − b) (2nd + d); g = r Wᵀ (2nd); f − 2s·g − s·λ (3n); clamp at 0 (n): 4nd + d + 4n."""
    return 2 * matmul(1, n, d) + d + 4 * n


def fista_iteration(n: int, d: int, restart: bool = True) -> int:
    """An ISTA step plus momentum y = f' + c(f' − f) (3n) and, with restart, the test ⟨y − f', f' − f⟩ (4n)."""
    return ista_iteration(n, d) + 3 * n + (4 * n if restart else 0)


def iterative(n: int, d: int, iters: int, method: str = "fista", restart: bool = True) -> int:
    """ISTA/FISTA inference of one sample: x − b_dec once (d), then ``iters`` iterations."""
    if method == "ista":
        per = ista_iteration(n, d)
    elif method == "fista":
        per = fista_iteration(n, d, restart)
    else:
        raise ValueError(f"unknown iterative method {method!r}")
    return d + iters * per


def matching_pursuit(n: int, d: int, k: int) -> int:
    """Per step: correlations rWᵀ (2nd), normalise + argmax (2n), coefficient (1), residual update (2d)."""
    return d + k * (matmul(1, d, n) + 2 * n + 1 + 2 * d)


def gradient_pursuit(n: int, d: int, k: int) -> int:
    """Per step: correlations (2nd), normalise + argmax (2n), restrict to support (n), c = gW (2nd),
    line search ⟨r, c⟩/‖c‖² (4d + 1), non-negative step cap (3n), f += a·g (2n), r −= a·c (2d)."""
    return d + k * (2 * matmul(1, d, n) + 8 * n + 6 * d + 1)


def orthogonal_matching_pursuit(n: int, d: int, k: int) -> int:
    """Step t: correlations + selection (2nd + 2n), Gram of t atoms (2t²d), right side (2td), a
    Cholesky-class solve (⅔t³ + 2t², rounded down), residual (2td + d)."""
    total = d
    for t in range(1, k + 1):
        total += matmul(1, d, n) + 2 * n + 2 * t * t * d + 2 * t * d + (2 * t ** 3) // 3 + 2 * t * t + 2 * t * d + d
    return total


def training(forward_per_sample: int, samples_seen: int) -> int:
    """Total training FLOPs: BACKWARD_FACTOR × forward × samples processed (steps × batch size)."""
    return BACKWARD_FACTOR * forward_per_sample * samples_seen


def autoencoder_forward(encoder_flops: int, n: int, d: int) -> int:
    """One sample through encoder, decoder and the reconstruction + L1 loss."""
    return encoder_flops + decoder(n, d) + reconstruction_l1_loss(n, d)


def supervised_forward(encoder_flops: int, n: int) -> int:
    """One sample through the encoder and the supervised loss against the known codes: compare s > 0
    and select z or ReLU(z) (2n), difference, square, sum (3n)."""
    return encoder_flops + 5 * n


def dictionary_update(n_samples: int, n: int, d: int) -> int:
    """MOD dictionary step of sparse coding on all samples: SᵀS (2·n_s·n²), SᵀX (2·n_s·n·d),
    solve for n×d (⅔n³ + 2n²d), atom norms and division (3nd), rescaling the codes (n_s·n)."""
    return (matmul(n, n_samples, n) + matmul(n, n_samples, d) + (2 * n ** 3) // 3 + 2 * n * n * d
            + 3 * n * d + n_samples * n)


def sparse_coding_training(n_samples: int, n: int, d: int, code_iters: Sequence[int],
                           restart: bool = True) -> int:
    """Total SC training: for each outer round, FISTA on every sample (its iterations) + a MOD step."""
    return sum(n_samples * iterative(n, d, it, "fista", restart) + dictionary_update(n_samples, n, d)
               for it in code_iters)
