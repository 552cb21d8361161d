"""The client side of the warm owner: find it, or start exactly one, and talk to it.

Guarantees:

* :func:`connect_owner` never follows a symlink and refuses a socket path that is not a socket
  or is owned by another uid (:class:`OwnerSocketError`), and refuses a peer whose uid is not
  ours (``SO_PEERCRED``).
* :func:`connect_or_start` ends with one owner however many clients race: starting is
  serialised by ``owner-start.lock``; a new owner is started only while holding
  ``owner.lock`` (which proves no owner is alive); a stale socket is removed only when
  ``connect`` is refused *and* the recorded owner pid (with its start time) is not alive.
* Every wait is bounded and cancellable; an owner that stops answering (SIGSTOPped, wedged)
  ends a call with :class:`OwnerUnresponsiveError`, which names the owner's pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import trio

from acpx_trio._errors import AcpxError
from acpx_trio._owner.paths import (
    OwnerPaths,
    OwnerSocketError,
    check_socket_path,
    connect_refused,
    open_lock_fd,
    open_owner_file,
    peer_uid,
    read_owner_info,
    remove_socket_file,
)
from acpx_trio._owner.wire import (
    MAX_FRAME_BYTES,
    FrameReader,
    OwnerLaunch,
    OwnerProtocolError,
    Reply,
    Request,
    decode_reply,
    encode_frame,
)
from acpx_trio._store.dirs import check_lease_dirs
from acpx_trio._store.flock import try_flock
from acpx_trio._store.fsio import FILE_MODE, ensure_private_dir

__all__ = [
    "OwnerStartError",
    "OwnerUnresponsiveError",
    "ReplyReader",
    "connect_or_start",
    "connect_owner",
    "send_request",
    "unresponsive",
    "verified_owner_pid",
]

#: Bound of starting an owner (lock waits, runtime start-up, socket ready).
START_SECONDS = 60.0
#: Attempts to reach an owner that keeps going away while we connect.
CONNECT_ATTEMPTS = 5
#: Upper bound of one reply frame (an event carries an agent's text chunk, which the runtime
#: bounds by its own line limit).
MAX_REPLY_BYTES = 256 * 1024 * 1024


class OwnerStartError(AcpxError):
    """A warm owner could not be started (its log's tail is in the message)."""

    code = "ACPX_OWNER_START_FAILED"


class OwnerUnresponsiveError(AcpxError):
    """The warm owner did not answer within the call's deadline (stopped or wedged)."""

    code = "ACPX_OWNER_UNRESPONSIVE"


def verified_owner_pid(state_dir: Path) -> int | None:
    """The pid ``owner.json`` records, when that process is this state dir's owner: ours (our
    uid), with the create time the record holds, running the owner on ``state_dir`` (a
    record naming another process, forged or left from a pid since reused, names nobody: no
    hint may tell the user to signal a stranger, no client may take it for its owner).
    Blocking; psutil is loaded only here, off the normal paths."""
    import psutil

    from acpx_trio._process.identity import CREATE_TIME_TOLERANCE

    info = read_owner_info(OwnerPaths(state_dir))
    if info is None:
        return None
    try:
        proc = psutil.Process(info.pid)
        created, argv, uid = proc.create_time(), proc.cmdline(), proc.uids().effective
    except psutil.Error:
        return None
    ours = (uid == os.geteuid() and "acpx_trio._owner" in argv and "--state-dir" in argv
            and argv[argv.index("--state-dir") + 1:][:1] == [str(state_dir)])
    return info.pid if ours and abs(created - info.create_time) <= CREATE_TIME_TOLERANCE \
        else None


async def unresponsive(state_dir: Path, what: str, seconds: float) -> OwnerUnresponsiveError:
    """The error for an owner that did not answer ``what`` within ``seconds``, naming its
    pid (and how to resume or end it) only when that process is provably the owner."""
    pid = await trio.to_thread.run_sync(verified_owner_pid, state_dir)
    who = "the warm owner" if pid is None else f"the warm owner (pid {pid})"
    hint = "" if pid is None else (f"; if it is stopped, `kill -CONT {pid}`, or end it "
                                   f"with `kill {pid}`")
    return OwnerUnresponsiveError(f"{who} of {state_dir} did not answer {what} within "
                                  f"{seconds:g}s{hint}")


def _socket_present(paths: OwnerPaths) -> bool:
    """Whether an owner socket is there (:func:`check_socket_path`), once the state dir
    passed the checks every command makes (:func:`check_lease_dirs`): a state dir that is a
    file, another user's or under one is :class:`~acpx_trio.StateFileError`, never a raw
    ``OSError`` from looking inside it.  Blocking."""
    check_lease_dirs(paths.state_dir)
    return check_socket_path(paths.socket)


#: How long a connect waits for room in a busy owner's accept backlog.
BACKLOG_WAIT_SECONDS = 15.0


def _connected(sock: trio.socket.SocketType) -> bool:
    """Whether a connect that returned really connected: a non-blocking connect to a Unix
    socket whose backlog is full fails with ``EAGAIN``, which Trio takes for "in progress"
    and returns from unconnected (its peer then reads as uid -1)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _connect_waiting(paths: OwnerPaths) -> socket.socket:
    """A blocking connect to the owner socket, which the kernel lets through as soon as the
    owner's backlog has room, within :data:`BACKLOG_WAIT_SECONDS` (else ``OSError``
    ``EAGAIN``).  Blocking: run it in a worker thread."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # a blocking connect bounded by the kernel (SO_SNDTIMEO): Python's own timeout mode
        # is non-blocking underneath and gives up at once on a Unix socket's EAGAIN
        seconds = int(BACKLOG_WAIT_SECONDS)
        micros = int((BACKLOG_WAIT_SECONDS - seconds) * 1e6)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros))
        raw.connect(str(paths.socket))
    except OSError:
        raw.close()
        raise
    return raw


