"""An exclusive lock on an output folder, so two commands never write one folder at once.

``with output_lock(folder, "train"):`` creates ``folder/.saekit.lock`` and holds an ``flock`` on it
for the duration; the file names the holder (pid, host, command). A second writer is refused at once
with one error naming the holder's pid. The kernel drops an ``flock`` when its process dies, so a
lock left by a killed process is taken over by the next command (its file is simply rewritten); a
lock file naming a pid that is no longer running is therefore never a reason to refuse.

The lock is per process and re-entrant: a command that holds a folder may call code that takes the
same folder again (``saekit train`` -> ``train()``). Under torchrun only rank 0 takes it (see
``saekit.train.command``), before any collective, so the other ranks never wait on it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saekit.errors import SaekitError

LOCK_NAME = ".saekit.lock"
_HELD: dict[Path, int] = {}  # folder -> nesting depth, for this process


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info.get('pid')} ({info.get('command', '?')} on {info.get('host', '?')})"
    except (OSError, ValueError, AttributeError):
        return "another process"


def check_output_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse an output path that exists but is not a folder (e.g. a file), before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SaekitError(f"{what} {folder} is an existing file, not a folder; choose another path")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SaekitError(f"{what} {folder}: {parent} is an existing file, not a folder")
            break
    return folder


@contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (created if missing) while the block runs."""
    folder = check_output_folder(folder)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaekitError(f"cannot create output folder {folder}: {e.strerror}") from None
    path = folder / LOCK_NAME
    try:
        fd = _acquire(path, command)
    except BaseException:
        if created:
            _remove_empty(folder)
        raise
    _HELD[key] = 1
    try:
        yield folder
    finally:
        del _HELD[key]
        try:
            path.unlink(missing_ok=True)  # while still holding it: a waiter re-checks the inode
        finally:
            os.close(fd)
        if created:
            _remove_empty(folder)


def _remove_empty(folder: Path) -> None:
    """A command that failed before writing anything leaves no empty folder."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _acquire(path: Path, command: str) -> int:
    for _ in range(50):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SaekitError(f"cannot create the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise SaekitError(f"{path.parent} is being written by {_holder(path)}; wait for it to finish "
                                  f"or choose another output folder") from None
            raise SaekitError(f"cannot lock {path}: {e.strerror}") from None
        try:  # the holder may have removed the file between our open and our flock: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as e:  # a full disk: not even the lock file's few bytes fit
            path.unlink(missing_ok=True)
            os.close(fd)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                from saekit.io import disk_full_error

                raise disk_full_error(path.parent, None) from None
            raise SaekitError(f"cannot write the lock file {path}: {e.strerror}") from None
        return fd
    raise SaekitError(f"could not lock {path}: it keeps being replaced")


def holds(folder: str | os.PathLike) -> bool:
    """Whether this process holds the lock on ``folder``."""
    return Path(folder).resolve() in _HELD
