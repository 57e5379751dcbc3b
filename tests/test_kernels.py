"""Sparse training kernels give the dense results: outputs and every parameter gradient."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from saekit import kernels
from saekit.config import SAEConfig
from saekit.errors import SaekitError
from saekit.sae import LossOutput, available_architectures, build_sae

D, M, B = 24, 96, 64


def _sae(arch: str, mode: str, device: str = "cpu", **kw):
    """Built and perturbed on the CPU (the same weights on every device), then moved to ``device``."""
    cfg = SAEConfig(architecture=arch, d_in=D, n_latents=M, kernels=mode, input_scale=0.7, **kw)
    sae = build_sae(cfg, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.ndim == 1:  # biases, r_mag: nonzero so every term is exercised
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        if arch == "relu":  # floating atom norms (the weighted L1)
            sae.W_dec.mul_(0.5 + torch.rand(M, 1, generator=gen))
        for name in ("b_enc", "b_gate"):  # trained-like sparsity: ~a tenth of the latents on
            if hasattr(sae, name):
                getattr(sae, name).sub_(1.0)
    return sae.to(device)


def _run(sae, x, **kw):
    sae.zero_grad(set_to_none=True)
    out = sae.loss(x, sparsity_scale=0.8, **kw)
    out.loss.backward()
    return out, {n: p.grad.clone() if p.grad is not None else None for n, p in sae.named_parameters()}


def _compare(arch: str, x: torch.Tensor, device: str = "cpu", **kw) -> None:
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}  # dead_mask, grad
    x = x.to(device)
    dense = _sae(arch, "dense", device, **kw.pop("cfg", {}))
    sparse = copy.deepcopy(dense)
    sparse.cfg = dataclasses.replace(dense.cfg, kernels="sparse")
    out_d, g_d = _run(dense, x, **kw)
    out_s, g_s = _run(sparse, x, **kw)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_s.loss, out_d.loss, **tol)
    assert set(out_s.terms) == set(out_d.terms)
    for name in out_d.terms:
        torch.testing.assert_close(out_s.terms[name], out_d.terms[name], **tol)
    torch.testing.assert_close(out_s.codes, out_d.codes.detach(), **tol)
    torch.testing.assert_close(out_s.x_hat, out_d.x_hat.detach(), **tol)
    for name, g in g_d.items():
        assert g is not None, name
        torch.testing.assert_close(g_s[name], g, **tol, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("arch", ["relu", "gated", "topk"])
def test_sparse_matches_dense(arch: str, device: str) -> None:
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(3)) * 2
    _compare(arch, x, device)


def test_every_registered_architecture_matches(device: str) -> None:
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(4))
    for arch in available_architectures():
        _compare(arch, x, device)


def _arch_kwargs(arch: str, gen: torch.Generator) -> dict:
    """k small enough that selections bind, a dead-latent mask for AuxK, LM gradients where used."""
    from saekit.sae import architecture_class, params_fields

    fields = params_fields(architecture_class(arch))
    kw: dict = {"cfg": {}}
    if "k" in fields:
        kw["cfg"]["k"] = 5
        dead = torch.zeros(M, dtype=torch.bool)
        dead[2::5] = True
        kw["dead_mask"] = dead
        kw["cfg"]["k_aux"] = 6
    if "beta" in fields:
        kw["grad"] = torch.randn(B, D, generator=gen)
    if "group_sizes" in fields:
        kw["cfg"]["group_sizes"] = (10, 20, 66)
    return kw


@pytest.mark.parametrize("arch", available_architectures())
def test_every_architecture_matches_with_binding_selection_auxk_and_gradients(arch: str, device: str) -> None:
    """Every registered architecture (gradient-aware variants with gradients): the sparse kernels give
    the dense loss, terms, codes, reconstruction and every parameter gradient, in one chunk and in 11."""
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(B, D, generator=gen) * 1.5
    kw = _arch_kwargs(arch, gen)
    _compare(arch, x, device, **{**kw, "cfg": dict(kw["cfg"])})
    old = kernels.CHUNK_ELEMENTS
    try:
        kernels.CHUNK_ELEMENTS = 6 * M
        _compare(arch, x, device, **{**kw, "cfg": dict(kw["cfg"])})
    finally:
        kernels.CHUNK_ELEMENTS = old


def test_jumprelu_sparse_path_carries_the_threshold_gradient(device: str) -> None:
    """Entries just below θ (inside the kernel) are on the sparse path: log θ gets the same gradient."""
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(18))
    dense = _sae("jumprelu", "dense", device, bandwidth=0.5)
    _, g = _run(dense, x.to(device))
    assert torch.count_nonzero(g["log_threshold"]) > M // 4
    _compare("jumprelu", x, device, cfg={"bandwidth": 0.5})
    _compare("jumprelu", x, device, cfg={"bandwidth": 0.5, "sparsity_loss": "tanh"})


def test_topk_auxk_matches_dense(device: str) -> None:
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(5))
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::3] = True
    _compare("topk", x, device, cfg={"k": 5, "k_aux": 7}, dead_mask=dead)
    _compare("topk", x, device, cfg={"k": 5}, dead_mask=torch.zeros(M, dtype=torch.bool))


def test_unit_norm_relu_and_empty_tokens(device: str) -> None:
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(6))
    x[:5] = 0.0  # some tokens with no active latent at all
    _compare("relu", x, device, cfg={"unit_norm_atoms": True})


def test_auto_mode_picks_the_path_by_measured_density(device: str) -> None:
    assert kernels.use_sparse("auto", kernels.SPARSE_MAX_DENSITY)
    assert not kernels.use_sparse("auto", kernels.SPARSE_MAX_DENSITY + 0.01)
    for arch, bias in (("relu", "b_enc"), ("gated", "b_gate")):
        sae = _sae(arch, "auto", device)
        x = torch.randn(B, D, generator=torch.Generator().manual_seed(7)).to(device)
        with torch.no_grad():
            getattr(sae, bias).fill_(100.0)  # every latent on: the dense path
        assert not isinstance(sae.loss(x)._codes, kernels.SparseCodes), arch
        with torch.no_grad():
            getattr(sae, bias).fill_(-100.0)  # none on: the sparse path, with nothing to train
        sae.zero_grad(set_to_none=True)
        out = sae.loss(x)
        out.loss.backward()
        assert isinstance(out._codes, kernels.SparseCodes), arch
        assert out.codes.count_nonzero() == 0 and sae.encoder_weight().grad.abs().sum() == 0, arch


def test_gated_aux_does_not_train_decoder(device: str) -> None:
    sae = _sae("gated", "sparse", device)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(8)).to(device)
    out = sae.loss(x)
    (grad,) = torch.autograd.grad(out.terms["aux"], sae.W_dec, allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0


def test_kernel_primitives(device: str) -> None:
    gen = torch.Generator().manual_seed(9)
    z = torch.rand(7, 11, generator=gen)
    z[2] = 0.0
    active = z > 0.7
    vals = torch.randn(int(active.sum()), generator=gen)
    w, y, a = torch.randn(11, 5, generator=gen), torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    z, active, vals, w, y, a = (t.to(device) for t in (z, active, vals, w, y, a))
    p = kernels.Pattern.above(z, 0.7, chunk=3)
    assert p.rows.device == z.device and p.offsets.device == z.device
    dense = torch.zeros(7, 11, device=device).index_put_((p.rows, p.cols), vals)
    torch.testing.assert_close(kernels.spmm(vals, p, w), dense @ w)
    torch.testing.assert_close(kernels.spmm_t(vals, p, y), dense.T @ y)
    torch.testing.assert_close(kernels.sddmm(p, a, w), (a @ w.T)[active])
    torch.testing.assert_close(kernels.sddmm_gather(p, a, w), (a @ w.T)[active])  # the non-CPU path, on each device


def test_sddmm_gather_hand_case_in_chunks(monkeypatch) -> None:
    """The gather form of sddmm (the path off the CPU), one entry per chunk: a = [[1, 2], [3, 4]],
    b = [[1, 0], [0, 1], [1, 1]]; entries (0, 2) -> 1 + 2 = 3, (1, 0) -> 3, (1, 1) -> 4."""
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 2)  # d = 2: one gathered entry per chunk
    p = kernels.Pattern.from_rows(torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1]), 2, 3)
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert kernels.sddmm_gather(p, a, b).tolist() == [3.0, 3.0, 4.0]
    assert torch.equal(kernels.sddmm_gather(p, a, b), kernels.sddmm(p, a, b))


def test_empty_pattern_primitives(device: str) -> None:
    """No active entry at all (every gate shut): zeros of the right shapes, on the inputs' device."""
    p, values = kernels.entries_above([], 0.0, 4, 6, device=device)
    assert p.nnz == 0 and p.rows.device.type == values.device.type == device
    w, y = torch.randn(6, 3, device=device), torch.randn(4, 3, device=device)
    assert torch.equal(kernels.spmm(values, p, w), torch.zeros(4, 3, device=device))
    assert torch.equal(kernels.spmm_t(values, p, y), torch.zeros(6, 3, device=device))
    assert kernels.sddmm(p, y, w).shape == (0,)


