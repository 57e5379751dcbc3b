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
def test_save_load_round_trips_outputs_bit_for_bit(arch, tmp_path, device):
    sae = (tiny_sae(arch, k=3) if arch == "topk" else tiny_sae(arch)).to(device)
    sae.save(tmp_path / "sae")
    again = load(tmp_path / "sae", device=device)
    assert type(again) is type(sae)
    assert again.cfg == sae.cfg
    assert again.W_dec.device.type == device
    x = torch.randn(32, 6).to(device)
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


def test_relu_loss_hand_case(device):
    sae = build_sae(SAEConfig(architecture="relu", d_in=2, n_latents=2, l1_coeff=0.5))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # atom norms 2 and 1
        sae.b_dec.zero_()
    sae.to(device)
    x = torch.tensor([[1.0, 3.0]], device=device)
    # f = ReLU([1, 3 − 1]) = [1, 2]; x̂ = [2, 2]; ‖x − x̂‖² = 1 + 1 = 2; weighted L1 = 1·2 + 2·1 = 4
    out = sae.loss(x)
    assert torch.equal(out.codes.cpu(), torch.tensor([[1.0, 2.0]]))
    assert out.terms["mse"].item() == 2.0
    assert out.terms["l1"].item() == 4.0
    assert out.loss.item() == 2.0 + 0.5 * 4.0


def test_gated_loss_hand_case(device):
    sae = build_sae(SAEConfig(architecture="gated", d_in=2, n_latents=2, l1_coeff=0.1))
    with torch.no_grad():
        sae.W_gate.copy_(torch.eye(2))
        sae.b_gate.copy_(torch.tensor([0.0, -5.0]))  # latent 2's gate is closed
        sae.r_mag.copy_(torch.tensor([math.log(2.0), 0.0]))
        sae.b_mag.copy_(torch.tensor([-1.0, 0.0]))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_dec.zero_()
    sae.to(device)
    x = torch.tensor([[1.0, 3.0]], device=device)
    # π_gate = [1, −2]; π_mag = [2·1 − 1, 3] = [1, 3]; f = [1, 0]; x̂ = [1, 0] -> mse 9
    # L1 on ReLU(π_gate) = 1; aux: x̂_frozen(ReLU(π_gate)) = [1, 0] -> 9
    out = sae.loss(x)
    assert torch.equal(out.codes.cpu(), torch.tensor([[1.0, 0.0]]))
    assert out.terms["mse"].item() == 9.0 and out.terms["l1"].item() == 1.0 and out.terms["aux"].item() == 9.0
    assert math.isclose(out.loss.item(), 9.0 + 0.1 + 9.0, rel_tol=1e-6)


def test_gated_auxiliary_loss_gives_exactly_zero_gradient_to_the_decoder(device):
    sae = tiny_sae("gated").to(device)
    aux = sae.loss(torch.randn(16, 6).to(device)).terms["aux"]
    (grad_w,) = torch.autograd.grad(aux, [sae.W_dec], allow_unused=True)
    assert grad_w is None or torch.count_nonzero(grad_w) == 0
    # while the main reconstruction term does train it
    mse = sae.loss(torch.randn(16, 6).to(device)).terms["mse"]
    assert torch.count_nonzero(torch.autograd.grad(mse, [sae.W_dec])[0]) > 0


def _hand_gated():
    """d = 2, three latents; W_mag = diag(2, 1, 4) W_gate; b_dec = (1, 0)."""
    sae = build_sae(SAEConfig(architecture="gated", d_in=2, n_latents=3, l1_coeff=0.1))
    with torch.no_grad():
        sae.W_gate.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.b_gate.copy_(torch.tensor([-1.0, 0.5, -2.5]))
        sae.r_mag.copy_(torch.tensor([math.log(2.0), 0.0, math.log(4.0)]))
        sae.b_mag.copy_(torch.tensor([0.5, -1.0, 1.0]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0]))
    return sae


