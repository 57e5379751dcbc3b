"""An SAE's weights carry a sha256 in cfg.json that loading verifies."""

import pytest
import torch

from saekit.config import SAEConfig


def test_saved_weights_are_checksummed_and_a_flipped_byte_is_refused(tmp_path):
    from saekit import load
    from saekit.errors import SaekitError
    from saekit.sae import build_sae

    sae = build_sae(SAEConfig(architecture="topk", d_in=8, n_latents=16, k=2))
    sae.save(tmp_path / "s")
    assert torch.equal(load(tmp_path / "s").W_dec, sae.W_dec)
    weights = tmp_path / "s" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(SaekitError, match="sha256"):
        load(tmp_path / "s")
