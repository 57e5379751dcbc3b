"""An architecture states its loss once; this module executes it densely or on the active latents only.

An architecture built on one affine projection of x − b_dec (``StatedLoss``; ``StatedSAE`` when that
is a plain encoder W_enc, b_enc) says two things:

- ``selection``: which entries of the pre-activations z = W (x − b_dec) + b may carry a code
  or a gradient (per-token top-k, a threshold, the batch's top k·B, ...), as a ``Selection``;
- ``objective``: its codes and loss terms, written against an ``Active`` view of those entries.

An architecture may keep the bias out of what its objective reads (``bias_outside``): the selection
still ranks z = W x' + b, but the objective gets W x' and adds b itself. Gated needs this: its gate
π_gate = W_gate x' + b_gate picks the entries, and its magnitude path reuses the bias-free W_gate x'.

``Active`` is either the dense [batch, n_latents] matrix z (with a mask for the selected entries) or
the selected entries only ([nnz], differentiable through ``kernels.gather_preacts``). Its methods
(``latent`` to index per-latent parameters, ``decode``, ``per_token``) mean the same thing on both,
so one statement of the loss runs on either path and the sparse path equals the dense one
(tests/test_kernels.py checks every registered architecture). The contract an architecture keeps:
an entry outside its support gets a zero code and passes no gradient.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saekit import kernels, losses


class Active:
    """A batch's selected pre-activations, dense ([B, M] z and a mask) or sparse ([nnz] z and a Pattern)."""

    def __init__(self, z: Tensor, n_rows: int, n_cols: int, pattern: kernels.Pattern | None = None,
                 mask: Tensor | None = None) -> None:
        self.z, self.n_rows, self.n_cols, self.pattern, self.mask = z, n_rows, n_cols, pattern, mask

    @property
    def dense(self) -> bool:
        return self.pattern is None

    def latent(self, v: Tensor) -> Tensor:
        """A per-latent [M] tensor aligned with ``z`` (broadcast dense, gathered sparse)."""
        return v if self.dense else v.index_select(0, self.pattern.cols)  # index_select: cheap backward

    def selected(self, values: Tensor) -> Tensor:
        """Zero the entries the selection did not keep (the sparse path holds only kept ones)."""
        return values * self.mask if self.dense and self.mask is not None else values

    def decode(self, values: Tensor, weight: Tensor) -> Tensor:
        """[B, d] = codes @ weight, gathering only the selected atoms on the sparse path."""
        return values @ weight if self.dense else kernels.decode(values, weight, self.pattern)

    def per_token(self, values: Tensor) -> Tensor:
        """E_t Σ_i values_ti (the mean over tokens of each token's sum)."""
        return values.sum() / max(self.n_rows, 1)

    def codes(self, values: Tensor) -> Tensor | kernels.SparseCodes:
        """What LossOutput carries: the dense codes, or SparseCodes (detached)."""
        return values if self.dense else kernels.SparseCodes(self.pattern, values.detach())


class Selection:
    """Which entries of z an objective needs. Sparse: fed chunk by chunk (``add``), then ``result``;
    dense: ``mask`` of the full matrix (None: every entry, the objective zeroes what is off)."""

    static_density: float | None = None
    """Share of entries selected, when known without looking at z (auto mode then decides at once)."""
    needs_mask: bool = True
    """Dense path: whether ``mask`` must run (False: every entry is kept, the objective zeroes the rest)."""

    def density(self, z: Tensor) -> float:
        """Measured share of selected entries on a first chunk (auto mode)."""
        raise NotImplementedError

    def mask(self, z: Tensor, scores: Tensor) -> Tensor | None:
        raise NotImplementedError

    def add(self, rows: slice, z: Tensor, scores: Tensor) -> None:
        raise NotImplementedError

    def result(self) -> tuple[kernels.Pattern, Tensor]:
        """(pattern, z at its entries)."""
        raise NotImplementedError


