"""Blocking OS primitives of the reaper: identity-checked signals and exit watches.

The ``*_sync`` helpers block briefly on ``/proc`` reads and syscalls; the async layer calls
them through ``trio.to_thread.run_sync``.  :func:`wait_exit` is the async, event-driven exit
wait (pidfd + :func:`trio.lowlevel.wait_readable`, polling fallback).

Guarantees: a signal is delivered only to the very process described by a
:class:`~acpx_trio._process.identity.ProcessInfo` (pidfd opened first, identity verified *after*
opening it, signal sent through the pidfd, so a recycled pid cannot receive it); never to our
own pid, pid 1, a zombie, or a process of another uid.  Children are reaped only by pidfd or
specific pid, never with ``waitpid(-1)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Collection, Mapping, Sequence

import psutil  # type: ignore[import-untyped,unused-ignore]
import trio

from acpx_trio._process.identity import (
    CREATE_TIME_TOLERANCE,
    ProcessInfo,
    live_uid,
    read_stat_state,
    running_dir,
    status_ids,
)
from acpx_trio._process.scan import chase_new_pids, last_pid, newest_pids

__all__ = [
    "group_members_sync",
    "kill_groups_sync",
    "kill_process_sync",
    "open_exit_watches",
    "reap_child",
    "still_running",
    "wait_exit",
]

#: ``pgid -> [(pid, uid), ...]``: who may be in each process group (see kill_groups_sync)
GroupMembers = Mapping[int, Sequence[tuple[int, int | None]]]

_HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def still_running(info: ProcessInfo) -> bool:
    """Whether the live process with ``info.pid`` is ``info`` and has not exited.

    A zombie, a vanished pid or a pid now held by another process: ``False``; but a leader
    that ended alone while another of its threads runs on is the process, running."""
    st = read_stat_state(info.pid)
    if st is not None:
        state, ticks, threads = st
        if running_dir(info.pid, state, threads=threads) is None:
            return False
        if info.start_ticks is not None or state in ("Z", "X", "x"):  # (a leader that
            return info.start_ticks is None or ticks == info.start_ticks  # ended alone)
    elif info.start_ticks is not None:
        return False  # ticks were readable when we looked, so the process is gone
    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return bool(abs(proc.create_time() - info.create_time) <= CREATE_TIME_TOLERANCE)
    except psutil.Error:
        return False


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; ``None`` when pidfds are unavailable.  Raises
    ``ProcessLookupError`` when there is no such process."""
    if not _HAS_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:
        return None  # ENOSYS, EPERM in a sandbox, ...: fall back to psutil


def kill_process_sync(info: ProcessInfo, sig: int, self_pid: int, self_uid: int) -> bool:
    """Send ``sig`` to ``info`` if, and only if, it is still that live process and ours.

    Returns ``True`` when the signal was delivered; ``False`` when the process is gone, a
    zombie, replaced (pid reuse), of another uid, our own pid or pid 1.  Never raises for
    those; unexpected ``OSError``s (other than ESRCH/EPERM) propagate."""
    if info.pid <= 1 or info.pid == self_pid:
        return False
    if info.uid is not None and info.uid != self_uid:
        return False
    try:
        fd = _open_pidfd(info.pid)
    except ProcessLookupError:
        return False
    try:
        if fd is not None:
            # The fd pins whatever held the pid when it was opened; if that is ``info`` now
            # (checked after opening), it was ``info`` then, and the signal cannot stray.
            if not still_running(info) or live_uid(info.pid) != self_uid:
                return False
            try:
                signal.pidfd_send_signal(fd, sig)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        try:
            proc = psutil.Process(info.pid)  # remembers the create time it saw
        except psutil.Error:
            return False
        if not still_running(info) or live_uid(info.pid) != self_uid:
            return False
        try:
            proc.send_signal(sig)  # psutil refuses if the pid was recycled since
        except psutil.Error:
            return False
        return True
    finally:
        if fd is not None:
            os.close(fd)


def group_members_sync(pgids: Collection[int]) -> dict[int, list[tuple[int, int, str]]]:
    """``pgid -> [(pid, uid, state), ...]`` for every process in one of ``pgids``, from one
    ``/proc`` pass (the newest pids first, then every pid allocated during the listing,
    chased after it: a pid hopper is among them).
    Linux only (empty elsewhere).  Blocking; never raises."""
    wanted = set(pgids)
    out: dict[int, dict[int, tuple[int, int, str]]] = {g: {} for g in wanted}
    before = last_pid()
    try:
        listed = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return {}

    def visit(pid: int) -> None:
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 4096)
            finally:
                os.close(fd)
            fields = data[data.rfind(b")") + 1 :].split()
            pgid = int(fields[2])
            if pgid not in wanted:
                return
            # whose it is as a signal sees it (real or saved uid), as every other check reads
            # it: the effective uid (the owner of ``/proc/PID``) would count a member that
            # made its real and saved uids another user's as ours
            tgid, uid = status_ids(pid)
            if tgid is not None and tgid != pid:
                return  # a thread (a pid chased after the listing): its process is listed
            out[pgid][pid] = (pid, -1 if uid is None else uid,  # unreadable: not ours
                              fields[0].decode("ascii", "replace"))
        except (OSError, ValueError, IndexError):
            return

    for pid in dict.fromkeys([*newest_pids(), *listed]):
        visit(pid)
    chase_new_pids(before, visit)  # members forked during the listing (after it)
    return {g: list(m.values()) for g, m in out.items()}


