"""The owner's files in the state dir, and the checks that make its socket safe to use.

Files (state dir 0700, files 0600):

* ``owner.sock``: the Unix socket.  Clients refuse it unless it is a socket owned by our uid
  (never a regular file, never a symlink); both ends check the peer uid (``SO_PEERCRED``).
* ``owner.lock``: ``flock``-ed by the live owner for its whole life (the kernel drops it when
  the owner dies, SIGKILL included): holding it proves no owner is alive.
* ``owner-start.lock``: held by the one client that is starting an owner, so racing clients
  end with exactly one.
* ``owner.json``: pid and start time of the owner (:class:`OwnerInfo`): what ``status`` and
  error messages name, never the proof that an owner is alive (that is ``owner.lock``).
* ``owner.log``: the owner's stderr.

``owner.lock``, ``owner-start.lock`` and ``owner.log`` are opened without following a
symlink and must be regular files of our uid: anything else is refused with one typed line
(:class:`OwnerFileError`), never written through.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import time
from pathlib import Path

import msgspec

from acpx_trio._errors import AcpxError, StateFileError
from acpx_trio._store.fsio import (
    StateDecoder,
    atomic_write_bytes,
    open_private_file,
    read_private_file,
)

__all__ = [
    "OwnerFileError",
    "OwnerInfo",
    "OwnerPaths",
    "OwnerSocketError",
    "check_socket_path",
    "peer_uid",
    "read_owner_info",
]

#: Linux ``sun_path`` is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class OwnerSocketError(AcpxError):
    """The owner's socket path is unsafe (not a socket, a symlink, another uid's) or unusable."""

    code = "ACPX_OWNER_SOCKET_UNSAFE"


class OwnerFileError(AcpxError):
    """An owner file (lock, log) is a symlink, not a regular file, or another uid's."""

    code = "ACPX_OWNER_FILE_UNSAFE"


class OwnerPaths:
    """The owner's file names in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.socket = self.state_dir / "owner.sock"
        self.lock = self.state_dir / "owner.lock"
        self.start_lock = self.state_dir / "owner-start.lock"
        self.info = self.state_dir / "owner.json"
        self.log = self.state_dir / "owner.log"

    def check_length(self) -> None:
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise OwnerSocketError(
                f"the owner socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes "
                "(a Unix socket limit); use a shorter --state-dir")


class OwnerInfo(msgspec.Struct, kw_only=True, frozen=True):
    """``owner.json``: who the owner is (named in messages; the proof that an owner is alive
    is its ``owner.lock`` flock, never this record)."""

    pid: int
    create_time: float
    started_at: float
    socket: str
    version: int = 1


_info_decoder = StateDecoder(OwnerInfo)  # nested too deeply: DecodeError, read as absent
#: ``owner.json`` is a few hundred bytes; a larger one is not ours to read.
OWNER_INFO_MAX_BYTES = 64 * 1024


def write_owner_info(paths: OwnerPaths) -> OwnerInfo:
    """Record this process as the owner (blocking)."""
    import psutil  # the owner's side only: a client never loads it through this module

    me = psutil.Process()
    info = OwnerInfo(pid=me.pid, create_time=me.create_time(), started_at=time.time(),
                     socket=str(paths.socket))
    atomic_write_bytes(paths.info, msgspec.json.encode(info) + b"\n")
    return info


def read_owner_info(paths: OwnerPaths) -> OwnerInfo | None:
    """``owner.json``, or ``None`` if absent, unreadable or not a regular file of ours."""
    try:
        data = read_private_file(paths.info, OWNER_INFO_MAX_BYTES)
    except (OSError, StateFileError):
        return None
    try:
        return _info_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def check_socket_path(path: Path) -> bool:
    """``True`` if a safe socket exists at ``path``, ``False`` if nothing is there.

    Raises :class:`OwnerSocketError` for anything else at the path: a regular file, a
    directory, a symlink (never followed) or a socket owned by another uid."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise OwnerSocketError(
            f"refusing the owner socket {path}: it is a symlink (remove it if it is yours)")
    if not stat.S_ISSOCK(st.st_mode):
        raise OwnerSocketError(
            f"refusing the owner socket {path}: it is not a socket (remove it if it is yours)")
    if st.st_uid != os.geteuid():
        raise OwnerSocketError(
            f"refusing the owner socket {path}: it is owned by uid {st.st_uid}, not by us "
            f"(uid {os.geteuid()})")
    return True


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def connect_refused(exc: OSError) -> bool:
    """A connect error that means "no owner listens there" (as opposed to a permission or
    path problem)."""
    return exc.errno in (errno.ECONNREFUSED, errno.ENOENT)


def remove_socket_file(path: Path) -> None:
    """Unlink the socket at ``path`` if it still is a socket of ours (blocking)."""
    try:
        if check_socket_path(path):
            path.unlink()
    except FileNotFoundError:
        pass


def open_owner_file(path: Path, flags: int) -> int:
    """Open (create 0600) a file of the owner's, blocking, with the state files' checks
    (:func:`~acpx_trio._store.fsio.open_private_file`: no symlink followed, a regular file of
    ours, a FIFO never waited on); the caller closes it.  Raises :class:`OwnerFileError`
    naming why (blocking)."""
    try:
        fd, _st = open_private_file(path, flags | os.O_CREAT)
    except StateFileError as exc:
        raise OwnerFileError(f"refusing {exc}") from None
    except OSError as exc:
        raise OwnerFileError(f"cannot open {path}: {exc.strerror}") from None
    try:
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_lock_fd(path: Path) -> int:
    """Open (create 0600) a lock file (see :func:`open_owner_file`); the caller closes it."""
    return open_owner_file(path, os.O_RDWR)
