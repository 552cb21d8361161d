"""Ending a leaf cgroup's processes: the graceful end of a close (:func:`terminate_leaf`) and
the kill of a reap (:func:`kill_leaf`).

Guarantees:

* Both end only when the leaf is empty (``populated 0``; it is then removed) or their bound
  runs out (the leaf then stays, for the next reap, with what is left named).
* No process that is not a member of the leaf at the moment it is signalled is hit: each
  is pinned with a pidfd, then its membership re-read.
* **Another user's process is never signalled**, even inside our leaf (a descendant that
  became another user's: run by a root agent, or by ``sudo``), **nor this process** (moved
  in by someone else).  Every signal goes out with the leaf frozen (``cgroup.freeze``: no
  member runs, so none forks, execs or changes its uid between the check and the signal;
  a fatal signal still ends a frozen process).  ``cgroup.kill`` is written only when every
  member is ours to signal; otherwise ours get ``SIGKILL`` one by one (frozen, they cannot
  fork meanwhile) and the others keep the leaf (:attr:`LeafEnd.spared`).
* Cancellable: the leaf is then left as it is, thawed.

Blocking helpers read ``/proc`` and ``/sys`` (call them in a worker thread).  Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import threading
from collections.abc import AsyncIterator

import msgspec
import trio

from acpx_trio._process.cgroup import (
    gone,
    leaf_event,
    leaf_populated,
    member_of,
    remove_empty_leaf,
    tree_members,
)
from acpx_trio._process.identity import live_uid

__all__ = ["FREEZE_SECONDS", "LeafEnd", "kill_leaf", "settle_root", "terminate_leaf"]


class _Members(msgspec.Struct, kw_only=True):
    """What :func:`_signal_members` did: the pids ``signalled`` (with a pidfd each in
    ``fds``, pinning them, for the caller to wait on and close) and the members never
    signalled (``spared``: another user's processes, or this process)."""

    signalled: list[int] = []
    fds: list[int] = []
    spared: list[int] = []


def _ours(pid: int, me: int) -> bool | None:
    """Whether ``pid`` is ours to signal: ours by
    :func:`~acpx_trio._process.identity.live_uid`, not this process (``None``: gone)."""
    uid = live_uid(pid)
    return None if uid is None else uid == me and pid != os.getpid()


def _signal_members(leaf: str, sig: int) -> _Members:
    """Send ``sig`` to every process in ``leaf`` and below that is ours (its real or saved
    uid is ours).

    A pid is pinned with a pidfd first and signalled only if, after that, it is still a
    member and still ours: a member that exited and whose pid was reused is never hit, nor
    is another user's process (a descendant that changed its uid), nor this process.  Call
    it with the leaf frozen (:func:`_frozen`) so that no member changes its uid between the
    check and the signal.  Blocking."""
    me = os.getuid()
    out = _Members()
    for pid in tree_members(leaf):
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone (or pidfd unavailable: cgroup.kill alone then)
            continue
        try:
            if not member_of(pid, leaf):
                continue
            if not _ours(pid, me):
                if member_of(pid, leaf):  # not a pid reused by a non-member since
                    out.spared.append(pid)
                continue
            signal.pidfd_send_signal(fd, sig)
            out.signalled.append(pid)
            out.fds.append(fd)
            fd = -1  # the caller's now
        except OSError:
            pass
        finally:
            if fd != -1:
                os.close(fd)
    return out


_IN_MODIFY = 0x2
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
#: idle inotify instances kept for the next wait (more are closed in a worker thread)
_KEEP_IDLE = 8


class _Watches:
    """The process's inotify instances for waits on ``cgroup.events``.  Closing an instance
    waits for the kernel's SRCU grace period (8-25 ms measured, whatever the load), which on
    the event loop would stall every task: a finished wait removes its watch instead and
    keeps the instance for the next one; a surplus instance is closed in a worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[int] = []
        self._libc: ctypes.CDLL | None = None

    def after_fork(self) -> None:
        """In a forked child: the parent's instances are not the child's to use (their events
        would go to either process); the copies are closed (the parent's stay open, so this
        is no instance's last close: no grace period to wait for) and the lock made anew."""
        self._lock = threading.Lock()
        idle, self._idle = self._idle, []
        for fd in idle:
            with contextlib.suppress(OSError):
                os.close(fd)

    def watch(self, path: str) -> tuple[int, int] | None:
        """An instance watching ``path`` for changes: ``(fd, watch)``; ``None`` where inotify
        is unavailable (or the instance limit is reached)."""
        with self._lock:
            fd = self._idle.pop() if self._idle else -1
            try:
                self._libc = libc = self._libc or ctypes.CDLL(None, use_errno=True)
            except OSError:
                return None
        try:
            if fd < 0:
                fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
            if fd < 0:
                return None
        except AttributeError:
            return None
        wd = int(libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY))
        if wd < 0:
            self.release(fd, None)
            return None
        return fd, wd

    def release(self, fd: int, wd: int | None) -> None:
        """Done with ``fd``: its watch removed, its queue drained, the instance kept (or
        closed in a worker thread).  Never blocks on the kernel's grace period."""
        if wd is not None and self._libc is not None:
            self._libc.inotify_rm_watch(fd, wd)
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):  # the watch's last events and its removal notice
                pass
        with self._lock:
            if len(self._idle) < _KEEP_IDLE:
                self._idle.append(fd)
                return
        trio.lowlevel.notify_closing(fd)
        trio.lowlevel.start_thread_soon(functools.partial(os.close, fd), lambda _: None)


