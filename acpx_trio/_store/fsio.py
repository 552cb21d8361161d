"""Durable file primitives shared by the lease store, the gateway id and the session store.

Synchronous on purpose: callers run them in a worker thread (``trio.to_thread.run_sync``), and
property tests drive them directly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

import msgspec

from acpx_trio._errors import StateFileError

__all__ = [
    "GATEWAY_ID_MAX_BYTES",
    "LEASE_FILE_MAX_BYTES",
    "SESSION_FILE_MAX_BYTES",
    "StateDecoder",
    "atomic_write_bytes",
    "atomic_write_many",
    "check_ancestors",
    "check_private_dir",
    "ensure_private_dir",
    "fsync_dir",
    "open_private_file",
    "quarantine",
    "read_private_file",
    "tighten",
    "unusable_dir",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: Path, *, strict_link: bool = False) -> Path:
    """Create ``path`` (and parents) if missing and make it mode 0700.

    An existing one that is not a directory, belongs to another user or is group/world-
    writable is refused with :class:`~acpx_trio.StateFileError` (see
    :func:`check_private_dir`); a symbolic link to a directory is used but never
    ``chmod``-ed.  With ``strict_link`` (acpx-trio's own dirs) a link is refused unless it
    points at a directory of ours that is already exactly 0700 (nothing to tighten: shared
    lease dirs of two installations); the check comes before anything is created below it and
    the mode is set on the opened directory, never through a link.  Its ancestors are checked
    first (:func:`check_ancestors`): a directory under one another user owns or could write is
    refused before anything is created.  Raises ``OSError`` when it cannot be created."""
    check_ancestors(path)
    if strict_link:
        return _ensure_real_dir(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():  # a dangling link: never create through it
            check_private_dir(path)
        _make_dirs(path)
        st = os.stat(path)
    _check_dir_stat(path, st)  # refuse (never chmod) what is not ours, like ssh
    if (st.st_mode & 0o777) != DIR_MODE and not path.is_symlink():
        os.chmod(path, DIR_MODE)  # only tightens: a group/world-writable one was refused
    return path


def _ensure_real_dir(path: Path) -> Path:
    check_private_dir(path, strict_link=True)
    if os.path.islink(path):
        return path  # a link to a directory of ours that is already 0700: nothing to do
    _make_dirs(path)  # what is missing, 0700; a racing creator is checked below
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or file meanwhile
            check_private_dir(path, strict_link=True)
        raise
    try:
        st = os.fstat(fd)
        _check_dir_stat(path, st)
        if (st.st_mode & 0o777) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)  # the opened directory itself: never through a link
    finally:
        os.close(fd)
    return path


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` whose every new directory is 0700 (a umask can only narrow it), so a
    parent it creates never fails :func:`check_ancestors` later."""
    missing: list[Path] = []
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a racing creator: checked by the caller
            os.mkdir(directory, DIR_MODE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes | bytearray, *, sync_dir: bool = True
) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    The new file is mode 0600 and durable on return (file and directory fsynced).  On any
    failure the old file is untouched and the temporary file is removed.  With
    ``sync_dir=False`` the directory fsync is left to the caller (:func:`fsync_dir`), which
    makes several renames in one directory durable with one fsync."""
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
    if sync_dir:
        _fsync_dir(path.parent)


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Threads that fsync the files of one :func:`atomic_write_many` concurrently.
FSYNC_THREADS = 16
_fsync_pool: tuple[int, ThreadPoolExecutor] | None = None
_fsync_pool_lock = threading.Lock()


def _fsync_executor() -> ThreadPoolExecutor:
    """The process's fsync pool, made once (starting 16 threads per write cost more than the
    fsyncs themselves) and again after a ``fork`` (the child has none of the threads)."""
    global _fsync_pool
    with _fsync_pool_lock:
        if _fsync_pool is None or _fsync_pool[0] != os.getpid():
            _fsync_pool = (os.getpid(), ThreadPoolExecutor(
                max_workers=FSYNC_THREADS, thread_name_prefix="acpx-fsync"))
        return _fsync_pool[1]


def _submit_fsync(pool: ThreadPoolExecutor, fd: int) -> Future[None]:
    try:
        return pool.submit(_fsync_close, fd)
    except RuntimeError:  # interpreter shutting down: no new work for the pool, fsync here
        done: Future[None] = Future()
        try:
            _fsync_close(fd)
        except OSError as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done


def atomic_write_many(items: list[tuple[Path, bytes]]) -> list[OSError | None]:
    """:func:`atomic_write_bytes` for several files at once: the temporary files are fsynced
    concurrently (the filesystem journal merges them into few commits, instead of one commit
    after another), renamed in order, and each directory is fsynced once.  Returns, per item,
    ``None`` or the ``OSError`` that left that file untouched.  If a directory fsync fails,
    every item in that directory gets the error."""
    errors: list[OSError | None] = [None] * len(items)
    staged: list[tuple[int, int, Path]] = []  # (item index, fd, tmp path)
    for i, (path, data) in enumerate(items):
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
        except OSError as exc:
            errors[i] = exc
            continue
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            os.close(fd)
            errors[i] = exc
            with contextlib.suppress(OSError):
                tmp.unlink()
            continue
        staged.append((i, fd, tmp))
    if len(staged) > 1:
        pool = _fsync_executor()
        futures = [(i, tmp, _submit_fsync(pool, fd)) for i, fd, tmp in staged]
        synced = []
        for i, tmp, future in futures:
            failure = future.exception()
            if failure is None:
                synced.append((i, tmp))
            else:
                errors[i] = failure if isinstance(failure, OSError) else OSError(str(failure))
                with contextlib.suppress(OSError):
                    tmp.unlink()
    else:
        synced = []
        for i, fd, tmp in staged:
            try:
                _fsync_close(fd)
                synced.append((i, tmp))
            except OSError as exc:
                errors[i] = exc
                with contextlib.suppress(OSError):
                    tmp.unlink()
    dirs: dict[Path, list[int]] = {}
    for i, tmp in synced:
        try:
            os.replace(tmp, items[i][0])
        except OSError as exc:
            errors[i] = exc
            with contextlib.suppress(OSError):
                tmp.unlink()
            continue
        dirs.setdefault(items[i][0].parent, []).append(i)
    for directory, members in dirs.items():
        try:
            _fsync_dir(directory)
        except OSError as exc:
            for i in members:
                errors[i] = exc
    return errors


def fsync_dir(path: Path) -> None:
    """Make the renames and unlinks done in directory ``path`` durable."""
    _fsync_dir(path)


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


GATEWAY_ID_MAX_BYTES = 4 * 1024
LEASE_FILE_MAX_BYTES = 64 * 1024 * 1024
SESSION_FILE_MAX_BYTES = 16 * 1024 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, name in (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_private_file(path: Path, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file ``path`` of ours, opened with ``flags`` (plus
    ``O_CREAT``'s mode 0600 when given), and its ``fstat``.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` (a symbolic link is refused, a FIFO cannot block
    us: a read waits for no writer, a write for no reader), then ``fstat``-checked: a
    directory, FIFO, device or socket, or a file of another user raises
    :class:`~acpx_trio.StateFileError` naming the path and the fix (the descriptor closed);
    never a hang.  Opened for writing, a file looser than 0600 is made 0600.  A missing file
    (without ``O_CREAT``) raises ``FileNotFoundError``; other ``OSError``s propagate.  The
    one opener of the state files we append to or read whole."""
    where = str(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, FILE_MODE)
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
        if flags & (os.O_WRONLY | os.O_RDWR):
            st = tighten(fd, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def tighten(fd: int, st: os.stat_result) -> os.stat_result:
    """Make the open file ``fd`` (``st`` its ``fstat``) 0600 if it is looser (a file we
    write to never stays readable by others, whoever loosened it); its ``fstat`` after."""
    if stat.S_IMODE(st.st_mode) == FILE_MODE:
        return st
    os.fchmod(fd, FILE_MODE)
    return os.fstat(fd)


def read_private_file(path: Path, max_bytes: int) -> bytes:
    """The contents of the regular file ``path``, at most ``max_bytes`` long (opened by
    :func:`open_private_file`, with its refusals); one larger than ``max_bytes`` raises
    :class:`~acpx_trio.StateFileError` naming the path and the fix; never a hang."""
    where = str(path)
    fd, st = open_private_file(path)
    try:
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


_T = TypeVar("_T")


class StateDecoder(Generic[_T]):
    """A JSON decoder of ``type_`` for bytes read from a state file (the lease file and its
    change log, session records, transcripts, ``owner.json``): untrusted bytes, which any
    process of the user, a crash or a disk error may have written.

    :meth:`decode` raises ``msgspec.DecodeError`` for every undecodable input, also for one
    nested deeper than msgspec's recursion limit (msgspec itself raises ``RecursionError``
    there: ``{"x": [[[...]]]}`` 100,000 levels deep), so each store's one way of handling a
    garbage file (skip it, quarantine it) covers nesting too (and bad UTF-8, which msgspec
    reports as ``DecodeError`` as well)."""

    __slots__ = ("_decoder",)

    def __init__(self, type_: type[_T]) -> None:
        self._decoder = msgspec.json.Decoder(type_)

    def decode(self, data: bytes | msgspec.Raw) -> _T:
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise msgspec.DecodeError("JSON nested too deeply") from None


def unusable_dir(path: Path, exc: OSError) -> StateFileError:
    """The refusal of a state directory the file system cannot look up (``ENOTDIR``: a file
    on the way; ``ELOOP``; ``ENAMETOOLONG``; ``EACCES``), naming it and the error."""
    return StateFileError(str(path), f"cannot be used as a directory ({exc.strerror or exc})",
                          "choose a state directory this user can reach and own")


def check_private_dir(path: Path, *, strict_link: bool = False) -> None:
    """Refuse a state directory that cannot be trusted, like ssh does: not a directory, owned
    by another user, or writable by group or others; with ``strict_link`` also a symbolic link
    unless its target is ours and already exactly 0700 (a link is never ``chmod``-ed, so a
    looser target could never be tightened).  Raises :class:`~acpx_trio.StateFileError`
    naming the path and the fix; a missing directory is fine (it will be created 0700)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise StateFileError(str(path), "is a dangling symbolic link",
                                 "remove it or point it at a directory of ours") from None
        return
    except OSError as exc:  # a file on the way (ENOTDIR), a link loop, a name too long, ...
        raise unusable_dir(path, exc) from None
    _check_dir_stat(path, st)  # what it points at first: the more specific reason
    if strict_link and os.path.islink(path) and (st.st_mode & 0o777) != DIR_MODE:
        raise StateFileError(
            str(path), f"is a symbolic link (to {os.readlink(path)}) to a directory of mode "
            f"{st.st_mode & 0o777:o}, which acpx-trio will not chmod through a link",
            f"replace it with a real directory (`rm {path} && mkdir -m 700 {path}`) or run "
            f"`chmod 700 {os.path.realpath(path)}`",
        )


def check_ancestors(path: Path) -> None:
    """Refuse a state directory that someone else could move away or replace, like ssh's
    ``StrictModes``: every directory in which a name on the way to ``path`` is looked up (the
    links on the way followed, as the kernel does) must belong to root or to this user and be
    writable by no other user.  Group- or world-writable is accepted only with the sticky bit
    (as ``/tmp``: then only an entry's owner may rename or remove it), and group-writable also
    for this user's private group (named after this user, no other member: the convention
    behind ``umask 002``).  Where the path does not exist yet the walk stops (the rest will
    be created, ours).  Raises :class:`~acpx_trio.StateFileError` naming the directory and
    the fix; so is a symbolic link on the way that another user owns in a directory others
    may write.  Reads only ``lstat``s and links, creates nothing.  A path whose ancestors passed
    is not walked again in this process: only root or this user can change a chain that
    passed (a user who loosens their own parents is caught at the next process's start)."""
    key = os.path.abspath(path)
    if key in _TRUSTED_ANCESTORS:
        return
    for directory in _lookup_dirs(key):
        try:
            st = os.stat(directory)
        except OSError as exc:
            raise unusable_dir(path, exc) from None
        _check_ancestor_stat(Path(directory), st, path)
    _TRUSTED_ANCESTORS.add(key)


#: Absolute paths whose ancestors passed :func:`check_ancestors` in this process.
_TRUSTED_ANCESTORS: set[str] = set()


def _lookup_dirs(path: str) -> list[str]:
    """The directories in which the components of the absolute ``path`` are looked up, in
    order, without repeats; links are followed (at most 40, as Linux).  A link of another
    user in a directory others may write (sticky ``/tmp`` included) is
    :class:`~acpx_trio.StateFileError`: its owner may replace it whenever; in a directory
    only root or we write, nobody else can change it."""
    dirs: list[str] = []
    pending = [c for c in path.split("/") if c]
    current = "/"
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        if current not in dirs:
            dirs.append(current)
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            break
        except OSError as exc:  # a name too long, no search permission, ...
            raise unusable_dir(Path(path), exc) from None
        if not stat.S_ISLNK(st.st_mode):
            current = candidate
            continue
        if st.st_uid not in (0, os.geteuid()) and _others_write(current):
            # a sticky directory others write (/tmp): its owner may replace the link there
            raise StateFileError(
                path, f"passes through the symbolic link {candidate}, which belongs to uid "
                f"{st.st_uid}: that user could point it at another directory",
                "give the state directory's real path, or a link of your own",
            )
        links += 1
        if links > 40:
            raise StateFileError(path, "has more than 40 symbolic links on the way",
                                 "choose a state directory without a link loop")
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = "/"
        pending[:0] = [c for c in target.split("/") if c]
    return dirs


def _others_write(directory: str) -> bool:
    """Whether users other than root and us may add or remove entries of ``directory``
    (group- or world-writable; sticky or not).  A directory that cannot be looked up counts
    as writable (refused, not trusted)."""
    try:
        return bool(os.stat(directory).st_mode & 0o022)
    except OSError:
        return True


def _check_ancestor_stat(ancestor: Path, st: os.stat_result, path: Path) -> None:
    me = os.geteuid()
    if st.st_uid not in (0, me):
        raise StateFileError(
            str(path), f"lies under {ancestor}, which belongs to uid {st.st_uid}: that user "
            "could move the state directory away or put another in its place",
            "choose a state directory whose every parent belongs to root or to you",
        )
    if not st.st_mode & 0o022 or st.st_mode & stat.S_ISVTX:
        return  # nobody else writes, or sticky: an entry keeps its owner
    if st.st_mode & 0o002 or not _private_group(st.st_gid):
        who = "others" if st.st_mode & 0o002 else f"group {st.st_gid}"
        raise StateFileError(
            str(path), f"lies under {ancestor}, which is writable by {who} (mode "
            f"{st.st_mode & 0o7777:o}, no sticky bit): they could move the state directory "
            "away or put another in its place",
            f"run `chmod go-w {ancestor}` (or choose another state directory)",
        )


def _private_group(gid: int) -> bool:
    """Whether ``gid`` is this user's private group: named after this user, no other member."""
    import grp
    import pwd

    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == os.getegid() and group.gr_name == name and set(group.gr_mem) <= {name}


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
