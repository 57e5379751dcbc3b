"""In-memory activation sources: a torch tensor, a numpy array or memmap, or a .npy / .safetensors file.

``ArraySource(acts, grads=None)`` is an ``ActivationSource`` over rows of a [N, d_in] array, so
training on one's own activations needs no hand-written source class (``saekit.train`` builds one
from whatever it is given). Rows are read a block at a time (a memmap is never loaded whole),
permuted within each block with a seeded generator and the block order is permuted per epoch, so a
resumed run sees exactly the batches an uninterrupted one would.

Files are opened without unpickling: ``.npy`` with ``numpy.load(mmap_mode="r", allow_pickle=False)``,
``.safetensors`` through ``safetensors.safe_open`` (the tensor named ``acts``, or the only one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.data.source import Batch
from saekit.data.store import block_batches
from saekit.data.synthetic import mix_seed
from saekit.errors import SaekitError

BLOCK_ROWS = 1 << 18  # rows converted to float32 at a time


def open_array(path: str | Path, key: str = "acts") -> Any:
    """A [N, d] array from a .npy (memory-mapped) or .safetensors file, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"no activation file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise SaekitError(f"{path} is not a plain numeric .npy array ({e})") from None
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                name = key if key in keys else (keys[0] if len(keys) == 1 else None)
                if name is None:
                    raise SaekitError(f"{path} holds tensors {keys}; name the activations {key!r}")
                return f.get_tensor(name)
        except SaekitError:
            raise
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise SaekitError(f"cannot read {path} as safetensors: {e}") from None
    if suffix in (".pt", ".pth", ".pkl", ".pickle"):
        raise SaekitError(f"{path}: refusing to unpickle; save the activations with numpy.save(...) as .npy "
                          "or safetensors.torch.save_file({'acts': tensor}, ...) and pass that file")
    raise SaekitError(f"{path}: activation files must be .npy or .safetensors")