_WATCHES = _Watches()
os.register_at_fork(after_in_child=lambda: _WATCHES.after_fork())
#: the thaws' own worker threads, per Trio run: a thaw never waits behind other work
_THAW_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("thaw")


def _thaw_limiter() -> trio.CapacityLimiter:
    try:
        return _THAW_LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(64)
        _THAW_LIMITER.set(limiter)
        return limiter


async def _wait_empty(leaf: str, seconds: float) -> bool:
    """Wait until ``leaf`` holds no process (or is gone), at most ``seconds``; whether it is
    empty.  Cancellable."""
    return await _wait_event(leaf, "populated", False, seconds)


async def _wait_event(leaf: str, name: str, want: bool, seconds: float) -> bool:
    """Wait until field ``name`` of ``cgroup.events`` reads ``want`` or the leaf is gone
    (there is then nothing to wait for), at most ``seconds``; whether so.  Woken by the
    kernel's change notice on ``cgroup.events`` (a short re-read interval where inotify is
    missing).  Cancellable.  (``cgroup.events`` is a kernel attribute read from memory under
    no cgroup lock, 0.06-0.19 ms measured while migrations run: read in this thread.)"""
    await trio.lowlevel.checkpoint()

    def reached() -> bool:
        value = leaf_event(leaf, name)
        return value is None or value == want

    if reached():
        return True
    watch = _WATCHES.watch(os.path.join(leaf, "cgroup.events"))
    try:
        with trio.move_on_after(seconds):
            await trio.lowlevel.checkpoint()  # the scope always has a cancel point
            delay = 0.001
            while not reached():  # read after the watch is set: no change is missed
                if watch is None:
                    await trio.sleep(delay)
                    delay = min(delay * 2, 0.05)
                    continue
                await trio.lowlevel.wait_readable(watch[0])
                with contextlib.suppress(BlockingIOError):
                    os.read(watch[0], 4096)
            return True
        return reached()
    finally:
        if watch is not None:
            _WATCHES.release(*watch)


def _set_frozen(leaf: str, frozen: bool) -> None:
    """Write ``cgroup.freeze``.  Blocking: the write waits for the kernel's cgroup lock, which
    a migration into any cgroup holds for an RCU grace period (13-16 ms measured here)."""
    with contextlib.suppress(OSError), open(
            os.path.join(leaf, "cgroup.freeze"), "w", encoding="ascii") as fh:
        fh.write("1" if frozen else "0")


def _freeze(leaf: str) -> bool:
    """Start freezing ``leaf`` unless this process is in it (it would freeze itself);
    whether it did.  Blocking."""
    if member_of(os.getpid(), leaf):
        return False
    _set_frozen(leaf, True)
    return True


#: How long a leaf is given to freeze before it is acted on anyway (a member in an
#: uninterruptible wait holds the freeze up; frozen here in 0.1-0.2 ms).
FREEZE_SECONDS = 0.5


@contextlib.asynccontextmanager
async def _frozen(leaf: str) -> AsyncIterator[None]:
    """The leaf frozen for the body (no member runs: none forks, execs or changes its uid;
    a fatal signal still ends one), thawed after it whatever happens (cancellation
    included).  If the freeze does not complete within :data:`FREEZE_SECONDS` the body runs
    anyway, and so it does unfrozen when this process is in the leaf (someone moved it in:
    it would freeze itself).  The event loop never waits on the kernel's cgroup lock."""
    froze = await trio.to_thread.run_sync(_freeze, leaf)
    try:
        if froze:
            await _wait_event(leaf, "frozen", True, FREEZE_SECONDS)
        yield
    finally:
        if froze:
            with trio.CancelScope(shield=True):  # a short, bounded write: never skipped
                await trio.to_thread.run_sync(_set_frozen, leaf, False, limiter=_thaw_limiter())


def _write_kill(leaf: str) -> _Members:
    """``cgroup.kill`` on ``leaf`` if every member is ours to signal (the members killed);
    else ``SIGKILL`` to each member that is, pinned (:func:`_signal_members`), and the
    others reported as ``spared``.  Call it with the leaf frozen.  Blocking."""
    members = tree_members(leaf)
    me = os.getuid()
    if any(_ours(pid, me) is False for pid in members):
        return _signal_members(leaf, signal.SIGKILL)
    try:
        with open(os.path.join(leaf, "cgroup.kill"), "w", encoding="ascii") as fh:
            fh.write("1")
    except OSError as exc:
        if not gone(exc):  # removed meanwhile: its members had exited
            raise
    return _Members(signalled=members)


