"""Atomic file writes: temporary file in the same folder, fsync, rename. A reader never sees half a file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.errors import SaekitError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask_mode() -> int:
    """The mode an ordinary open() would give a new file (mkstemp alone makes it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def disk_full_error(folder: Path, needed: int | None) -> SaekitError:
    """One line for ENOSPC: which folder, how much was needed, how much is free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    need = f"about {_size(needed)} was needed" if needed else "more space was needed"
    have = f", {_size(free)} is free" if free is not None else ""
    return SaekitError(f"no space left on the device holding {folder}: {need}{have}; free some space or write elsewhere")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@contextmanager
def disk_errors(folder: str | os.PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) inside the block into one clear SaekitError."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(Path(folder), needed) from None
        raise


@contextmanager
def _atomic_target(path: Path, needed: int | None = None) -> Iterator[str]:
    """A temporary file beside ``path`` to write into; on success it is fsynced and renamed over ``path``."""
    with disk_errors(path.parent, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, _umask_mode())
        os.close(fd)
        try:
            yield tmp
            os.chmod(tmp, _umask_mode())  # safetensors' writer recreates the file 0600
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with _atomic_target(Path(path), len(data)) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (tensors are made contiguous; never pickled)."""
    needed = sum(v.numel() * v.element_size() for v in tensors.values())
    with _atomic_target(Path(path), needed) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as e:  # the Rust writer reports a full disk as its own error type
            if "os error 28" in str(e) or "No space left" in str(e):
                raise OSError(errno.ENOSPC, "No space left on device") from None
            raise


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a missing or corrupted file into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"missing file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SaekitError(f"corrupted or truncated safetensors file {path}: {e}") from None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: Any, what: str) -> None:
    """Refuse a file whose sha256 is not ``expected`` (as recorded when it was written)."""
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"missing file: {path}")
    if not isinstance(expected, str) or file_sha256(path) != expected:
        raise SaekitError(f"{path} is corrupted (sha256 mismatch with {what}); it cannot be trusted")


def check_finite_tensors(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or inf (a damaged file, or a run that diverged before it was saved)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SaekitError(f"{where}: tensor {name!r} holds NaN or inf values; these weights are unusable "
                              "(the run diverged or the file was damaged)")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaekitError(f"corrupted JSON file {path}: {e}") from None


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place; an older folder of that name is removed only afterwards."""
    final_dir = Path(final_dir)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_temporaries(folder: str | os.PathLike, depth: int = 2) -> list[Path]:
    """Delete what killed writers leave behind in ``folder`` (and its subfolders, ``depth`` levels):
    atomic-write temporaries ``.NAME.*.tmp``, unfinished checkpoint folders ``.tmp-*`` and replaced
    folders ``.NAME.old``. Call it only while holding the folder's lock (``saekit.lock``)."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in list(folder.iterdir()):
        name = p.name
        if name.startswith(".") and (name.endswith(".tmp") or name.startswith(".tmp-") or name.endswith(".old")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        elif depth > 0 and p.is_dir() and not p.is_symlink() and not name.startswith("."):
            removed += remove_temporaries(p, depth - 1)
    return removed
