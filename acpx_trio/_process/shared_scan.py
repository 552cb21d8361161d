"""One ``/proc`` pass for many leases: the candidate listing of
:func:`acpx_trio._process.tools.lease_cleanup_deps`, shared by every cleanup that asks for a
scan in the same scheduling window.

When 50 sessions close at once, each cleanup used to read every process's environment for
its own lease tag (one full pass per lease and per wave).  Here the cleanups that ask while
a scan is running (or in the same scheduling step) are served by the *next* single pass,
which looks for all their tags at once.  A pass always starts after every request it serves
was made, so each caller gets a listing taken after it asked (what the reaper's waves need:
a re-scan must see what was forked during the previous wave).

The listing returned to each caller is the union of the candidates of every lease in the
pass: a subset of the full process table and a superset of that lease's own candidates.
The reaper's plan keeps only what it can prove ours for its lease (tags + identity), so the
extra entries change nothing but give it more context (never less).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection

import trio

from acpx_trio._process.identity import (
    ProcessInfo,
    _read_stat_fields,
    read_proc,
    running_dir,
    snapshot_processes,
    stat_exiting,
    stat_threads,
)
from acpx_trio._process.owner_tag import parse_owner_tag
from acpx_trio._process.scan import (
    PidWindow,
    chase_new_pids,
    fast_process_info,
    fast_snapshot,
    last_pid,
    newest_pids,
    window_holds,
)
from acpx_trio._process.tags import gateway_in_environ, lease_ids_in_environ

__all__ = [
    "TagScan", "empty_groups", "pids_tagged", "scan_passes",
    "shared_scan",
]

#: ``PF_KTHREAD`` of ``/proc/PID/stat``'s flags: a kernel thread (no environment, ever).
_PF_KTHREAD = 0x00200000
#: ``(state, ppid, pgid, sid, start ticks)`` of one ``/proc/PID/stat``.
_StatIds = tuple[str, int, int, int, int]


def _stat_ids(pid: int) -> tuple[_StatIds, list[str]] | None:
    """``(state, ppid, pgid, sid, start ticks)`` of ``/proc/PID/stat`` and its fields from
    the state on (:func:`~acpx_trio._process.identity._read_stat_fields`), or ``None``."""
    fields = _read_stat_fields(pid)
    if fields is None:
        return None
    try:
        return (fields[0], int(fields[1]), int(fields[2]), int(fields[3]),
                int(fields[19])), fields
    except (ValueError, IndexError):
        return None


def pids_tagged(
    lease_ids: Collection[str], root_pids: Collection[int], min_start_ticks: int | None = None,
) -> list[ProcessInfo]:
    """The roots, every process whose environment carries ``LEASE_ENV_KEY=<one of
    lease_ids>``, and every member of their process groups and sessions (plus children of
    zombies there).

    A prefilter over ``/proc`` (blocking): the reaper's plan keeps only processes it can
    prove ours, so listing just these candidates gives the same targets while inspecting a
    handful of processes instead of all of them.

    Completeness (what makes a hopper impossible to miss but by a race we re-check): the
    listing of ``/proc`` sees every process that keeps its pid throughout it; a process
    created during it (a pid hopper's next hop, a fork) holds a pid allocated after the
    :func:`~acpx_trio._process.scan.last_pid` read *before* the listing, and
    :func:`~acpx_trio._process.scan.chase_new_pids` probes exactly those *after* it, hop by
    hop until the allocator stops moving.

    ``min_start_ticks``: the earliest start (clock ticks since boot) of the lease roots.  A
    process can carry a lease's tag only by inheriting it from that lease's root (the tags
    are set in the root's environment at its spawn, and a lease id is random and new), so
    it was forked at or after the root; processes that started earlier are not ours by tag
    and their environment is not read (the cost of a close then grows with the processes
    started since the agent, not with every process on the machine).  A process cannot
    change its start time, and ``/proc/PID/environ`` shows the environment it was
    executed with.  ``None`` (roots unknown: a pending lease): every environment is read."""
    return TagScan(lease_ids=lease_ids, roots=root_pids, min_start_ticks=min_start_ticks).full()


class TagScan:
    """A tag scan of ``/proc`` (blocking), and cheap re-scans after it.

    Matches processes tagged with one of ``lease_ids`` (environment), or with
    ``gateway_id`` (environment, else command line).  :meth:`full` lists the roots, every
    match, and every member of their process groups and sessions (see
    :func:`pids_tagged`).  :meth:`since` answers the same question later at the cost of
    what changed: only the pids allocated since the previous pass started are read (plus
    the candidates already known, re-read); it asks for a full pass (returns ``None``)
    when one of those new processes matches or joined a known group or session.

    Why that is complete: a process alive now either existed during the previous pass with
    the same pid (then it was read: a candidate, re-read now; or neither tagged nor in a
    group or session of a candidate, and it cannot become either: the environment is fixed
    at ``exec``, and a process can only join a process group of its own session; one whose
    environment read empty, as it does in the middle of an ``exec``, was made a candidate
    then, and is read again), or it
    was created since, so its pid was allocated after the previous pass's ``ns_last_pid``
    read (:func:`~acpx_trio._process.scan.chase_new_pids` probes exactly those; a chase cut
    short falls back to a full pass).  A process that ``exec``s with a tag it read from
    another process's ``/proc`` is not covered (same uid, deliberate)."""

    def __init__(
        self, *, lease_ids: Collection[str] = (), gateway_id: str | None = None,
        roots: Collection[int] = (), min_start_ticks: int | None = None,
        extra_pids: Collection[int] = (), window: PidWindow | None = None,
    ) -> None:
        self.extra = set(extra_pids)
        #: opened before the roots were spawned: while it holds, a pass probes only the pids
        #: allocated since instead of listing ``/proc`` (see :meth:`full`)
        self.window = window
        self.wanted = {x.encode() for x in lease_ids}
        self.gateway = None if gateway_id is None else gateway_id.encode()
        self.roots = set(roots)
        self.floor = -1 if min_start_ticks is None else min_start_ticks
        self.mark: int | None = None
        #: pid -> start ticks of the candidates of the previous pass.
        self.candidates: dict[int, int | None] = {}
        self.ids: set[int] = set()
        #: called with each process a pass finds carrying our tags, the moment it is read
        #: (a reap's kill on sight: a pid hopper is caught before its next hop)
        self.on_sight: Callable[[ProcessInfo], None] | None = None

    def _matches(self, name: str, fields: list[str]) -> tuple[bool | None, bytes | None]:
        """Whether process ``name`` (its ``/proc/PID/stat`` ``fields`` as just read) carries
        our tags, and the environment read to decide when
        :func:`~acpx_trio._process.scan.fast_process_info` would read it the same way
        (``None``: it could not be read, or the process is exiting, when that reads it
        through a live thread or not at all).  A zombie carries nothing, unless its leader
        ended alone and another thread runs on: then the process is read through that
        thread.  ``None`` instead of ``False``: undecided, its environment read empty (a
        process in the middle of an ``exec`` reads so for a moment, measured: 432 reads in
        200 ``exec`` calls; or one started with none): a caller lists it with the candidates,
        so that every later pass reads it again (it may carry our tags once its ``exec``
        is done), never taken for one that cannot."""
        where = running_dir(int(name), fields[0], threads=stat_threads(fields))
        if where is None:
            return False, None
        try:
            data = read_proc(f"{where}/environ")
            env = None if stat_exiting(fields) else data
        except OSError:
            data, env = b"", None
        else:
            if not data and not int(fields[6]) & _PF_KTHREAD:
                return None, None
        if self.wanted and not self.wanted.isdisjoint(lease_ids_in_environ(data)):
            return True, env
        if self.gateway is None:
            return False, None
        hit = gateway_in_environ(data, self.gateway)
        if hit is not None:
            return hit, env if hit else None
        try:  # no gateway variable: the tag may be on the command line
            return self.gateway in read_proc(f"{where}/cmdline"), env
        except OSError:
            return False, None

    def full(self) -> list[ProcessInfo]:
        """Every candidate now (a full listing of ``/proc``); records where it started."""
        roots = self.roots
        ids = set(roots)
        never = {0, 1}  # outside our pid namespace / init: never an owned group or session
        floor = self.floor
        stats: dict[int, _StatIds] = {}
        infos: dict[int, ProcessInfo] = {}

        def visit(pid: int) -> None:
            name = str(pid)
            read = _stat_ids(pid)
            if read is None:
                if pid in roots and pid not in infos:
                    info = fast_process_info(pid)
                    if info is not None:
                        infos[pid] = info
                return
            st, fields = read
            known = stats.get(pid)
            stats[pid] = st
            if known is not None and known[4] == st[4]:
                return  # the same process, its environment already read (or not ours)
            if st[4] < floor and pid not in roots:
                return  # started before every root: cannot carry their tags
            matched, env = (True, None) if pid in roots else self._matches(name, fields)
            if matched:
                # at once (a hopper may be gone in 1 ms), from what was just read
                info = fast_process_info(pid, stat=fields, environ=env)
                if info is not None:
                    infos[info.pid] = info
                    ids.update(x for x in (info.pgid, info.sid) if x is not None)
                    if self.on_sight is not None:
                        self.on_sight(info)
            elif matched is None:  # undecided: a candidate, read again by every later pass
                info = fast_process_info(pid, stat=fields)
                if info is not None:
                    infos[info.pid] = info

        before = last_pid()
        windowed = False
        if self.window is not None and window_holds(self.window):
            # every candidate was created after the window opened: a root, a process that
            # inherited a root's tags, or a member of a group or session that one of them
            # made (a process cannot join an older session, and a group only within its
            # session); its pid lies in the window (scan.PidWindow), probed to the end
            for pid in sorted(roots):
                visit(pid)
            windowed = chase_new_pids(self.window.mark, visit)
        if windowed:
            complete = True
        else:
            try:
                listed = [int(n) for n in os.listdir("/proc") if n.isdigit()]
            except OSError:
                self.mark = None
                return snapshot_processes()  # no /proc listing: the full (slower) table
            for pid in newest_pids():  # a pid hopper is among the newest pids: probe first
                visit(pid)
            for pid in sorted(listed, reverse=True):
                visit(pid)
            # everything forked during the listing (a hopper's later hops), to the end
            complete = chase_new_pids(before, visit)
        ids -= never
        extra = {pid for pid, st in stats.items() if st[2] in ids or st[3] in ids}
        zombies = {pid for pid in extra | set(infos) if stats.get(pid, ("",))[0] == "Z"}
        extra.update(pid for pid, st in stats.items() if st[1] in zombies)
        for info in fast_snapshot(extra - set(infos)):
            infos[info.pid] = info
        wanted_too = set(self.extra)
        if self.gateway is not None:  # the owners their owner tags name (alive or not)
            wanted_too.update(t.pid for p in infos.values()
                              if (t := parse_owner_tag(p.owner)) is not None)
        for info in fast_snapshot(wanted_too - set(infos)):
            infos[info.pid] = info
        self.mark = before if complete else None
        self.candidates = {p.pid: p.start_ticks for p in infos.values()}
        self.ids = ids | {x for p in infos.values() for x in (p.pgid, p.sid) if x is not None}
        self.ids -= never
        return sorted(infos.values(), key=lambda p: p.pid)

    def adopt(self, table: list[ProcessInfo], mark: int | None) -> None:
        """Take a pass made elsewhere (a shared pass whose listing is a superset of ours)
        as the previous one."""
        self.mark = mark
        self.candidates = {p.pid: p.start_ticks for p in table}
        self.ids = (set(self.roots) | {x for p in table for x in (p.pgid, p.sid)
                                       if x is not None}) - {0, 1}

    def since(self) -> list[ProcessInfo] | None:
        """The candidates now, reading only what changed since the previous pass (see the
        class docstring); ``None`` when a full pass is needed."""
        if self.mark is None:
            return None
        before = last_pid()
        found = False

        def visit(pid: int) -> None:
            nonlocal found
            if found:
                return
            read = _stat_ids(pid)
            if read is None or (pid in self.candidates and self.candidates[pid] == read[0][4]):
                return  # gone, or a candidate already (re-read below)
            # any process new since the previous pass (not a known candidate) gets a full
            # pass: an incremental answer that judged new processes by a racy environment
            # read once missed a fresh tagged process (CI, 2 of 2 runs under load)
            found = True

        if not chase_new_pids(self.mark, visit) or found or before is None:
            return None
        infos = [info for pid, ticks in self.candidates.items()
                 if (info := fast_process_info(pid)) is not None and info.start_ticks == ticks]
        self.mark = before
        return sorted(infos, key=lambda p: p.pid)

    def scan(self) -> list[ProcessInfo]:
        """:meth:`since`, or :meth:`full` when it cannot answer."""
        table = self.since()
        return self.full() if table is None else table


def _pass(
    lease_ids: Collection[str], root_pids: Collection[int], min_start_ticks: int | None = None,
    window: PidWindow | None = None,
) -> tuple[list[ProcessInfo], frozenset[int], int | None]:
    """:func:`pids_tagged`, then which roots' process groups have no member left at the end
    of it (``killpg(pgid, 0)`` fails with ``ESRCH``: zombies count as members), and the
    ``ns_last_pid`` read before the listing (``None``: no incremental re-scan after it).
    An empty group cannot gain members, so a caller may take that as the answer of a group
    probe made right after the scan."""
    scan = TagScan(lease_ids=lease_ids, roots=root_pids, min_start_ticks=min_start_ticks,
                   window=window)
    table = scan.full()
    return table, empty_groups(root_pids), scan.mark


def empty_groups(pgids: Collection[int]) -> frozenset[int]:
    """Which of ``pgids`` have no member at all (``killpg(pgid, 0)``: ``ESRCH``)."""
    empty: set[int] = set()
    for pgid in pgids:
        if pgid <= 1:
            continue
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            empty.add(pgid)
        except OSError:
            pass  # exists (another uid's, say): not empty
    return frozenset(empty)


class _Pass:
    def __init__(self) -> None:
        self.lease_ids: set[str] = set()
        self.root_pids: set[int] = set()
        #: The earliest root start of the pass (``None``: some lease's root is unknown).
        self.min_ticks: int | None = None
        self.unbounded = False
        #: The oldest window of the pass (``None`` with ``windowless``: some lease has none).
        self.window: PidWindow | None = None
        self.windowless = False
        self.done = trio.Event()
        self.result: tuple[list[ProcessInfo], frozenset[int], int | None] | None = None


class _Batcher:
    """At most one pass runs at a time; requests arriving meanwhile gather in the next."""

    def __init__(self) -> None:
        self.running = trio.Lock()
        self.next: _Pass | None = None
        self.passes = 0

    async def scan(
        self, lease_id: str, root_pid: int, root_start_ticks: int | None = None,
        window: PidWindow | None = None,
    ) -> tuple[list[ProcessInfo], frozenset[int], int | None]:
        mine = self.next
        leader = mine is None
        if mine is None:
            mine = self.next = _Pass()
        mine.lease_ids.add(lease_id)
        mine.root_pids.add(root_pid)
        if root_start_ticks is None:
            mine.unbounded = True
        elif mine.min_ticks is None or root_start_ticks < mine.min_ticks:
            mine.min_ticks = root_start_ticks
        if window is None:
            mine.windowless = True
        elif mine.window is None or window.forks < mine.window.forks:
            mine.window = window  # the oldest covers the later ones
        if not leader:
            await mine.done.wait()
            if mine.result is not None:
                return mine.result
            # the pass failed or its leader was cancelled: scan on our own
            return await trio.to_thread.run_sync(
                _pass, (lease_id,), (root_pid,), root_start_ticks, window
            )
        try:
            async with self.running:
                # let the cleanups woken in this same scheduling step join the pass
                await trio.lowlevel.checkpoint()
                if self.next is mine:
                    self.next = None
                self.passes += 1
                mine.result = await trio.to_thread.run_sync(
                    _pass, frozenset(mine.lease_ids), frozenset(mine.root_pids),
                    None if mine.unbounded else mine.min_ticks,
                    None if mine.windowless else mine.window,
                )
                return mine.result
        finally:
            if self.next is mine:
                self.next = None
            mine.done.set()


_batcher: trio.lowlevel.RunVar[_Batcher] = trio.lowlevel.RunVar("acpx_trio_shared_scan")


def _current_batcher() -> _Batcher:
    try:
        return _batcher.get()
    except LookupError:
        batcher = _Batcher()
        _batcher.set(batcher)
        return batcher


async def shared_scan(
    lease_id: str, root_pid: int, root_start_ticks: int | None = None,
    window: PidWindow | None = None,
) -> tuple[list[ProcessInfo], frozenset[int], int | None]:
    """:func:`pids_tagged` for one lease, in a worker thread, sharing the pass with the
    other cleanups of this Trio run that ask at the same time (see the module docstring),
    the roots' process groups found empty at the end of the pass, and the pass's mark (see
    :meth:`TagScan.adopt`).  The pass starts
    after this call; cancellable while waiting for it to start.  ``root_start_ticks``: the
    root's start (see ``min_start_ticks`` of :func:`pids_tagged`); ``window``: a
    :class:`~acpx_trio._process.scan.PidWindow` opened before the root's spawn (see
    :meth:`TagScan.full`)."""
    return await _current_batcher().scan(lease_id, root_pid, root_start_ticks, window)


def scan_passes() -> int:
    """Passes run so far in this Trio run (for tests and benchmarks)."""
    return _current_batcher().passes