def _as_2d(a: Any, what: str) -> Any:
    if isinstance(a, (str, Path)):
        a = open_array(a, "grads" if what == "gradients" else "acts")
    if not isinstance(a, (Tensor, np.ndarray)):
        raise SaekitError(f"{what} must be a torch tensor, a numpy array or memmap, or a .npy/.safetensors path; "
                          f"got {type(a).__name__}")
    if a.ndim != 2:
        raise SaekitError(f"{what} must have shape [n_tokens, d_in], got {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise SaekitError(f"{what} is empty (shape {tuple(a.shape)})")
    dtype = a.dtype
    ok = dtype.is_floating_point if isinstance(a, Tensor) else np.issubdtype(dtype, np.floating)
    if not ok:
        raise SaekitError(f"{what} must hold floating-point numbers, got dtype {dtype}")
    return a


def _rows(a: Any, start: int, stop: int) -> Tensor:
    if isinstance(a, Tensor):
        return a[start:stop].detach().to("cpu", torch.float32)
    return torch.from_numpy(np.array(a[start:stop], dtype=np.float32))  # a copy: memmaps are read-only


def file_of(a: Any) -> str:
    """The .npy file behind a memory-mapped array that spans the whole file, or '' (data only in memory)."""
    name = getattr(a, "filename", None) if isinstance(a, np.memmap) else None
    if name and str(name).lower().endswith(".npy") and not isinstance(a.base, np.ndarray):
        return str(Path(name).resolve())
    return ""


class ArraySource:
    """An ActivationSource over the rows ``[start, stop)`` of an activation array (and its gradients)."""

    def __init__(self, acts: Any, grads: Any = None, seed: int = 0, start: int = 0, stop: int | None = None,
                 block_rows: int = BLOCK_ROWS, eval_fraction: float = 0.0, eval_path: str = "") -> None:
        self.path = str(Path(acts).resolve()) if isinstance(acts, (str, Path)) else file_of(acts)
        self.grads_path = str(Path(grads).resolve()) if isinstance(grads, (str, Path)) else file_of(grads)
        self.eval_fraction, self.eval_path = eval_fraction, eval_path
        self.acts = _as_2d(acts, "activations")
        self.grads = _as_2d(grads, "gradients") if grads is not None else None
        if self.grads is not None and tuple(self.grads.shape) != tuple(self.acts.shape):
            raise SaekitError(f"gradients have shape {tuple(self.grads.shape)} but the activations "
                              f"{tuple(self.acts.shape)}")
        n = self.acts.shape[0]
        self.start, self.stop = start, n if stop is None else stop
        if not 0 <= self.start < self.stop <= n:
            raise SaekitError(f"no rows to read: [{self.start}, {self.stop}) of {n}")
        self.d_in = int(self.acts.shape[1])
        self.has_grads = self.grads is not None
        self.seed = seed
        self.block_rows = max(1, block_rows)

    def describe(self) -> str:
        kind = "tensor" if isinstance(self.acts, Tensor) else type(self.acts).__name__
        where = f" from {self.path}" if self.path else " (in memory)"
        grads = ", with gradients" if self.has_grads else ""
        return (f"{kind} of {str(self.acts.dtype).replace('torch.', '')} activations {list(self.acts.shape)}{where}, "
                f"rows [{self.start}, {self.stop}) for training{grads}")

    def data_config(self, data: Any) -> Any:
        """The DataConfig that config.yaml records for a run on this source (data: the run's own)."""
        from dataclasses import replace

        from saekit.config import ArrayConfig

        grads = self.grads_path if self.has_grads else ""
        array = ArrayConfig(path=self.path, grads=grads, eval_path=self.eval_path, eval_fraction=self.eval_fraction,
                            description=self.describe())
        return replace(data, source="array", array=array, store_seed=self.seed)

    @property
    def n_tokens(self) -> int:
        return self.stop - self.start

    def _n_blocks(self) -> int:
        return -(-self.n_tokens // self.block_rows)

    def _load(self, b: int) -> tuple[Tensor, Tensor | None]:
        lo = self.start + b * self.block_rows
        hi = min(lo + self.block_rows, self.stop)
        return _rows(self.acts, lo, hi), (_rows(self.grads, lo, hi) if self.grads is not None else None)

    def _block(self, epoch: int, b: int) -> tuple[Tensor, Tensor | None] | None:
        n = self._n_blocks()
        if b >= n:
            return None
        order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, 11, epoch)))
        return self._load(int(order[b]))

    def batches(self, batch_size: int, position: dict[str, Any] | None = None) -> Iterator[tuple[Batch, dict[str, Any]]]:
        return block_batches(self._block, batch_size, self.seed, position, "activation array")

    def sample(self, n: int) -> Tensor:
        """The first n rows (deterministic, unshuffled)."""
        return _rows(self.acts, self.start, min(self.start + n, self.stop))

    def iter_all(self, max_tokens: int | None = None) -> Iterator[Batch]:
        """One pass over the rows in order (for evaluation)."""
        seen = 0
        for b in range(self._n_blocks()):
            if max_tokens is not None and seen >= max_tokens:
                return
            acts, grads = self._load(b)
            seen += acts.shape[0]
            yield Batch(acts, grads)


def split_rows(n: int, eval_fraction: float) -> int:
    """The first row of the held-out tail: the last ``eval_fraction`` of n rows (none when 0)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise SaekitError(f"eval_fraction must lie in [0, 1), got {eval_fraction}")
    held = int(round(n * eval_fraction))
    if eval_fraction > 0:
        held = max(held, 1)
    if held >= n:
        raise SaekitError(f"{n} rows are too few to hold out eval_fraction={eval_fraction} for evaluation")
    return n - held


def open_array_source(cfg: Any, split: str = "train", seed: int = 0) -> ArraySource:
    """The source for ``split`` of a recorded ``ArrayConfig`` (data.source=array)."""
    if split == "eval" and cfg.eval_path:
        return ArraySource(cfg.eval_path, seed=seed)
    if not cfg.path:
        what = cfg.description or "an in-memory array"
        if split == "eval":
            raise SaekitError(f"this run trained on {what} and kept no held-out rows: pass --data.source array "
                              "--data.array.eval-path FILE.npy (or other --data.* settings) to evaluate")
        raise SaekitError(f"this run trained on {what}, which was not saved: pass it again "
                          "(saekit.train(cfg, source=...)) or give --data.array.path FILE.npy")
    n = _as_2d(open_array(cfg.path), "activations").shape[0]
    grads = cfg.grads or None
    cut = split_rows(n, cfg.eval_fraction)
    if split == "eval":
        if cut == n:
            raise SaekitError(f"data.array.eval_fraction is 0, so no rows of {cfg.path} are held out: "
                              "give --data.array.eval-path or a positive eval fraction")
        return ArraySource(cfg.path, grads, seed=seed, start=cut, eval_fraction=cfg.eval_fraction)
    return ArraySource(cfg.path, grads, seed=seed, stop=cut, eval_fraction=cfg.eval_fraction, eval_path=cfg.eval_path)
