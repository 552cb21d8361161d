"""The reaper: find agent process trees that are provably ours, and end them.

Ownership (fail closed; anything unproven is left alone):

* a live process is ours for a lease only when it carries that lease's id **and** gateway
  instance id tags (environment or command line), runs under our uid, can be inspected, and is
  neither us nor pid 1;
* the lease root must also match the start ticks / create time recorded in the lease (else
  ``"pid-reused"``); only a verified root's descendants are walked, and each descendant must
  carry the tags too (else ``"not-owned"``);
* every other live process carrying the lease's tags is included wherever it was re-parented
  (init, a subreaper, a ``setsid`` daemon).

Groups and sessions: the process group and session of a verified root (``start_new_session``
made it their leader) and of any other target leading one are ours while a member lives (a
pid in use as a pgid/sid is never reused), so their members are targets without tags, and a
group whose members are all ours is also signalled as a whole with ``killpg`` (atomic against
``fork``: a pid hopper cannot step out of it).  See
:func:`~acpx_trio._process.reap_plan.expand_groups`.

Termination is one wave for everything found: SIGTERM all (children before parents, each
process once, then each owned group), one shared grace deadline, SIGKILL only the survivors
and the owned groups (identity re-checked before every signal), then confirm.
``terminated_pids`` are **confirmed gone**.  After a wave the table is scanned again and
anything of the same owners that appeared meanwhile (forked during the wave, or caught
mid-hop) gets its own wave, without a second grace (SIGTERM and SIGKILL at once: its tree
had its grace), until a scan finds nothing new or the time budget (:func:`wave_budget`)
is spent.

This module is the async layer: the waves and :func:`terminate_trees`; the entry points for
a lease, the orphans and the open leases are in :mod:`~acpx_trio._process.reap_entry`.  The
planning core is pure and synchronous in :mod:`~acpx_trio._process.reap_plan` (its proofs
and reasons), the operating-system side in :mod:`~acpx_trio._process.reaper_os` (signals
through pidfds, waiting for exits); everything the outside world does is injected through
:class:`ProcessCleanupDeps` (see ``acpx_trio.testing.fake_processes``).
"""

from __future__ import annotations

import math
import numbers
import os
import signal
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from acpx_trio._errors import AcpxUsageError
from acpx_trio._process.identity import ProcessInfo, boot_id
from acpx_trio._process.reap_plan import (
    Plan,
    guard_reason,
    order_children_first,
)
from acpx_trio._process.reaper_os import kill_groups_sync, kill_process_sync
from acpx_trio._process.reaper_os import wait_exit as _os_wait_exit
from acpx_trio._process.scan import fast_snapshot
from acpx_trio._store.lease_model import LeaseState

__all__ = [
    "DEFAULT_GRACE", "KILL_CONFIRM", "QUIET_SCANS", "SHIELD_BUDGET", "CleanupResult", "PlanFn",
    "ProcessCleanupDeps", "default_cleanup_deps", "require_grace", "run_waves",
    "terminate_trees", "wave_budget",
]

#: Seconds between SIGTERM and SIGKILL (the seed's 750 ms).
DEFAULT_GRACE = 0.75
#: Seconds to wait for SIGKILLed processes to be gone before reporting them as survivors.
KILL_CONFIRM = 1.0
#: Upper bound (seconds) of the shielded phases: sending signals, escalating, confirming.
SHIELD_BUDGET = 10.0
#: Safety cap on waves per call; the real bound is time (:func:`wave_budget`).  Kept for
#: backward compatibility (it used to be 3).
_MAX_WAVES = 10_000  # a backstop only: the waves end by time (see run_waves)
#: Consecutive scans that must find nothing to signal before a tree counts as gone: one scan
#: can miss a process that forks and exits while it is read (a pid hopper between two
#: hops); each scan probes every pid allocated while it ran, so the chance of missing it
#: again falls with every scan (measured: see ``tests/test_reap_hopper.py``).
QUIET_SCANS = 3