class Above(Selection):
    """Entries with z > threshold (a scalar or one per latent): ReLU's, JumpReLU's, Gated's support."""

    needs_mask = False

    def __init__(self, threshold: Tensor | float, n_rows: int, n_cols: int) -> None:
        self.threshold, self.n_rows, self.n_cols = threshold, n_rows, n_cols
        self.rows: list[Tensor] = []
        self.cols: list[Tensor] = []
        self.values: list[Tensor] = []

    def density(self, z: Tensor) -> float:
        return kernels.sampled_density(z, self.threshold)

    def mask(self, z: Tensor, scores: Tensor) -> Tensor | None:
        return None

    def add(self, rows: slice, z: Tensor, scores: Tensor) -> None:
        i, j, v = kernels.entries_of_chunk(z, self.threshold)  # what entries_above does per chunk
        self.rows.append(i + rows.start)
        self.cols.append(j)
        self.values.append(v)

    def result(self) -> tuple[kernels.Pattern, Tensor]:
        if not self.rows:
            empty = torch.zeros(0, dtype=torch.long)
            return kernels.Pattern.from_rows(empty, empty, self.n_rows, self.n_cols), torch.zeros(0)
        return (kernels.Pattern.from_rows(torch.cat(self.rows), torch.cat(self.cols), self.n_rows, self.n_cols),
                torch.cat(self.values))


class RowTopK(Selection):
    """The k largest scores of each token, optionally among ``among`` latents only (AuxK's dead ones)."""

    def __init__(self, k: int, n_rows: int, n_cols: int, among: Tensor | None = None,
                 like: Tensor | None = None) -> None:
        self.k, self.n_rows, self.n_cols, self.among = k, n_rows, n_cols, among
        device = like.device if like is not None else None
        dtype = like.dtype if like is not None else torch.float32
        self.idx = torch.empty((n_rows, k), dtype=torch.long, device=device)
        self.values = torch.empty((n_rows, k), dtype=dtype, device=device)
        self.static_density = k / max(n_cols, 1)

    def mask(self, z: Tensor, scores: Tensor) -> Tensor:
        if self.among is not None:
            scores = scores.masked_fill(~self._among_mask(z), float("-inf"))
        idx = scores.topk(self.k, dim=-1, sorted=False).indices
        return torch.zeros_like(z, dtype=torch.bool).scatter_(-1, idx, True)

    def _among_mask(self, z: Tensor) -> Tensor:
        m = torch.zeros(self.n_cols, dtype=torch.bool, device=z.device)
        return m.index_fill_(0, self.among, True)

    def add(self, rows: slice, z: Tensor, scores: Tensor) -> None:
        if self.among is None:
            i = kernels.topk_indices(scores, self.k)
        else:
            i = self.among[scores.index_select(1, self.among).topk(self.k, dim=-1, sorted=False).indices]
        self.idx[rows], self.values[rows] = i, z.gather(1, i)

    def result(self) -> tuple[kernels.Pattern, Tensor]:
        return kernels.Pattern.from_indices(self.idx, self.n_cols), self.values.view(-1)


class BatchTopK(Selection):
    """The n_keep largest positive scores of the whole batch (BatchTopK: n_keep = k·B), exactly.

    Chunked: each chunk's n_keep-th largest score bounds the batch's from below, so a chunk only
    contributes its entries above the running bound; the candidates are cut to n_keep at the end.
    Entries with score ≤ 0 are never kept (their code ReLU(z) would be 0 and pass no gradient)."""

    def __init__(self, n_keep: int, n_rows: int, n_cols: int) -> None:
        self.n_keep, self.n_rows, self.n_cols = n_keep, n_rows, n_cols
        self.static_density = n_keep / max(n_rows * n_cols, 1)
        self.bound = 0.0
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # rows, cols, z, score

    def mask(self, z: Tensor, scores: Tensor) -> Tensor:
        flat = scores.reshape(-1)
        n = min(self.n_keep, flat.numel())
        top = flat.topk(n, sorted=False)
        keep = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, top.indices[top.values > 0], True)
        return keep.view_as(z)

    @torch.no_grad()
    def add(self, rows: slice, z: Tensor, scores: Tensor) -> None:
        flat = scores.reshape(-1)
        if flat.numel() >= self.n_keep:
            self.bound = max(self.bound, flat.kthvalue(flat.numel() - self.n_keep + 1).values.item())
        # >= : the n_keep-th largest itself may be kept
        i, j = torch.nonzero(scores >= self.bound if self.bound > 0 else scores > 0).unbind(1)
        self.parts.append((i + rows.start, j, z[i, j], scores[i, j]))

    @torch.no_grad()
    def result(self) -> tuple[kernels.Pattern, Tensor]:
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.long)
            return kernels.Pattern.from_rows(empty, empty, self.n_rows, self.n_cols), torch.zeros(0)
        rows, cols, z, s = (torch.cat(t) for t in zip(*self.parts))
        if s.numel() > self.n_keep:
            keep = s.topk(self.n_keep, sorted=False).indices
            rows, cols, z = rows[keep], cols[keep], z[keep]
        order = torch.argsort(rows * self.n_cols + cols)
        rows, cols, z = rows[order], cols[order], z[order]
        return kernels.Pattern.from_rows(rows, cols, self.n_rows, self.n_cols), z


