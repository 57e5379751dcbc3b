import math

import pytest
import torch

from saekit import available_architectures, load
from saekit.config import SAEConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.sae import build_sae

from sae_factories import tiny_sae

CORE = ["relu", "gated", "topk"]


def test_core_architectures_are_registered():
    assert set(CORE) <= set(available_architectures())


@pytest.mark.parametrize("arch", CORE)
def test_save_load_round_trips_outputs_bit_for_bit(arch, tmp_path):
    sae = tiny_sae(arch, k=3) if arch == "topk" else tiny_sae(arch)
    sae.save(tmp_path / "sae")
    again = load(tmp_path / "sae")
    assert type(again) is type(sae)
    assert again.cfg == sae.cfg
    x = torch.randn(32, 6)
    for a, b in zip(sae(x), again(x)):
        assert torch.equal(a, b)
    cfg = (tmp_path / "sae" / "cfg.json").read_text()
    assert f'"architecture": "{arch}"' in cfg


def test_load_refuses_mismatched_weights(tmp_path):
    tiny_sae("relu").save(tmp_path / "a")
    tiny_sae("relu", n_latents=12).save(tmp_path / "b")
    (tmp_path / "b" / "cfg.json").write_text((tmp_path / "a" / "cfg.json").read_text())
    with pytest.raises(SaekitError, match="does not match"):
        load(tmp_path / "b")


def test_load_reports_truncated_weights(tmp_path):
    tiny_sae("gated").save(tmp_path / "s")
    blob = (tmp_path / "s" / "model.safetensors").read_bytes()
    (tmp_path / "s" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SaekitError, match="truncated"):
        load(tmp_path / "s")


def test_relu_loss_hand_case():
    sae = build_sae(SAEConfig(architecture="relu", d_in=2, n_latents=2, l1_coeff=0.5))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # atom norms 2 and 1
        sae.b_dec.zero_()
    x = torch.tensor([[1.0, 3.0]])
    # f = ReLU([1, 3 − 1]) = [1, 2]; x̂ = [2, 2]; ‖x − x̂‖² = 1 + 1 = 2; weighted L1 = 1·2 + 2·1 = 4
    out = sae.loss(x)
    assert torch.equal(out.codes, torch.tensor([[1.0, 2.0]]))
    assert out.terms["mse"].item() == 2.0
    assert out.terms["l1"].item() == 4.0
    assert out.loss.item() == 2.0 + 0.5 * 4.0


def test_gated_loss_hand_case():
    sae = build_sae(SAEConfig(architecture="gated", d_in=2, n_latents=2, l1_coeff=0.1))
    with torch.no_grad():
        sae.W_gate.copy_(torch.eye(2))
        sae.b_gate.copy_(torch.tensor([0.0, -5.0]))  # latent 2's gate is closed
        sae.r_mag.copy_(torch.tensor([math.log(2.0), 0.0]))
        sae.b_mag.copy_(torch.tensor([-1.0, 0.0]))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_dec.zero_()
    x = torch.tensor([[1.0, 3.0]])
    # π_gate = [1, −2]; π_mag = [2·1 − 1, 3] = [1, 3]; f = [1, 0]; x̂ = [1, 0] -> mse 9
    # L1 on ReLU(π_gate) = 1; aux: x̂_frozen(ReLU(π_gate)) = [1, 0] -> 9
    out = sae.loss(x)
    assert torch.equal(out.codes, torch.tensor([[1.0, 0.0]]))
    assert out.terms["mse"].item() == 9.0 and out.terms["l1"].item() == 1.0 and out.terms["aux"].item() == 9.0
    assert math.isclose(out.loss.item(), 9.0 + 0.1 + 9.0, rel_tol=1e-6)


def test_gated_auxiliary_loss_gives_exactly_zero_gradient_to_the_decoder():
    sae = tiny_sae("gated")
    aux = sae.loss(torch.randn(16, 6)).terms["aux"]
    (grad_w,) = torch.autograd.grad(aux, [sae.W_dec], allow_unused=True)
    assert grad_w is None or torch.count_nonzero(grad_w) == 0
    # while the main reconstruction term does train it
    mse = sae.loss(torch.randn(16, 6)).terms["mse"]
    assert torch.count_nonzero(torch.autograd.grad(mse, [sae.W_dec])[0]) > 0


def test_trained_gated_sae_equals_jumprelu_with_derived_threshold():
    from saekit.config import DataConfig, SyntheticConfig, TrainConfig
    from saekit.train.trainer import train

    cfg = TrainConfig(sae=SAEConfig(architecture="gated", n_latents=16, l1_coeff=1.0),
                      data=DataConfig(synthetic=SyntheticConfig(n_features=12, d=8, k=2)),
                      steps=60, batch_size=256, lr=3e-3, progress=False, ckpt_every=0)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg.out_dir = d
        sae = train(cfg)
    x = torch.randn(512, 8) * 2
    gated = sae.encode(x)
    jump = sae.encode_jumprelu(x)
    assert torch.equal(gated, jump)
    assert (gated > 0).any() and (gated == 0).any()
    theta = sae.b_mag - sae.r_mag.exp() * sae.b_gate
    assert torch.equal(sae.jumprelu_threshold(), theta)


def test_topk_keeps_exactly_k_latents():
    sae = tiny_sae("topk", n_latents=20, k=4)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive
    f = sae.encode(torch.randn(50, 6))
    assert torch.equal((f != 0).sum(dim=1), torch.full((50,), 4))


def test_topk_never_keeps_more_than_k():
    sae = tiny_sae("topk", n_latents=20, k=4)
    f = sae.encode(torch.randn(50, 6))
    assert ((f != 0).sum(dim=1) <= 4).all()


def test_input_scale_is_applied_inside():
    sae = tiny_sae("relu")
    x = torch.randn(8, 6)
    sae.cfg.input_scale = 2.0
    x_hat, f = sae(x)
    assert torch.allclose(f, sae.encode_scaled(2 * x))
    assert torch.allclose(x_hat, sae.dictionary.decode(f) / 2)


def test_wrong_width_is_a_clear_error():
    with pytest.raises(SaekitError, match="d_in=6"):
        tiny_sae("relu")(torch.randn(3, 5))


def test_dictionary_parallel_gradient_removed_and_norms_restored():
    d = Dictionary(5, 4)
    d.reset_random(torch.Generator().manual_seed(0))
    d.W_dec.grad = torch.randn(5, 4)
    d.remove_parallel_grad_()
    assert torch.allclose((d.W_dec.grad * d.W_dec).sum(dim=1), torch.zeros(5), atol=1e-6)
    with torch.no_grad():
        d.W_dec.mul_(3.0)
    d.normalize_()
    assert torch.allclose(d.atom_norms(), torch.ones(5))
