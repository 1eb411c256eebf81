"""Folder ownership: one process writes a run (or stage) folder at a time.

A lock is an OS file lock (``filelock``; ``flock``/``fcntl`` locks, which work on shared filesystems such as NFS) on a
hidden file beside the folder, ``.<name>.lock``, plus ``.<name>.lock.json`` naming the holder (host, pid, start time)
for the message a second process gets. The OS releases the lock when its holder dies, so a lock left by a killed
process is taken over by the next one (its stale holder record is overwritten).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from gendistill.utils.errors import GendistillError

__all__ = ["FolderLockedError", "StageBusyError", "deferring_busy_stages", "folder_lock", "lock_paths",
           "shared_folder_lock"]


class FolderLockedError(GendistillError):
    """Another live process is writing the folder."""


class StageBusyError(FolderLockedError):
    """A shared stage is being trained by another process (raised instead of waiting inside
    :func:`deferring_busy_stages`, so a scheduler can do other work first)."""


_DEFER_BUSY = contextvars.ContextVar("gendistill_defer_busy_stages", default=False)


@contextlib.contextmanager
def deferring_busy_stages() -> Iterator[None]:
    """Within the context, :func:`shared_folder_lock` raises :class:`StageBusyError` instead of waiting."""
    token = _DEFER_BUSY.set(True)
    try:
        yield
    finally:
        _DEFER_BUSY.reset(token)


def shared_folder_lock(folder: str | Path, what: str = "shared stage"):
    """The lock of a folder several runs share (a trained stage): wait for its holder to finish - or, inside
    :func:`deferring_busy_stages`, raise :class:`StageBusyError` at once."""
    return folder_lock(folder, wait=not _DEFER_BUSY.get(), what=what,
                       error=StageBusyError if _DEFER_BUSY.get() else FolderLockedError)


def lock_paths(folder: str | Path) -> tuple[Path, Path]:
    """The lock file and the holder record of ``folder`` (siblings of it, so the folder itself stays as it was)."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock", folder.parent / f".{folder.name}.lock.json"


def _holder(record: Path) -> str:
    try:
        info = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} (since {started})"


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, wait: bool | float = False, what: str = "run folder",
                error: type[FolderLockedError] = FolderLockedError) -> Iterator[None]:
    """Hold ``folder`` for this process.

    Args:
        wait: False: refuse at once when another process holds it; True: wait until it is free; a number: wait at
            most that many seconds.

    Raises:
        FolderLockedError: the folder is held (one line naming the holder).
    """
    path, record = lock_paths(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    timeout = -1 if wait is True else (0 if wait is False else float(wait))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise error(f"{folder} ({what}) is being written by {_holder(record)}; wait for it to finish or "
                    "choose another --out") from None
    try:
        tmp = record.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}))
        os.replace(tmp, record)
        yield
    finally:
        with contextlib.suppress(OSError):
            record.unlink()
        lock.release()
