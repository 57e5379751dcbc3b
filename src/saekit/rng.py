"""Independent, named random streams.

Every random draw in saekit comes from a generator seeded by ``stream(name, *seeds)``: a hash of the
stream's *name* and its seeds. Two streams with different names never share a state, whatever their
seeds are. This is what keeps an SAE from starting at the true dictionary of a synthetic problem
when both happen to be seeded 0 (``torch.Generator().manual_seed(0)`` twice gives the same atoms).

The names in use (one per purpose, grep for ``stream("``):
  sae.init                  an SAE's initial dictionary (and through it its tied encoder)
  train.torch               torch's global generator during training (resampling, dropout-like draws)
  synthetic.atoms           the true dictionary of a synthetic problem
  synthetic.train / .eval   the samples of a synthetic problem, per batch index
  synthetic.fixed           a fixed synthetic training set; synthetic.order its epoch permutations
  synthetic.sample          the initialisation sample drawn from a synthetic source
  chance.dictionary         random unit dictionaries for MCC chance levels
"""

from __future__ import annotations

import hashlib

import torch


def stream_seed(name: str, *seeds: int) -> int:
    """A 63-bit seed from a stream name and integers, the same in every process and on every platform."""
    h = hashlib.blake2b(name.encode("utf-8"), digest_size=8)
    for s in seeds:
        h.update(int(s).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def stream(name: str, *seeds: int) -> torch.Generator:
    """A CPU generator for the stream ``name`` with ``seeds`` (draw on CPU, then move the tensor)."""
    return torch.Generator().manual_seed(stream_seed(name, *seeds))