@dataclass
class Selected:
    """The objective's view of a batch: the main selection and, where asked for, AuxK's."""

    main: Active
    aux: Active | None = None


def dense_preacts(x: Tensor, b_dec: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """z = (x − b_dec) W^T + b (b None: no bias), written x W^T − (b_dec W^T − b) so that b_dec's gradient is
    −(Σ_t ∂z_t) W, an [M] @ [M, d] product, instead of autograd's [B, M] @ [M, d] ∂(x − b_dec)
    summed over the batch: one batch-sized matmul fewer per dense step (same value in exact
    arithmetic). x's own gradient, when it needs one, is still computed."""
    shift = -(b_dec @ weight.T) if bias is None else bias - b_dec @ weight.T
    return torch.addmm(shift, x, weight.T)


def execute(module: torch.nn.Module, x: Tensor, weight: Tensor, bias: Tensor, b_dec: Tensor, main: Selection,
            aux: Selection | None, mode: str, scores=None, bias_outside: bool = False) -> Selected:
    """Run the selections on z = (x − b_dec) W^T + b, dense or sparse (``mode`` as sae.kernels).

    ``scores(z, rows)`` (detached) is what ``main`` ranks instead of z (gradient-aware selection);
    AuxK's selection always ranks z. The sparse path computes z a chunk at a time without autograd
    and makes only the selected entries differentiable. ``bias_outside``: the selections read z, the
    returned ``Active`` views hold (x − b_dec) W^T without b (the objective adds it where it needs it)."""
    n, m = x.shape[0], weight.shape[0]
    score = scores or (lambda z, rows: z)
    sparse, first, chunks = False, None, None
    if mode != "dense":
        density = main.static_density
        if density is None:
            with torch.no_grad():
                chunks = kernels.linear_chunks(module, x - b_dec, weight, bias)
            first = next(chunks)
            density = main.density(first[1])
        sparse = kernels.use_sparse(mode, density)
    if not sparse:
        z = dense_preacts(x, b_dec, weight, None if bias_outside else bias)
        mask = aux_mask = None
        if main.needs_mask or aux is not None:
            with torch.no_grad():
                zs = z.detach() + bias.detach() if bias_outside else z.detach()  # what the selections read
                mask = main.mask(zs, score(zs, slice(0, n))) if main.needs_mask else None
                aux_mask = aux.mask(zs, zs) if aux is not None else None
        return Selected(Active(z, n, m, mask=mask), Active(z, n, m, mask=aux_mask) if aux is not None else None)
    with torch.no_grad():
        if chunks is None:
            chunks = kernels.linear_chunks(module, x - b_dec, weight, bias)
        for rows, z in itertools.chain([first] if first is not None else [], chunks):
            main.add(rows, z, score(z, rows))
            if aux is not None:
                aux.add(rows, z, z)

    def active(sel: Selection) -> Active:
        p, values = sel.result()
        if bias_outside:  # (the bias was inside the chunks' matmul; take it off the selected entries)
            return Active(kernels.gather_preacts(x, b_dec, weight, None, p, values - bias.detach()[p.cols]),
                          n, m, pattern=p)
        return Active(kernels.gather_preacts(x, b_dec, weight, bias, p, values), n, m, pattern=p)

    return Selected(active(main), active(aux) if aux is not None else None)


# ---- the linear-encoder architectures that state their loss this way -----------------------------
from saekit.sae import LossOutput, SparseAutoencoder  # noqa: E402  (after the kernels it builds on)
from torch import nn  # noqa: E402


class LinearEncoderMixin:
    """An affine encoder W_enc [n_latents, d_in], b_enc [n_latents] applied to x − b_dec."""

    W_enc: nn.Parameter
    b_enc: nn.Parameter

    def _init_linear_encoder(self, n_latents: int, d_in: int) -> None:
        self.W_enc = nn.Parameter(torch.zeros(n_latents, d_in))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))

    def pre_activations(self, x: Tensor) -> Tensor:
        return (x - self.dictionary.b_dec) @ self.W_enc.T + self.b_enc  # type: ignore[attr-defined]

    def encoder_weight(self) -> Tensor:
        return self.W_enc

    @torch.no_grad()
    def reinit_latents(self, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        self.dictionary.W_dec[idx] = directions  # type: ignore[attr-defined]
        self.W_enc[idx] = directions * encoder_norm
        self.b_enc[idx] = 0.0

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        return [(self.W_enc, 0), (self.b_enc, 0), (self.dictionary.W_dec, 0)]  # type: ignore[attr-defined]


class StatedLoss(SparseAutoencoder):
    """An architecture whose loss is stated once, ``selection`` and ``objective`` over one affine
    projection z = W (x − b_dec) + b (``projection``); ``loss`` executes them on the dense or the
    sparse path (``cfg.kernels``)."""

    bias_outside: ClassVar[bool] = False
    """True: the objective reads W (x − b_dec) without b, and adds b itself (see ``execute``)."""

    def projection(self) -> tuple[Tensor, Tensor]:
        """(W [n_latents, d_in], b [n_latents]) of the pre-activations the selection reads."""
        raise NotImplementedError

    # ---- what an architecture states --------------------------------------------------------------
    def selection(self, n_rows: int, like: Tensor) -> Selection:
        """The entries of z the objective reads (its support)."""
        raise NotImplementedError

    def aux_selection(self, n_rows: int, dead_mask: Tensor | None, like: Tensor) -> Selection | None:
        """A second selection over the same z (AuxK's dead latents), or None."""
        return None

    def objective(self, x: Tensor, sel: Selected, sparsity_scale: float, dead_mask: Tensor | None) -> LossOutput:
        """Codes, reconstruction and loss terms of normalised inputs x, from the selected entries."""
        raise NotImplementedError

    def scorer(self, x: Tensor, grad: Tensor | None):
        """What the selection ranks instead of z (a function of a chunk of z and its rows), or None: z."""
        return None

    # ---- executed here ----------------------------------------------------------------------------
    def loss(self, x: Tensor, *, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None,
             grad: Tensor | None = None) -> LossOutput:
        x = x * self.cfg.input_scale
        if grad is not None:
            grad = grad / self.cfg.input_scale
        n = x.shape[0]
        weight, bias = self.projection()
        sel = execute(self, x, weight, bias, self.dictionary.b_dec, self.selection(n, x),
                      self.aux_selection(n, dead_mask, x), self.cfg.kernels, self.scorer(x, grad),
                      self.bias_outside)
        return self.objective(x, sel, sparsity_scale, dead_mask)


class StatedSAE(LinearEncoderMixin, StatedLoss):
    """A stated loss over an affine encoder z = W_enc (x − b_dec) + b_enc (relu, topk, jumprelu, ...)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._init_linear_encoder(cfg.n_latents, cfg.d_in)

    def projection(self) -> tuple[Tensor, Tensor]:
        return self.W_enc, self.b_enc


class AuxKMixin:
    """AuxK (Gao et al.): reconstruct the detached residual from the top-k_aux dead latents, no bias;
    L_aux = ‖e − ê‖² / E‖e − E e‖², k_aux = min(k_aux or d_in // 2, |dead|). Stated once here."""

    cfg: object

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or self.cfg.d_in // 2  # type: ignore[attr-defined]

    def aux_selection(self, n_rows: int, dead_mask: Tensor | None, like: Tensor) -> Selection | None:
        if dead_mask is None or self.cfg.aux_coeff <= 0:  # type: ignore[attr-defined]
            return None
        dead = dead_mask.nonzero().squeeze(1)
        k = min(self.k_aux, dead.numel())
        return RowTopK(k, n_rows, self.cfg.n_latents, among=dead, like=like) if k else None  # type: ignore[attr-defined]

    def with_auxk(self, loss: Tensor, terms: dict[str, Tensor], x: Tensor, x_hat: Tensor, sel: Selected,
                  dead_mask: Tensor | None) -> Tensor:
        """loss + aux_coeff · L_aux, with ``auxk`` in terms (0 when no latent is dead)."""
        if dead_mask is None or self.cfg.aux_coeff <= 0:  # type: ignore[attr-defined]
            return loss
        if sel.aux is None:
            aux = x.new_zeros(())
        else:
            a = sel.aux
            e_hat = a.decode(a.selected(a.z.relu()), self.dictionary.W_dec)  # type: ignore[attr-defined]
            aux = losses.normalized_mse((x - x_hat).detach(), e_hat)
        terms["auxk"] = aux
        return loss + self.cfg.aux_coeff * aux  # type: ignore[attr-defined]