def test_bad_mode_is_refused() -> None:
    with pytest.raises(SaekitError):
        SAEConfig(architecture="topk", d_in=4, n_latents=8, kernels="fast").validate()


def test_workspace_never_overwrites_held_codes(device: str) -> None:  # codes never live in reused memory
    sae = _sae("topk", "sparse", device)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(10)).to(device)
    first = sae.loss(x).codes
    kept = first.clone()
    second = sae.loss(x * 2).codes
    third_view = sae.loss(x * 3).codes[:3]  # only a view of these codes survives
    sae.loss(x * 4)
    assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(third_view, sae.loss(x * 3).codes[:3])


def test_gradient_topk_with_gradients_matches_dense(device: str) -> None:
    if "gradient_topk" not in available_architectures():
        pytest.skip("no gradient_topk architecture")
    gen = torch.Generator().manual_seed(11)
    x, g = torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)
    _compare("gradient_topk", x, device, cfg={"k": 6}, grad=g)


@pytest.mark.parametrize("arch", ["relu", "gated", "topk", "gradient_topk"])
def test_many_chunks_match_dense(arch: str, device: str, monkeypatch) -> None:
    """The pre-activations come a chunk of tokens at a time (here 11 chunks of 6 rows): same results."""
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 6 * M)
    gen = torch.Generator().manual_seed(12)
    x, g = torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[1::4] = True
    kw = {"grad": g} if arch == "gradient_topk" else {}
    if arch in ("topk", "gradient_topk"):
        kw.update(cfg={"k": 5, "k_aux": 4}, dead_mask=dead)
    _compare(arch, x, device, **kw)


