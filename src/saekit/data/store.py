"""The on-disk activation store: safetensors shards plus a manifest.json, and a reader source.

Layout: ``manifest.json`` and ``shard-00000.safetensors`` ... Each shard holds ``acts`` [n, d]
(float32 or float16) and, with gradients, ``grads`` [n, d] (float32, or float16 when asked for:
half the disk and reading, at a measured relative error, see benchmarks/README.md; LM-loss
gradients are small, so values below float16's normal range lose precision).

Why it is crash-safe: a shard is written atomically first, then the manifest is rewritten
atomically to list it with its sha256. A reader uses only shards the manifest lists and whose
bytes match the checksum, and refuses a store whose manifest does not say ``complete``. A cache
run that is interrupted resumes from the manifest (shards are defined by whole contexts, so the
resumed store is byte-identical to an uninterrupted one).

The reader shuffles with bounded memory: per epoch a seeded shard order, then ``shards_in_memory``
shards at a time are loaded and their rows permuted (``block_batches``, shared with ``LMSource``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from saekit.data.source import Batch, check_finite
from saekit.data.synthetic import mix_seed
from saekit.errors import SaekitError
from saekit.io import atomic_write_bytes, atomic_write_json, read_json

FORMAT = "saekit-activation-store"
VERSION = 1
Block = tuple[Tensor, Tensor | None]


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


class StoreWriter:
    """Appends shards to a store folder; reopening an unfinished store with the same ``meta`` resumes it."""

    def __init__(self, path: str | Path, meta: dict[str, Any], fp16: bool = False, overwrite: bool = False,
                 grads_fp16: bool = False) -> None:
        self.path = Path(path)
        self.fp16, self.grads_fp16 = fp16, grads_fp16
        grads_dtype = "float16" if grads_fp16 else "float32"
        manifest_path = self.path / "manifest.json"
        for leftover in self.path.glob(".shard-*.tmp"):  # a killed run's half-written temporary file
            leftover.unlink(missing_ok=True)
        if manifest_path.is_file() and not overwrite and _nothing_stored(manifest_path):
            overwrite = True  # a failed run's empty store must not block the corrected command
        if manifest_path.is_file() and not overwrite:
            old = read_json(manifest_path)
            if not isinstance(old, dict) or old.get("format") != FORMAT:
                raise SaekitError(f"{manifest_path} is not a saekit activation store manifest; "
                                  "choose another output folder or pass --overwrite")
            if old.get("shards"):
                check_manifest(old, manifest_path)
            if old.get("meta") != meta or old.get("fp16") != fp16 or grads_dtype_of(old) != grads_dtype:
                raise SaekitError(f"{self.path} holds a store written with other settings; "
                                  "choose another output folder or pass --overwrite")
            self.manifest = old
        else:
            if self.path.exists() and any(self.path.iterdir()) and not overwrite and not manifest_path.is_file():
                raise SaekitError(f"output folder {self.path} exists and is not an activation store")
            if overwrite and manifest_path.is_file():
                manifest_path.unlink()
                for f in self.path.glob("shard-*.safetensors"):
                    f.unlink()
            self.manifest = {"format": FORMAT, "version": VERSION, "meta": meta, "fp16": fp16,
                             "dtype": "float16" if fp16 else "float32", "d_in": None, "has_grads": None,
                             "shards": [], "total_tokens": 0, "total_contexts": 0, "complete": False}
            if grads_fp16:  # absent in older stores: float32
                self.manifest["grads_dtype"] = grads_dtype
            atomic_write_json(manifest_path, self.manifest)

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def total_tokens(self) -> int:
        return int(self.manifest["total_tokens"])

    @property
    def total_contexts(self) -> int:
        return int(self.manifest["total_contexts"])

    def write_shard(self, acts: Tensor, grads: Tensor | None, n_contexts: int) -> None:
        """Write the next shard (atomically), then list it in the manifest (atomically)."""
        m = self.manifest
        if m["d_in"] is None:
            m["d_in"], m["has_grads"] = int(acts.shape[1]), grads is not None
        if acts.shape[1] != m["d_in"] or (grads is not None) != m["has_grads"]:
            raise SaekitError(f"shard does not match the store: d_in {acts.shape[1]} vs {m['d_in']}")
        if self.fp16 and acts.numel() and float(acts.abs().max()) > torch.finfo(torch.float16).max:
            raise SaekitError("activations exceed the float16 range; cache without --fp16")
        tensors = {"acts": acts.to(torch.float16 if self.fp16 else torch.float32).contiguous()}
        if grads is not None:
            if self.grads_fp16 and grads.numel() and float(grads.abs().max()) > torch.finfo(torch.float16).max:
                raise SaekitError("gradients exceed the float16 range; cache without --grads-fp16")
            tensors["grads"] = grads.to(torch.float16 if self.grads_fp16 else torch.float32).contiguous()
        data = st_save(tensors)
        name = _shard_name(len(m["shards"]))
        atomic_write_bytes(self.path / name, data)
        m["shards"].append({"file": name, "tokens": int(acts.shape[0]), "contexts": int(n_contexts),
                            "sha256": hashlib.sha256(data).hexdigest()})
        m["total_tokens"] += int(acts.shape[0])
        m["total_contexts"] += int(n_contexts)
        atomic_write_json(self.path / "manifest.json", m)

    def finish(self) -> None:
        if not self.manifest["shards"]:
            raise SaekitError(f"no activations were harvested into {self.path} (empty corpus split?)")
        self.manifest["complete"] = True
        atomic_write_json(self.path / "manifest.json", self.manifest)


def grads_dtype_of(m: dict[str, Any]) -> str:
    """How a store keeps its gradients (stores written before the option: float32)."""
    return m.get("grads_dtype", "float32")


def _nothing_stored(manifest_path: Path) -> bool:
    try:
        m = read_json(manifest_path)
    except SaekitError:
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT and not m.get("complete") and m.get("shards") == []


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise SaekitError(f"{path} is not an activation store (no manifest.json); write one with `saekit cache`")
    m = read_json(path / "manifest.json")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise SaekitError(f"{path}/manifest.json is not a saekit activation store manifest")
    if m.get("complete") is not True:
        if m.get("complete") is not False:
            raise SaekitError(f"{path}/manifest.json: 'complete' should be true or false, got {m.get('complete')!r}")
        raise SaekitError(f"activation store {path} is incomplete (interrupted `saekit cache`?); rerun it to finish")
    check_manifest(m, path / "manifest.json")
    return m


_SHA = re.compile(r"^[0-9a-f]{64}$")
_SHARD = re.compile(r"^shard-\d{5,}\.safetensors$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(m: dict[str, Any], where: Path) -> None:
    """The schema of a complete store's manifest: every field present and typed, totals consistent.
    A damaged or edited manifest is one SaekitError naming the field."""
    def bad(what: str) -> SaekitError:
        return SaekitError(f"{where}: {what} (the manifest is damaged or was edited; rerun `saekit cache --overwrite`)")

    if not _is_int(m.get("version")) or m["version"] > VERSION:
        raise bad(f"unsupported version {m.get('version')!r}")
    if not isinstance(m.get("meta"), dict):
        raise bad("'meta' should be a mapping")
    if not _is_int(m.get("d_in")) or m["d_in"] <= 0:
        raise bad(f"'d_in' should be a positive integer, got {m.get('d_in')!r}")
    for name in ("has_grads", "fp16"):
        if not isinstance(m.get(name), bool):
            raise bad(f"{name!r} should be true or false, got {m.get(name)!r}")
    if m.get("dtype") != ("float16" if m["fp16"] else "float32"):
        raise bad(f"'dtype' should be {'float16' if m['fp16'] else 'float32'}, got {m.get('dtype')!r}")
    if grads_dtype_of(m) not in ("float32", "float16"):
        raise bad(f"'grads_dtype' should be float32 or float16, got {m.get('grads_dtype')!r}")
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        raise bad(f"'shards' should be a non-empty list, got {shards!r}")
    seen = set()
    for i, s in enumerate(shards):
        if not isinstance(s, dict):
            raise bad(f"shard entry {i} should be a mapping")
        missing = [k for k in ("file", "tokens", "contexts", "sha256") if k not in s]
        if missing:
            raise bad(f"shard entry {i} has no {', '.join(missing)}")
        if not isinstance(s["file"], str) or not _SHARD.match(s["file"]) or s["file"] in seen:
            raise bad(f"shard entry {i}: bad or repeated file name {s['file']!r}")
        seen.add(s["file"])
        for k in ("tokens", "contexts"):
            if not _is_int(s[k]) or s[k] < 0:
                raise bad(f"shard entry {i}: {k!r} should be an integer >= 0, got {s[k]!r}")
        if not isinstance(s["sha256"], str) or not _SHA.match(s["sha256"]):
            raise bad(f"shard entry {i}: 'sha256' should be 64 hex digits, got {s['sha256']!r}")
    for total, key in (("total_tokens", "tokens"), ("total_contexts", "contexts")):
        if not _is_int(m.get(total)) or m[total] != sum(s[key] for s in shards):
            raise bad(f"{total!r} is {m.get(total)!r} but the shards hold {sum(s[key] for s in shards)}")


def check_shard_sizes(path: Path, m: dict[str, Any]) -> None:
    """Cheap check at start: every shard is there and large enough for what the manifest says it holds."""
    width = 2 if m["fp16"] else 4
    grads_width = (2 if grads_dtype_of(m) == "float16" else 4) if m["has_grads"] else 0
    for s in m["shards"]:
        f = path / s["file"]
        need = s["tokens"] * m["d_in"] * (width + grads_width)
        try:
            size = f.stat().st_size
        except OSError:
            raise SaekitError(f"activation store {path}: shard {s['file']} is missing") from None
        if size < need:
            raise SaekitError(f"activation store {path}: shard {s['file']} has {size} bytes, too few for "
                              f"{s['tokens']} tokens x d_in={m['d_in']} (truncated?)")


def block_batches(load_block: Callable[[int, int], Block | None], batch_size: int, seed: int,
                  position: dict[str, Any] | None, where: str) -> Iterator[tuple[Batch, dict[str, Any]]]:
    """Endless batches from blocks of rows, each permuted with a seed of (seed, epoch, block).

    ``load_block(epoch, b)`` returns block b of that epoch, or None after the epoch's last block.
    A position {"epoch", "block", "row"} names the next row, so resuming is exact and cheap.
    """
    if batch_size <= 0:
        raise SaekitError(f"batch_size must be positive, got {batch_size}")
    pos = position or {}
    epoch, b, row = int(pos.get("epoch", 0)), int(pos.get("block", 0)), int(pos.get("row", 0))
    parts: list[Block] = []
    have = 0
    first_block, rows_in_epoch = b, 0
    while True:
        block = load_block(epoch, b)
        if block is None:
            if first_block == 0 and rows_in_epoch == 0:
                raise SaekitError(f"{where}: no activations to train on")
            if first_block == 0 and rows_in_epoch < batch_size:  # would cycle the data within every batch
                raise SaekitError(f"{where} yields only {rows_in_epoch} tokens, fewer than one batch of {batch_size}; "
                                  "use more data or a smaller batch_size")
            epoch, b, row, first_block, rows_in_epoch = epoch + 1, 0, 0, 0, 0
            continue
        acts, grads = block
        n = acts.shape[0]
        rows_in_epoch += n
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, b)))
        acts, grads = acts[perm], (grads[perm] if grads is not None else None)
        while row < n:
            take = min(batch_size - have, n - row)
            parts.append((acts[row:row + take], grads[row:row + take] if grads is not None else None))
            have += take
            row += take
            if have == batch_size:
                nxt = {"epoch": epoch, "block": b, "row": row} if row < n else {"epoch": epoch, "block": b + 1, "row": 0}
                g = [p[1] for p in parts]
                out = Batch(torch.cat([p[0] for p in parts]), torch.cat(g) if g[0] is not None else None)  # type: ignore[arg-type]
                parts, have = [], 0
                yield out, nxt
        b, row = b + 1, 0


class StoreSource:
    """An ActivationSource over a store folder, shuffling across shards with bounded memory."""

    def __init__(self, path: str | Path, seed: int = 0, shards_in_memory: int = 4,
                 expected_d_in: int | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        check_shard_sizes(self.path, self.manifest)
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        self.d_in = int(self.manifest["d_in"])
        self.has_grads = bool(self.manifest["has_grads"])
        self.seed = seed
        self.shards_in_memory = max(1, shards_in_memory)
        if expected_d_in not in (None, 0, self.d_in):
            raise SaekitError(f"activation store {self.path} has d_in={self.d_in}, but the SAE expects {expected_d_in}")

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest["meta"]

    @property
    def total_tokens(self) -> int:
        return int(self.manifest["total_tokens"])

    def load_shard(self, i: int) -> Block:
        """Shard i as float32 (acts, grads), after checking its sha256."""
        info = self.shards[i]
        f = self.path / info["file"]
        try:
            data = f.read_bytes()
        except OSError as e:
            raise SaekitError(f"cannot read shard {f}: {e.strerror}") from None
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise SaekitError(f"shard {f} is corrupted (sha256 mismatch); rerun `saekit cache --overwrite`")
        t = st_load(data)
        acts = t["acts"].float()
        if acts.shape != (info["tokens"], self.d_in):
            raise SaekitError(f"shard {f} has shape {tuple(acts.shape)}, the manifest says ({info['tokens']}, {self.d_in})")
        check_finite(acts, str(f))
        grads = t.get("grads")
        if self.has_grads and (grads is None or grads.shape != acts.shape):
            raise SaekitError(f"shard {f} has no gradients of shape {tuple(acts.shape)}, the manifest says it has")
        return acts, (grads.float() if grads is not None else None)

    def _block(self, epoch: int, b: int) -> Block | None:
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(mix_seed(self.seed, 7, epoch)))
        chosen = order[b * self.shards_in_memory:(b + 1) * self.shards_in_memory].tolist()
        if not chosen:
            return None
        loaded = [self.load_shard(i) for i in chosen]
        grads = torch.cat([g for _, g in loaded]) if self.has_grads else None  # type: ignore[misc]
        return torch.cat([a for a, _ in loaded]), grads

    def batches(self, batch_size: int, position: dict[str, Any] | None = None) -> Iterator[tuple[Batch, dict[str, Any]]]:
        return block_batches(self._block, batch_size, self.seed, position, f"activation store {self.path}")

    def sample(self, n: int) -> Tensor:
        """The first n rows in shard order (deterministic, unshuffled)."""
        return torch.cat([b.acts for b in self.iter_all(n)])[:n]

    def iter_all(self, max_tokens: int | None = None) -> Iterator[Batch]:
        """One pass over the store in order, shard by shard (for evaluation)."""
        seen = 0
        for i in range(len(self.shards)):
            if max_tokens is not None and seen >= max_tokens:
                return
            acts, grads = self.load_shard(i)
            seen += acts.shape[0]
            yield Batch(acts, grads)


def store_split_path(path: str | Path, split: str) -> Path:
    """A store for ``split``: ``path/<split>/`` as written by `saekit cache`, or ``path`` itself if its
    manifest says it holds that split."""
    path = Path(path)
    if (path / split / "manifest.json").is_file():
        return path / split
    if (path / "manifest.json").is_file():
        m = read_json(path / "manifest.json")
        if (m.get("meta") or {}).get("split", split) == split:
            return path
    raise SaekitError(f"no {split} activation store under {path}; write it with `saekit cache --out {path}`")


def open_store_source(path: str | Path, split: str = "train", seed: int = 0, shards_in_memory: int = 4,
                      expected_d_in: int | None = None) -> StoreSource:
    """The trainer's entry point: the StoreSource for ``split`` of the store at ``path``."""
    return StoreSource(store_split_path(path, split), seed=seed, shards_in_memory=shards_in_memory,
                       expected_d_in=expected_d_in)