async def connect_owner(state_dir: Path) -> trio.SocketStream | None:
    """A connection to the live owner of ``state_dir``, or ``None`` when none listens.
    An unusable state dir is :class:`~acpx_trio.StateFileError`."""
    paths = OwnerPaths(state_dir)
    paths.check_length()
    if not await trio.to_thread.run_sync(_socket_present, paths):
        return None
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(str(paths.socket))
        if not _connected(sock):  # EAGAIN: the owner's accept backlog is full (busy)
            sock.close()
            sock = trio.socket.from_stdlib_socket(await trio.to_thread.run_sync(
                _connect_waiting, paths, abandon_on_cancel=True))
    except OSError as exc:
        sock.close()
        if connect_refused(exc):
            return None
        if exc.errno == errno.EAGAIN:  # SO_SNDTIMEO ran out with the backlog still full
            raise await unresponsive(state_dir, "a connection (its accept backlog stayed "
                                     "full)", BACKLOG_WAIT_SECONDS) from exc
        raise OwnerSocketError(f"cannot connect to the owner socket {paths.socket}: "
                               f"{exc.strerror}") from exc
    uid = peer_uid(sock)  # type: ignore[arg-type]
    if uid != os.geteuid():
        sock.close()
        raise OwnerSocketError(f"refusing the owner socket {paths.socket}: the process "
                               f"listening there runs as uid {uid}, not as us")
    return trio.SocketStream(sock)


