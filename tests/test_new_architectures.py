"""JumpReLU, BatchTopK and Matryoshka: hand-computed losses, straight-through gradients, inference
thresholds and conversions to JumpReLU."""

from __future__ import annotations

import math

import pytest
import torch

from saekit import load
from saekit.config import SAEConfig
from saekit.encoders.matryoshka import prefix_ends
from saekit.errors import SaekitError
from saekit.sae import build_sae


def _set(sae, **tensors):
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(sae, name).copy_(torch.as_tensor(value, dtype=torch.float32))


# ---- JumpReLU ----------------------------------------------------------------------------------

def _hand_jumprelu(kernels: str, **kw):
    """d = n = 2, W_enc = W_dec = I, b_enc = (0.3, 0), b_dec = 0, θ = (1, 2.4), ε = 0.5, λ = 0.1."""
    sae = build_sae(SAEConfig(architecture="jumprelu", d_in=2, n_latents=2, l0_coeff=0.1, bandwidth=0.5,
                              kernels=kernels, **kw))
    _set(sae, W_enc=torch.eye(2), b_enc=[0.3, 0.0], W_dec=torch.eye(2), b_dec=[0.0, 0.0],
         log_threshold=[0.0, math.log(2.4)])
    return sae


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_jumprelu_loss_and_straight_through_gradients_hand_case(kernels):
    """x = (1.5, 2.2): z = (1.8, 2.2). Latent 0 is on (z > θ = 1; (z − θ)/ε = 1.6, outside the kernel);
    latent 1 is off but inside the kernel ((2.2 − 2.4)/0.5 = −0.4). f = (1.8, 0), x̂ = (1.8, 0),
    x − x̂ = (−0.3, 2.2): mse = 0.09 + 4.84 = 4.93; L0 = 1; loss = 4.93 + 0.1 = 5.03.
    ∂mse/∂f = 2(x̂ − x) = (0.6, −4.4).
    θ_1: reconstruction −4.4 · (−θ_1/ε = −4.8) = 21.12, L0 0.1 · (−1/ε = −2) = −0.2: ∂L/∂θ_1 = 20.92,
         ∂L/∂log θ_1 = 2.4 · 20.92 = 50.208; θ_0 (outside the kernel): 0.
    z_0: ∂L/∂z_0 = 0.6 · H = 0.6 (and the L0 term has no z-gradient): ∂b_enc = (0.6, 0),
         ∂W_enc = ∂z ⊗ x' = [[0.9, 1.32], [0, 0]].
    ∂W_dec = f ⊗ 2(x̂ − x) = [[1.08, −7.92], [0, 0]]; ∂b_dec = 2(x̂ − x) − W_encᵀ ∂z = (0, −4.4)."""
    sae = _hand_jumprelu(kernels)
    out = sae.loss(torch.tensor([[1.5, 2.2]]))
    torch.testing.assert_close(out.codes, torch.tensor([[1.8, 0.0]]))
    assert out.terms["mse"].item() == pytest.approx(4.93)
    assert out.terms["l0_penalty"].item() == 1.0
    assert out.loss.item() == pytest.approx(5.03)
    out.loss.backward()
    torch.testing.assert_close(sae.log_threshold.grad, torch.tensor([0.0, 50.208]))
    torch.testing.assert_close(sae.b_enc.grad, torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(sae.W_enc.grad, torch.tensor([[0.9, 1.32], [0.0, 0.0]]))
    torch.testing.assert_close(sae.W_dec.grad, torch.tensor([[1.08, -7.92], [0.0, 0.0]]))
    torch.testing.assert_close(sae.b_dec.grad, torch.tensor([0.0, -4.4]))


def test_jumprelu_tanh_penalty_hand_case():
    """Same case, tanh variant with c = 0.5: penalty tanh(0.5 · 1.8 · ‖d_0‖ = 0.9) = 0.7162979 (latent 1: f = 0)."""
    sae = _hand_jumprelu("dense", sparsity_loss="tanh", tanh_scale=0.5)
    out = sae.loss(torch.tensor([[1.5, 2.2]]))
    assert out.terms["tanh_penalty"].item() == pytest.approx(0.7162979, rel=1e-6)
    assert out.loss.item() == pytest.approx(4.93 + 0.1 * 0.7162979, rel=1e-6)


def test_jumprelu_encode_is_z_above_its_threshold():
    sae = _hand_jumprelu("dense")
    x = torch.tensor([[1.5, 2.2], [0.5, 2.5], [0.71, 3.0]])  # z = (1.8, 2.2), (0.8, 2.5), (1.01, 3.0)
    torch.testing.assert_close(sae.encode(x), torch.tensor([[1.8, 0.0], [0.0, 2.5], [1.01, 3.0]]))


def test_gated_converts_bit_exactly_to_jumprelu():
    """The Gated hand case of tests/test_architectures.py (exp(r_mag) = 2, 1, 4: powers of two, so the
    folded encoder computes the same floats): W_enc = diag(exp r_mag) W_gate, b_enc = b_mag,
    θ = max(b_mag − exp(r_mag) b_gate, 0) = (2.5, 0, 11) (θ ≤ 0 is a ReLU)."""
    from test_architectures import _hand_gated

    gated = _hand_gated()
    jump = gated.to_jumprelu()
    assert jump.architecture == "jumprelu"
    assert torch.equal(jump.W_enc, torch.tensor([[2.0, 0.0], [0.0, 1.0], [4.0, 4.0]]))
    assert torch.equal(jump.b_enc, gated.b_mag) and torch.equal(jump.W_dec, gated.W_dec)
    torch.testing.assert_close(jump.threshold(), torch.tensor([2.5, 0.0, 11.0]))
    xs = torch.cat([torch.tensor([[3.0, 1.0], [1.5, 1.0], [1.0, 2.0], [4.0, 0.25]]), 4 * torch.randn(4000, 2)])
    with torch.no_grad():
        g, j = gated.encode(xs), jump.encode(xs)
        z = (xs - gated.b_dec) @ jump.W_enc.T + jump.b_enc
        near = ((z - jump.threshold()).abs() < 1e-5).any(dim=1)  # float ties at θ may go either way
        assert torch.equal(g[~near], j[~near]) and near.sum() < 5
        assert torch.equal(gated(xs)[0][~near], jump(xs)[0][~near])


def test_gated_to_jumprelu_on_trained_like_weights():
    """Arbitrary r_mag: the folded matmul rounds differently, so codes agree to float rounding."""
    from sae_factories import tiny_sae

    gated = tiny_sae("gated")
    jump = gated.to_jumprelu()
    x = torch.randn(500, 6)
    with torch.no_grad():
        torch.testing.assert_close(jump.encode(x), gated.encode(x), rtol=1e-5, atol=1e-5)


# ---- BatchTopK ---------------------------------------------------------------------------------

def _hand_batchtopk(kernels: str, **kw):
    sae = build_sae(SAEConfig(architecture="batchtopk", d_in=3, n_latents=3, k=1, kernels=kernels, **kw))
    _set(sae, W_enc=torch.eye(3), b_enc=torch.zeros(3), W_dec=torch.eye(3), b_dec=torch.zeros(3))
    return sae


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_batchtopk_keeps_the_batch_top_k_times_b(kernels):
    """k = 1, B = 2: the 2 largest entries of z = [[3, 1, 2], [0.5, −1, 0.2]] are both token 0's.
    codes [[3, 0, 2], [0, 0, 0]]; x − x̂ = [[0, 1, 0], [0.5, −1, 0.2]]: Σ‖·‖² = 2.29; x̄ = (1.75, 0, 1.1),
    Σ‖x − x̄‖² = 2 · (1.5625 + 1 + 0.81) = 6.745; NMSE = 2.29 / 6.745.
    The threshold is the smallest positive selected value, 2; a second batch [[4, 0, 0], [0, 0, 1]]
    (selected 4 and 1, min 1) with decay 0.5 moves it to 0.5 · 2 + 0.5 · 1 = 1.5."""
    sae = _hand_batchtopk(kernels, threshold_decay=0.5)
    x = torch.tensor([[3.0, 1.0, 2.0], [0.5, -1.0, 0.2]])
    out = sae.loss(x)
    torch.testing.assert_close(out.codes, torch.tensor([[3.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    assert out.terms["nmse"].item() == pytest.approx(2.29 / 6.745, rel=1e-6)
    assert sae.threshold.item() == 2.0 and sae.threshold_updates.item() == 1
    sae.loss(torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert sae.threshold.item() == 1.5
    with torch.no_grad():
        sae.loss(x)  # evaluation (no grad) does not move it
    assert sae.threshold.item() == 1.5
    # inference: z ⊙ H(z − 1.5), per token
    torch.testing.assert_close(sae.encode(x), torch.tensor([[3.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(sae.encode(torch.tensor([[1.4, 1.6, 0.0]])), torch.tensor([[0.0, 1.6, 0.0]]))


def test_batchtopk_calibrate_sets_the_k_n_th_largest_pre_activation():
    """k = 1, n = 2 rows, identity encoder: ReLU(z) = [[3, 1, 2], [0.5, 0, 0.2]]; the (k·n = 2)-th largest is 2,
    the 3rd 1, so θ = 1.5 and exactly 3 and 2 fire. One row [0.4, 0, 0]: θ = (0.4 + 0) / 2. A sample whose ReLU
    is all 0 keeps θ."""
    sae = _hand_batchtopk("dense")
    with torch.no_grad():
        sae.threshold.fill_(9.0)
    x = torch.tensor([[3.0, 1.0, 2.0], [0.5, -1.0, 0.2]])
    sae.calibrate(x)
    assert sae.threshold.item() == 1.5
    torch.testing.assert_close(sae.encode(x), torch.tensor([[3.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    sae.calibrate(torch.tensor([[0.4, -1.0, -2.0]]))
    assert sae.threshold.item() == pytest.approx(0.2)
    sae.calibrate(torch.tensor([[-1.0, -1.0, -1.0]]))
    assert sae.threshold.item() == pytest.approx(0.2)


def test_training_ends_with_the_threshold_of_the_final_weights(tmp_path):
    """A short run (the moving average still lagging) ends with θ midway between the (k·n)-th and (k·n+1)-th
    largest ReLU pre-activations of the trainer's init sample under the final weights: inference L0 there is k."""
    from saekit.config import DataConfig, SyntheticConfig, TrainConfig
    from saekit.data.factory import make_source
    from saekit.train.trainer import train

    data = DataConfig(synthetic=SyntheticConfig(n_features=64, d=32, k=3))
    cfg = TrainConfig(sae=SAEConfig(architecture="batchtopk", n_latents=64, k=3), data=data, steps=60,
                      batch_size=256, lr=1e-3, progress=False, out_dir=str(tmp_path / "r"), ckpt_every=0,
                      init_samples=2048)
    sae = train(cfg)
    sample = make_source(data, "train").sample(cfg.init_samples)
    with torch.no_grad():
        z = sae.pre_activations(sample * sae.cfg.input_scale).relu().flatten()
        top = z.topk(3 * 2048 + 1).values
        assert sae.threshold.item() == ((top[-2] + top[-1]) / 2).item()
        l0 = (sae.encode(sample) != 0).float().sum(1).mean().item()
    assert l0 == 3.0
    assert load(tmp_path / "r" / "sae").threshold.item() == sae.threshold.item()  # what is saved


def test_batchtopk_threshold_is_saved_and_checksummed(tmp_path):
    sae = _hand_batchtopk("sparse")
    sae.loss(torch.tensor([[3.0, 1.0, 2.0], [0.5, -1.0, 0.2]]))
    sae.save(tmp_path / "s")
    again = load(tmp_path / "s")
    assert again.threshold.item() == 2.0 and again.threshold_updates.item() == 1
    x = torch.randn(20, 3)
    assert torch.equal(again.encode(x), sae.encode(x))
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "s" / "model.safetensors")
    state["threshold"] = torch.tensor(0.5)  # a different threshold, same shapes: the checksum catches it
    save_file(state, tmp_path / "s" / "model.safetensors", metadata={"architecture": "batchtopk"})
    with pytest.raises(SaekitError, match="sha256"):
        load(tmp_path / "s")


def test_batchtopk_exports_as_jumprelu_with_its_threshold():
    from sae_factories import tiny_sae

    sae = tiny_sae("batchtopk", k=3)
    with torch.no_grad():
        sae.threshold.fill_(0.4)
    jump = sae.to_jumprelu()
    x = torch.randn(300, 6)
    with torch.no_grad():
        assert torch.equal(jump.encode(x), sae.encode(x))
        assert (sae.encode(x) != 0).any()


def test_batchtopk_inference_is_batch_independent_and_near_k_on_held_out_data(tmp_path):
    """Train briefly on synthetic data (N=64, M=32, K=3; 64 latents, k = 3), then encode held-out samples:
    a token's codes do not depend on the rest of its batch, and the mean L0 is within 10% of k."""
    from saekit.config import DataConfig, SyntheticConfig, TrainConfig
    from saekit.data.factory import make_source
    from saekit.train.trainer import train

    data = DataConfig(synthetic=SyntheticConfig(n_features=64, d=32, k=3))
    cfg = TrainConfig(sae=SAEConfig(architecture="batchtopk", n_latents=64, k=3), data=data, steps=500,
                      batch_size=512, lr=1e-3, progress=False, out_dir=str(tmp_path / "r"), ckpt_every=0)
    sae = train(cfg)
    x = next(make_source(data, "eval").batches(4096))[0].acts
    with torch.no_grad():
        f = sae.encode(x)
        for part in (slice(0, 7), slice(100, 101), slice(2000, 4096)):  # the same tokens in other batches
            alone = sae.encode(x[part])  # (a one-row matmul rounds differently from a batched one)
            torch.testing.assert_close(alone, f[part], rtol=1e-5, atol=1e-5)
            assert torch.equal(alone != 0, f[part] != 0)
    l0 = (f != 0).float().sum(1).mean().item()
    assert abs(l0 - 3) <= 0.3, l0


# ---- Matryoshka --------------------------------------------------------------------------------

@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_matryoshka_sums_the_prefix_losses_hand_case(kernels):
    """d = 2, 3 latents in groups (1, 2): prefixes [0, 1) and [0, 3). W_enc = W_dec = [[1, 0], [0, 1], [1, 1]].
    x = [[2, 1], [1, 3]]: z = [[2, 1, 3], [1, 3, 4]]; k = 2, B = 2: the batch's top 4 are 4, 3, 3, 2:
    codes [[2, 0, 3], [0, 3, 4]]. x̄ = (1.5, 2): Σ‖x − x̄‖² = 2.5.
    prefix 1 (latent 0): x̂ = [[2, 0], [0, 0]], errors 1 + 10 = 11 -> 4.4;
    full: x̂ = [[5, 3], [4, 7]], errors 13 + 25 = 38 -> 15.2; loss = 19.6."""
    sae = build_sae(SAEConfig(architecture="matryoshka", d_in=2, n_latents=3, k=2, group_sizes=(1, 2),
                              kernels=kernels))
    atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    _set(sae, W_enc=atoms, b_enc=torch.zeros(3), W_dec=atoms, b_dec=torch.zeros(2))
    out = sae.loss(torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    torch.testing.assert_close(out.codes, torch.tensor([[2.0, 0.0, 3.0], [0.0, 3.0, 4.0]]))
    assert out.terms["nmse_1"].item() == pytest.approx(4.4)
    assert out.terms["nmse"].item() == pytest.approx(15.2)
    assert out.loss.item() == pytest.approx(19.6)
    torch.testing.assert_close(out.x_hat, torch.tensor([[5.0, 3.0], [4.0, 7.0]]))
    # the first prefix's loss trains latent 0's atom only (the others are outside it)
    (g,) = torch.autograd.grad(out.terms["nmse_1"], [sae.W_dec])
    assert g[0].abs().sum() > 0 and torch.count_nonzero(g[1:]) == 0


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_matryoshka_prefix_weights_hand_case(kernels):
    """The hand case above with prefix weights (0.25, 2): loss = 0.25 · 4.4 + 2 · 15.2 = 31.5; the terms
    themselves are unweighted, and a weight of 0 leaves the inner prefix out of the gradient."""
    atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    for weights, want in (((0.25, 2.0), 31.5), ((0.0, 1.0), 15.2)):
        sae = build_sae(SAEConfig(architecture="matryoshka", d_in=2, n_latents=3, k=2, group_sizes=(1, 2),
                                  prefix_weights=weights, kernels=kernels))
        _set(sae, W_enc=atoms, b_enc=torch.zeros(3), W_dec=atoms, b_dec=torch.zeros(2))
        out = sae.loss(x)
        assert out.terms["nmse_1"].item() == pytest.approx(4.4)
        assert out.loss.item() == pytest.approx(want)
    plain = build_sae(SAEConfig(architecture="batchtopk", d_in=2, n_latents=3, k=2, kernels=kernels))
    _set(plain, W_enc=atoms, b_enc=torch.zeros(3), W_dec=atoms, b_dec=torch.zeros(2))
    (g_m,) = torch.autograd.grad(out.loss, [sae.W_dec])
    (g_b,) = torch.autograd.grad(plain.loss(x).loss, [plain.W_dec])
    torch.testing.assert_close(g_m, g_b)  # inner weight 0: BatchTopK's gradient


def test_matryoshka_groups():
    assert prefix_ends(64, ()) == [8, 16, 32, 64]
    assert prefix_ends(10, (2, 3, 5)) == [2, 5, 10]
    with pytest.raises(SaekitError, match="group_sizes"):
        SAEConfig(architecture="matryoshka", d_in=4, n_latents=10, k=2, group_sizes=(2, 3)).validate()
    for bad in ((1.0,), (1.0, -1.0, 1.0), (1.0, 1.0, 0.0)):
        with pytest.raises(SaekitError, match="prefix_weights"):
            SAEConfig(architecture="matryoshka", d_in=4, n_latents=10, k=2, group_sizes=(2, 3, 5),
                      prefix_weights=bad).validate()


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk", "matryoshka", "gradient_batchtopk", "gradient_matryoshka"])
def test_new_architectures_save_and_load(arch, tmp_path):
    from sae_factories import tiny_sae

    kw = {} if arch == "jumprelu" else {"k": 3}
    if "matryoshka" in arch:
        kw["group_sizes"] = (4, 6)
    sae = tiny_sae(arch, **kw)
    sae.save(tmp_path / "s")
    again = load(tmp_path / "s")
    assert type(again) is type(sae) and again.cfg == sae.cfg
    x = torch.randn(16, 6)
    assert torch.equal(again.encode(x), sae.encode(x))
