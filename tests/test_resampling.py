"""The optimiser as the real Trainer drives it: Gated's Adam β1 = 0 (and its override), and what happens to
a resampled latent: LR re-warm-up, zeroed moments, and its own Adam step count (``FreshAdamRows``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saekit.config import DataConfig, SAEConfig, SyntheticConfig, TrainConfig
from saekit.train import trainer as trainer_module
from saekit.train.dead_latents import FreshAdamRows, resample_dead_latents
from saekit.train.trainer import Trainer, make_optimizer, train_step
from saekit.train.command import parse as parse_train_argv

from sae_factories import tiny_sae

SMALL = DataConfig(synthetic=SyntheticConfig(n_features=12, d=8, k=2))


def gated_cfg(tmp_path, **kw) -> TrainConfig:
    base = TrainConfig(sae=SAEConfig(architecture="gated", n_latents=16, l1_coeff=1.0), data=SMALL, steps=3,
                       batch_size=64, lr=1e-3, progress=False, out_dir=str(tmp_path / "run"), log_every=1,
                       ckpt_every=0)
    return replace(base, **kw)


def test_gated_trains_with_adam_beta1_zero_and_the_config_overrides_it(tmp_path):
    trainer = Trainer(gated_cfg(tmp_path))
    assert [g["betas"] for g in trainer.optimizer.param_groups] == [(0.0, 0.999)]
    trainer.run()
    # β1 = 0: the first moment holds the last gradient alone, with no memory of earlier steps
    W = trainer.sae.W_gate
    torch.testing.assert_close(trainer.optimizer.state[W]["exp_avg"], W.grad, rtol=1e-6, atol=0)
    assert W.grad.abs().sum() > 0

    override = Trainer(gated_cfg(tmp_path, adam_beta1=0.5, adam_beta2=0.99, out_dir=str(tmp_path / "o")))
    assert [g["betas"] for g in override.optimizer.param_groups] == [(0.5, 0.99)]
    override.run()
    W = override.sae.W_gate
    assert not torch.allclose(override.optimizer.state[W]["exp_avg"], W.grad, rtol=1e-3)
    # the command line reaches the same field
    assert parse_train_argv(["--adam-beta1", "0.25"]).cfg.adam_beta1 == 0.25
    # other architectures keep Adam's usual β1
    assert make_optimizer(tiny_sae("relu"), TrainConfig()).param_groups[0]["betas"] == (0.9, 0.999)


def test_resampling_in_the_trainer_rewarms_lr_resets_moments_and_restarts_the_step_count(tmp_path, monkeypatch):
    """Latents 0-3 fire in step 1 (gate bias +5), then never again (−1e4): at step 2R they are dead over the
    window of R steps and resampled; step 2R + 1 is their first update since. There the LR is lr/W
    (re-warm-up), their second moment is (1 − β2) g² (reset: step 1 left them one), and their update is a
    fresh Adam's first one, −lr/W · g / (|g| + ε), not 31.6 times that (the tensor's shared step count);
    the live latents take the usual update with the tensor's count 2R + 1."""
    R, W, lr = 4, 4, 1e-3
    cfg = gated_cfg(tmp_path, steps=2 * R + 1, lr=lr, warmup_steps=1, decay_fraction=0.0,
                    sparsity_warmup_fraction=0.0, resample_every=R, resample_until_fraction=1.0,
                    resample_warmup_steps=W)
    calls = []

    def recording(sae, x, x_hat, dead, optimizer):
        n = resample_dead_latents(sae, x, x_hat, dead, optimizer)
        calls.append({"dead": dead.clone(), "W_gate": sae.W_gate.detach().clone(), "n": n})
        return n

    original_step = Trainer._train_step

    def step_then_kill(self, batch):
        out = original_step(self, batch)
        if self.step == 0:  # after step 1
            with torch.no_grad():
                self.sae.b_gate[:4] = -1e4
        return out

    monkeypatch.setattr(trainer_module, "resample_dead_latents", recording)
    monkeypatch.setattr(Trainer, "_train_step", step_then_kill)
    trainer = Trainer(cfg)
    with torch.no_grad():
        trainer.sae.b_gate[:4] = 5.0
    trainer.run()
    last = calls[-1]
    dead = last["dead"]
    assert [c["n"] for c in calls] == [0, int(dead.sum())] and dead[:4].all()  # nothing was dead at step R
    rows = [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([lr] * 2 * R + [lr / W])
    assert rows[-1]["resampled"] == int(dead.sum())

    opt, Wg = trainer.optimizer, trainer.sae.W_gate
    g, state, eps = Wg.grad, opt.state[Wg], opt.param_groups[0]["eps"]
    assert (g[dead].abs() > 0).all()  # the resampled latents fire now and get gradient
    torch.testing.assert_close(state["exp_avg_sq"][dead], (1 - 0.999) * g[dead] ** 2, rtol=1e-5, atol=0)
    step = Wg.detach() - last["W_gate"]
    # (atol: float32 rounding of W_gate itself, 1/1000 of the step)
    torch.testing.assert_close(step[dead], -(lr / W) * g[dead] / (g[dead].abs() + eps), rtol=1e-4, atol=3e-7)
    t = 2 * R + 1
    live = -(lr / W) * state["exp_avg"][~dead] / ((state["exp_avg_sq"][~dead] / (1 - 0.999 ** t)).sqrt() + eps)
    torch.testing.assert_close(step[~dead], live, rtol=1e-4, atol=3e-7)


def test_fresh_rows_follow_a_fresh_adam_until_they_grow_up():
    """Reset two latents of a trained ReLU SAE; from then on their rows must equal a new Adam run on those
    rows alone, step for step (for every latent parameter, β1 = 0.9 as well as 0)."""
    for beta1 in (0.9, 0.0):
        sae = tiny_sae("relu")
        opt = make_optimizer(sae, TrainConfig(lr=1e-2, adam_beta1=beta1))
        fresh = FreshAdamRows(sae.cfg.n_latents)
        gen = torch.Generator().manual_seed(0)
        for _ in range(20):
            train_step(sae, opt, torch.randn(32, 6, generator=gen), fresh_rows=fresh)
        idx = torch.tensor([2, 7])
        for param, dim in sae.latent_parameters():
            for key in ("exp_avg", "exp_avg_sq"):
                opt.state[param][key].index_fill_(dim, idx, 0.0)
        fresh.reset(idx)
        refs = [p.detach()[idx].clone().requires_grad_() for p, _ in sae.latent_parameters()]
        ref_opt = torch.optim.Adam(refs, lr=1e-2, betas=(beta1, 0.999))
        for _ in range(5):
            train_step(sae, opt, torch.randn(32, 6, generator=gen), fresh_rows=fresh)
            for ref, (p, _) in zip(refs, sae.latent_parameters()):
                ref.grad = p.grad[idx].clone()
            ref_opt.step()
            for ref, (p, _) in zip(refs, sae.latent_parameters()):
                torch.testing.assert_close(p.detach()[idx], ref.detach(), rtol=1e-5, atol=1e-7)
        assert fresh.ages.tolist() == [-1, -1, 5, -1, -1, -1, -1, 5, -1, -1]
        fresh.age.fill_(20_000)  # β2^n below the tolerance: the tensor's count is as good
        fresh.groups[0][1] = 20_000
        fresh.after_step(sae, opt, fresh.before_step(sae))
        assert fresh.groups == [] and fresh.rows.numel() == 0 and fresh.ages.eq(-1).all()


def test_a_second_reset_supersedes_the_first_and_ages_round_trip():
    fresh = FreshAdamRows(6)
    fresh.reset(torch.tensor([0, 1, 2]))
    for _ in range(3):
        fresh.before_step(tiny_sae("relu", n_latents=6))
    fresh.reset(torch.tensor([2, 4]))
    assert fresh.ages.tolist() == [3, 3, 0, -1, 0, -1] and fresh.groups == [[2, 3], [2, 0]]
    again = FreshAdamRows(6)
    again.load_ages(fresh.ages)
    assert again.ages.tolist() == fresh.ages.tolist() and again.groups == fresh.groups
    assert torch.equal(again.rows, fresh.rows) and torch.equal(again.age, fresh.age)


def test_resuming_while_resampled_rows_are_young_equals_the_uninterrupted_run(tmp_path):
    R = 4
    cfg = gated_cfg(tmp_path, steps=R + 3, warmup_steps=1, resample_every=R, resample_until_fraction=1.0,
                    resample_warmup_steps=2, ckpt_every=1, keep_checkpoints=10)
    trainer = Trainer(cfg)
    with torch.no_grad():
        trainer.sae.b_gate[:4] = -1e4  # dead from the start: resampled at step R
    full = trainer.run()
    run = Path(cfg.out_dir)
    from saekit.train.checkpoint import load_checkpoint

    _, _, state = load_checkpoint(run / "checkpoints" / f"step-{R + 1:08d}", lambda s: make_optimizer(s, cfg))
    assert state.adam_row_ages[:4].tolist() == [1, 1, 1, 1]  # one update since the reset
    (run / "checkpoints" / "latest").write_text(f"step-{R + 1:08d}\n")
    resumed = Trainer(cfg, resume=True).run()
    for name, p in full.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
