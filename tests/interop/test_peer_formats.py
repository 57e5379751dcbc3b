"""saekit <-> SAELens and sparsify, checked by the peers' own loaders in their own venv.

One peer job per test session (see peers.py and the ``peers`` fixture in conftest.py): it loads saekit's exports with SAELens's ``SAE.load_from_disk``
and sparsify's ``SparseCoder.load_from_disk``, encodes and decodes the same activations, and creates
and saves SAEs of its own that saekit then loads.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import saekit
from saekit.interop import saelens, sparsify

from peers import EXPORTS, K, SAELENS_MADE, SPARSIFY_EXPORTS, THRESHOLDED

TOL = 1e-5


def result(peers, key):
    res = peers["results"][key]
    assert "error" not in res, res.get("error")
    return res, load_file(res["tensors"])


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


MEASURED: dict[str, float] = {}


def close(got, want, what: str) -> bool:
    """Equal to 1e-5 of the largest magnitude involved (float32 rounding of sums of ~d_in terms)."""
    diff = max_diff(got, want)
    MEASURED[what] = diff
    print(f"{what}: max |diff| {diff:.3g} (max |value| {float(want.abs().max()):.3g})")
    return diff <= TOL * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("arch", list(EXPORTS))
def test_saelens_loads_saekit_export(peers, arch):
    res, got = result(peers, f"saelens_load/{arch}")
    assert res["architecture"] == saelens.TO_SAELENS[arch]
    sae, x = peers["ours"][arch], peers["x"]
    codes = sae.encode(x)
    assert close(got["codes"], codes, f"SAELens loads saekit {arch}: codes")
    assert close(got["recon"], sae.decode(codes), f"SAELens loads saekit {arch}: decode")
    assert close(got["forward"], sae(x)[0], f"SAELens loads saekit {arch}: forward")
    assert max_diff(got["codes3"], sae.encode(x[:96]).reshape(4, 24, -1)) <= TOL  # [batch, seq, d_in] too
    assert (codes > 0).sum(1).float().mean() > 1  # the comparison is not between empty codes
    if arch in ("topk", "gradient_topk"):
        assert torch.equal((got["codes"] > 0).sum(1), (codes > 0).sum(1))


def test_gated_inference_agrees_with_saelens_and_jumprelu_form(peers):
    """SAELens trains Gated SAEs with another loss, but its inference must equal ours (and our JumpReLU form)."""
    _, got = result(peers, "saelens_load/gated")
    sae, x = peers["ours"]["gated"], peers["x"]
    assert close(got["codes"], sae.encode_jumprelu(x), "SAELens gated vs saekit JumpReLU form: codes")
    assert ((got["codes"] > 0) == (sae.encode(x) > 0)).float().mean() == 1.0


def thresholds(sae) -> torch.Tensor:
    """Each latent's inference threshold θ (normalised units = code units)."""
    return sae.threshold() if sae.cfg.architecture == "jumprelu" else sae.threshold.expand(sae.cfg.n_latents)


@pytest.mark.parametrize("arch", THRESHOLDED)
def test_saelens_jumprelu_export_gates_codes_by_saekits_thresholds(peers, arch):
    """jumprelu, batchtopk and matryoshka -> SAELens jumprelu: the exported thresholds are saekit's exactly
    (folding input_scale leaves them alone) and SAELens switches off just the codes saekit switches off."""
    res, got = result(peers, f"saelens_load/{arch}")
    sae, x = peers["ours"][arch], peers["x"]
    assert res["architecture"] == "jumprelu" and res["class"] == "JumpReLUSAE"
    theta = thresholds(sae).detach()
    exported = load_file(str(Path(peers["saelens"][arch]) / saelens.WEIGHTS))["threshold"]
    assert torch.equal(exported, theta)
    assert float(theta.min()) > 0 and (arch == "jumprelu") == (theta.unique().numel() > 1)
    z = sae.pre_activations(x * sae.cfg.input_scale).detach()
    off = (z > 0) & (z < theta * (1 - 1e-4))  # positive, yet below the threshold: off because of θ, not ReLU
    on = z > theta * (1 + 1e-4)
    assert off.float().mean() > 0.01 and on.float().mean() > 0.01  # the thresholds decide something here
    assert bool((got["codes"][off] == 0).all()) and bool((got["codes"][on] > 0).all())
    if arch != "jumprelu":
        cfg = json.loads((Path(peers["saelens"][arch]) / saelens.CFG).read_text())
        assert "inference-time conversion" in cfg["metadata"]["saekit_note"] and "k" not in cfg
        back = saekit.load(peers["saelens"][arch])
        assert back.cfg.architecture == arch and torch.equal(back.threshold, sae.threshold)
        assert torch.equal(back.threshold_updates, sae.threshold_updates) and int(sae.threshold_updates) == 30