class _BoundedReceive(trio.abc.ReceiveStream):
    """``stream`` whose every read waits at most ``seconds`` (then :class:`trio.TooSlowError`):
    one deadline per socket read, not per frame, so streaming stays cheap."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.seconds = math.inf

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        with trio.fail_after(self.seconds):
            return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


class ReplyReader:
    """The owner's reply frames to one request, in order: ``await next_reply()`` until it
    returns ``None`` (the owner closed the connection).  A malformed frame raises the wire
    error; with :attr:`silence` set, a wait longer than that for the owner's next bytes raises
    :class:`trio.TooSlowError`.  Nothing here outlives the caller's ``async with stream``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._bounded = _BoundedReceive(stream)
        self._reader = FrameReader(self._bounded, limit=MAX_REPLY_BYTES)
        self._error: OwnerProtocolError | None = None

    @property
    def silence(self) -> float:
        return self._bounded.seconds

    @silence.setter
    def silence(self, seconds: float) -> None:
        self._bounded.seconds = seconds

    async def next_reply(self) -> Reply | None:
        line = await self._reader.receive()
        return None if line is None else decode_reply(line)

    async def next_replies(self) -> list[Reply] | None:
        """Every reply already read (at least one), in order: :meth:`next_reply`'s answers
        several at a time, for a caller that does not mix the two.  A malformed frame
        raises once the replies before it are returned."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        lines = await self._reader.receive_lines()
        if lines is None:
            return None
        replies: list[Reply] = []
        for line in lines:
            try:
                replies.append(decode_reply(line))
            except OwnerProtocolError as exc:
                if not replies:
                    raise
                self._error = exc
                break
        return replies


async def send_request(stream: trio.SocketStream, request: Request, *,
                       limit: int = MAX_FRAME_BYTES) -> ReplyReader:
    """Send ``request``; the returned reader yields the owner's replies.  A request over the
    owner's frame limit (``limit``: config ``ownerFrameMaxBytes``) raises
    :class:`OwnerProtocolError` before anything is sent; an owner that goes away while we send
    raises :class:`OwnerSocketError`."""
    frame = encode_frame(request)
    if len(frame) > limit:
        raise OwnerProtocolError(
            f"the request is {len(frame)} bytes, over the warm owner's limit of "
            f"{limit} bytes (ownerFrameMaxBytes; a shorter prompt, or `acpx-trio exec`)")
    try:
        await stream.send_all(frame)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise OwnerSocketError(f"the warm owner closed the connection: {exc}") from exc
    return ReplyReader(stream)


def _flock_blocking(fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise OwnerStartError(f"timed out after {timeout:g}s waiting for a lock held "
                                      "by another acpx-trio owner or client") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _log_tail(path: Path, limit: int = 2000) -> str:
    with contextlib.suppress(OSError):
        data = path.read_bytes()[-limit:].decode(errors="replace").strip()
        return data
    return ""


def _rotate_log(log: Path) -> None:
    """Keep the previous owner's log (a crashed owner's traceback) as ``owner.log.1``, 0600.

    Only a regular file of ours is moved; ``rename`` replaces a link at ``owner.log.1`` itself
    and never follows one, and the mode is set on the opened file (``O_NOFOLLOW``).  Called
    holding ``owner.lock`` (no owner is writing it).  Best effort: the new log opens anyway."""
    with contextlib.suppress(OSError):
        st = os.lstat(log)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size == 0:
            return
        kept = log.with_name(log.name + ".1")
        os.rename(log, kept)
        fd = os.open(kept, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)


def _spawn_owner(paths: OwnerPaths, launch: OwnerLaunch, lock_fd: int,
                 ready_w: int) -> subprocess.Popen[bytes]:
    _rotate_log(paths.log)
    log_fd = open_owner_file(paths.log, os.O_WRONLY)
    try:
        os.ftruncate(log_fd, 0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "acpx_trio._owner", "--state-dir", str(paths.state_dir),
             "--lock-fd", str(lock_fd), "--ready-fd", str(ready_w)],
            stdin=subprocess.PIPE, stdout=log_fd, stderr=log_fd, pass_fds=(lock_fd, ready_w),
            start_new_session=True, cwd="/", close_fds=True,
        )
    finally:
        os.close(log_fd)
    assert proc.stdin is not None
    try:
        proc.stdin.write(msgspec.json.encode(launch))
    finally:
        proc.stdin.close()
    return proc


async def _start_owner(paths: OwnerPaths, launch: OwnerLaunch) -> None:
    """Holding ``owner-start.lock``: take ``owner.lock`` (waiting for an exiting owner), clear
    a provably stale socket, spawn the owner and wait for it to listen."""
    lock_fd = await trio.to_thread.run_sync(open_lock_fd, paths.lock)
    try:
        if not await trio.to_thread.run_sync(try_flock, lock_fd):
            # An owner is alive but not listening: it is shutting down.  Wait for its exit.
            await trio.to_thread.run_sync(_flock_blocking, lock_fd, START_SECONDS)
        # Holding owner.lock proves no owner is alive (the kernel drops a dead owner's lock);
        # owner.json is only a record, whatever pid it names.
        if await trio.to_thread.run_sync(check_socket_path, paths.socket):
            # Proven stale: we hold the lock and connect is refused.
            probe = await connect_owner(paths.state_dir)
            if probe is not None:
                await probe.aclose()
                return  # cannot happen while we hold the lock; let the caller connect
            await trio.to_thread.run_sync(remove_socket_file, paths.socket)
        ready_r, ready_w = os.pipe()
        try:
            proc = await trio.to_thread.run_sync(_spawn_owner, paths, launch, lock_fd, ready_w)
        finally:
            os.close(ready_w)
        async with trio.lowlevel.FdStream(ready_r) as ready:
            with trio.move_on_after(START_SECONDS):
                got = await ready.receive_some(64)
                if got.startswith(b"ready"):
                    return
        await trio.to_thread.run_sync(lambda: proc.poll())
        tail = await trio.to_thread.run_sync(_log_tail, paths.log)
        raise OwnerStartError(f"the warm owner did not start (see {paths.log}): "
                              f"{tail or 'no output'}")
    finally:
        os.close(lock_fd)


async def connect_or_start(state_dir: Path, launch: OwnerLaunch) -> trio.SocketStream:
    """Connect to the owner of ``state_dir``, starting one first if none is alive."""
    paths = OwnerPaths(state_dir)
    for _ in range(CONNECT_ATTEMPTS):
        # an unusable state dir is refused here (connect_owner checks it, its ancestors
        # included), not in the owner's log, and before anything is created
        stream = await connect_owner(state_dir)
        if stream is not None:
            return stream
        await trio.to_thread.run_sync(ensure_private_dir, paths.state_dir)
        start_fd = await trio.to_thread.run_sync(open_lock_fd, paths.start_lock)
        try:
            await trio.to_thread.run_sync(_flock_blocking, start_fd, START_SECONDS)
            stream = await connect_owner(state_dir)
            if stream is not None:
                return stream
            await _start_owner(paths, launch)
        finally:
            os.close(start_fd)
    raise OwnerStartError(f"could not reach a warm owner on {state_dir} after "
                          f"{CONNECT_ATTEMPTS} attempts")