def wave_budget(grace: float) -> float:
    """Seconds one reaper call may spend in waves: the first wave's grace and confirmation,
    plus as much again for the re-scans (processes forked or caught mid-hop meanwhile)."""
    return 2 * (grace + KILL_CONFIRM)


# --------------------------------------------------------------------------------------------
# Results and dependencies
# --------------------------------------------------------------------------------------------


class CleanupResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of one cleanup.

    ``inspected_pids``: every process looked at as a candidate.  ``terminated_pids``: targets
    confirmed gone afterwards.  ``survived_pids``: targets still alive after SIGKILL and the
    confirmation wait.  ``skipped``: candidates left alone, pid -> reason.  ``skipped_reason``:
    why the recorded root was not used (``None`` when it was, or when there was none)."""

    inspected_pids: list[int] = []
    terminated_pids: list[int] = []
    survived_pids: list[int] = []
    skipped: dict[int, str] = {}
    skipped_reason: str | None = None
    #: ``True`` when the time budget ran out while scans still found processes to signal:
    #: nothing proves the tree gone, so its lease must not be recorded ``closed``.
    unproven: bool = False


@dataclass(frozen=True)
class ProcessCleanupDeps:
    """Everything the reaper does to the outside world, injectable for tests.

    * ``list_processes()``: a snapshot of the process table.
    * ``kill_process(info, sig)``: send ``sig`` only if the live process is still ``info``
      (same identity, not a zombie, our uid); ``True`` if the signal was delivered.
    * ``wait_exit(infos, timeout)``: wait up to ``timeout`` seconds for them to be gone (a
      zombie is gone); returns the pids still alive.  ``timeout <= 0`` checks without waiting.
    * ``self_pid`` / ``self_uid``: never signalled / the only uid we may signal."""

    list_processes: Callable[[], Awaitable[list[ProcessInfo]]]
    kill_process: Callable[[ProcessInfo, int], Awaitable[bool]]
    wait_exit: Callable[[Sequence[ProcessInfo], float], Awaitable[set[int]]]
    self_pid: int
    self_uid: int
    boot_id: str | None = None
    #: ``kill_groups(pgids, sig)``: ``killpg`` each group whose every member is ours (uid,
    #: not us, not pid 1); returns those signalled.  ``None``: groups are signalled member
    #: by member only (fakes, older callers).
    kill_groups: Callable[[Sequence[int], int], Awaitable[list[int]]] | None = None
    #: Our own process group and session: never expanded.  ``None`` (fakes): no group or
    #: session expansion at all.
    self_pgid: int | None = None
    self_sid: int | None = None
    #: ``kill_many(infos, sig)``: :attr:`kill_process` for each, in order, in one go (one
    #: worker-thread hop for a whole wave); one ``bool`` each.  ``None``: one call each.
    kill_many: Callable[[Sequence[ProcessInfo], int], Awaitable[list[bool]]] | None = None


# --------------------------------------------------------------------------------------------
# Termination
# --------------------------------------------------------------------------------------------


def _key(p: ProcessInfo) -> tuple[int, int | float]:
    return (p.pid, p.start_ticks if p.start_ticks is not None else round(p.create_time, 2))


class _Wave(msgspec.Struct, kw_only=True):
    terminated: list[int]
    survived: list[int]
    skipped: dict[int, str]


async def _signal_groups(groups: Sequence[int], sig: int, deps: ProcessCleanupDeps) -> None:
    if deps.kill_groups is not None and groups:
        await deps.kill_groups(groups, sig)


async def _kill_each(
    procs: Sequence[ProcessInfo], sig: int, deps: ProcessCleanupDeps
) -> list[bool]:
    """``deps.kill_process`` for each of ``procs`` (batched when ``kill_many`` exists)."""
    if deps.kill_many is not None and procs:
        return await deps.kill_many(procs, sig)
    return [await deps.kill_process(p, sig) for p in procs]


async def _escalate(
    procs: Sequence[ProcessInfo], deps: ProcessCleanupDeps, groups: Sequence[int] = ()
) -> set[int]:
    """SIGKILL ``procs`` (identity re-checked) and ``groups``, wait briefly; pids still alive."""
    await _kill_each(procs, signal.SIGKILL, deps)
    await _signal_groups(groups, signal.SIGKILL, deps)
    if not procs:
        return set()
    return await deps.wait_exit(procs, KILL_CONFIRM)


async def _terminate(
    targets: Sequence[ProcessInfo],
    grace: float,
    deps: ProcessCleanupDeps,
    groups: Sequence[int] = (),
    after_grace: Callable[[float], None] | None = None,
) -> _Wave:
    skipped: dict[int, str] = {}
    order: list[ProcessInfo] = []
    for p in order_children_first(targets):
        reason = guard_reason(p, deps.self_pid, deps.self_uid)
        if reason is None and not p.zombie:
            order.append(p)
        elif reason is not None:
            skipped[p.pid] = reason
    if not order and not groups:
        return _Wave(terminated=[], survived=[], skipped=skipped)
    await trio.lowlevel.checkpoint_if_cancelled()
    signalled: list[ProcessInfo] = []
    refused: list[ProcessInfo] = []
    with trio.move_on_after(SHIELD_BUDGET, shield=True):
        delivered = await _kill_each(order, signal.SIGTERM, deps)
        for p, ok in zip(order, delivered, strict=True):
            (signalled if ok else refused).append(p)
        await _signal_groups(groups, signal.SIGTERM, deps)
    grace_ends = trio.current_time() + grace  # the last SIGTERM went out
    sent = {p.pid for p in signalled} | {p.pid for p in refused}
    signalled += [p for p in order if p.pid not in sent]  # budget ran out: SIGKILL them later
    alive = {p.pid for p in signalled}  # until the wait says otherwise (error, cancellation)
    try:
        if signalled:
            alive = await deps.wait_exit(signalled, grace)
        if after_grace is not None:
            after_grace(grace_ends)
    finally:
        # Runs on cancellation (or an error) too: SIGTERM went out, so finish the job.
        survivors: set[int] = set()
        with trio.move_on_after(SHIELD_BUDGET, shield=True) as cs:
            survivors = await _escalate([p for p in signalled if p.pid in alive], deps, groups)
            survivors |= await deps.wait_exit(refused, 0.0)
        if cs.cancelled_caught:
            survivors = {p.pid for p in order}  # could not confirm anything
    survived = [p.pid for p in order if p.pid in survivors]
    terminated = [p.pid for p in order if p.pid not in survivors]
    return _Wave(terminated=terminated, survived=survived, skipped=skipped)


async def terminate_trees(
    trees: Sequence[Sequence[ProcessInfo]],
    *,
    grace: float = DEFAULT_GRACE,
    deps: ProcessCleanupDeps | None = None,
) -> CleanupResult:
    """Terminate already-verified trees in one wave (the caller proved ownership).

    SIGTERM every process of every tree (children before parents, each pid once; our own pid,
    pid 1 and other users' processes are refused with a ``skipped`` reason), wait up to
    ``grace`` seconds (one deadline for all), SIGKILL the survivors (identity re-checked), then
    wait up to :data:`KILL_CONFIRM` seconds and report.  Returns at once, without sleeping, when
    nothing was signalled.

    Cancellation: before the first SIGTERM nothing is signalled.  Once SIGTERM went out the
    escalation runs anyway in a shielded scope bounded by :data:`SHIELD_BUDGET` (a cancelled
    grace wait turns into an immediate SIGKILL of everything still alive), then
    :class:`trio.Cancelled` propagates.  Bad input (negative ``grace``) raises
    :class:`~acpx_trio.AcpxUsageError`."""
    require_grace(grace)
    deps = deps or default_cleanup_deps()
    flat = [p for tree in trees for p in tree]
    inspected = list(dict.fromkeys(p.pid for p in flat))
    wave = await _terminate(flat, grace, deps)
    return CleanupResult(
        inspected_pids=inspected,
        terminated_pids=wave.terminated,
        survived_pids=wave.survived,
        skipped=wave.skipped,
    )


class _Outcome(msgspec.Struct, kw_only=True):
    inspected: list[int]
    terminated: list[ProcessInfo]
    survived: list[ProcessInfo]
    skipped: dict[int, str]
    first_plan: Plan
    unproven: bool = False

    def cleanup_result(self, skipped_reason: str | None = None) -> CleanupResult:
        """The public result of these waves."""
        return CleanupResult(
            inspected_pids=self.inspected,
            terminated_pids=[p.pid for p in self.terminated],
            survived_pids=[p.pid for p in self.survived],
            skipped=self.skipped,
            skipped_reason=skipped_reason,
            unproven=self.unproven,
        )

    def figures(self, final: dict[str, LeaseState],
                left_alone: dict[str, str]) -> dict[str, Any]:
        """The fields of :class:`~acpx_trio._process.reap_report.ReapFigures` for these
        waves, the final states written (``final``) and the leases ``left_alone``."""
        return {
            "inspected_pids": self.inspected,
            "terminated_pids": [p.pid for p in self.terminated],
            "survived_pids": [p.pid for p in self.survived],
            "closed_lease_ids": [k for k, v in final.items() if v is LeaseState.CLOSED],
            "lost_lease_ids": [k for k, v in final.items() if v is LeaseState.LOST],
            "left_alone": left_alone,
        }


PlanFn = Callable[[list[ProcessInfo], Collection[tuple[int, int | None]]], Plan]


async def run_waves(
    plan_fn: PlanFn,
    grace: float,
    deps: ProcessCleanupDeps,
    table: list[ProcessInfo] | None = None,
    before_signal: Callable[[], Awaitable[None]] | None = None,
    after_grace: Callable[[float], None] | None = None,
) -> _Outcome:
    """Waves until :data:`QUIET_SCANS` consecutive scans find nothing to signal, within
    :func:`wave_budget`; ``unproven`` in the outcome when the budget ran out first.

    ``after_grace(grace_ends)`` is called once, when the first wave's wait is over (before
    its SIGKILLs; not on cancellation), with the Trio time its grace ends: now, or later
    when every process it signalled exited early.  What ends a tree whole (a leaf's
    ``cgroup.kill``, which also reaches members no SIGTERM of the wave reached) may then
    run beside the escalation instead of after its confirmation, and never before the grace
    has passed.

    ``before_signal`` is awaited once, before the first signal could be sent (the caller
    records that it is killing, e.g. moves its lease to ``closing``); it is not called when
    the scans prove there is nothing to signal: no target, and no owned process group
    with a member (``kill_groups(groups, 0)`` probes them: a group with no member left has
    nothing to kill, a pgid cannot gain members once empty)."""
    require_grace(grace)
    deadline = trio.current_time() + wave_budget(grace)
    if table is None:
        table = await deps.list_processes()
    known: dict[tuple[int, int | None], None] = {}
    plan = first = plan_fn(table, known)
    inspected: dict[int, None] = dict.fromkeys(plan.inspected)
    skipped = dict(plan.skipped)
    handled: set[tuple[int, int | float]] = set()
    groups_done: set[int] = set()
    terminated: list[ProcessInfo] = []
    survived: list[ProcessInfo] = []
    quiet = 0
    signalled = False
    for _ in range(_MAX_WAVES):
        todo = [p for p in plan.targets if _key(p) not in handled]
        groups = [g for g in plan.groups if g not in groups_done or todo]
        if (not todo and not groups) or (
            not todo and deps.kill_groups is not None
            and not await deps.kill_groups(groups, 0)
        ):
            quiet += 1  # nothing (left) to signal: the owned groups are empty, or not ours
        else:
            quiet = 0
            if before_signal is not None:
                await before_signal()
                before_signal = None
            handled.update(_key(p) for p in todo)
            groups_done.update(groups)
            known.update(dict.fromkeys((p.pid, p.start_ticks) for p in todo))
            # the first wave gives the grace; anything found later (forked meanwhile, caught
            # mid-hop) belongs to trees that had theirs: straight to SIGKILL
            wave = await _terminate(todo, 0.0 if signalled else grace, deps, groups,
                                    None if signalled else after_grace)
            signalled = True
            by_pid = {p.pid: p for p in todo}
            terminated += [by_pid[pid] for pid in wave.terminated]
            survived += [by_pid[pid] for pid in wave.survived]
            skipped.update(wave.skipped)
        if quiet >= QUIET_SCANS or trio.current_time() >= deadline:
            break
        plan = plan_fn(await deps.list_processes(), known)
        inspected.update(dict.fromkeys(plan.inspected))
        for pid, reason in plan.skipped.items():
            skipped.setdefault(pid, reason)
    done = {p.pid for p in terminated} | {p.pid for p in survived}
    return _Outcome(
        inspected=list(inspected),
        terminated=terminated,
        survived=survived,
        skipped={pid: r for pid, r in skipped.items() if pid not in done},
        first_plan=first,
        unproven=quiet < QUIET_SCANS,
    )


# --------------------------------------------------------------------------------------------
# Real dependencies
# --------------------------------------------------------------------------------------------


async def _list_processes() -> list[ProcessInfo]:
    """A snapshot of the real process table, taken in a worker thread (straight from
    ``/proc``, newest pids first, on Linux: see :func:`fast_snapshot`)."""
    # read-only: a cancelled caller need not wait for the scan to finish
    return await trio.to_thread.run_sync(fast_snapshot, abandon_on_cancel=True)


def default_cleanup_deps(*, reap_children: bool = True) -> ProcessCleanupDeps:
    """The real process table (psutil), pidfd signalling and an event-driven exit wait.

    ``kill_process`` opens a pidfd, re-verifies start ticks, uid and liveness *after* opening
    it, then signals through the pidfd (psutil fallback where pidfd is unavailable).
    ``wait_exit`` waits on pidfds with :func:`trio.lowlevel.wait_readable` (polling fallback);
    a zombie counts as gone; with ``reap_children`` our own exited children are reaped by pidfd
    (``waitid(P_PIDFD)``) or specific pid, never ``waitpid(-1)``.  Note that reaping a child
    that a :class:`trio.Process` also holds makes its ``returncode`` read 0."""
    self_pid, self_uid = os.getpid(), os.getuid()

    async def kill_process(info: ProcessInfo, sig: int) -> bool:
        return await trio.to_thread.run_sync(kill_process_sync, info, sig, self_pid, self_uid)

    def kill_all(infos: Sequence[ProcessInfo], sig: int) -> list[bool]:
        return [kill_process_sync(p, sig, self_pid, self_uid) for p in infos]

    async def kill_many(infos: Sequence[ProcessInfo], sig: int) -> list[bool]:
        return await trio.to_thread.run_sync(kill_all, infos, sig)

    async def wait_exit(infos: Sequence[ProcessInfo], within: float) -> set[int]:
        return await _os_wait_exit(infos, within, self_pid=self_pid, reap_children=reap_children)

    async def kill_groups(pgids: Sequence[int], sig: int) -> list[int]:
        return await trio.to_thread.run_sync(kill_groups_sync, pgids, sig, self_pid, self_uid)

    return ProcessCleanupDeps(
        list_processes=_list_processes,
        kill_process=kill_process,
        wait_exit=wait_exit,
        self_pid=self_pid,
        self_uid=self_uid,
        boot_id=boot_id(),
        kill_groups=kill_groups,
        kill_many=kill_many,
        self_pgid=os.getpgid(0),
        self_sid=os.getsid(0),
    )


def require_grace(grace: object) -> None:
    """A grace is a finite number of seconds >= 0 (an infinite one would never escalate);
    anything else is :class:`~acpx_trio.AcpxUsageError`."""
    if isinstance(grace, bool) or not isinstance(grace, numbers.Real) \
            or not 0 <= float(grace) < math.inf:
        raise AcpxUsageError("grace", grace, "must be a finite number of seconds >= 0")
