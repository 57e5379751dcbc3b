"""Data-parallel training under torchrun: the same run as one process, replicas kept in sync."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from saekit import load
from saekit.config import DataConfig, SAEConfig, SyntheticConfig, TrainConfig
from saekit.distributed import Cluster
from saekit.errors import SaekitError
from saekit.train.trainer import Trainer, train

from distributed_run import torchrun_train

DATA = DataConfig(synthetic=SyntheticConfig(n_features=24, d=12, k=3))


def _cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = TrainConfig(sae=SAEConfig(architecture="relu", n_latents=32, l1_coeff=1.0), data=DATA, steps=30,
                       batch_size=64, lr=1e-3, progress=False, out_dir=str(tmp_path / name), log_every=5,
                       ckpt_every=10, resample_every=0)
    return replace(base, **kw)


def test_two_processes_train_what_one_process_trains(tmp_path):
    """Each rank takes half of every global batch and DDP averages the gradients: with a per-token
    mean loss the result is the single-process run on the whole batch, to float rounding."""
    cfg = _cfg(tmp_path, "ddp")
    done = torchrun_train(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(2 processes)" in done.stdout
    single = train(replace(cfg, out_dir=str(tmp_path / "single")))
    ddp = load(tmp_path / "ddp" / "sae")
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30]  # rank 0 alone logs


@pytest.mark.parametrize("resume_processes", [2, 1])
def test_a_distributed_run_resumes(tmp_path, resume_processes):
    """15 steps with 2 processes, then --resume to 30 with 2 or with 1: the weights of a straight 30-step
    single-process run (schedules flat, so that stopping early changes nothing before step 15). Data
    positions are global, so the number of processes may change between the two."""
    flat = {"warmup_steps": 1, "decay_fraction": 0.0, "sparsity_warmup_fraction": 0.0, "ckpt_every": 5}
    first = torchrun_train(_cfg(tmp_path, "ddp", steps=15, **flat), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # another init seed: only a run that really continues from the checkpoint can match the straight run
    second = torchrun_train(_cfg(tmp_path, "ddp", steps=30, seed=1, **flat), tmp_path, nproc=resume_processes,
                            extra=("--resume",))
    assert second.returncode == 0, second.stderr[-3000:]
    single = train(_cfg(tmp_path, "single", steps=30, **flat))
    ddp = load(tmp_path / "ddp" / "sae")
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch", ["gated", "topk"])
def test_replicas_stay_identical_through_resampling_and_dead_latents(tmp_path, arch):
    """Rank 0 resamples from its own inputs and broadcasts; dead latents are counted over all ranks.
    The trainer compares the replicas' weights at every checkpoint and fails if they differ."""
    if arch == "gated":  # a strong penalty at a high lr kills latents, so resampling has work to do
        kw = {"sae": SAEConfig(architecture="gated", n_latents=32, l1_coeff=50.0), "steps": 80, "lr": 3e-2,
              "warmup_steps": 1, "sparsity_warmup_fraction": 0.0, "resample_every": 20, "resample_until_fraction": 0.9}
    else:
        # dead after one global batch without firing; the log's dead fraction counts the same set
        kw = {"sae": SAEConfig(architecture="topk", n_latents=32, k=3, dead_tokens=64), "steps": 20,
              "dead_window_tokens": 64, "log_every": 1}
    cfg = _cfg(tmp_path, arch, ckpt_every=5, **kw)
    done = torchrun_train(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load(tmp_path / arch / "sae").cfg.architecture == arch
    rows = [json.loads(line) for line in (tmp_path / arch / "metrics.jsonl").read_text().splitlines()]
    if arch == "gated":
        assert rows[-1]["resampled"] > 0
    else:
        # AuxK at step s uses the dead set counted (over both ranks' tokens) after step s − 1: it is on
        # exactly when that set is not empty, and a positive loss then
        assert rows[0]["auxk"] == 0.0
        assert any(r["dead_fraction"] > 0 for r in rows)
        for before, row in zip(rows, rows[1:]):
            assert (row["auxk"] > 0) == (before["dead_fraction"] > 0), row["step"]


def test_batch_must_split_evenly_over_processes(tmp_path):
    with pytest.raises(SaekitError, match="divisible"):
        Trainer(_cfg(tmp_path, "odd", batch_size=63), cluster=Cluster(rank=0, world=2))
