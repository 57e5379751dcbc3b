"""Sparse training kernels: encoder backward and decoder over the active latents only.

Every architecture computes its pre-activations with one dense matmul z = (x − b_dec) W^T (+ b).
After that only the active entries of the code matter: ReLU, the gate indicator and TopK pass no
gradient where a latent is off. These kernels take an active set (a ``Pattern``: per-token lists of
latent indices, CSR-like) and

- decode: x̂ = Σ_active f_i d_i, gathering only the selected atoms (``embedding_bag``), with a backward
  that forms ∂/∂f by sampled dot products and ∂/∂W_dec by a scatter over the selected atoms;
- gather: the selected pre-activations as a differentiable function of (x − b_dec, W, b) whose
  backward touches only the selected rows of W (∂x' = Σ g_i w_i, ∂w_i = Σ_t g_ti x'_t, ∂b_i = Σ_t g_ti).

Both are exact: the loss and every parameter gradient equal the dense computation to float rounding
(tests/test_kernels.py). ``attach_dense`` gives a precomputed z the dense matmul backward, so the auto
mode can look at z before deciding without computing the matmul twice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.errors import SaekitError

KERNELS = ("auto", "dense", "sparse")
SPARSE_MAX_DENSITY = 0.05
"""auto: the sparse kernels are used when at most this share of a batch's codes is active."""
DENSITY_SAMPLE_ROWS = 512
"""auto: the density of a batch is measured on (at most) this many of its tokens before the full pass."""


def check_mode(mode: str) -> None:
    if mode not in KERNELS:
        raise SaekitError(f"sae.kernels must be one of {', '.join(KERNELS)}, got {mode!r}")


def use_sparse(mode: str, density: float) -> bool:
    """Whether to take the sparse path for a batch whose active share is ``density``."""
    return mode == "sparse" or (mode == "auto" and density <= SPARSE_MAX_DENSITY)


def sampled_density(z: Tensor, threshold: Tensor | float = 0.0) -> float:
    """Share of entries of z [B, M] above ``threshold`` (a scalar or one per latent), measured on the
    first DENSITY_SAMPLE_ROWS tokens: a cheap estimate of a batch's code density."""
    head = z[:DENSITY_SAMPLE_ROWS]
    return torch.count_nonzero(head > threshold).item() / max(head.numel(), 1)


@dataclass
class Pattern:
    """The active entries of a [n_rows, n_cols] code matrix, sorted by row (token)."""

    rows: Tensor
    cols: Tensor
    offsets: Tensor  # [n_rows]: start of each token's entries (embedding_bag offsets)
    n_rows: int
    n_cols: int
    _by_col: tuple[Tensor, Tensor, Tensor] | None = field(default=None, repr=False)
    _crow: Tensor | None = field(default=None, repr=False)

    @property
    def nnz(self) -> int:
        return self.cols.numel()

    @staticmethod
    def from_indices(idx: Tensor, n_cols: int) -> "Pattern":
        """A fixed number k of latents per token, idx [n_rows, k]."""
        n, k = idx.shape
        rows = torch.arange(n, device=idx.device).repeat_interleave(k)
        offsets = torch.arange(0, n * k, k, device=idx.device)
        return Pattern(rows, idx.reshape(-1), offsets, n, n_cols)

    @staticmethod
    def above(z: Tensor, threshold: Tensor | float = 0.0, chunk: int = 512) -> "Pattern":
        """Entries of z [n_rows, n_cols] greater than ``threshold`` (scalar or per column), found
        a block of rows at a time (no full-size mask)."""
        n, m = z.shape
        parts = []
        for i in range(0, n, chunk):
            nz = torch.nonzero(z[i:i + chunk] > threshold)
            nz[:, 0] += i
            parts.append(nz)
        nz = torch.cat(parts) if parts else z.new_zeros((0, 2), dtype=torch.long)
        rows, cols = nz[:, 0].contiguous(), nz[:, 1].contiguous()
        counts = torch.bincount(rows, minlength=n)
        offsets = torch.zeros(n, dtype=torch.long, device=z.device)
        torch.cumsum(counts[:-1], 0, out=offsets[1:])
        return Pattern(rows, cols, offsets, n, m)

    def by_col(self) -> tuple[Tensor, Tensor, Tensor]:
        """(order, rows[order], column offsets): the transposed pattern, sorted by latent."""
        if self._by_col is None:
            order = torch.argsort(self.cols, stable=True)
            counts = torch.bincount(self.cols, minlength=self.n_cols)
            offsets = torch.zeros(self.n_cols, dtype=torch.long, device=self.cols.device)
            torch.cumsum(counts[:-1], 0, out=offsets[1:])
            self._by_col = (order, self.rows[order], offsets)
        return self._by_col

    def crow(self) -> Tensor:
        if self._crow is None:
            end = torch.tensor([self.nnz], dtype=torch.long, device=self.offsets.device)
            self._crow = torch.cat([self.offsets, end])
        return self._crow

    def gather(self, dense: Tensor) -> Tensor:
        """dense[rows, cols] for a [n_rows, n_cols] tensor."""
        return dense[self.rows, self.cols]


def spmm(values: Tensor, p: Pattern, weight: Tensor) -> Tensor:
    """[n_rows, d] = S @ weight with S the sparse [n_rows, n_cols] matrix (p, values); gathers only used rows."""
    return F.embedding_bag(p.cols, weight, p.offsets, mode="sum", per_sample_weights=values)