def test_sparse_step_holds_no_batch_sized_buffer(device: str, monkeypatch) -> None:
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", 8 * M)
    for arch in available_architectures():
        sae = _sae(arch, "sparse", device)
        gen = torch.Generator().manual_seed(13)
        x, g = torch.randn(B, D, generator=gen).to(device), torch.randn(B, D, generator=gen).to(device)
        out = sae.loss(x, grad=g if arch.startswith("gradient_") else None)
        out.loss.backward()
        assert isinstance(out._codes, kernels.SparseCodes), arch
        scratch = sae.__dict__["_kernel_scratch"]
        assert scratch and all(buf.numel() <= 8 * M for buf in scratch.values()), arch


def test_sparse_codes_hand_case() -> None:
    """Entries (0,1)=2, (0,3)=0 (selected but zero), (2,0)=−1 of a 3x4 code matrix."""
    p = kernels.Pattern.from_rows(torch.tensor([0, 0, 2]), torch.tensor([1, 3, 0]), 3, 4)
    codes = kernels.SparseCodes(p, torch.tensor([2.0, 0.0, -1.0]))
    assert p.offsets.tolist() == [0, 2, 2]
    assert torch.equal(codes.to_dense(), torch.tensor([[0.0, 2, 0, 0], [0, 0, 0, 0], [-1, 0, 0, 0]]))
    assert codes.fired().tolist() == [True, True, False, False]
    assert codes.l0() == pytest.approx(2 / 3)
    out = LossOutput(torch.tensor(0.0), {}, codes, torch.zeros(3, 2))
    dense_out = LossOutput(torch.tensor(0.0), {}, codes.to_dense(), torch.zeros(3, 2))
    assert torch.equal(out.fired(), dense_out.fired()) and out.l0() == pytest.approx(dense_out.l0())
    assert torch.equal(out.codes, dense_out.codes)


