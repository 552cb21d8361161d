"""Blocking ``flock`` primitives for the state files: open a lock file (never through a link),
try, wait (abandonably: a :class:`LockWaiter` can be given up from another thread without
leaking the lock), release.

Synchronous on purpose: :mod:`acpx_trio._store.locks` runs them in worker threads behind an
in-process FIFO, and the warm owner's client uses them directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from acpx_trio._store.fsio import FILE_MODE, tighten

__all__ = [
    "LockWaiter",
    "acquire_lock_blocking",
    "exclusive_lock",
    "open_lock_file",
    "release_lock_fd",
    "try_flock",
]


def open_lock_file(lock_path: Path) -> int:
    """Open (creating 0600, never following a symlink; a regular file of ours looser than
    0600 is made 0600) the lock file; returns the fd."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            tighten(fd, st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_flock(fd: int) -> bool:
    """Take the exclusive ``flock`` on ``fd`` if it is free right now."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def release_lock_fd(fd: int) -> None:
    """Release the ``flock`` held on ``fd`` (if any) and close it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class LockWaiter:
    """A blocking ``flock(LOCK_EX)`` wait that its owner may abandon at any moment.

    :meth:`wait` runs in a thread of its own (it blocks in the kernel: no polling).  If the
    owner gives up (:meth:`abandon`, on timeout or cancel) before the lock is granted, the
    thread releases the lock as soon as the kernel grants it, so an abandoned wait never
    keeps the lock.  Exactly one side ends up owning the fd."""

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self._mutex = threading.Lock()
        self._abandoned = False
        self._fd: int | None = None
        self._error: OSError | None = None
        self.granted = threading.Event()

    def wait(self) -> None:
        """Blocks until the lock is granted (or fails); never raises."""
        try:
            fd = open_lock_file(self.lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            with self._mutex:
                self._error = exc
            self.granted.set()
            return
        with self._mutex:
            if self._abandoned:
                release_lock_fd(fd)
                return
            self._fd = fd
        self.granted.set()

    def take(self) -> int:
        """The fd holding the lock (the caller now owns it); raises the wait's ``OSError``."""
        with self._mutex:
            if self._error is not None:
                raise self._error
            assert self._fd is not None, "take() before the lock was granted"
            fd, self._fd = self._fd, None
            return fd

    def abandon(self) -> None:
        """Give up: a lock granted later is released by the waiting thread; one granted
        already (a race with the give-up) is released here."""
        with self._mutex:
            self._abandoned = True
            fd, self._fd = self._fd, None
        if fd is not None:
            release_lock_fd(fd)


def acquire_lock_blocking(lock_path: Path, timeout: float) -> int:
    """The fd of ``lock_path`` with the exclusive ``flock`` held: at once when it is free,
    else after a blocking wait (kernel FIFO, no polling) of at most ``timeout`` seconds
    (``TimeoutError``).  Release with :func:`release_lock_fd`."""
    fd = open_lock_file(lock_path)
    if try_flock(fd):
        return fd
    os.close(fd)
    waiter = LockWaiter(lock_path)
    threading.Thread(target=waiter.wait, name="acpx-flock-wait", daemon=True).start()
    if not waiter.granted.wait(timeout):
        waiter.abandon()  # a grant racing with the give-up is released, never leaked
        raise TimeoutError(f"could not lock {lock_path} within {timeout}s")
    return waiter.take()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, *, timeout: float = 30.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600, never deleted).

    Uncontended: one non-blocking ``flock``.  Contended: a blocking ``flock`` in a helper
    thread that can be abandoned safely (no sleep polling).  The kernel releases the lock if
    the holder dies, SIGKILL included, so a stale lock cannot happen.  Raises
    ``TimeoutError`` if another holder keeps it longer than ``timeout``."""
    fd = acquire_lock_blocking(lock_path, timeout)
    try:
        yield
    finally:
        release_lock_fd(fd)


# --------------------------------------------------------------------------------------------
# Safe reads of state files (hostile files: FIFOs, devices, huge files, directories, links)
# --------------------------------------------------------------------------------------------

#: Caps of :func:`read_private_file` per kind of state file.
