"""The training loop: source -> batches -> SAE loss -> Adam, with schedules, dead-latent handling,
logging and resumable checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit import distributed
from saekit.config import DataConfig, TrainConfig, dump_yaml, load_train_config
from saekit.settings import resume_differences
from saekit.data.factory import make_source
from saekit.data.source import ActivationSource, check_finite, sample_gradients
from saekit.errors import SaekitError
from saekit.eval import metrics
from saekit.io import atomic_write_json, atomic_write_text, disk_errors, remove_temporaries
from saekit.lock import holds, output_lock
from saekit.rng import stream_seed
from saekit.sae import SparseAutoencoder, architecture_class, build_sae
from saekit.train.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from saekit.train.dead_latents import DeadLatentTracker, FreshAdamRows, auxk_dead_tokens, resample_dead_latents
from saekit.train.initialisation import geometric_median, input_scale
from saekit.train.schedules import lr_factor, sparsity_factor
from saekit.train.tracking import WandbTracker


def recorded_data(data: DataConfig, source: ActivationSource) -> DataConfig:
    """What config.yaml records for a run given ``source``: the source's own description when it has one
    (an ArraySource), ``data`` for saekit's own sources (built from it), else a custom source by name."""
    describe = getattr(source, "data_config", None)
    if callable(describe):
        return describe(data)
    if type(source).__module__.startswith("saekit."):
        return data
    return replace(data, source="custom", description=f"{type(source).__module__}.{type(source).__qualname__}")


def make_optimizer(sae: SparseAutoencoder, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with the architecture's default betas unless the config overrides them."""
    b1, b2 = type(sae).adam_betas
    betas = (b1 if cfg.adam_beta1 is None else cfg.adam_beta1, b2 if cfg.adam_beta2 is None else cfg.adam_beta2)
    params = list(sae.parameters())
    # the fused kernel updates each tensor in one pass with no temporaries: 8x faster than the default on CPU
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=cfg.lr, betas=betas, fused=fused)


def initialise(cfg: TrainConfig, source: ActivationSource) -> SparseAutoencoder:
    """A fresh SAE sized to the data, its input scale and b_dec set from a sample."""
    sample = source.sample(cfg.init_samples)
    check_finite(sample, "initialisation sample")
    sae_cfg = cfg.sae.resolved(source.d_in)
    if cfg.normalize_activations:
        sae_cfg = replace(sae_cfg, input_scale=input_scale(sample))
    # the gradients of the sample's own rows (a store smaller than init_samples is sampled whole)
    grads = sample_gradients(source, sample.shape[0])
    sae_cfg = architecture_class(sae_cfg.architecture).fit_to_sample(sae_cfg, sample, grads)
    sae = build_sae(sae_cfg, seed=cfg.seed)
    scaled = sample * sae_cfg.input_scale
    with torch.no_grad():
        if cfg.b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(scaled))
        elif cfg.b_dec_init == "mean":
            sae.b_dec.copy_(scaled.mean(dim=0))
    return sae


def train_step(sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, *,
               sparsity_scale: float = 1.0, dead_mask: torch.Tensor | None = None, grads: torch.Tensor | None = None,
               grad_clip: float = 0.0, step: int = 0, loss_fn: Callable[..., Any] | None = None,
               fresh_rows: FreshAdamRows | None = None) -> Any:
    """One optimisation step on a batch: loss, backward, parallel-gradient removal, clipping, Adam, renormalisation.

    ``loss_fn`` replaces ``sae.loss`` (the trainer passes the DDP-wrapped loss when distributed);
    ``fresh_rows`` gives resampled latents their own Adam step counts."""
    out = (loss_fn or sae.loss)(x, sparsity_scale=sparsity_scale, dead_mask=dead_mask, grad=grads)
    if not torch.isfinite(out.loss):
        raise SaekitError(f"loss became {out.loss.item()} at step {step}: training diverged; try a lower lr")
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    unit_norm = sae.keeps_unit_norm()
    if unit_norm:
        sae.dictionary.remove_parallel_grad_()
    if grad_clip > 0:
        clip_grad_norm(sae, grad_clip)
    snapshot = fresh_rows.before_step(sae) if fresh_rows is not None else None
    optimizer.step()
    if fresh_rows is not None:
        fresh_rows.after_step(sae, optimizer, snapshot)
    if unit_norm:
        sae.dictionary.normalize_()
    return out


