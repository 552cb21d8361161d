"""Fast process scans straight from ``/proc`` (Linux): a few reads per process and no
psutil round trips, newest pids first, so a pid hopper (``setsid`` + ``fork``/``_exit``
forever) is seen between two hops.  Same semantics and fail-closed rules as
:func:`acpx_trio._process.identity.process_info`; psutil elsewhere.  Blocking: async callers
use a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from acpx_trio._process.identity import (
    _LINUX,
    _PROC,
    ProcessInfo,
    _group_ids,
    _read_stat_fields,
    cmdline_from_bytes,
    process_info,
    read_proc,
    running_dir,
    snapshot_processes,
    stat_exiting,
    stat_threads,
    status_ids,
)
from acpx_trio._process.tags import tags_from_cmdline, tags_from_environ

__all__ = [
    "NEWEST_PIDS", "PidWindow", "chase_new_pids", "fast_process_info", "fast_snapshot",
    "last_pid", "newest_pids", "open_window", "window_holds",
]

_clk_tck: int | None = None


_boot: tuple[float, float] = (-1.0, 0.0)  # (monotonic time read, psutil boot time)


def _create_time_from_ticks(ticks: int) -> float:
    global _clk_tck, _boot
    if _clk_tck is None:
        _clk_tck = int(os.sysconf("SC_CLK_TCK"))
    now = time.monotonic()
    if not 0 <= now - _boot[0] < 1.0:  # re-read once a second (a scan reads it thousands
        _boot = (now, float(psutil.boot_time()))  # of times; a clock step moves it)
    return _boot[1] + ticks / _clk_tck


def fast_process_info(
    pid: int, *, stat: list[str] | None = None, environ: bytes | None = None
) -> ProcessInfo | None:
    """:func:`process_info` straight from ``/proc`` (Linux), a few reads and no psutil
    round trips: fast enough to see a pid hopper between two hops.  Same semantics and the
    same fail-closed rules; ``None`` if the process is gone or its pid was reused meanwhile.
    Falls back to :func:`process_info` off Linux.

    ``stat`` (its ``/proc/PID/stat`` fields, from the state on) and ``environ`` (its
    environment, read after them through the directory :func:`running_dir` gave for them),
    when the caller has just read them, are used instead of being read again (a tag scan
    reads both to decide): the closing ``stat`` read still proves that everything came from
    one process."""
    if not _LINUX:
        return process_info(pid)
    if pid <= 0:
        return None
    fields = _read_stat_fields(pid) if stat is None else stat
    if stat is None:
        environ = None  # read after a stat read of our own, not before it
    if fields is None or len(fields) < 20:
        return None
    try:
        ticks, ppid = int(fields[19]), int(fields[1])
    except ValueError:
        return None
    pgid, sid = _group_ids(fields)
    create_time = _create_time_from_ticks(ticks)
    where = running_dir(pid, fields[0], stat_exiting(fields), stat_threads(fields))
    if where is None:
        return ProcessInfo(pid=pid, ppid=ppid, cmdline=(), create_time=create_time, uid=None,
                           start_ticks=ticks, zombie=True, pgid=pgid, sid=sid)
    try:
        tgid, uid = status_ids(pid)
        if tgid != pid:  # ``/proc/TID`` of a thread answers too, but it is no process
            return None
        raw = read_proc(f"{where}/cmdline")
        env = read_proc(f"{where}/environ") if environ is None else environ
    except PermissionError:
        return ProcessInfo(pid=pid, ppid=ppid, cmdline=(), create_time=create_time, uid=None,
                           start_ticks=ticks, inspectable=False, pgid=pgid, sid=sid)
    except (OSError, ValueError):
        return None
    try:
        lease, gateway, owner = tags_from_environ(env)
    finally:
        del env
    cmdline = cmdline_from_bytes(raw)
    after = _read_stat_fields(pid)
    if after is None or len(after) < 20 or after[19] != fields[19]:
        return None
    if running_dir(pid, after[0], stat_exiting(after), stat_threads(after)) is None:
        # exited, or exiting (its memory may be gone, so its environment read empty), while
        # we read, with no thread left running: dead, its tags no longer count
        return ProcessInfo(pid=pid, ppid=ppid, cmdline=(), create_time=create_time, uid=None,
                           start_ticks=ticks, zombie=True, pgid=pgid, sid=sid)
    if (lease is None or gateway is None) and not raw:
        pass  # a kernel thread or an exiting process: no argv to consult
    elif lease is None or gateway is None:
        arg_lease, arg_gateway = tags_from_cmdline(cmdline)
        if (arg_lease is not None and arg_gateway is not None) or (
            lease is None and gateway is None
        ):
            lease, gateway = arg_lease, arg_gateway
    return ProcessInfo(
        pid=pid, ppid=ppid, cmdline=cmdline, create_time=create_time, uid=uid,
        start_ticks=ticks, lease_id=lease, gateway_instance_id=gateway,
        inspectable=uid is not None, pgid=pgid, sid=sid,
        owner=owner if uid is not None else None,
    )


#: How many of the most recently allocated pids :func:`newest_pids` names.
NEWEST_PIDS = 64


def last_pid() -> int | None:
    """The pid number this pid namespace allocated last (Linux
    ``/proc/sys/kernel/ns_last_pid``), or ``None``."""
    try:
        with open(f"{_PROC}/sys/kernel/ns_last_pid", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


_pid_max: int | None = None


def _max_pid() -> int:
    global _pid_max
    if _pid_max is None:
        try:
            with open(f"{_PROC}/sys/kernel/pid_max", "rb") as fh:
                _pid_max = int(fh.read())
        except (OSError, ValueError):
            _pid_max = 4_194_304
    return _pid_max


def newest_pids(count: int = NEWEST_PIDS) -> list[int]:
    """The ``count`` most recently allocated pid numbers, newest first (Linux
    ``/proc/sys/kernel/ns_last_pid``; empty elsewhere).  A pid hopper is always among them,
    and probing them takes microseconds, whatever the size of ``/proc`` (a hopper leaves a
    trail of zombies that can make a full listing slow)."""
    last = last_pid()
    if last is None:
        return []
    return [pid for pid in range(last, last - count, -1) if pid > 1]


def _cyclic_range(after: int, upto: int) -> list[int]:
    """Pid numbers allocated after ``after`` up to ``upto`` in allocation order (the
    allocator is cyclic: past ``pid_max`` it wraps to low numbers)."""
    if upto >= after:
        return list(range(after + 1, upto + 1))
    return [*range(after + 1, _max_pid()), *range(2, upto + 1)]


#: At most this many pid numbers are probed by one :func:`chase_new_pids` (a machine
#: forking faster than that during a scan gets a partial chase; callers scan again).
CHASE_CAP = 8192


def chase_new_pids(since: int | None, visit: Callable[[int], None]) -> bool:
    """Call ``visit(pid)`` for every pid number allocated after ``since`` (a
    :func:`last_pid` value read earlier), oldest first, re-reading :func:`last_pid` until
    it stops moving, so a process that forks and exits while we probe (a pid hopper) is
    followed hop by hop: it always holds one live pid, which is either probed or newer than
    the last one probed.  With ``since=None`` it starts at the :data:`NEWEST_PIDS` newest.
    Returns ``False`` when the chase was cut short by :data:`CHASE_CAP` (or Linux's
    counter is unreadable).  Blocking."""
    top = last_pid()
    if top is None:
        return False
    after = max(top - NEWEST_PIDS, 1) if since is None else since
    probed = 0
    while True:
        span = _cyclic_range(after, top)
        if probed + len(span) > CHASE_CAP:
            return False
        for pid in span:
            visit(pid)
        probed += len(span)
        after = top
        now = last_pid()
        if now is None or now == top:
            return now is not None
        top = now


def fast_snapshot(pids: Iterable[int] | None = None) -> list[ProcessInfo]:
    """:func:`snapshot_processes` built with :func:`fast_process_info`, the newest pids
    read first (Linux; the psutil scan elsewhere).  Sorted by pid; never raises for one
    process."""
    if not _LINUX:
        return snapshot_processes(pids)
    found: dict[int, ProcessInfo] = {}
    if pids is None:
        for pid in newest_pids():
            if (info := fast_process_info(pid)) is not None:
                found[pid] = info
        try:
            pids = [int(n) for n in os.listdir(_PROC) if n.isdigit()]
        except OSError:
            return snapshot_processes()
    for pid in sorted(set(pids) - set(found), reverse=True):
        if (info := fast_process_info(pid)) is not None:
            found[pid] = info
    return sorted(found.values(), key=lambda p: p.pid)


# --------------------------------------------------------------------------- pid windows
#
# Where everything started after a moment can be: Linux allocates pid numbers cyclically,
# each one after the previous (``ns_last_pid``), skipping numbers in use and wrapping from
# ``pid_max`` to 300.  So every process created after a moment holds a number in the cyclic
# range after the ``ns_last_pid`` read then, *unless the allocator went all the way round*
# meanwhile.  Going round takes at least ``pid_max - 300`` allocations minus the numbers in
# use (at most the tasks alive then plus the ones created since); every successful
# allocation is a fork counted by the kernel (``processes`` in ``/proc/stat``, counted for
# every task on the machine, so it can only over-count ours).  The window is therefore
# trusted when ``2 * forks since + tasks then < pid_max - 300`` and the range is short
# enough to probe (:data:`CHASE_CAP`).  Not covered: a fork that fails after its pid was
# allocated (a ``pids.max`` limit) advances the allocator uncounted, so a fork bomb held at
# its limit for ``pid_max`` failures could hide a process outside the window; the sweeps'
# full tag scans remain the net for that (README: limits).


class PidWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A moment to look after: ``mark`` (``ns_last_pid`` then), ``forks`` (the kernel's fork
    count then) and ``tasks`` (tasks alive then)."""

    mark: int
    forks: int
    tasks: int


def _forks_and_tasks() -> tuple[int, int] | None:
    try:
        fd = os.open(f"{_PROC}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        at = stat.index(b"\nprocesses ") + 11
        forks = int(stat[at:stat.index(b"\n", at)])
        with open(f"{_PROC}/loadavg", "rb") as fh:
            tasks = int(fh.read().split()[3].split(b"/")[1])
    except (OSError, ValueError, IndexError):
        return None
    return forks, tasks


def open_window() -> PidWindow | None:
    """A :class:`PidWindow` of now (``None`` off Linux or when a counter is unreadable).
    A few kernel attribute reads: cheap enough for the event loop."""
    if not _LINUX:
        return None
    mark = last_pid()
    counts = _forks_and_tasks()
    if mark is None or counts is None:
        return None
    return PidWindow(mark=mark, forks=counts[0], tasks=counts[1])


def window_holds(window: PidWindow) -> bool:
    """Whether every process created since ``window`` still holds a pid number in the cyclic
    range after ``window.mark``, and that range is short enough to probe (see above)."""
    counts = _forks_and_tasks()
    if counts is None:
        return False
    since = counts[0] - window.forks
    return 0 <= since <= CHASE_CAP and 2 * since + window.tasks < _max_pid() - 300
