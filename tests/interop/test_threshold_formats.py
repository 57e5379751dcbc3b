"""JumpReLU, BatchTopK and Matryoshka SAEs in SAELens's jumprelu format, without the peer venv: the folding of
input_scale leaves thresholds alone (hand case), exact round trips, SAELens-layout folders written here by
hand, the sparsify refusal and the export/import commands."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_factories import tiny_sae  # noqa: E402

import saekit  # noqa: E402
from saekit.cli import main  # noqa: E402
from saekit.errors import SaekitError  # noqa: E402
from saekit.interop import saelens, sparsify  # noqa: E402
from saekit.interop.weights import TINY, exact_log, fold  # noqa: E402

ARCHS = {"jumprelu": {}, "batchtopk": {"k": 4}, "matryoshka": {"k": 4, "group_sizes": (8, 24, 32)},
         "gradient_batchtopk": {"k": 4, "beta": 1.5}, "gradient_matryoshka": {"k": 4, "beta": 1.5}}


def hand_jumprelu(arch: str) -> saekit.SparseAutoencoder:
    """d_in 2, 2 latents, input_scale 2: W_enc = W_dec = I, b_dec = (0.4, 0), b_enc = (0.1, 0), θ = (1.5, 0.5)
    (batchtopk: θ = 0.5 for both)."""
    sae = tiny_sae(arch, d_in=2, n_latents=2, **({} if arch == "jumprelu" else {"k": 1}))
    sae.cfg = replace(sae.cfg, input_scale=2.0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.dictionary.W_dec.copy_(torch.eye(2))
        sae.dictionary.b_dec.copy_(torch.tensor([0.4, 0.0]))
        sae.b_enc.copy_(torch.tensor([0.1, 0.0]))
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.tensor([1.5, 0.5]).log())
        else:
            sae.threshold.fill_(0.5)
            sae.threshold_updates.fill_(7)
    return sae


def test_folding_input_scale_leaves_jumprelu_thresholds_alone_hand_case(tmp_path):
    """x = (1, 0.2), x = (0.3, 0.3): z = (2x − b_dec) + b_enc = (1.7, 0.4) and (0.3, 0.6); θ = (1.5, 0.5) keeps
    1.7 and 0.6 only. Folded: W_enc = 2I, b_dec = (0.2, 0), W_dec = I/2, θ unchanged; same codes on model units."""
    sae = hand_jumprelu("jumprelu")
    x = torch.tensor([[1.0, 0.2], [0.3, 0.3]])
    want = torch.tensor([[1.7, 0.0], [0.0, 0.6]])
    torch.testing.assert_close(sae.encode(x), want)
    torch.testing.assert_close(sae.decode(want), torch.tensor([[1.05, 0.0], [0.2, 0.3]]))  # (f + b_dec) / 2
    f = fold(sae)
    assert torch.equal(f.threshold, sae.threshold().detach())
    torch.testing.assert_close(f.threshold, torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(f.W_enc, 2 * torch.eye(2))
    torch.testing.assert_close(f.b_dec, torch.tensor([0.2, 0.0]))
    torch.testing.assert_close(f.W_dec, torch.eye(2) / 2)
    z = (x - f.b_dec) @ f.W_enc.T + f.b_enc
    torch.testing.assert_close(z * (z > f.threshold), want)  # SAELens's ReLU(z)·1[z > θ], θ > 0
    out = saelens.export(sae, tmp_path / "sl")
    t = load_file(str(out / saelens.WEIGHTS))
    assert set(t) == {"W_enc", "W_dec", "b_dec", "b_enc", "threshold"}
    assert torch.equal(t["threshold"], f.threshold) and torch.equal(t["W_enc"], f.W_enc.T)
    cfg = json.loads((out / saelens.CFG).read_text())
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg and cfg["apply_b_dec_to_input"] is True
    back = saekit.load(out)
    assert back.cfg.input_scale == 1.0
    torch.testing.assert_close(back.encode(x), want)


def test_batchtopk_exports_its_global_threshold_in_every_latent_hand_case(tmp_path):
    """θ = 0.5 for both latents: z = (1.7, 0.4) keeps 1.7, z = (0.3, 0.6) keeps 0.6; the moving average's count
    goes along in the metadata so saekit.load gives back the BatchTopK SAE itself."""
    sae = hand_jumprelu("batchtopk")
    x = torch.tensor([[1.0, 0.2], [0.3, 0.3]])
    want = torch.tensor([[1.7, 0.0], [0.0, 0.6]])
    torch.testing.assert_close(sae.encode(x), want)
    out = saelens.export(sae, tmp_path / "sl")
    t = load_file(str(out / saelens.WEIGHTS))
    assert torch.equal(t["threshold"], torch.tensor([0.5, 0.5]))
    meta = json.loads((out / saelens.CFG).read_text())["metadata"]
    assert meta["saekit_architecture"] == "batchtopk" and meta["saekit_threshold_updates"] == 7
    assert "inference-time conversion" in meta["saekit_note"]
    back = saekit.load(out)
    assert back.cfg == replace(sae.cfg, input_scale=1.0)
    assert float(back.threshold) == 0.5 and int(back.threshold_updates) == 7
    torch.testing.assert_close(back.encode(x), want)


def test_exact_log_gives_back_every_threshold_bit_for_bit():
    theta = torch.randn(20000, generator=torch.Generator().manual_seed(3)).mul(3).exp()
    assert not torch.equal(theta.log().exp(), theta)  # plain float32 log then exp misses some
    assert torch.equal(exact_log(theta).exp(), theta)


def thresholded(arch: str) -> saekit.SparseAutoencoder:
    """d_in 16, 64 latents, input_scale 0.37, thresholds inside the pre-activations' range."""
    sae = tiny_sae(arch, d_in=16, n_latents=64, **ARCHS[arch])
    sae.cfg = replace(sae.cfg, input_scale=0.37)
    with torch.no_grad():
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.linspace(-3, 0.5, 64))
        else:
            sae.threshold.fill_(0.6)
            sae.threshold_updates.fill_(12)
    return sae


