"""Data-parallel training under ``torchrun``, on PyTorch's own engine (torch.distributed + DDP).

    torchrun --nproc-per-node 4 -m saekit train --config run.yaml

Every process (rank) reads the same stream of global batches (``batch_size`` tokens) and trains on
its own contiguous slice of each (batch_size / world tokens). The SAE is wrapped in
``DistributedDataParallel``, which averages the gradients during the backward pass, so every rank
takes the same optimiser step and the replicas never drift. With per-token-mean losses (ReLU, Gated)
a step therefore equals the single-process step on the whole global batch (to float rounding); TopK's
NMSE is normalised by each slice's own variance, as in other DDP SAE trainers. Hyperparameters
(lr, batch size, schedules in tokens) mean the same at any world size.

What is global: the dead-latent tracker (a latent fired if it fired on any rank), resampling (done
on rank 0, then weights and Adam moments are broadcast), and an LM source's harvesting (each rank
runs the model on its share of a block's contexts; the activations are gathered so every rank holds
the same shuffle buffer). What only rank 0 does: the progress bar, metrics.jsonl, checkpoints and
the saved SAE. Without torchrun (no WORLD_SIZE > 1 in the environment) nothing here does anything.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saekit.errors import SaekitError


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class LossModule(nn.Module):
    """The SAE's training loss as ``forward``, so DistributedDataParallel can wrap it."""

    def __init__(self, sae: nn.Module) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: Tensor, **kwargs: Any) -> Any:
        return self.sae.loss(x, **kwargs)


@dataclass
class Cluster:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_rows(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of n rows (n divisible by world)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def wrap(self, sae: nn.Module) -> nn.Module:
        """The loss module the trainer calls: DDP-wrapped when distributed."""
        module = LossModule(sae)
        if self.world == 1:
            return module
        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def any_fired(self, fired: Tensor) -> Tensor:
        """[n_latents] bool: fired on at least one rank."""
        if self.world == 1:
            return fired
        flags = fired.to(torch.uint8)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags.bool()

    def broadcast_int(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def broadcast_training_state(self, sae: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Make every rank's weights and Adam moments rank 0's (after rank 0 changed them alone)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in sae.parameters():
                dist.broadcast(p.data, src=0)
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, Tensor) and value.numel() > 0:
                        dist.broadcast(value, src=0)

    def check_in_sync(self, sae: nn.Module, step: int) -> None:
        """Refuse to go on if the replicas' weights differ (they must be bit-identical after every step)."""
        if self.world == 1:
            return
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in sae.parameters()]).to(self.device)
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise SaekitError(f"the training processes' weights differ at step {step}")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def from_env(device: str = "cpu") -> Cluster:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT); a single process when there is none. gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Cluster(device=device)
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise SaekitError("device=cuda but no CUDA device is visible to this process")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return Cluster(rank=rank, world=world, device=device)


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(t: Tensor) -> Tensor:
    """Concatenate every rank's [n_r, ...] tensor in rank order (the n_r may differ)."""
    if not active():
        return t
    home = t.device
    if dist.get_backend() == "nccl":  # nccl moves CUDA tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=t.device))
    n_max = int(max(s.item() for s in sizes))
    padded = t.new_zeros((n_max, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(home)


def my_share(items: list[Any]) -> list[Any]:
    """This rank's contiguous share of a list (all items when not distributed)."""
    if not active():
        return items
    rank, world = dist.get_rank(), dist.get_world_size()
    per = -(-len(items) // world)
    return items[rank * per:(rank + 1) * per]
