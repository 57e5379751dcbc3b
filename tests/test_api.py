"""saekit.train on one's own arrays: tensors, numpy arrays, memmaps and files; what the run records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import saekit
from saekit.config import DataConfig, SAEConfig, TrainConfig, load_train_config
from saekit.data.arrays import ArraySource
from saekit.data.factory import make_source
from saekit.errors import SaekitError
from saekit.eval.command import main as eval_main

SMALL = dict(architecture="relu", n_latents=24, steps=6, batch_size=64, progress=False, init_samples=256,
             log_every=2)


def acts(n=800, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3


def test_tensor_run_records_array_and_evaluates(tmp_path):
    x = acts()
    sae = saekit.train(x, out_dir=str(tmp_path / "r"), **SMALL)
    cfg = load_train_config(tmp_path / "r" / "config.yaml")
    assert cfg.data.source == "array" and cfg.data.array.path == ""
    assert "[800, 8]" in cfg.data.array.description
    held = make_source(cfg.data, "eval")
    assert torch.equal(next(held.iter_all()).acts, x[760:])  # the last 5% of rows
    eval_main([str(tmp_path / "r" / "sae"), "--out", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text())["tokens"] == 40
    f = sae.encode(x[:3])
    assert not f.requires_grad and not sae.decode(f).requires_grad
    assert sae.encode(x[:3].requires_grad_()).requires_grad  # gradients on request


def test_second_call_speaks_python_and_resume_continues(tmp_path):
    x = acts()
    saekit.train(x, out_dir=str(tmp_path / "r"), **SMALL)
    with pytest.raises(SaekitError, match=r"resume=True") as e:
        saekit.train(x, out_dir=str(tmp_path / "r"), **SMALL)
    assert "--resume" not in str(e.value)
    more = dict(SMALL, steps=10)
    saekit.train(x, out_dir=str(tmp_path / "r"), resume=True, **more)
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10


def test_config_first_and_train_config(tmp_path):
    cfg = TrainConfig(sae=SAEConfig(architecture="topk", k=3, n_latents=16), steps=4, batch_size=32,
                      progress=False, out_dir=str(tmp_path / "r"), init_samples=128)
    sae = saekit.train(cfg, source=acts())
    assert sae.cfg.k == 3 and sae.cfg.architecture == "topk"


def test_npy_memmap_is_recorded_by_path_and_cli_trains_on_it(tmp_path):
    x = acts().numpy()
    np.save(tmp_path / "a.npy", x)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    saekit.train(mm, out_dir=str(tmp_path / "r"), **SMALL)
    cfg = load_train_config(tmp_path / "r" / "config.yaml")
    assert cfg.data.array.path == str((tmp_path / "a.npy").resolve()) and cfg.data.array.eval_path == ""
    assert not (tmp_path / "r" / "heldout.safetensors").exists()
    eval_main([str(tmp_path / "r" / "sae"), "--out", str(tmp_path / "e.json")])
    from saekit.train.command import main as train_main

    train_main(["--data.source", "array", "--data.array.path", str(tmp_path / "a.npy"), "--steps", "3",
                "--batch-size", "64", "--sae.architecture", "relu", "--sae.n-latents", "16", "--out-dir",
                str(tmp_path / "cli"), "--no-progress", "--init-samples", "128"])
    assert (tmp_path / "cli" / "sae" / "cfg.json").is_file()


def test_arrays_with_gradients_and_safetensors(tmp_path):
    x, g = acts(), acts(seed=1) * 1e-3
    save_file({"acts": x, "grads": g}, str(tmp_path / "a.safetensors"))
    src = ArraySource(str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors"))
    b, _ = next(src.batches(16))
    assert src.has_grads and b.grads.shape == (16, 8)
    sae = saekit.train(x, grads=g, out_dir=str(tmp_path / "r"),
                       **dict(SMALL, architecture="gradient_topk", k=2, beta=1.0))
    assert sae.cfg.grad_scale != 1.0  # fitted from the gradients it was given


def test_batches_cover_every_row_once_per_epoch_and_resume_exactly():
    x = acts(n=100)
    src = ArraySource(x, seed=3, block_rows=30)
    stream = src.batches(25)
    got = [next(stream) for _ in range(4)]
    rows = torch.cat([b.acts for b, _ in got])
    assert torch.equal(rows.sort(dim=0).values, x.sort(dim=0).values)
    again = src.batches(25, got[1][1])
    assert torch.equal(next(again)[0].acts, got[2][0].acts)


def test_bad_arrays_are_one_line_errors(tmp_path):
    with pytest.raises(SaekitError, match="shape"):
        saekit.train(torch.randn(10), out_dir=str(tmp_path / "a"), **SMALL)
    with pytest.raises(SaekitError, match="floating"):
        saekit.train(torch.ones(10, 3, dtype=torch.long), out_dir=str(tmp_path / "b"), **SMALL)
    torch.save(torch.randn(4, 4), tmp_path / "x.pt")
    with pytest.raises(SaekitError, match="unpickle"):
        saekit.train(str(tmp_path / "x.pt"), out_dir=str(tmp_path / "c"), **SMALL)
    with pytest.raises(SaekitError, match="unknown setting"):
        saekit.train(acts(), out_dir=str(tmp_path / "d"), stepz=3)
    with pytest.raises(SaekitError, match="custom Python source"):
        make_source(DataConfig(source="custom", description="Mine"), "eval")


def test_hand_written_source_is_recorded_as_custom(tmp_path):
    from saekit.data.source import Batch

    class Wrapped:
        d_in, has_grads = 8, False

        def sample(self, n):
            return acts(n)

        def batches(self, batch_size, position=None):
            while True:
                yield Batch(acts(batch_size)), {}

    saekit.train(Wrapped(), out_dir=str(tmp_path / "r"), **SMALL)
    cfg = load_train_config(Path(tmp_path / "r" / "config.yaml"))
    assert cfg.data.source == "custom" and "Wrapped" in cfg.data.description


@pytest.mark.parametrize("extra, message", [
    (dict(k=5), r"^saekit.train: sae.k is not used by a relu SAE \(it belongs to .*topk"),
    (dict(architecture="topk", l1_coeff=3.0), r"sae.l1_coeff is not used by a topk SAE"),
    (dict(input_scale=7.0), r"sae.input_scale is estimated from the data .*; pass normalize_activations=False "
                            r"to fix it yourself$"),
])
def test_a_setting_the_architecture_ignores_is_refused_before_anything_is_written(tmp_path, extra, message):
    with pytest.raises(SaekitError, match=message):
        saekit.train(acts(), out_dir=str(tmp_path / "r"), **dict(SMALL, **extra))
    assert not (tmp_path / "r").exists()


def test_data_settings_are_checked_only_when_the_data_comes_from_cfg(tmp_path):
    """With no source, cfg.data is what trains: a store path without source=store is refused. With an
    array given, cfg.data's source is not used, but data.store_seed still shuffles the array: accepted."""
    cfg = TrainConfig(sae=SAEConfig(architecture="relu", n_latents=8), data=DataConfig(store="somewhere"),
                      steps=2, batch_size=32, progress=False, out_dir=str(tmp_path / "a"))
    with pytest.raises(SaekitError, match="data.store is set but data.source is 'synthetic'; pass "
                                          "data.source='store' to train on it$"):
        saekit.train(cfg)
    saekit.train(acts(), out_dir=str(tmp_path / "b"), data={"store_seed": 3}, **SMALL)
    assert (tmp_path / "b" / "sae" / "cfg.json").is_file()