@pytest.mark.parametrize("arch", list(ARCHS))
def test_round_trip_through_saelens_is_exact(arch, tmp_path):
    """saekit -> SAELens -> saekit: the same architecture and hyperparameters, the same thresholds bit for bit,
    codes and reconstructions to float rounding; exporting again writes identical bytes."""
    sae = thresholded(arch)
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1)) * 3 + 1
    codes = sae.encode(x)
    assert 0.05 < float((codes > 0).float().mean()) < 0.7
    out = saelens.export(sae, tmp_path / "a")
    back = saekit.load(out)
    assert back.cfg == replace(sae.cfg, input_scale=1.0)
    if arch == "jumprelu":
        assert torch.equal(back.threshold(), sae.threshold())
    else:
        assert torch.equal(back.threshold, sae.threshold) and torch.equal(back.threshold_updates, sae.threshold_updates)
    torch.testing.assert_close(back.encode(x), codes, rtol=0, atol=1e-5)
    torch.testing.assert_close(back.decode(codes), sae.decode(codes), rtol=0, atol=1e-5)
    again = saelens.export(back, tmp_path / "b")
    for name in (saelens.WEIGHTS, saelens.CFG):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    back.save(tmp_path / "saekit")
    assert saekit.load(tmp_path / "saekit").cfg == back.cfg