def spmm_t(values: Tensor, p: Pattern, dense: Tensor) -> Tensor:
    """[n_cols, d] = S^T @ dense: for each latent, the weighted sum of the tokens that selected it."""
    order, rows_sorted, offsets = p.by_col()
    return F.embedding_bag(rows_sorted, dense, offsets, mode="sum", per_sample_weights=values[order])


def sddmm(p: Pattern, a: Tensor, b: Tensor) -> Tensor:
    """[nnz] = (a @ b^T)[rows, cols]: one dot product per active entry (a [n_rows, d], b [n_cols, d])."""
    if p.nnz == 0:
        return a.new_zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        s = torch.sparse_csr_tensor(p.crow(), p.cols, a.new_zeros(p.nnz), (p.n_rows, p.n_cols))
        return torch.sparse.sampled_addmm(s, a, b.T, beta=0.0).values()


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, weight: Tensor, p: Pattern) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(values, weight)
        ctx.p = p
        return spmm(values, p, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        values, weight = ctx.saved_tensors
        grad = grad.contiguous()
        d_values = sddmm(ctx.p, grad, weight) if ctx.needs_input_grad[0] else None
        d_weight = spmm_t(values, ctx.p, grad) if ctx.needs_input_grad[1] else None
        return d_values, d_weight, None


def decode(values: Tensor, weight: Tensor, p: Pattern) -> Tensor:
    """Σ_active values · weight[col] per token, i.e. dense_codes @ weight, touching only the selected atoms."""
    return _Decode.apply(values, weight, p)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xc: Tensor, weight: Tensor, bias: Tensor | None, p: Pattern,  # type: ignore[override]
                values: Tensor) -> Tensor:
        ctx.save_for_backward(xc, weight)
        ctx.p = p
        ctx.has_bias = bias is not None
        return values

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xc, weight = ctx.saved_tensors
        p = ctx.p
        d_xc = spmm(grad, p, weight) if ctx.needs_input_grad[0] else None
        d_w = spmm_t(grad, p, xc) if ctx.needs_input_grad[1] else None
        d_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_b = grad.new_zeros(p.n_cols).index_add_(0, p.cols, grad)
        return d_xc, d_w, d_b, None, None


def gather_preacts(xc: Tensor, weight: Tensor, bias: Tensor | None, p: Pattern, values: Tensor) -> Tensor:
    """The active entries of z = xc @ weight^T (+ bias), given their precomputed ``values``, made
    differentiable w.r.t. xc, weight and bias with a backward over the active entries only."""
    return _Gather.apply(xc, weight, bias, p, values.detach())


class _AttachDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xc: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(xc, weight)
        ctx.has_bias = bias is not None
        return z

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xc, weight = ctx.saved_tensors
        d_xc = grad @ weight if ctx.needs_input_grad[0] else None
        d_w = grad.T @ xc if ctx.needs_input_grad[1] else None
        d_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return d_xc, d_w, d_b, None


def attach_dense(xc: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor) -> Tensor:
    """z (computed without autograd) with the ordinary dense linear backward attached."""
    return _AttachDense.apply(xc, weight, bias, z)


class Workspace:
    """Reusable memory for the [B, M] pre-activations, which the sparse paths turn into the codes.

    A fresh 150 MB tensor per step costs more in page faults than the work done in it, so the
    buffer is kept, and handed out again only when nothing outside references its memory (the
    codes of an earlier step still held by the caller are never overwritten); at most ``slots``
    buffers are kept (two suffice for a loop that holds the previous step's output)."""

    def __init__(self, slots: int = 2) -> None:
        self.slots = slots
        self._bufs: list[Tensor] = []

    @staticmethod
    def _free(buf: Tensor) -> bool:
        try:  # our reference and the storage object of this call; anything more is a user
            return torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2
        except AttributeError:  # private API gone: never reuse
            return False

    def acquire(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        for buf in self._bufs:
            if buf.shape == shape and buf.dtype == like.dtype and buf.device == like.device and self._free(buf):
                return buf.view(shape)
        buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        self._bufs = (self._bufs + [buf])[-self.slots:]
        return buf.view(shape)

    def release(self, t: Tensor) -> None:
        """Stop reusing the buffer behind ``t`` (it now belongs to an autograd graph or the caller)."""
        self._bufs = [b for b in self._bufs if b.data_ptr() != t.data_ptr()]


def workspace_of(module: torch.nn.Module) -> Workspace:
    """The module's kernel workspace (created on first use; not part of its state)."""
    ws = module.__dict__.get("_kernel_workspace")
    if ws is None:
        ws = module.__dict__["_kernel_workspace"] = Workspace()
    return ws


@torch.no_grad()
def linear(xc: Tensor, weight: Tensor, bias: Tensor | None = None, workspace: Workspace | None = None) -> Tensor:
    """z = xc @ weight^T + bias without autograd (one fused matmul), into ``workspace`` memory if given."""
    shape = (xc.shape[0], weight.shape[0])
    out = workspace.acquire(shape, xc) if workspace is not None else torch.empty(shape, dtype=xc.dtype, device=xc.device)
    if bias is None:
        return torch.mm(xc, weight.T, out=out)
    return torch.addmm(bias, xc, weight.T, out=out)