def test_gather_gives_the_input_its_gradient_when_it_needs_one(device: str) -> None:
    """Activations normally need no gradient; when they do, the sparse gather still returns it."""
    gen = torch.Generator().manual_seed(14)
    x, b_dec, w, b = (torch.randn(shape, generator=gen).to(device).requires_grad_()
                      for shape in ((9, 5), (5,), (7, 5), (7,)))
    z = (x - b_dec) @ w.T + b
    p = kernels.Pattern.above(z.detach(), 0.3)
    sparse = kernels.gather_preacts(x, b_dec, w, b, p, p.gather(z.detach()))
    weights = torch.randn(p.nnz, generator=gen).to(device)
    grads_s = torch.autograd.grad((sparse * weights).sum(), (x, b_dec, w, b))
    dense = torch.zeros_like(z).index_put_((p.rows, p.cols), weights)
    grads_d = torch.autograd.grad((z * dense).sum(), (x, b_dec, w, b))
    for gs, gd in zip(grads_s, grads_d):
        torch.testing.assert_close(gs, gd)


@pytest.mark.parametrize("shape,k", [((50, 1024), 8), ((7, 4096), 32), ((9, 100), 3), ((5, 96), 30)])
def test_topk_indices_is_exact(shape, k, device: str) -> None:
    """Blocked top-k keeps the same set as torch.topk (continuous values: no ties), including rows
    whose k largest entries share one block, and shapes that fall back to torch.topk."""
    gen = torch.Generator().manual_seed(15)
    z = torch.randn(shape, generator=gen)
    z[0, : kernels.TOPK_BLOCK + 2] += 100.0  # row 0: one whole block (and more) holds the largest entries
    z = z.to(device)
    got = kernels.topk_indices(z, k).sort(dim=1).values
    want = z.topk(k, dim=1).indices.sort(dim=1).values
    assert torch.equal(got, want)


def test_blocked_search_finds_every_entry(device: str) -> None:
    """entries_above with a scalar threshold scans blocks first; it must find exactly what nonzero finds."""
    gen = torch.Generator().manual_seed(16)
    z = torch.randn(40, 8 * kernels.FIND_BLOCK, generator=gen) - 2.0
    z[3] = -5.0  # a row with nothing above
    z[5, : kernels.FIND_BLOCK] = 1.0  # a block that is all above
    z = z.to(device)
    chunks = [(slice(0, 17), z[:17]), (slice(17, 40), z[17:])]
    p, values = kernels.entries_above(chunks, 0.5, 40, z.shape[1])
    rows, cols = torch.nonzero(z > 0.5).unbind(1)
    assert torch.equal(p.rows, rows) and torch.equal(p.cols, cols) and torch.equal(values, z[rows, cols])
    counts = (z > 0.5).sum(1).cumsum(0)[:-1].cpu()
    assert p.offsets.tolist() == torch.cat([torch.zeros(1, dtype=torch.long), counts]).tolist()


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_execute_with_the_bias_outside_selects_on_z_and_hands_over_the_bare_projection(mode) -> None:
    """Gated's form of the statement. Hand case: W = I, b = (−0.5, −3), b_dec = 0, x = [[1, 0], [0, 2]]:
    z = x W^T + b = [[0.5, −3], [−0.5, −1]], the bare projection x W^T = [[1, 0], [0, 2]].
    Above(0) keeps (0, 0) only; each token's top 1 of z is latent 0 (of the bare projection, token 1
    would pick latent 1). The objective reads the projection at what was kept: (0,0) -> 1, (1,0) -> 0."""
    from saekit.statement import Above, RowTopK, execute

    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w, b, b_dec = torch.eye(2, requires_grad=True), torch.tensor([-0.5, -3.0], requires_grad=True), torch.zeros(2)
    module = torch.nn.Module()
    above = execute(module, x, w, b, b_dec, Above(0.0, 2, 2), None, mode, bias_outside=True).main
    top = execute(module, x, w, b, b_dec, RowTopK(1, 2, 2, like=x), None, mode, bias_outside=True).main
    if mode == "dense":
        assert torch.equal(above.z, x) and above.mask is None
        assert torch.equal(top.z, x) and top.mask.tolist() == [[True, False], [True, False]]
    else:
        assert above.pattern.rows.tolist() == [0] and above.pattern.cols.tolist() == [0]
        assert above.z.tolist() == [1.0]
        assert top.pattern.rows.tolist() == [0, 1] and top.pattern.cols.tolist() == [0, 0]
        assert top.z.tolist() == [1.0, 0.0]
    (g_b,) = torch.autograd.grad(top.selected(top.z).sum(), [b], allow_unused=True)
    assert g_b is None  # the bias is the objective's to add: none of it is in what it reads
