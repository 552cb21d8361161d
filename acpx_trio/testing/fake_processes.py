"""A simulated process table for testing the reaper without real processes.

:class:`FakeProcessTable` hands out a :class:`~acpx_trio._process.reaper.ProcessCleanupDeps` whose
listing, signals and exit waits act on simulated processes, in *trio* time: run the real reaper
over it under :class:`trio.testing.MockClock` (``autojump_threshold=0``) and every grace period
passes instantly yet in order.

Modelled: ownership tags, uids, uninspectable processes, processes that ignore SIGTERM (or even
SIGKILL, like a process stuck in uninterruptible sleep), a delay between SIGTERM and exit,
zombies (an exited process whose parent never reaps it), re-parenting to init when a parent
exits, and pid reuse (a new, unrelated process takes the pid of one that exited).

Every delivered signal is recorded in :attr:`FakeProcessTable.signals` with the trio time;
every attempt, delivered or refused, in :attr:`FakeProcessTable.attempts`.  Like the real
``kill_process``, the fake refuses to signal a process that is no longer the one described
(pid reuse), a zombie, our own pid, pid 1 or another uid's process.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from acpx_trio._process.identity import CREATE_TIME_TOLERANCE, ProcessInfo
from acpx_trio._process.owner_tag import owner_tag
from acpx_trio._process.reaper import ProcessCleanupDeps

__all__ = ["FakeProcess", "FakeProcessTable", "SignalRecord"]


@dataclass
class FakeProcess:
    """One simulated process (one incarnation of a pid).

    ``term_delay``: seconds from SIGTERM to exit (``math.inf`` = ignores SIGTERM).
    ``ignore_sigkill``: never dies (models a process stuck in the kernel).
    ``zombie_on_exit``: stays listed as a zombie after it exits.
    ``successor``: the process that takes this pid once this one exits (pid reuse).
    ``on_signal``: called as ``on_signal(table, proc, sig)`` after a signal was delivered (after
    its default effect), e.g. to fork a successor and exit (a pid hopper)."""

    pid: int
    parent: FakeProcess | None
    start_ticks: int
    create_time: float
    uid: int
    cmdline: tuple[str, ...] = ()
    lease_id: str | None = None
    gateway_instance_id: str | None = None
    inspectable: bool = True
    term_delay: float = 0.0
    ignore_sigkill: bool = False
    zombie_on_exit: bool = False
    exit_at: float | None = None
    successor: FakeProcess | None = None
    #: Its owner tag (``OPENCLAW_ACPX_OWNER``); see :meth:`FakeProcessTable.owner_tag`.
    owner: str | None = None
    label: str = ""
    received: list[int] = field(default_factory=list)
    on_signal: Callable[[FakeProcessTable, FakeProcess, int], None] | None = None

    @property
    def ignores_sigterm(self) -> bool:
        return math.isinf(self.term_delay)

    def exited(self, now: float) -> bool:
        return self.exit_at is not None and self.exit_at <= now


@dataclass(frozen=True)
class SignalRecord:
    """A signal the reaper sent (or tried to send): trio time, target, signal, delivered."""

    time: float
    pid: int
    start_ticks: int | None
    sig: int
    delivered: bool


class FakeProcessTable:
    """A process table in trio time.  ``self_pid``/``self_uid`` play the reaper's process."""

    def __init__(
        self,
        *,
        self_pid: int = 4242,
        self_uid: int = 1000,
        boot_id: str | None = "fake-boot",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.self_pid = self_pid
        self.self_uid = self_uid
        self.boot_id = boot_id
        self._clock = clock or trio.current_time
        self._last_now = 0.0
        self._slots: dict[int, FakeProcess] = {}
        self._ticks = itertools.count(1000, 7)
        self._next_pid = itertools.count(100)
        self.signals: list[SignalRecord] = []
        self.attempts: list[SignalRecord] = []
        self.list_calls = 0
        self.wait_calls: list[tuple[float, tuple[int, ...], float]] = []
        # We exist too: a table without the reaper's own process would be unrealistic.
        self.me = self.spawn(pid=self_pid, parent=None, uid=self_uid, label="self")

    # -- building ------------------------------------------------------------------------
    def now(self) -> float:
        """The table's clock; outside ``trio.run`` it stands still at the last time seen."""
        with contextlib.suppress(RuntimeError):
            self._last_now = self._clock()
        return self._last_now

    def _free_pid(self) -> int:
        while True:
            pid = next(self._next_pid)
            if pid not in self._slots and pid != self.self_pid:
                return pid

    def spawn(
        self,
        *,
        pid: int | None = None,
        parent: FakeProcess | None = None,
        uid: int | None = None,
        lease_id: str | None = None,
        gateway_instance_id: str | None = None,
        cmdline: Sequence[str] = ("agent",),
        inspectable: bool = True,
        term_delay: float = 0.0,
        ignore_sigterm: bool = False,
        ignore_sigkill: bool = False,
        zombie_on_exit: bool = False,
        start_ticks: int | None = None,
        label: str = "",
        owner: str | None = None,
    ) -> FakeProcess:
        """Add a live process (its pid must be free) and return it.  ``owner``: its owner tag
        (see :meth:`owner_tag`)."""
        if pid is None:
            pid = self._free_pid()
        elif pid in self._slots and self._occupant(pid) is not None:
            raise ValueError(f"pid {pid} is in use")
        previous = self._slots.get(pid)
        ticks = start_ticks if start_ticks is not None else next(self._ticks)
        proc = FakeProcess(
            pid=pid,
            parent=parent,
            start_ticks=ticks,
            create_time=1_700_000_000.0 + ticks / 100.0,
            uid=self.self_uid if uid is None else uid,
            cmdline=tuple(cmdline),
            lease_id=lease_id,
            gateway_instance_id=gateway_instance_id,
            inspectable=inspectable,
            term_delay=math.inf if ignore_sigterm else term_delay,
            ignore_sigkill=ignore_sigkill,
            zombie_on_exit=zombie_on_exit,
            label=label,
            owner=owner,
        )
        if previous is None:
            self._slots[pid] = proc
        else:  # the pid was free again: this is a reuse
            while previous.successor is not None:
                previous = previous.successor
            previous.successor = proc
        return proc

    def reuse_pid_after_exit(
        self,
        proc: FakeProcess,
        *,
        uid: int | None = None,
        cmdline: Sequence[str] = ("unrelated",),
        lease_id: str | None = None,
        gateway_instance_id: str | None = None,
        label: str = "reused",
    ) -> FakeProcess:
        """Arrange that, once ``proc`` exits, another process (new start ticks, default
        untagged) takes its pid."""
        last = proc
        while last.successor is not None:
            last = last.successor
        newcomer = FakeProcess(
            pid=proc.pid,
            parent=None,
            start_ticks=next(self._ticks),
            create_time=last.create_time + 1000.0,
            uid=self.self_uid if uid is None else uid,
            cmdline=tuple(cmdline),
            lease_id=lease_id,
            gateway_instance_id=gateway_instance_id,
            label=label,
        )
        last.successor = newcomer
        return newcomer

    def exit(self, proc: FakeProcess) -> None:
        """Make ``proc`` exit now (as if it finished on its own)."""
        now = self.now()
        if proc.exit_at is None or proc.exit_at > now:
            proc.exit_at = now

    # -- state ---------------------------------------------------------------------------
    def _occupant(self, pid: int) -> FakeProcess | None:
        """The incarnation holding ``pid`` now (zombies included), or ``None``."""
        proc = self._slots.get(pid)
        now = self.now()
        while proc is not None and proc.exited(now):
            if proc.zombie_on_exit:
                return proc
            if proc.successor is None:
                return None
            proc = proc.successor
        return proc

    def occupant(self, pid: int) -> FakeProcess | None:
        """The live or zombie process holding ``pid`` now."""
        return self._occupant(pid)

    def is_alive(self, proc: FakeProcess) -> bool:
        """``proc`` is running (not exited, not a zombie)."""
        return not proc.exited(self.now())

    def processes(self) -> list[FakeProcess]:
        """Every incarnation ever added (live, zombie, exited, successors)."""
        out: list[FakeProcess] = []
        for proc in self._slots.values():
            cur: FakeProcess | None = proc
            while cur is not None:
                out.append(cur)
                cur = cur.successor
        return out

    def _ppid(self, proc: FakeProcess) -> int:
        parent = proc.parent
        if parent is None:
            return 1 if proc.pid != 1 else 0
        if parent.exited(self.now()):
            return 1  # re-parented to init when the parent exited (zombie or not)
        return parent.pid

    def info(self, proc: FakeProcess) -> ProcessInfo:
        """What a scan would see of ``proc`` now."""
        zombie = proc.exited(self.now())
        show_tags = proc.inspectable and not zombie
        return ProcessInfo(
            pid=proc.pid,
            ppid=self._ppid(proc),
            cmdline=() if zombie or not proc.inspectable else proc.cmdline,
            create_time=proc.create_time,
            uid=proc.uid if proc.inspectable else None,
            start_ticks=proc.start_ticks,
            zombie=zombie,
            lease_id=proc.lease_id if show_tags else None,
            gateway_instance_id=proc.gateway_instance_id if show_tags else None,
            inspectable=proc.inspectable,
            owner=proc.owner if show_tags else None,
        )

    @staticmethod
    def owner_tag(proc: FakeProcess) -> str:
        """The owner tag a process spawned by ``proc`` carries (pid + start ticks + create
        time), as :func:`acpx_trio._process.owner_tag.owner_tag` writes it."""
        return owner_tag(proc.pid, proc.start_ticks, proc.create_time)

    def snapshot(self) -> list[ProcessInfo]:
        """Every live or zombie process, in pid order."""
        out = []
        for pid in sorted(self._slots):
            proc = self._occupant(pid)
            if proc is not None:
                out.append(self.info(proc))
        return out

    def _same(self, info: ProcessInfo) -> FakeProcess | None:
        proc = self._occupant(info.pid)
        if proc is None:
            return None
        if info.start_ticks is not None:
            return proc if proc.start_ticks == info.start_ticks else None
        return proc if abs(proc.create_time - info.create_time) <= CREATE_TIME_TOLERANCE else None

    # -- deps ----------------------------------------------------------------------------
    async def list_processes(self) -> list[ProcessInfo]:
        await trio.lowlevel.checkpoint()
        self.list_calls += 1
        return self.snapshot()

    async def kill_process(self, info: ProcessInfo, sig: int) -> bool:
        await trio.lowlevel.checkpoint()
        now = self.now()
        proc = self._same(info)
        ok = (
            proc is not None
            and not proc.exited(now)
            and info.pid > 1
            and info.pid != self.self_pid
            and proc.uid == self.self_uid
        )
        record = SignalRecord(now, info.pid, info.start_ticks, sig, ok)
        self.attempts.append(record)
        if not ok or proc is None:
            return False
        self.signals.append(record)
        proc.received.append(sig)
        if sig == signal.SIGKILL and not proc.ignore_sigkill:
            proc.exit_at = now
        elif sig == signal.SIGTERM and not proc.ignores_sigterm:
            due = now + proc.term_delay
            if proc.exit_at is None or proc.exit_at > due:
                proc.exit_at = due
        if proc.on_signal is not None:
            proc.on_signal(self, proc, sig)
        return True

    async def wait_exit(self, infos: Sequence[ProcessInfo], within: float) -> set[int]:
        """Event-driven in trio time: sleeps exactly until the next scheduled exit."""
        start = self.now()
        self.wait_calls.append((start, tuple(p.pid for p in infos), within))
        deadline = start + max(within, 0.0)
        while True:
            now = self.now()
            alive = {
                p.pid for p in infos if (q := self._same(p)) is not None and not q.exited(now)
            }
            if not alive or now >= deadline:
                return alive
            next_exit = min(
                (
                    q.exit_at
                    for p in infos
                    if (q := self._same(p)) is not None
                    and q.exit_at is not None
                    and q.exit_at > now
                ),
                default=deadline,
            )
            await trio.sleep_until(min(next_exit, deadline))

    def deps(self, *, self_pid: int | None = None) -> ProcessCleanupDeps:
        """Reaper dependencies acting on this table.

        ``self_pid`` names the process the reaper runs in (default: :attr:`self_pid`), e.g. one
        of several simulated gateway processes; the table still refuses to signal
        :attr:`self_pid`."""
        return ProcessCleanupDeps(
            list_processes=self.list_processes,
            kill_process=self.kill_process,
            wait_exit=self.wait_exit,
            self_pid=self.self_pid if self_pid is None else self_pid,
            self_uid=self.self_uid,
            boot_id=self.boot_id,
        )
