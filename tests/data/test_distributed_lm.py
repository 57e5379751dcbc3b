"""Training on a language model's activations under torchrun: each rank harvests its share of every
block of contexts, the ranks exchange them, and the run equals the single-process one."""

from __future__ import annotations

from dataclasses import replace

import torch

from saekit import load
from saekit.config import DataConfig, LMConfig, SAEConfig, TrainConfig
from saekit.train.trainer import train

from distributed_run import torchrun_train


def test_two_processes_on_lm_activations_train_what_one_process_trains(tmp_path, model_dir, corpus_dir):
    lm = LMConfig(model=str(model_dir), hookpoint="resid_post.0", corpus=str(corpus_dir), context_length=16,
                  model_batch_contexts=2, shuffle_buffer_tokens=16 * 7, with_grads=True)
    cfg = TrainConfig(sae=SAEConfig(architecture="relu", n_latents=64, l1_coeff=1.0),
                      data=DataConfig(source="lm", lm=lm), steps=8, batch_size=32, lr=1e-3, warmup_steps=1,
                      progress=False, out_dir=str(tmp_path / "ddp"), log_every=4, ckpt_every=4, init_samples=64)
    done = torchrun_train(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(replace(cfg, out_dir=str(tmp_path / "single")))
    ddp = load(tmp_path / "ddp" / "sae")
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