def test_gated_codes_are_a_jumprelu_of_the_magnitude_path_hand_case(device):
    """θ by hand: b_mag − exp(r_mag) ⊙ b_gate = (0.5 + 2, −1 − 0.5, 1 + 4·2.5) = (2.5, −1.5, 11).
    x' = x − b_dec; z = π_mag = W_mag x' + b_mag; JumpReLU f = ReLU(z) ⊙ H(z − θ) (the ReLU matters where
    θ < 0, latent 1). Row by row (gate π_gate = W_gate x' + b_gate):
      x = (3, 1):    x' = (2, 1),     π_gate = (1, 1.5, 0.5),    z = (4.5, 0, 13)    -> f = (4.5, 0, 13)
      x = (1.5, 1):  x' = (0.5, 1),   π_gate = (−0.5, 1.5, −1),  z = (1.5, 0, 7)     -> f = (0, 0, 0)
      x = (1, 2):    x' = (0, 2),     π_gate = (−1, 2.5, −0.5),  z = (0.5, 1, 9)     -> f = (0, 1, 0)
      x = (4, 0.25): x' = (3, 0.25),  π_gate = (2, 0.75, 0.75),  z = (6.5, −0.75, 14) -> f = (6.5, 0, 14)
    (row 2: latent 0's magnitude 1.5 is positive but below θ = 2.5, and its gate is shut)."""
    sae = _hand_gated().to(device)
    x = torch.tensor([[3.0, 1.0], [1.5, 1.0], [1.0, 2.0], [4.0, 0.25]], device=device)
    expected = torch.tensor([[4.5, 0.0, 13.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [6.5, 0.0, 14.0]])
    theta = torch.tensor([2.5, -1.5, 11.0])
    torch.testing.assert_close(sae.jumprelu_threshold().detach().cpu(), theta)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x).cpu(), expected)
        torch.testing.assert_close(sae.encode_jumprelu(x).cpu(), expected)
        # and on many inputs, against a JumpReLU built here from the hand-derived θ
        xs = 4 * torch.randn(2000, 2)
        z = (xs - torch.tensor([1.0, 0.0])) @ torch.tensor([[2.0, 0.0], [0.0, 1.0], [4.0, 4.0]]).T + \
            torch.tensor([0.5, -1.0, 1.0])
        jump = z.relu() * (z > theta)
        f = sae.encode(xs.to(device)).cpu()
        near = ((z - theta).abs() < 1e-4).any(dim=1)  # float ties at the threshold may go either way
        torch.testing.assert_close(f[~near], jump[~near])
        assert (f > 0).any(dim=0).all() and (f == 0).any(dim=0).all()


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_gated_auxiliary_term_trains_b_dec_through_the_encoder_only(kernels, device):
    """DESIGN.md and the paper's pseudo-code: the auxiliary reconstruction uses stop-gradient W_dec and b_dec
    in the *decoder*, but the encoder's x' = x − b_dec is not stopped, so b_dec gets the aux gradient
    through the gate path. Hand case (one token):
      x = (2, 1), b_dec = (0.5, 0.5): x' = (1.5, 0.5); W_gate = diag(1, 2), b_gate = (0, −0.5): π_gate = (1.5, 0.5)
      x̂_frozen = ReLU(π_gate) W_dec + b_dec with W_dec = [[1, 0], [1, 1]]: (2, 0.5) + (0.5, 0.5) = (2.5, 1)
      r = x̂_frozen − x = (0.5, 0); aux = 0.25; ∂aux/∂ReLU(π_gate) = 2 W_dec r = (1, 1) (both gates open)
      ∂aux/∂b_dec = −W_gateᵀ (1, 1) = (−1, −2)   [the decoder path, excluded, would add 2r = (1, 0)]
      ∂aux/∂W_gate = (1, 1)ᵀ x' = [[1.5, 0.5], [1.5, 0.5]];  ∂aux/∂W_dec = 0."""
    sae = build_sae(SAEConfig(architecture="gated", d_in=2, n_latents=2, l1_coeff=0.1, kernels=kernels))
    with torch.no_grad():
        sae.W_gate.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        sae.b_gate.copy_(torch.tensor([0.0, -0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.5]))
    sae.to(device)
    aux = sae.loss(torch.tensor([[2.0, 1.0]], device=device)).terms["aux"]
    assert aux.item() == pytest.approx(0.25)
    g_bdec, g_wgate, g_wdec = torch.autograd.grad(aux, [sae.b_dec, sae.W_gate, sae.W_dec], allow_unused=True)
    torch.testing.assert_close(g_bdec.cpu(), torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(g_wgate.cpu(), torch.tensor([[1.5, 0.5], [1.5, 0.5]]))
    assert g_wdec is None or torch.count_nonzero(g_wdec) == 0


def _auxk_by_hand(sae, x, dead, k_aux):
    """AuxK of DESIGN.md written out: e = x − x̂ (detached); ê = TopK_{k_aux}(z on D) W_dec (no bias);
    ‖e − ê‖² / Σ‖e − ē‖² over the batch."""
    xs = x * sae.cfg.input_scale
    z = (xs - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    keep = z.topk(sae.cfg.k, dim=1).indices
    f = torch.zeros_like(z).scatter(1, keep, z.gather(1, keep).relu())
    e = (xs - (f @ sae.W_dec + sae.b_dec)).detach()
    zd = z.masked_fill(~dead, float("-inf"))
    top = zd.topk(k_aux, dim=1).indices
    e_hat = torch.zeros_like(z).scatter(1, top, z.gather(1, top).relu()) @ sae.W_dec
    return (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum()


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_auxk_switches_on_with_dead_latents_and_trains_only_them(kernels, device):
    sae = tiny_sae("topk", n_latents=12, k=2, kernels=kernels).to(device)
    dead = torch.zeros(12, dtype=torch.bool, device=device)
    dead[[3, 7, 9, 10]] = True
    with torch.no_grad():
        sae.b_enc[dead] += 2.0  # positive pre-activations, so the dead latents' AuxK codes are nonzero
        sae.b_enc[~dead] += 5.0  # while the live ones still win the TopK
    x = torch.randn(40, 6).to(device)
    out = sae.loss(x, dead_mask=dead)
    assert not out.fired()[dead].any()  # really dead on this batch
    aux = out.terms["auxk"]
    k_aux = min(sae.k_aux, 4)  # d_in // 2 = 3
    torch.testing.assert_close(aux, _auxk_by_hand(sae, x, dead, k_aux), rtol=1e-5, atol=0)
    assert aux.item() > 0
    g_enc, g_benc, g_dec = torch.autograd.grad(aux, [sae.W_enc, sae.b_enc, sae.W_dec])
    assert (g_enc[dead].abs().sum(dim=1) > 0).all() and (g_benc[dead] != 0).all()
    assert (g_dec[dead].abs().sum(dim=1) > 0).all()
    assert torch.count_nonzero(g_enc[~dead]) == 0 and torch.count_nonzero(g_dec[~dead]) == 0
    # the total loss carries it with weight 1/32
    torch.testing.assert_close(out.loss, out.terms["nmse"] + aux / 32)
    # no dead latents: the term is exactly zero and trains nothing
    none = sae.loss(x, dead_mask=torch.zeros(12, dtype=torch.bool, device=device))
    assert none.terms["auxk"].item() == 0.0
    assert torch.equal(none.loss, none.terms["nmse"])


def test_trainer_switches_auxk_on_when_latents_die(tmp_path):
    """dead_tokens = one batch: every latent that did not fire in the last step is dead for AuxK."""
    import json
    from pathlib import Path

    from saekit.config import DataConfig, SyntheticConfig, TrainConfig
    from saekit.train.trainer import train

    def logged(dead_tokens, out):
        cfg = TrainConfig(sae=SAEConfig(architecture="topk", n_latents=32, k=2, dead_tokens=dead_tokens),
                          data=DataConfig(synthetic=SyntheticConfig(n_features=12, d=8, k=2)), steps=4, batch_size=32,
                          lr=1e-3, progress=False, ckpt_every=0, log_every=1, out_dir=str(tmp_path / out),
                          dead_window_tokens=32)
        train(cfg)
        return [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]

    rows = logged(32, "short")
    assert rows[0]["auxk"] == 0.0  # step 1: nothing has had time to die
    assert all(r["dead_fraction"] > 0 and r["auxk"] > 0 for r in rows[1:])
    assert all(r["auxk"] == 0.0 for r in logged(10_000_000, "long"))
    # the default (0) is scaled to the run: 4 x 32 tokens -> at least one batch, so AuxK switches on as with 32
    assert [r["auxk"] for r in logged(0, "default")] == [r["auxk"] for r in rows]


def test_run_scaled_auxk_dead_threshold():
    """0 = 1% of the run's tokens, at least one batch, at most Gao et al.'s 10M; a set value is kept."""
    from saekit.train.dead_latents import auxk_dead_tokens

    assert auxk_dead_tokens(0, 250 * 2048, 2048) == 5120  # 1% of 512,000
    assert auxk_dead_tokens(0, 4 * 32, 32) == 32  # 1% (1) is less than a batch
    assert auxk_dead_tokens(0, 10**10, 4096) == 10_000_000  # 1% (1e8) is capped
    assert auxk_dead_tokens(777, 10**10, 4096) == 777
    assert SAEConfig().dead_tokens == 0


def test_topk_keeps_exactly_k_latents(device):
    sae = tiny_sae("topk", n_latents=20, k=4).to(device)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive
    f = sae.encode(torch.randn(50, 6).to(device))
    assert torch.equal((f != 0).sum(dim=1).cpu(), torch.full((50,), 4))


def test_topk_never_keeps_more_than_k(device):
    sae = tiny_sae("topk", n_latents=20, k=4).to(device)
    f = sae.encode(torch.randn(50, 6).to(device))
    assert ((f != 0).sum(dim=1) <= 4).all()


def test_input_scale_is_applied_inside(device):
    sae = tiny_sae("relu").to(device)
    x = torch.randn(8, 6).to(device)
    sae.cfg.input_scale = 2.0
    x_hat, f = sae(x)
    assert torch.allclose(f, sae.encode_scaled(2 * x))
    assert torch.allclose(x_hat, sae.dictionary.decode(f) / 2)


def test_wrong_width_is_a_clear_error():
    with pytest.raises(SaekitError, match="d_in=6"):
        tiny_sae("relu")(torch.randn(3, 5))


def test_dictionary_parallel_gradient_removed_and_norms_restored(device):
    d = Dictionary(5, 4).to(device)
    d.reset_random(torch.Generator().manual_seed(0))  # a CPU generator for a dictionary on any device
    d.W_dec.grad = torch.randn(5, 4).to(device)
    d.remove_parallel_grad_()
    assert torch.allclose((d.W_dec.grad * d.W_dec).sum(dim=1), torch.zeros(5, device=device), atol=1e-6)
    with torch.no_grad():
        d.W_dec.mul_(3.0)
    d.normalize_()
    assert torch.allclose(d.atom_norms(), torch.ones(5, device=device))
