"""The one interface the trainer reads from: batches of activations (and LM gradients), resumable.

A source yields ``(Batch, position)`` pairs, where ``position`` is a JSON-able dict that, passed
back to ``batches``, continues right after that batch. The trainer stores it in checkpoints, so a
resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from saekit.errors import SaekitError


@dataclass
class Batch:
    acts: Tensor
    """[B, d_in] activations."""
    grads: Tensor | None = None
    """[B, d_in] gradient of the LM's next-token CE w.r.t. the activations, when harvested."""


class ActivationSource(Protocol):
    d_in: int
    has_grads: bool

    def batches(self, batch_size: int, position: dict[str, Any] | None = None) -> Iterator[tuple[Batch, dict[str, Any]]]:
        """Endless stream of batches starting at ``position`` (None: the beginning)."""
        ...

    def sample(self, n: int) -> Tensor:
        """A fixed, deterministic sample of n activations (for b_dec / scale initialisation)."""
        ...


def sample_gradients(source: Any, n: int) -> Tensor | None:
    """The LM gradients of exactly the rows ``source.sample(n)`` returns, in the same order (None without
    gradients). Read in file order, not from ``batches``, so what is fitted on them (the g-SAE's
    grad_scale) is the same whatever the data-order seed: β then means the same thing in every seed."""
    if not source.has_grads:
        return None
    parts, got = [], 0
    for batch in source.iter_all(n):
        parts.append(batch.grads)
        got += batch.grads.shape[0]
        if got >= n:
            break
    if not parts:
        raise SaekitError("the source has no rows to fit the gradient scale on")
    return torch.cat(parts)[:n]


def check_finite(acts: Tensor, where: str) -> None:
    """Refuse NaN/inf activations with one clear line."""
    if not torch.isfinite(acts).all():
        bad = int((~torch.isfinite(acts)).any(dim=-1).sum())
        raise SaekitError(f"{where}: {bad} activation vector(s) contain NaN or inf")
