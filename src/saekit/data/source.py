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


def check_finite(acts: Tensor, where: str) -> None:
    """Refuse NaN/inf activations with one clear line."""
    if not torch.isfinite(acts).all():
        bad = int((~torch.isfinite(acts)).any(dim=-1).sum())
        raise SaekitError(f"{where}: {bad} activation vector(s) contain NaN or inf")
