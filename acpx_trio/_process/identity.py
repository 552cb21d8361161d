"""Process identity: who is this process, and is it one of ours (by the ownership tags of
:mod:`acpx_trio._process.tags` it carries)?

Identity on Linux is (boot id, pid, start time in clock ticks): ``/proc/PID/stat`` field 22
never changes for a process and is not affected by wall-clock steps.  psutil's
``create_time()`` (start ticks plus the wall-clock boot time) is the portable fallback and is
compared with a tolerance.

Guarantees:

* **Secrets stay put**: reading another process's environment looks at the three tag keys only;
  no other variable is kept, logged or returned.
* **Race tolerant**: a process that vanishes mid-scan is left out; one whose pid was reused
  while we read it (start ticks changed under us) is left out too.
* **Fail closed**: when access to a process is denied, :attr:`ProcessInfo.inspectable` is
  ``False`` and its tags are ``None``, so nothing can treat it as ours.

Everything here is synchronous and may block on ``/proc`` reads: async callers run it in a
worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from acpx_trio._process.tags import tags_from_cmdline, tags_from_environ, tags_from_mapping

__all__ = [
    "CREATE_TIME_TOLERANCE",
    "ProcessInfo",
    "boot_id",
    "child_identity",
    "cmdline_from_bytes",
    "live_thread",
    "live_uid",
    "process_info",
    "read_proc",
    "read_start_ticks",
    "running_dir",
    "runs",
    "same_process",
    "self_identity",
    "signal_uid",
    "snapshot_processes",
    "stat_exiting",
    "stat_threads",
    "status_ids",
]

#: Largest difference (seconds) between two psutil create times of the same process.  Only
#: used when start ticks are unknown on either side; ticks are exact.
CREATE_TIME_TOLERANCE = 0.5

_PROC = "/proc"
_LINUX = sys.platform.startswith("linux")


def signal_uid(real: int, saved: int) -> int:
    """Whose process one with these real and saved uids is, as a signal from us sees it:
    ours when either is our uid (the kernel lets our uid signal it, and it can be us again
    at will: a root agent's child that set only its real uid to another user's, keeping
    root as its saved uid, is still ours), else its real uid (another user's process)."""
    me = os.getuid()
    return me if me in (real, saved) else real


def read_proc(path: str) -> bytes:
    """The whole file, with raw ``os`` calls (a scan opens thousands of ``/proc`` files:
    ``open()``'s buffered file objects cost more than the reads).  Raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    finally:
        os.close(fd)


def status_ids(pid: int) -> tuple[int | None, int | None]:
    """``(tgid, uid)`` from ``/proc/PID/status`` (Linux), the uid as :func:`signal_uid` sees
    it.  Raises ``OSError`` when it cannot be read (gone), ``ValueError`` when malformed."""
    tgid: int | None = None
    for line in read_proc(f"{_PROC}/{pid}/status").split(b"\n"):
        if line.startswith(b"Tgid:"):
            tgid = int(line.split()[1])
        elif line.startswith(b"Uid:"):
            fields = line.split()
            return tgid, signal_uid(int(fields[1]), int(fields[3]))
    return tgid, None


def live_uid(pid: int) -> int | None:
    """Whose process ``pid`` is now (:func:`signal_uid`); ``None`` when it is gone (or
    ``pid`` names a thread, not a process).  Blocking."""
    if _LINUX:  # one read: a reap asks this of every process it signals
        try:
            tgid, uid = status_ids(pid)
        except (OSError, ValueError, IndexError):
            return None
        return uid if tgid == pid else None
    try:
        uids = psutil.Process(pid).uids()
    except psutil.Error:
        return None
    return signal_uid(uids.real, uids.saved)


class ProcessInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What one scan saw of one process.

    ``lease_id``/``gateway_instance_id`` are the ownership tags, from the environment when it
    carries both, else from the command line (last occurrence of a flag wins); empty values are
    ``None``.  ``inspectable`` is ``False`` when access was denied (then no tags are known and
    the process is never treated as ours).  ``start_ticks`` is ``/proc/PID/stat`` field 22 on
    Linux, else ``None``.  ``zombie``: it has exited (or was caught exiting) and only waits to
    be reaped; it can no longer run, its cmdline and tags are empty, and the reaper treats it
    as gone.  ``pgid``/``sid``: its process group and session (``/proc/PID/stat`` fields 5
    and 6, readable for zombies too); ``None`` when unknown (off Linux, fakes).  ``owner``: the
    raw :data:`OWNER_ENV_KEY` value (environment only; parsed by ``owner_tag``).  ``uid``:
    whose process it is as a signal from us sees it (:func:`signal_uid`)."""

    pid: int
    ppid: int
    cmdline: tuple[str, ...]
    create_time: float
    uid: int | None
    start_ticks: int | None = None
    zombie: bool = False
    lease_id: str | None = None
    gateway_instance_id: str | None = None
    inspectable: bool = True
    pgid: int | None = None
    sid: int | None = None
    owner: str | None = None


def _group_ids(fields: list[str] | None) -> tuple[int | None, int | None]:
    """``(pgid, sid)`` from stat fields as cut by :func:`_read_stat_fields`."""
    if fields is None or len(fields) < 4:
        return None, None
    try:
        return int(fields[2]), int(fields[3])
    except ValueError:
        return None, None


def _env_tags(
    proc: psutil.Process, where: str | None = None
) -> tuple[str | None, str | None, str | None]:
    """The three tag variables of ``proc`` (read through the ``/proc`` directory ``where``:
    one of its threads); raises psutil errors (AccessDenied, NoSuchProcess)."""
    if _LINUX:
        try:
            with open(f"{where or f'{_PROC}/{proc.pid}'}/environ", "rb") as fh:
                data = fh.read()
        except PermissionError as exc:
            raise psutil.AccessDenied(proc.pid) from exc
        except (FileNotFoundError, ProcessLookupError) as exc:
            # ESRCH with /proc/PID still there: its memory is gone, it is exiting
            raise psutil.NoSuchProcess(proc.pid) from exc
        try:
            return tags_from_environ(data)
        finally:
            del data
    env: Mapping[str, str] | None = proc.environ()
    try:
        assert env is not None
        return tags_from_mapping(env)
    finally:
        env = None


def _read_stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` (or of its thread ``tid``) after ``comm`` (index 0 =
    field 3, state), or ``None``."""
    path = f"{_PROC}/{pid}/stat" if tid is None else f"{_PROC}/{pid}/task/{tid}/stat"
    try:
        data = read_proc(path)
    except OSError:
        return None
    # comm (field 2) may contain spaces and ')': everything after the LAST ')' is fixed-format.
    end = data.rfind(b")")
    if end < 0:
        return None
    return data[end + 1 :].decode("ascii", "replace").split()


def read_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22);
    ``None`` when the process does not exist, cannot be read, or this is not Linux."""
    state = read_stat_state(pid)
    return None if state is None else state[1]


def read_stat_state(pid: int) -> tuple[str, int, int | None] | None:
    """``(state letter, start ticks, thread count)`` from ``/proc/PID/stat`` (Linux): what
    :func:`running_dir` needs; ``None`` when it cannot be read."""
    if not _LINUX or pid <= 0:
        return None
    fields = _read_stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        # field 22 is index 19 once fields 1-2 are cut off
        return fields[0], int(fields[19]), stat_threads(fields)
    except ValueError:
        return None


_boot_id_cache: str | None = None


def boot_id() -> str | None:
    """``/proc/sys/kernel/random/boot_id`` (changes at every boot), or ``None`` off Linux."""
    global _boot_id_cache
    if _boot_id_cache is None and _LINUX:
        try:
            with open(f"{_PROC}/sys/kernel/random/boot_id", encoding="ascii") as fh:
                _boot_id_cache = fh.read().strip() or None
        except OSError:
            return None
    return _boot_id_cache


def self_identity() -> tuple[int, float]:
    """``(pid, psutil create time)`` of the current process: what a lease records as owner."""
    me = psutil.Process()
    return me.pid, me.create_time()


#: ``PF_EXITING`` in the flags of ``/proc/PID/stat`` (field 9): the process is being shut
#: down; its memory, hence its environment, may already be released.
_PF_EXITING = 0x4


def stat_exiting(fields: list[str]) -> bool:
    """Whether ``/proc/PID/stat`` fields (from the state on, as read here) say the process
    is being shut down (``PF_EXITING``): dead for every purpose of ours, even before it is
    a zombie."""
    try:
        return bool(int(fields[6]) & _PF_EXITING)
    except (IndexError, ValueError):
        return False


def live_thread(pid: int) -> int | None:
    """A thread of process ``pid`` other than its leader that neither is a zombie nor is
    exiting, or ``None``.  Blocking."""
    if not _LINUX:
        return None
    try:
        tids = [int(name) for name in os.listdir(f"{_PROC}/{pid}/task") if name.isdigit()]
    except OSError:
        return None
    for tid in tids:
        if tid == pid:
            continue
        fields = _read_stat_fields(pid, tid)
        if fields and fields[0] not in ("Z", "X", "x") and not stat_exiting(fields):
            return tid
    return None


def stat_threads(fields: list[str]) -> int | None:
    """The thread count in ``/proc/PID/stat`` fields (from the state on, as read here): the
    threads of the process not yet released, a zombie leader included."""
    try:
        return int(fields[17])  # field 20 is index 17 once fields 1-2 are cut off
    except (IndexError, ValueError):
        return None


def running_dir(pid: int, state: str, exiting: bool = False,
                threads: int | None = None) -> str | None:
    """The ``/proc`` directory to read process ``pid`` through while it runs (its state
    letter, ``PF_EXITING`` and, where known, its thread count (:func:`stat_threads`) as just
    read), or ``None`` when it no longer runs.

    Normally its own.  A leader that ended alone (``pthread_exit``) reads as a zombie (or as
    exiting), its memory, command line and environment unreadable through it, while the
    process runs on in its other threads: then one of those threads' directory (none is
    looked for when the count is one: the leader alone).  The one home of that rule for
    every reader (descriptions, tag scans, the running check).  Blocking."""
    where = f"{_PROC}/{pid}"
    if state not in ("Z", "X", "x") and not exiting:
        return where
    if threads == 1:
        return None
    thread = live_thread(pid)
    return None if thread is None else f"{where}/task/{thread}"


def cmdline_from_bytes(raw: bytes) -> tuple[str, ...]:
    """``/proc/PID/cmdline`` as arguments (undecodable bytes kept as surrogates)."""
    return tuple(x.decode("utf-8", "surrogateescape") for x in raw.split(b"\0")[:-1])


def _dying(proc: psutil.Process, ticks: int | None) -> ProcessInfo | None:
    """The process is exiting (already a zombie, or its memory is gone): describe it as dead,
    or ``None`` if it is already gone or its pid now holds another process."""
    fields = _read_stat_fields(proc.pid) if _LINUX else None
    if fields is None or len(fields) < 20 or ticks is None or int(fields[19]) != ticks:
        return None
    try:
        create_time = float(proc.create_time())
    except psutil.Error:
        create_time = 0.0
    pgid, sid = _group_ids(fields)
    return ProcessInfo(
        pid=proc.pid, ppid=int(fields[1]), cmdline=(), create_time=create_time, uid=None,
        start_ticks=ticks, zombie=True, pgid=pgid, sid=sid,
    )


def _read_cmdline(where: str) -> tuple[str, ...]:
    """The command line read through the ``/proc`` directory ``where``."""
    try:
        with open(f"{where}/cmdline", "rb") as fh:
            raw = fh.read()
    except PermissionError as exc:
        raise psutil.AccessDenied() from exc
    except OSError as exc:
        raise psutil.NoSuchProcess(0) from exc
    return cmdline_from_bytes(raw)


def _inspect(proc: psutil.Process) -> ProcessInfo | None:
    """Describe ``proc``; ``None`` when it vanished or its pid was reused during the read.

    A process caught exiting (its memory already released, or turned zombie while we read) is
    described as a zombie: it can no longer run, and its tags can no longer be read."""
    pid = proc.pid
    stat_before = _read_stat_fields(pid) if _LINUX else None
    ticks_before: int | None = None
    if stat_before is not None and len(stat_before) >= 20:
        with contextlib.suppress(ValueError):
            ticks_before = int(stat_before[19])
    pgid, sid = _group_ids(stat_before) if ticks_before is not None else (None, None)
    inspectable = True
    uid: int | None = None
    cmdline: tuple[str, ...] = ()
    lease: str | None = None
    gateway: str | None = None
    owner: str | None = None
    # a leader that ended alone while a thread runs on: read through that thread
    where = None
    if stat_before is not None and (stat_before[0] == "Z" or stat_exiting(stat_before)):
        where = running_dir(pid, stat_before[0], exiting=True)
    try:
        with proc.oneshot():
            ppid = proc.ppid()
            create_time = proc.create_time()
            zombie = where is None and proc.status() == psutil.STATUS_ZOMBIE
            try:
                uids = proc.uids()
                uid = signal_uid(uids.real, uids.saved)
            except psutil.AccessDenied:
                inspectable = False
            if not zombie:
                try:
                    cmdline = (tuple(proc.cmdline()) if where is None
                               else _read_cmdline(where))
                except psutil.AccessDenied:
                    inspectable = False
            if not zombie and inspectable:
                try:
                    lease, gateway, owner = _env_tags(proc, where)
                except psutil.AccessDenied:
                    inspectable = False
    except psutil.NoSuchProcess:  # ZombieProcess included: it is exiting under our eyes
        return _dying(proc, ticks_before)
    except psutil.AccessDenied:
        return ProcessInfo(
            pid=pid, ppid=0, cmdline=(), create_time=0.0, uid=None,
            start_ticks=ticks_before, inspectable=False, pgid=pgid, sid=sid,
        )
    if _LINUX:
        after = _read_stat_fields(pid)
        if after is None or len(after) < 20 or after[19] != str(ticks_before):
            return None  # gone, or pid reused while we looked: the data may mix two processes
        if stat_exiting(after) and running_dir(pid, after[0], exiting=True) is None:
            return _dying(proc, ticks_before)  # its memory and tags may have gone: not "untagged"
    if not inspectable:
        lease = gateway = owner = None
    elif lease is None or gateway is None:
        arg_lease, arg_gateway = tags_from_cmdline(cmdline)
        argv_complete = arg_lease is not None and arg_gateway is not None
        if argv_complete or (lease is None and gateway is None):
            lease, gateway = arg_lease, arg_gateway
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        cmdline=cmdline,
        create_time=create_time,
        uid=uid,
        start_ticks=ticks_before,
        zombie=zombie,
        lease_id=lease,
        gateway_instance_id=gateway,
        inspectable=inspectable,
        pgid=pgid,
        sid=sid,
        owner=owner,
    )


def runs(pid: int) -> bool:
    """Whether process ``pid`` runs now: it exists, is no zombie and is not exiting (a
    leader that ended alone while another thread runs on does run).  Blocking."""
    if pid <= 0:
        return False
    if not _LINUX:
        try:
            return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False
    fields = _read_stat_fields(pid)
    return fields is not None and running_dir(
        pid, fields[0], stat_exiting(fields), stat_threads(fields)) is not None


def process_info(pid: int) -> ProcessInfo | None:
    """Describe one process now; ``None`` if there is no such process (or ``pid <= 0``)."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return ProcessInfo(
            pid=pid, ppid=0, cmdline=(), create_time=0.0, uid=None,
            start_ticks=read_start_ticks(pid), inspectable=False,
        )
    return _inspect(proc)


def child_identity(pid: int) -> tuple[float, int | None] | None:
    """``(create_time, start_ticks)`` of ``pid``, our own child not yet reaped (a zombie
    counts); ``None`` if it is gone or was reaped before the reads ended (its pid may name
    another process by then).  Two reads and a ``waitid`` that reaps nothing, where
    :func:`process_info` reads everything."""
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # not ours, so not our child: nothing to vouch for
        return None
    ticks = read_start_ticks(pid)
    try:  # still our unreaped child now, so it was during the reads (reaping is final)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return create_time, ticks


def snapshot_processes(pids: Iterable[int] | None = None) -> list[ProcessInfo]:
    """Describe every process of the system (or only ``pids``), in pid order.

    Processes that exit or are replaced during the scan are left out; it never raises for a
    single process."""
    if pids is not None:
        found = (process_info(pid) for pid in sorted(set(pids)))
        return [info for info in found if info is not None]
    out: list[ProcessInfo] = []
    for proc in psutil.process_iter():
        try:
            info = _inspect(proc)
        except psutil.Error:
            continue
        if info is not None:
            out.append(info)
    out.sort(key=lambda p: p.pid)
    return out


def same_process(a: ProcessInfo, b: ProcessInfo) -> bool:
    """Whether two observations are of the same process (not just the same pid).

    Same pid and, when both start ticks are known, equal ticks; otherwise create times within
    :data:`CREATE_TIME_TOLERANCE`."""
    if a.pid != b.pid:
        return False
    if a.start_ticks is not None and b.start_ticks is not None:
        return a.start_ticks == b.start_ticks
    return abs(a.create_time - b.create_time) <= CREATE_TIME_TOLERANCE