def write_saelens_jumprelu(folder: Path, theta: torch.Tensor, apply_b_dec: bool = True, meta: dict | None = None):
    """A jumprelu folder in SAELens 6's layout (W_enc [d_in, d_sae]), no saekit keys unless ``meta`` says."""
    g = torch.Generator().manual_seed(4)
    d_in, d_sae = 8, theta.numel()
    t = {"W_enc": torch.randn(d_in, d_sae, generator=g) / 3, "W_dec": torch.randn(d_sae, d_in, generator=g) / 3,
         "b_enc": 0.3 * torch.randn(d_sae, generator=g), "b_dec": 0.5 * torch.randn(d_in, generator=g),
         "threshold": theta}
    folder.mkdir(parents=True)
    save_file(t, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.5.0", **(meta or {})}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


def saelens_jumprelu_codes(t: dict, x: torch.Tensor, apply_b_dec: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens 6's JumpReLUSAE.encode/decode written out: ReLU(z)·1[z > θ], f W_dec + b_dec."""
    z = (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]
    f = z.relu() * (z > t["threshold"])
    return f, f @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_a_saelens_jumprelu_folder_imports_with_equal_codes(apply_b_dec, tmp_path, capsys):
    """Thresholds ≤ 0 (SAELens's JumpReLU is then ReLU) become TINY; `saekit import` writes a folder saekit loads."""
    theta = torch.cat([torch.tensor([-0.5, 0.0, -1e-3]), torch.linspace(0.05, 0.8, 29)])
    t = write_saelens_jumprelu(tmp_path / "sl", theta, apply_b_dec)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(2))
    want, recon = saelens_jumprelu_codes(t, x, apply_b_dec)
    z = (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]
    assert ((z > 0) & (z <= theta)).float().mean() > 0.05  # some codes are off because of the thresholds
    sae = saekit.load(tmp_path / "sl")
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.input_scale == 1.0
    th = sae.threshold().detach()
    assert bool((th[:3] > 0).all()) and bool((th[:3] < 2 * TINY).all())
    torch.testing.assert_close(th[3:], theta[3:], rtol=1e-6, atol=0)  # not every float32 is an exp of one
    torch.testing.assert_close(sae.encode(x), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon, rtol=0, atol=1e-5)
    main(["import", str(tmp_path / "sl"), "--out", str(tmp_path / "ours")])
    assert "jumprelu" in capsys.readouterr().out
    ours = saekit.load(tmp_path / "ours")
    torch.testing.assert_close(ours.encode(x), want, rtol=0, atol=1e-6)


def test_batchtopk_metadata_with_differing_thresholds_imports_as_jumprelu(tmp_path):
    """A folder that says it came from a saekit batchtopk but has per-latent thresholds is a jumprelu (the codes
    are what matter)."""
    cfg = replace(thresholded("batchtopk").cfg, input_scale=1.0).to_dict()
    theta = torch.linspace(0.1, 0.5, 16)
    write_saelens_jumprelu(tmp_path / "sl", theta, meta={"saekit_architecture": "batchtopk", "saekit_cfg": cfg})
    assert saekit.load(tmp_path / "sl").cfg.architecture == "jumprelu"


def test_jumprelu_folder_without_threshold_is_one_clear_error(tmp_path):
    write_saelens_jumprelu(tmp_path / "sl", torch.zeros(16))
    t = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    del t["threshold"]
    save_file(t, str(tmp_path / "sl" / "sae_weights.safetensors"))
    with pytest.raises(SaekitError, match="no threshold tensor"):
        saekit.load(tmp_path / "sl")


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk", "matryoshka"])
def test_sparsify_refuses_thresholded_saes_naming_what_it_takes(arch, tmp_path, capsys):
    sae = thresholded(arch)
    with pytest.raises(SaekitError, match=r"exportable to sparsify: topk, gradient_topk\); use --format saelens"):
        sparsify.export(sae, tmp_path / "sp")
    sae.save(tmp_path / "sae")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "sae"), "--format", "sparsify", "--out", str(tmp_path / "sp")])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exportable to sparsify: topk, gradient_topk" in err and arch in err


def test_export_command_says_a_batchtopk_export_is_an_inference_time_conversion(tmp_path, capsys):
    sae = thresholded("matryoshka")
    sae.save(tmp_path / "sae")
    main(["export", str(tmp_path / "sae"), "--format", "saelens", "--out", str(tmp_path / "sl")])
    printed = capsys.readouterr().out
    assert "matryoshka -> jumprelu" in printed and "inference-time conversion" in printed
    assert saekit.load(tmp_path / "sl").cfg.architecture == "matryoshka"


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk", "matryoshka"])
def test_saebench_adapter_gives_the_thresholded_saes_own_codes(arch):
    from saekit.interop.saebench import as_saebench

    sae = thresholded(arch)
    bench = as_saebench(sae, "m", 0)
    assert bench.cfg.architecture == "jumprelu" and bench.cfg.activation_fn_str == "jumprelu"
    x = torch.randn(40, sae.cfg.d_in, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        ours = sae.encode(x)
        theirs = bench.encode(x)
        torch.testing.assert_close(theirs, ours)
        torch.testing.assert_close(bench.decode(theirs), sae.decode(ours))
    assert 0 < int((ours != 0).sum()) < ours.numel()  # the threshold decides some entries both ways