def kill_groups_sync(
    pgids: Collection[int], sig: int, self_pid: int, self_uid: int,
    members: GroupMembers | Callable[[list[int]], GroupMembers] | None = None,
) -> list[int]:
    """``killpg(pgid, sig)`` for each group that exists, is not our own, and whose every
    member we can see is ours (our uid, not our own process, not pid 1); returns the group
    ids signalled.  ``members`` (``pgid -> [(pid, uid), ...]``): who may be in each group,
    from a listing the caller has proved complete for these groups (a
    :class:`~acpx_trio._process.shared_scan.TagScan` pass lists every member of its
    candidates' groups and sessions), or a function making that listing for the groups
    that still exist (called only when one does); ``None``: one ``/proc`` pass here, for
    those groups.  A group with no member left is skipped before any listing: it has
    nothing to signal, and nothing can join it again (a process joins only an existing
    group, or starts one whose id is its own pid).

    ``killpg`` reaches every member at once, including children forked while it runs (the
    kernel makes a concurrent ``fork`` retry), which a pid-by-pid kill cannot.  A group id
    cannot be reused while any member (zombies included) exists.  A member hopping between
    pids may be missed by the listing: that member is what ``killpg`` is for.  Never raises
    for a vanished group."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        own = os.getpgid(0)
    except OSError:
        return []
    candidates = []
    for pgid in dict.fromkeys(pgids):
        if pgid <= 1 or pgid in (self_pid, own):
            continue
        try:
            os.killpg(pgid, 0)  # does the group exist at all?
        except OSError:
            continue
        candidates.append(pgid)
    if not candidates:
        return []
    if members is None:
        listed = group_members_sync(candidates)
        members = {g: [(pid, uid) for pid, uid, _ in m] for g, m in listed.items()}
    elif callable(members):
        members = members(candidates)
    done = []
    for pgid in candidates:
        if any(pid in (1, self_pid) or uid != self_uid for pid, uid in members.get(pgid, ())):
            continue
        try:
            os.killpg(pgid, sig)
        except OSError:
            continue
        done.append(pgid)
    return done


def _is_our_zombie(info: ProcessInfo) -> bool:
    st = read_stat_state(info.pid)
    if st is None:
        return False
    state, ticks, _threads = st
    return state == "Z" and (info.start_ticks is None or ticks == info.start_ticks)


def reap_child(pid: int, fd: int | None) -> None:
    """Collect the exit status of our exited child ``pid`` (via its pidfd when given).

    Never blocks, never raises, never touches another child."""
    with contextlib.suppress(ChildProcessError, OSError):
        if fd is not None and hasattr(os, "P_PIDFD"):
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        else:
            os.waitpid(pid, os.WNOHANG)


def open_exit_watches(
    infos: list[ProcessInfo], own_children: set[int]
) -> tuple[dict[int, int], list[ProcessInfo]]:
    """Split ``infos`` into pidfds to wait on and live processes to poll; drop those gone.

    Exited children of ours (pids in ``own_children``) found already dead are reaped here.
    The caller owns (and must close) every returned fd."""
    watches: dict[int, int] = {}
    polled: list[ProcessInfo] = []
    try:
        for p in infos:
            if p.pid in watches:
                continue
            try:
                fd = _open_pidfd(p.pid)
            except ProcessLookupError:
                continue
            if still_running(p):
                if fd is None:
                    polled.append(p)
                else:
                    watches[p.pid] = fd
                continue
            try:
                if p.pid in own_children and _is_our_zombie(p):
                    reap_child(p.pid, fd)
            finally:
                if fd is not None:
                    os.close(fd)
    except BaseException:
        for fd in watches.values():
            os.close(fd)
        raise
    return watches, polled


_POLL_INTERVAL = 0.01


async def wait_exit(
    infos: Sequence[ProcessInfo], within: float, *, self_pid: int, reap_children: bool
) -> set[int]:
    """Wait up to ``within`` seconds for ``infos`` to be gone; returns the pids still alive.

    Event-driven through pidfds (a poll every 10 ms where pidfds are unavailable); a zombie
    or a recycled pid counts as gone; ``within <= 0`` checks once without waiting.  With
    ``reap_children`` our own exited children are reaped by pidfd / specific pid.
    Cancellable; every pidfd it opened is closed on any exit."""
    if not infos:
        return set()
    own = {p.pid for p in infos if p.ppid == self_pid} if reap_children else set()
    watches, polled = await trio.to_thread.run_sync(open_exit_watches, list(infos), own)
    alive = set(watches) | {p.pid for p in polled}
    try:
        if alive and within > 0:

            async def watch(pid: int, fd: int) -> None:
                await trio.lowlevel.wait_readable(fd)
                alive.discard(pid)
                if pid in own:
                    reap_child(pid, fd)

            async def poll() -> None:
                pending = list(polled)
                while pending:
                    await trio.sleep(_POLL_INTERVAL)
                    still = await trio.to_thread.run_sync(_filter_running, pending)
                    for p in pending:
                        if p not in still:
                            alive.discard(p.pid)
                    pending = still

            with trio.move_on_after(within):
                async with trio.open_nursery() as nursery:
                    for pid, fd in watches.items():
                        nursery.start_soon(watch, pid, fd)
                    if polled:
                        nursery.start_soon(poll)
    finally:
        for fd in watches.values():
            os.close(fd)
    return alive


def _filter_running(infos: list[ProcessInfo]) -> list[ProcessInfo]:
    return [p for p in infos if still_running(p)]
