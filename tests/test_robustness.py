"""Disk full, resume's metrics log, paths saved absolute, file permissions, verify on sound data."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
import torch

from saekit.cli import main
from saekit.config import DataConfig, SAEConfig, SyntheticConfig, TrainConfig, load_train_config
from saekit.train.trainer import train


def _cfg(out, **kw) -> TrainConfig:
    base = dict(sae=SAEConfig(architecture="relu", n_latents=16), steps=10, batch_size=32, progress=False,
                data=DataConfig(synthetic=SyntheticConfig(n_features=8, d=4, k=2)), log_every=1, ckpt_every=5,
                out_dir=str(out))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_one_clear_error_naming_the_folder(small_tmpfs, capsys):
    out = small_tmpfs / "run"
    with pytest.raises(SystemExit) as e:  # 4096 latents x 32: ~1 MiB of weights into 256 KiB
        main(["train", "--sae.architecture", "relu", "--sae.n-latents", "4096", "--data.synthetic.n-features", "64",
              "--data.synthetic.d", "32", "--steps", "2", "--batch-size", "32", "--no-progress", "--out-dir", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("saekit: error:")]
    assert e.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert "no space left" in lines[0] and str(small_tmpfs) in lines[0] and "needed" in lines[0], lines[0]
    assert not list(small_tmpfs.rglob("*.tmp")), "a temporary file was left behind"


def test_resume_drops_only_the_damaged_metrics_line(tmp_path):
    train(_cfg(tmp_path / "r"))
    log = tmp_path / "r" / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines[:3], '{"step": 4, "lo', *lines[3:]]) + "\n")
    train(_cfg(tmp_path / "r", steps=12), resume=True)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_relative_store_path_is_saved_absolute_and_verify_passes_a_sound_store(tmp_path, monkeypatch, capsys):
    from saekit.data.store import StoreWriter

    w = StoreWriter(tmp_path / "store" / "train", {"split": "train"})
    w.write_shard(torch.randn(64, 4), None, 4)
    w.finish()
    monkeypatch.chdir(tmp_path)
    train(_cfg(tmp_path / "r", data=DataConfig(source="store", store="store"), steps=2, ckpt_every=0))
    saved = load_train_config(tmp_path / "r" / "config.yaml")
    assert saved.data.store == str((tmp_path / "store").resolve())
    main(["verify", str(tmp_path / "store")])
    main(["verify", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "ok: store" in out and "ok: SAE" in out and "ok: checkpoint" in out


def test_saved_weights_have_ordinary_permissions(tmp_path):
    from saekit.sae import build_sae

    build_sae(SAEConfig(architecture="relu", d_in=4, n_latents=8)).save(tmp_path / "s")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "s" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_config_yaml_can_be_trained_again(tmp_path):
    """The saved config keeps the given (not the fitted) input_scale, so it passes the unused-settings check."""
    from saekit.settings import check_settings_used

    train(_cfg(tmp_path / "r", steps=2, ckpt_every=0))
    check_settings_used(load_train_config(tmp_path / "r" / "config.yaml"))


WORDS = "the king queen lord lady speaks sleeps dreams of and to a in my thy night day sword crown".split()


@pytest.fixture
def tiny_lm_folder(tmp_path):
    """A tiny Llama with its tokenizer saved in a folder; corpus.txt of 150 short lines (~1500 tokens: 32-wide
    float32 activations of ~190 KiB) and big.txt of 300 (~380 KiB, more than a 256 KiB tmpfs holds)."""
    from tiny_lm import tiny_llama, word_tokenizer

    tok = word_tokenizer(WORDS)
    tiny_llama(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    idx = torch.randint(len(WORDS), (300, 9), generator=torch.Generator().manual_seed(0))
    lines = [" ".join(WORDS[i] for i in row) for row in idx.tolist()]
    (tmp_path / "corpus.txt").write_text("\n".join(lines[:150]))
    (tmp_path / "big.txt").write_text("\n".join(lines))
    return tmp_path


def _one_error(capsys, e) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("saekit: error:")]
    assert e.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _listed_shards_are_whole(store) -> None:
    """Every shard a manifest lists is on disk with the bytes its sha256 records (no half-written shard)."""
    from saekit.io import file_sha256, read_json

    for m in store.rglob("manifest.json"):
        for s in read_json(m)["shards"]:
            assert file_sha256(m.parent / s["file"]) == s["sha256"], (m, s)


def test_cache_on_a_full_disk_is_one_clear_error_and_keeps_only_whole_shards(tiny_lm_folder, small_tmpfs, capsys,
                                                                               monkeypatch, one_thread):
    """Stored shards survive a full disk: the resumable store lists only whole shards, and the same command,
    once space is freed, finishes it."""
    from saekit.data.store import StoreWriter

    w, out = tiny_lm_folder, small_tmpfs / "store"
    argv = ["cache", "--model", str(w / "model"), "--corpus", str(w / "corpus.txt"), "--hookpoint", "resid_post.0",
            "--context-length", "16", "--shard-tokens", "150", "--max-tokens", "0", "--split", "train",
            "--no-progress", "--out", str(out)]
    real_write = StoreWriter.write_shard

    def interrupted(self, *a, **kw):  # a first run killed after two shards leaves a resumable store
        if len(self.manifest["shards"]) == 2:
            raise KeyboardInterrupt
        real_write(self, *a, **kw)

    monkeypatch.setattr(StoreWriter, "write_shard", interrupted)
    with pytest.raises(SystemExit):
        main(argv)
    monkeypatch.setattr(StoreWriter, "write_shard", real_write)
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * 120_000)
    with pytest.raises(SystemExit) as e:
        main(argv)
    line = _one_error(capsys, e)
    assert "no space left" in line and str(out / "train") in line and "needed" in line, line
    assert not list(small_tmpfs.rglob("*.tmp")), "a temporary file was left behind"
    _listed_shards_are_whole(out)
    assert len(json.loads((out / "train" / "manifest.json").read_text())["shards"]) > 2  # it resumed, then filled up
    ballast.unlink()
    main(argv)
    main(["verify", str(out / "train")])
    assert "ok: store" in capsys.readouterr().out


def test_a_fresh_cache_on_a_full_disk_leaves_no_store(tiny_lm_folder, small_tmpfs, capsys, one_thread):
    w, out = tiny_lm_folder, small_tmpfs / "store"
    with pytest.raises(SystemExit) as e:
        main(["cache", "--model", str(w / "model"), "--corpus", str(w / "big.txt"), "--hookpoint", "resid_post.0",
              "--context-length", "16", "--shard-tokens", "150", "--max-tokens", "0", "--no-progress", "--out", str(out)])
    line = _one_error(capsys, e)
    assert "no space left" in line and str(out) in line and "needed" in line, line
    assert not list(small_tmpfs.rglob("*.tmp"))
    _listed_shards_are_whole(small_tmpfs)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_export_on_a_full_disk_is_one_clear_error(tmp_path, small_tmpfs, capsys, fmt):
    from saekit.sae import build_sae

    build_sae(SAEConfig(architecture="topk", d_in=32, n_latents=4096, k=4)).save(tmp_path / "sae")  # ~1 MiB
    out = small_tmpfs / "exported"
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "sae"), "--format", fmt, "--out", str(out)])
    line = _one_error(capsys, e)
    assert "no space left" in line and str(out) in line and "needed" in line, line
    assert not list(small_tmpfs.rglob("*.tmp")) and not list(small_tmpfs.rglob("*.safetensors"))


def test_a_disk_too_full_for_the_lock_file_is_one_clear_error(small_tmpfs, capsys):
    (small_tmpfs / "ballast").write_bytes(b"\0" * 256 * 1024)  # fills it (the tmpfs rounds to pages)
    with pytest.raises(OSError):
        (small_tmpfs / "probe").write_bytes(b"x")
    (small_tmpfs / "probe").unlink(missing_ok=True)
    out = small_tmpfs / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--sae.architecture", "relu", "--steps", "2", "--no-progress", "--out-dir", str(out)])
    line = _one_error(capsys, e)
    assert "no space left" in line and str(out) in line, line
    assert not out.exists()


def test_features_on_a_full_disk_is_one_clear_error(tiny_lm_folder, small_tmpfs, capsys, one_thread):
    """`saekit features` writes features.json and index.html atomically: a full disk is one error line and
    leaves no temporary file."""
    from saekit.config import LMConfig

    w = tiny_lm_folder
    lm = LMConfig(model=str(w / "model"), hookpoint="resid_post.0", corpus=str(w / "corpus.txt"), context_length=16,
                  eval_fraction=0.3, shuffle_buffer_tokens=128)
    train(TrainConfig(sae=SAEConfig(architecture="relu", n_latents=200), data=DataConfig(source="lm", lm=lm), steps=2,
                      batch_size=32, init_samples=64, progress=False, out_dir=str(w / "run")))
    (small_tmpfs / "ballast").write_bytes(b"\0" * (256 - 12) * 1024)  # 12 KiB left: the lock fits, the ~360 KiB report not
    out = small_tmpfs / "features"
    with pytest.raises(SystemExit) as e:
        main(["features", str(w / "run" / "sae"), "--n-contexts", "8", "--n-show", "100", "--n-examples", "3",
              "--out", str(out)])
    line = _one_error(capsys, e)
    assert "no space left" in line and str(out) in line and "needed" in line, line
    assert not list(small_tmpfs.rglob("*.tmp"))
