"""Durable file primitives shared by the lease store, the gateway id and the session store.

Synchronous on purpose: callers run them in a worker thread (``trio.to_thread.run_sync``), and
property tests drive them directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write_bytes", "ensure_private_dir", "exclusive_lock", "quarantine"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing and make it mode 0700.

    Raises ``OSError`` when it cannot be created or is not a directory."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    The new file is mode 0600 and durable on return (file and directory fsynced).  On any
    failure the old file is untouched and the temporary file is removed."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def quarantine(path: Path) -> Path:
    """Move a corrupt file aside to ``<name>.corrupt-<utc timestamp>`` and return the new path.

    Nothing is deleted: the operator can inspect and restore it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


@contextlib.contextmanager
def exclusive_lock(
    lock_path: Path, *, timeout: float = 30.0, poll: float = 0.005
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600, never deleted).

    The kernel releases the lock if the holder dies, SIGKILL included, so a stale lock cannot
    happen.  Raises ``TimeoutError`` if another holder keeps it longer than ``timeout``."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"could not lock {lock_path} within {timeout}s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