class LeafEnd(msgspec.Struct, frozen=True, kw_only=True):
    """How a leaf ended: ``members`` seen in it (signalled or killed), ``emptied``: it held
    no process at the end (then it was removed), ``left``: members still in it if not,
    ``spared``: those of them never signalled (another user's processes, or this process)."""

    members: list[int] = []
    emptied: bool = True
    left: list[int] = []
    spared: list[int] = []


async def _wait_signalled(leaf: str, sent: _Members, seconds: float) -> bool:
    """Wait, at most ``seconds``, until what ``sent`` signalled has exited: the leaf empty,
    or (when a process not ours to signal keeps it populated) each pinned process gone.
    Whether the leaf is empty.  Closes the pidfds."""
    fds = sent.fds
    try:
        if not sent.spared:
            return await _wait_empty(leaf, seconds)
        with trio.move_on_after(seconds):
            await trio.lowlevel.checkpoint()  # the scope always has a cancel point
            for fd in fds:
                await trio.lowlevel.wait_readable(fd)  # a pidfd reads ready once it exited
        return not leaf_populated(leaf)
    finally:
        for fd in fds:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


async def _kill(leaf: str, seconds: float, seen: list[int]) -> LeafEnd:
    killed = _Members()
    if leaf_populated(leaf):
        async with _frozen(leaf):
            killed = await trio.to_thread.run_sync(_write_kill, leaf)
    members = list(dict.fromkeys([*seen, *killed.signalled]))
    if not await _wait_signalled(leaf, killed, seconds):
        left = await trio.to_thread.run_sync(tree_members, leaf)
        return LeafEnd(members=members, emptied=False, left=left,
                       spared=[p for p in killed.spared if p in left])
    if not await trio.to_thread.run_sync(remove_empty_leaf, leaf):  # someone moved a process in
        left = await trio.to_thread.run_sync(tree_members, leaf)
        return LeafEnd(members=members, emptied=False, left=left)
    return LeafEnd(members=members)


async def kill_leaf(leaf: str, seconds: float) -> bool:
    """Kill every process in ``leaf`` and below now (``cgroup.kill``), wait until it is empty
    (at most ``seconds``), then remove it and its sub-cgroups (and the gateway's parent when
    it was the last leaf).  ``True`` when the leaf is gone or empty; ``False`` leaves it in
    place for the next reap.  Another user's process in it (a descendant that changed its
    uid) is never signalled: ours are killed one by one and the leaf stays (``False``).
    Cancellable (the leaf is then left as it is, thawed)."""
    if leaf_populated(leaf) is None:
        await trio.lowlevel.checkpoint()
        return True
    return (await _kill(leaf, seconds, [])).emptied


async def settle_root(proc: trio.Process, leaf: str, seconds: float) -> None:
    """Make sure the leaf holds everything of a launch whose root ``proc`` (our child,
    started by :func:`~acpx_trio._process.cgroup.shim_argv`) may not have entered it yet:
    wait, at most ``seconds``, until the root is in the leaf or has exited; if it is still
    outside then, kill it (SIGKILL).  Outside the leaf the root is still the shim: it has
    run nothing of the command and forked nothing (it enters, then ``exec``s), so once it
    is in the leaf or dead, whatever the launch ever forks is a member of the leaf.
    Without this a close right after the spawn found the leaf empty, removed nothing and
    signalled nothing, and the root entered and forked afterwards.  Cancellable (the root
    is then left as it is)."""
    if proc.returncode is not None or leaf_populated(leaf):
        # a populated leaf: the root entered it (nothing else enters a launch's leaf)
        await trio.lowlevel.checkpoint()
        return
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:

            async def exited() -> None:
                await proc.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(exited)
            await _wait_event(leaf, "populated", True, seconds)
            nursery.cancel_scope.cancel()
    if proc.returncode is None and not leaf_populated(leaf):
        with contextlib.suppress(OSError):
            proc.kill()  # still the shim, outside: nothing of it can be in the leaf
        with trio.move_on_after(seconds):  # the close's caller reaps it if this runs out
            await proc.wait()


async def terminate_leaf(leaf: str, grace: float, seconds: float) -> LeafEnd:
    """The graceful end of a leaf: SIGTERM to every member, one shared ``grace`` for them
    all to exit, then ``cgroup.kill`` for whatever is left (forks in flight included) and at
    most ``seconds`` more for the leaf to empty; then it is removed.  A leaf that does not
    empty stays (``emptied=False``) for the next reap.  Every signal goes out with the leaf
    frozen, so a member cannot change its uid between the check and the signal: another
    user's process (or this process) is never signalled, and keeps the leaf (``spared``).
    Cancellable."""
    first = _Members()
    if leaf_populated(leaf):
        async with _frozen(leaf):
            first = await trio.to_thread.run_sync(_signal_members, leaf, signal.SIGTERM)
    if first.signalled:
        await _wait_signalled(leaf, first, grace)
    return await _kill(leaf, seconds, first.signalled)
