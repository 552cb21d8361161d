"""Durable file primitives shared by the lease store, the gateway id and the session store.

Synchronous on purpose: callers run them in a worker thread (``trio.to_thread.run_sync``), and
property tests drive them directly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from acpx_trio._errors import StateFileError

__all__ = [
    "GATEWAY_ID_MAX_BYTES",
    "LEASE_FILE_MAX_BYTES",
    "SESSION_FILE_MAX_BYTES",
    "atomic_write_bytes",
    "check_private_dir",
    "ensure_private_dir",
    "exclusive_lock",
    "quarantine",
    "read_private_file",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing and make it mode 0700.

    An existing one that is not a directory, belongs to another user or is group/world-
    writable is refused with :class:`~acpx_trio.StateFileError` (see
    :func:`check_private_dir`); a symbolic link to a directory is used but never
    ``chmod``-ed.  Raises ``OSError`` when it cannot be created."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():  # a dangling link: never create through it
            check_private_dir(path)
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        st = os.stat(path)
    _check_dir_stat(path, st)  # refuse (never chmod) what is not ours, like ssh
    if (st.st_mode & 0o777) != DIR_MODE and not path.is_symlink():
        os.chmod(path, DIR_MODE)  # only tightens: a group/world-writable one was refused
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


# --------------------------------------------------------------------------------------------
# Safe reads of state files (hostile files: FIFOs, devices, huge files, directories, links)
# --------------------------------------------------------------------------------------------

#: Caps of :func:`read_private_file` per kind of state file.
GATEWAY_ID_MAX_BYTES = 4 * 1024
LEASE_FILE_MAX_BYTES = 64 * 1024 * 1024
SESSION_FILE_MAX_BYTES = 16 * 1024 * 1024


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_private_file(path: Path, max_bytes: int) -> bytes:
    """The contents of the regular file ``path``, at most ``max_bytes`` long.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` (a symbolic link is refused, a FIFO cannot block
    us), then ``fstat``-checked: a directory, FIFO, device or socket, a file of another user,
    or one larger than ``max_bytes`` raises :class:`~acpx_trio.StateFileError` naming the
    path and the fix; never a hang.  A missing file raises ``FileNotFoundError``; other
    ``OSError``s propagate."""
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateFileError(
                where, "is a symbolic link (not followed)",
                "replace it with the regular file it should be, or remove it",
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(
                where, f"is {_kind(st.st_mode)}, not a regular file",
                "move it out of the state directory (acpx-trio recreates what it needs)",
            )
        if st.st_uid != os.geteuid():
            raise StateFileError(
                where, f"belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})",
                "check who wrote it, then chown it to the gateway's user or remove it",
            )
        if st.st_size > max_bytes:
            raise StateFileError(
                where, f"is {st.st_size} bytes, more than the {max_bytes} allowed",
                "move it aside and let acpx-trio start a new one",
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise StateFileError(
                    where, f"grew past the {max_bytes} bytes allowed while being read",
                    "move it aside and let acpx-trio start a new one",
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_private_dir(path: Path) -> None:
    """Refuse a state directory that cannot be trusted, like ssh does: not a directory, owned
    by another user, or writable by group or others.  Raises
    :class:`~acpx_trio.StateFileError` naming the path and the fix; a missing directory is
    fine (it will be created 0700)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
                    raise StateFileError(str(path), "is a dangling symbolic link",
                                 "remove it or point it at a directory of ours") from None
        return
    _check_dir_stat(path, st)


def _check_dir_stat(path: Path, st: os.stat_result) -> None:
    where = str(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateFileError(
            where, f"is {_kind(st.st_mode)}, not a directory",
            "move it away or choose another state directory",
        )
    if st.st_uid != os.geteuid():
        raise StateFileError(
            where, f"belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})",
            f"chown it to uid {os.geteuid()} (or use another state directory)",
        )
    if st.st_mode & 0o022:
        raise StateFileError(
            where, f"is writable by {'group' if st.st_mode & 0o020 else 'others'} "
            f"(mode {st.st_mode & 0o777:o})",
            f"run `chmod 700 {where}` after checking its contents",
        )