@pytest.mark.parametrize("arch", SPARSIFY_EXPORTS)
def test_sparsify_loads_saekit_export(peers, arch):
    res, got = result(peers, f"sparsify_load/{arch}")
    sae, x = peers["ours"][arch], peers["x"]
    assert res["k"] == K
    codes = sae.encode(x)
    assert close(got["codes"], codes, f"sparsify loads saekit {arch}: codes")
    assert close(got["recon"], sae.decode(codes), f"sparsify loads saekit {arch}: decode")


def test_gsae_export_says_it_is_gradient_free(peers):
    cfg = json.loads((peers["root"] / "saelens" / "gradient_topk" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and "beta = 0" in cfg["metadata"]["saekit_note"]
    assert "beta = 0" in json.loads((peers["root"] / "sparsify" / "gradient_topk" / "cfg.json").read_text())["saekit_note"]


@pytest.mark.parametrize("name", [n for n, _, _ in SAELENS_MADE])
def test_saekit_loads_sae_that_saelens_made(peers, name):
    res, want = result(peers, f"saelens_make/{name}")
    sae, x = saekit.load(res["folder"]), peers["x"]
    codes = sae.encode(x)
    assert close(codes, want["codes"], f"saekit loads SAELens-made {name}: codes")
    assert close(sae.decode(codes), want["recon"], f"saekit loads SAELens-made {name}: decode")
    assert (want["codes"] > 0).any()
    if res["architecture"] == "jumprelu":  # SAELens's batchtopk is saved as jumprelu, so it is a jumprelu here
        assert sae.cfg.architecture == "jumprelu"
        z = sae.pre_activations(x).detach()
        off = (z > 0) & (z < sae.threshold().detach() * (1 - 1e-4))
        assert off.float().mean() > 0.01 and bool((want["codes"][off] == 0).all())


def test_saelens_jumprelu_thresholds_at_or_below_zero_are_relu(peers, tmp_path):
    """SAELens-made jumprelu latents 0-3 have θ ≤ 0: ReLU(z)·1[z > θ] = ReLU(z), kept through a saved saekit
    SAE."""
    res, want = result(peers, "saelens_make/jumprelu")
    theta = load_file(str(Path(res["folder"]) / saelens.WEIGHTS))["threshold"]
    assert bool((theta[:4] <= 0).all()) and bool((theta[4:] > 0).all())
    sae = saekit.load(res["folder"])
    sae.save(tmp_path / "sae")  # finite log θ, so saekit's own loader takes it back
    again, x = saekit.load(tmp_path / "sae"), peers["x"]
    z = again.pre_activations(x).detach()
    torch.testing.assert_close(again.encode(x)[:, :4], z[:, :4].clamp_min(0), rtol=0, atol=0)
    assert close(again.encode(x), want["codes"], "saekit-saved SAELens-made jumprelu: codes")


def test_saekit_loads_coder_that_sparsify_made(peers):
    res, want = result(peers, "sparsify_make/topk")
    sae, x = saekit.load(res["folder"]), peers["x"]
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K
    codes = sae.encode(x)
    assert close(codes, want["codes"], "saekit loads sparsify-made topk: codes")
    assert close(sae.decode(codes), want["recon"], "saekit loads sparsify-made topk: decode")


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_round_trip_through_a_peer_format_is_exact(peers, fmt, tmp_path):
    """saekit -> peer -> saekit: same hyperparameters, same codes; the second export is byte-identical."""
    module = saelens if fmt == "saelens" else sparsify
    for arch, folder in peers[fmt].items():
        sae, back, x = peers["ours"][arch], saekit.load(folder), peers["x"]
        assert back.cfg == replace(sae.cfg, input_scale=1.0)  # the architecture (g-SAE included) and every field
        assert close(back.encode(x), sae.encode(x), f"round trip {fmt} {arch}: codes")
        if arch == "gradient_topk":  # the gradient-aware selection survives too
            g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 1e-2
            assert torch.equal(back.encode(x, g) > 0, sae.encode(x, g) > 0)
        again = module.export(back, tmp_path / fmt / arch)
        for f in (module.WEIGHTS, module.CFG):
            assert (again / f).read_bytes() == (Path(folder) / f).read_bytes(), f
