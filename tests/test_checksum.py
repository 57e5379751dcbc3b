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


def _flip(path, where=-1):
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))


def _run_cfg(tmp_path, steps):
    from saekit.config import DataConfig, SyntheticConfig, TrainConfig

    return TrainConfig(sae=SAEConfig(architecture="relu", n_latents=16), steps=steps, batch_size=32, progress=False,
                       data=DataConfig(synthetic=SyntheticConfig(n_features=8, d=4, k=2)), ckpt_every=5,
                       out_dir=str(tmp_path / "run"))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "trainer.safetensors"])
def test_resume_refuses_a_checkpoint_with_a_flipped_byte(tmp_path, name):
    from saekit.errors import SaekitError
    from saekit.train.checkpoint import latest_checkpoint
    from saekit.train.trainer import train

    train(_run_cfg(tmp_path, 5))
    ckpt = latest_checkpoint(tmp_path / "run")
    _flip(ckpt / name)
    with pytest.raises(SaekitError, match="sha256"):
        train(_run_cfg(tmp_path, 10), resume=True)


def test_non_finite_weights_are_refused(tmp_path):
    from saekit import load
    from saekit.errors import SaekitError
    from saekit.sae import build_sae

    sae = build_sae(SAEConfig(architecture="relu", d_in=4, n_latents=8))
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    sae.save(tmp_path / "s")  # the checksum matches: the NaN was saved, not damaged afterwards
    with pytest.raises(SaekitError, match="NaN or inf"):
        load(tmp_path / "s")