def clip_grad_norm(sae: SparseAutoencoder, max_norm: float) -> float:
    """torch's clip_grad_norm_, without rewriting every gradient when the norm is already within bounds."""
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if total > max_norm:
        torch.nn.utils.clip_grads_with_norm_(sae.parameters(), max_norm, total)
    return float(total)


@dataclass
class StepTiming:
    """Where a run's wall time went, for this invocation of the loop (a resumed run counts afresh):
    reading batches, and training steps split by the kernel path the step took (dense codes or
    sparse). Written to OUT/timing.json, apart from metrics.jsonl, whose rows stay reproducible."""

    steps: int = 0
    dense_steps: int = 0
    data_s: float = 0.0
    step_s: float = 0.0
    dense_step_s: float = 0.0
    wall_s: float = 0.0

    def add_step(self, seconds: float, dense: bool) -> None:
        self.steps += 1
        self.step_s += seconds
        if dense:
            self.dense_steps += 1
            self.dense_step_s += seconds

    def summary(self) -> dict[str, float]:
        out = asdict(self)
        out["dense_share_of_steps"] = self.dense_steps / max(self.steps, 1)
        out["dense_share_of_wall"] = self.dense_step_s / max(self.wall_s, 1e-12)
        return out


class Trainer:
    """One training run in ``cfg.out_dir``; ``run()`` trains to ``cfg.steps`` and saves ``sae/``.

    Under torchrun each process builds its own Trainer; see ``saekit.distributed`` for what is shared."""

    def __init__(self, cfg: TrainConfig, source: ActivationSource | None = None, resume: bool = False,
                 cluster: distributed.Cluster | None = None, resume_hint: str = "pass --resume") -> None:
        cfg.validate()
        if source is not None:
            cfg = replace(cfg, data=recorded_data(cfg.data, source))
        self.cluster = cluster if cluster is not None else distributed.from_env(cfg.device)
        if cfg.batch_size % self.cluster.world:
            raise SaekitError(f"batch_size={cfg.batch_size} must be divisible by the number of processes "
                              f"({self.cluster.world})")
        if cfg.data.store:  # a relative path would work only from this working directory
            cfg = replace(cfg, data=replace(cfg.data, store=str(Path(cfg.data.store).resolve())))
        self.cfg = cfg
        self.device = self.cluster.device if self.cluster.world > 1 else cfg.device
        self.out = Path(cfg.out_dir)
        self.source = source if source is not None else make_source(cfg.data, "train")
        total = getattr(self.source, "total_tokens", None)
        if isinstance(total, int) and total < cfg.batch_size:
            raise SaekitError(f"the training data holds only {total} tokens, fewer than one batch of "
                              f"{cfg.batch_size}; use more data or a smaller batch_size")
        main = self.cluster.is_main
        if main and holds(self.out):  # safe only while no other writer can be at work here
            remove_temporaries(self.out)
        ckpt = latest_checkpoint(self.out)
        self.resumed = bool(resume and ckpt is not None)
        if resume and ckpt is not None:
            self.sae, self.optimizer, state = load_checkpoint(ckpt, lambda s: make_optimizer(s, cfg))
            diffs = resume_differences(self.sae.cfg, self._saved_data(), cfg)
            if diffs:
                raise SaekitError(f"--resume asks for settings that differ from the run in {self.out}: "
                                  f"{'; '.join(diffs)}; resume with --config {self.out / 'config.yaml'} "
                                  "(flags may change steps and schedules) or choose another out_dir")
            self.sae.to(self.device)
            if self.sae.cfg.d_in != self.source.d_in:
                raise SaekitError(f"checkpoint d_in={self.sae.cfg.d_in} does not match the data's {self.source.d_in}")
            self.step, self.position, self.last_resample = state.step, state.position, state.last_resample_step
            self.resampled = state.resampled
            self.tracker = DeadLatentTracker(self.sae.cfg.n_latents, self.device)
            self.tracker.tokens_since_fired.copy_(state.tokens_since_fired)
            self.fresh_rows = FreshAdamRows(self.sae.cfg.n_latents)
            if state.adam_row_ages is not None:
                self.fresh_rows.load_ages(state.adam_row_ages, self.device)
            torch.set_rng_state(state.rng_state)
            if main:
                self._truncate_log(self.step)
        else:
            if not resume and ckpt is not None:
                raise SaekitError(f"{self.out} already holds a run; {resume_hint} to continue it or choose another out_dir")
            torch.manual_seed(stream_seed("train.torch", cfg.seed))
            self.sae = initialise(cfg, self.source).to(self.device)
            self.optimizer = make_optimizer(self.sae, cfg)
            self.step, self.position, self.last_resample, self.resampled = 0, None, None, 0
            self.tracker = DeadLatentTracker(self.sae.cfg.n_latents, self.device)
            self.fresh_rows = FreshAdamRows(self.sae.cfg.n_latents)
            if main:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        if main:  # the data-fitted values stay out, so the file can be given to `saekit train --config` again
            fitted = {"input_scale": cfg.sae.input_scale} if cfg.normalize_activations else {}
            fitted.update({n: getattr(cfg.sae, n) for n in architecture_class(self.sae.cfg.architecture).fitted_fields})
            atomic_write_text(self.out / "config.yaml", dump_yaml(replace(cfg, sae=replace(self.sae.cfg, **fitted))))
        self.cluster.barrier()  # every rank has looked for checkpoints before rank 0 writes any
        self.loss_fn = self.cluster.wrap(self.sae)

    def _saved_data(self):
        """The data section of the run's config.yaml (None when there is none to compare with)."""
        path = self.out / "config.yaml"
        if not path.is_file():
            return None
        data = load_train_config(path).data
        if data.store:
            data = replace(data, store=str(Path(data.store).resolve()))
        return data

    # ------------------------------------------------------------------------------------
    def run(self) -> SparseAutoencoder:
        with disk_errors(self.out):  # a full disk: one line naming the folder, not a traceback
            return self._run()

    def _run(self) -> SparseAutoencoder:
        cfg, sae, main = self.cfg, self.sae, self.cluster.is_main
        arch = architecture_class(sae.cfg.architecture)
        stream = self.source.batches(cfg.batch_size, self.position)
        tracker = WandbTracker(cfg, self.out, self.resumed) if main and cfg.log.wandb_project else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and main),
                   desc=f"train {arch.architecture}", unit="step", dynamic_ncols=True)
        self.timing, started = StepTiming(), time.perf_counter()
        try:
            with open(self.out / "metrics.jsonl", "a") if main else contextlib.nullcontext() as log:
                while self.step < cfg.steps:
                    t0 = time.perf_counter()
                    batch, self.position = next(stream)
                    t1 = time.perf_counter()
                    out, x = self._train_step(batch)
                    if str(self.device).startswith("cuda"):
                        torch.cuda.synchronize()
                    self.timing.data_s += t1 - t0
                    self.timing.add_step(time.perf_counter() - t1, dense=not out.sparse)
                    self.step += 1
                    bar.update(1)
                    if main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        row = self._log_row(x, out)
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        if tracker is not None:
                            tracker.log(row)
                        bar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}", fvu=f"{row['fvu']:.3f}")
                    del out, batch, x  # free this step's codes before the next step allocates its own
                    if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == cfg.steps:
                        self.cluster.check_in_sync(sae, self.step)
                        if main:
                            self.checkpoint()
        finally:
            bar.close()
            if tracker is not None:
                tracker.finish()
        self.timing.wall_s = time.perf_counter() - started
        calibrate = getattr(sae, "calibrate", None)
        if calibrate is not None:  # e.g. BatchTopK's inference threshold from the final weights (every rank alike)
            calibrate(self.source.sample(cfg.init_samples))
        if main:
            sae.save(self.out / "sae")
            atomic_write_json(self.out / "timing.json", self.timing.summary())
        self.cluster.barrier()
        return sae

    def _train_step(self, batch) -> tuple[Any, torch.Tensor]:
        """One step on this rank's slice of the global batch; returns the output and that slice."""
        cfg, sae = self.cfg, self.sae
        rows = self.cluster.shard_rows(batch.acts.shape[0])
        x = batch.acts[rows].to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[1] != sae.cfg.d_in:
            raise SaekitError(f"batch has shape {tuple(batch.acts.shape)}, expected [batch, {sae.cfg.d_in}]")
        check_finite(x, f"batch at step {self.step}")
        grads = batch.grads[rows].to(self.device, torch.float32) if batch.grads is not None else None
        if sae.needs_gradients and grads is None:
            raise SaekitError(f"{sae.cfg.architecture} needs LM gradients: use a store made with "
                              "`saekit cache --grads` or data.lm.with_grads=true")
        lr = cfg.lr * lr_factor(self.step, cfg, self.last_resample)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # AuxK reads it; L1 architectures ignore it
        dead_mask = self.tracker.dead(auxk_dead_tokens(sae.cfg.dead_tokens, cfg.steps * cfg.batch_size, cfg.batch_size))
        out = train_step(sae, self.optimizer, x, sparsity_scale=sparsity_factor(self.step, cfg), dead_mask=dead_mask,
                         grads=grads, grad_clip=cfg.grad_clip, step=self.step, loss_fn=self.loss_fn,
                         fresh_rows=self.fresh_rows)
        self.tracker.update(self.cluster.any_fired(out.fired()), x.shape[0] * self.cluster.world)
        self._maybe_resample(x, out)
        return out, x

    def _maybe_resample(self, x: torch.Tensor, out) -> None:
        cfg, sae = self.cfg, self.sae
        step = self.step + 1
        if not (sae.uses_sparsity_penalty and cfg.resample_every and step % cfg.resample_every == 0):
            return
        if step > cfg.resample_until_fraction * cfg.steps or step >= cfg.steps:
            return
        dead = self.tracker.dead(cfg.resample_every * cfg.batch_size)
        n = 0
        if self.cluster.is_main:  # from rank 0's inputs; then every rank takes rank 0's weights and moments
            n = resample_dead_latents(sae, x * sae.cfg.input_scale, out.x_hat.detach(), dead, self.optimizer)
        n = self.cluster.broadcast_int(n)
        if n:
            self.cluster.broadcast_training_state(sae, self.optimizer)
            self.fresh_rows.reset(dead.nonzero().squeeze(1))  # the rows resample_dead_latents reset
            self.tracker.tokens_since_fired[dead] = 0
            self.last_resample = step
            self.resampled += n

    def _log_row(self, x: torch.Tensor, out) -> dict[str, Any]:
        """Metrics of the step, on rank 0's slice of the batch when distributed."""
        scaled = x * self.sae.cfg.input_scale
        x_hat = out.x_hat.detach()
        row = {"step": self.step, "tokens": self.step * self.cfg.batch_size, "loss": out.loss.item(),
               "lr": self.optimizer.param_groups[0]["lr"], "l0": out.l0(),
               "fvu": metrics.fvu(scaled, x_hat), "gamma": metrics.relative_reconstruction_bias(scaled, x_hat),
               "dead_fraction": self.tracker.dead_fraction(self.cfg.dead_window_tokens)}
        if self.sae.uses_sparsity_penalty and self.cfg.resample_every:
            row["resampled"] = self.resampled  # latents resampled so far in the run
        row.update({k: v.item() for k, v in out.terms.items()})
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}

    def checkpoint(self) -> Path:
        state = TrainerState(self.step, self.position, self.last_resample,
                             self.tracker.tokens_since_fired.cpu(), torch.get_rng_state(), self.resampled,
                             self.fresh_rows.ages)
        return save_checkpoint(self.out, self.sae, self.optimizer, state, keep=self.cfg.keep_checkpoints)

    def _truncate_log(self, step: int) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be written again)."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a kill (or damaged): drop it, keep the valid rows
        atomic_write_text(path, "".join(k + "\n" for k in kept))


def run_lock(out_dir: str | Path) -> contextlib.AbstractContextManager:
    """The output folder's lock, taken by rank 0 alone (ranks are read from torchrun's environment, so
    no collective is involved and the other ranks never wait on it)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return output_lock(out_dir, "saekit train")


def train(cfg: TrainConfig, source: ActivationSource | None = None, resume: bool = False) -> SparseAutoencoder:
    """Train (or resume) a run and return the final SAE (also saved to ``cfg.out_dir/sae``); the run's
    folder is locked against a second writer meanwhile."""
    with run_lock(cfg.out_dir):
        return Trainer(cfg, source, resume).run()
