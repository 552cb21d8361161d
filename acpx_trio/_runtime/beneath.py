"""Opening a path so that it cannot leave a directory, in one step (no check-then-open race).

Guarantee: every open here resolves the path *relative to a directory fd of the session cwd*
and never leaves it, whatever the agent does to the tree meanwhile (a directory flipped to a
symlink to ``/etc`` between a check and an open is exactly the attack).  Where the kernel has
``openat2`` (Linux >= 5.6) the kernel resolves with ``RESOLVE_BENEATH`` (symlinks that stay
inside the cwd are followed, anything that would leave it fails with ``EXDEV``;
``/proc``-style magic links are refused).  Elsewhere the path is walked one component at a
time with ``O_NOFOLLOW`` from that directory fd, so no symlink is followed at all.

Blocking (file system calls): run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable

__all__ = ["BeneathError", "open_beneath", "open_dir_beneath"]

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (new syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class BeneathError(OSError):
    """The path would leave the directory (through ``..``, an absolute symlink or a link to
    outside it)."""


def _load_openat2() -> Callable[[int, str, int, int], int] | None:
    if not hasattr(os, "O_PATH"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    def openat2(dirfd: int, path: str, flags: int, mode: int) -> int:
        how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                       _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        fd = syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                     ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                     ctypes.c_size_t(ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.EXDEV:
                raise BeneathError(err, f"{path!r} leads outside the directory")
            raise OSError(err, os.strerror(err), path)
        return int(fd)

    # probe once: ENOSYS (old kernel) or a seccomp filter means "walk instead"
    try:
        os.close(openat2(os.open("/", os.O_PATH | os.O_DIRECTORY), ".", os.O_PATH, 0))
    except OSError:
        return None
    return openat2


_OPENAT2 = _load_openat2()


def _walk(dirfd: int, path: str, flags: int, mode: int) -> int:
    """The fallback: one component at a time, ``O_NOFOLLOW`` everywhere."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BeneathError(errno.EXDEV, f"{path!r} contains '..'")
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=dirfd)
    fd = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise BeneathError(errno.EXDEV, f"{path!r}: {part!r} is a symlink") from None
                raise
            os.close(fd)
            fd = nxt
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BeneathError(errno.EXDEV, f"{path!r} is a symlink") from None
            raise
    finally:
        os.close(fd)


def open_beneath(dirfd: int, path: str, flags: int, mode: int = 0o644) -> int:
    """``open(path, flags)`` resolved beneath ``dirfd`` (``path`` relative to it); raises
    :class:`BeneathError` when it would leave the directory, ``OSError`` as ``open`` does."""
    if os.path.isabs(path):
        raise BeneathError(errno.EXDEV, f"{path!r} is absolute")
    if _OPENAT2 is not None:
        return _OPENAT2(dirfd, path, flags, mode)
    return _walk(dirfd, path, flags, mode)


def open_dir_beneath(dirfd: int, path: str, *, create: bool = False) -> int:
    """A directory fd for ``path`` beneath ``dirfd``; with ``create`` the missing directories
    are made one at a time, each opened beneath its parent (never through a symlink that
    leaves the tree)."""
    flags = os.O_RDONLY | os.O_DIRECTORY
    try:
        return open_beneath(dirfd, path, flags)
    except FileNotFoundError:
        if not create:
            raise
    fd = os.dup(dirfd)
    try:
        for part in [p for p in path.split("/") if p not in ("", ".")]:
            if part == "..":
                raise BeneathError(errno.EXDEV, f"{path!r} contains '..'")
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            nxt = open_beneath(fd, part, flags)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd
