"""One reap operation for a gateway: :func:`reap_gateway` ("reap the open leases of dead
owners, then every orphan tagged with this gateway"), used by the service's start-up (and
its background sweep), the owner-death watchdog and ``acpx-trio reap`` (dry run included).

One snapshot, one plan, one set of waves: the leases to reap are read before the process
table, the lease file again right *after* it (a lease is saved before its process is
spawned, so every tagged process in the snapshot that belongs to a live start has its lease
in what we read: protected), and the
leases' trees and the orphans are planned together from that snapshot and terminated in
one wave (then re-scanned, see :func:`~acpx_trio._process.reaper.run_waves`).  The lease
file is read again after every re-scan, so a session started meanwhile is protected.

What is reaped (everything else is left alone, with a reason in the report):

1. open or closing leases of this gateway whose owner is dead (and, with ``owner``, whose
   owner is exactly that dead owner): their trees (verified root, its group and session,
   every process carrying the lease's tags, and, once the first wave's grace has passed,
   its leaf cgroup if it still holds a process: ``cgroup.kill``, its emptiness a proof; a
   re-scan from then on kills a process carrying the lease's tags as it reads it, so a pid
   hopper cannot outrun a pass); each such lease then becomes ``closed`` (something of it
   was alive and is now confirmed gone) or ``lost`` (nothing of it was alive), or stays
   ``closing`` when something survived or the scans could not prove the tree gone;
2. every other live process tagged with this gateway whose lease is unknown or final, unless
   its owner tag names a live owner other than us (with ``owner``: only processes whose
   owner tag names that owner);
3. the steps in ``steps`` (the cgroup containment's leftover-cgroup reap plugs in here).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

import trio

from acpx_trio._errors import (
    AcpxUsageError,
    collapse_group,
    environment_credentials,
    redact_argv,
)
from acpx_trio._process import held
from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.leaf_end import kill_leaf
from acpx_trio._process.leaf_reap import busy_leaves_of, reap_cgroup_leftovers
from acpx_trio._process.owner_tag import OwnerTag
from acpx_trio._process.reap_plan import (
    OWNER_ALIVE,
    PROTECTED,
    LeaseTarget,
    Plan,
    lease_outcomes,
    order_children_first,
    owner_alive,
    plan_leases,
    plan_orphans,
)
from acpx_trio._process.reap_report import (
    UNPROVEN,
    GatewayReapReport,
    ReapAction,
    ReapStep,
    ReapStepRequest,
    owned_by,
)
from acpx_trio._process.reaper import (
    DEFAULT_GRACE,
    ProcessCleanupDeps,
    default_cleanup_deps,
    run_waves,
)
from acpx_trio._process.reaper_os import kill_groups_sync, kill_process_sync
from acpx_trio._process.shared_scan import TagScan
from acpx_trio._store.lease_model import LeaseState, ProcessLease

__all__ = [
    "DEFAULT_STEPS",
    "GatewayReapReport",
    "ReapAction",
    "ReapStep",
    "ReapStepRequest",
    "gateway_cleanup_deps",
    "reap_cgroup_leftovers",
    "reap_gateway",
]

#: The steps :func:`reap_gateway` runs after the process reap unless told otherwise: the
#: leftover leaf cgroups (cgroup containment).
DEFAULT_STEPS: tuple[ReapStep, ...] = (reap_cgroup_leftovers,)


class _LeaseSource(Protocol):
    async def list_all(self) -> list[ProcessLease]: ...

    async def mark_states(
        self, updates: dict[str, LeaseState], *, skip_final: bool = ...
    ) -> dict[str, ProcessLease]: ...


def _cmd(p: ProcessInfo | None, secrets: Collection[str] = ()) -> str | None:
    """The command line a report shows: credentials redacted (known ones and unmistakable
    shapes) before it is cut to 100 characters (a cut must not leave part of one)."""
    if p is None or not p.cmdline:
        return None
    text = " ".join(redact_argv(p.cmdline, secrets))
    return text if len(text) <= 100 else text[:97] + "..."


def _why(p: ProcessInfo, lease: ProcessLease | None) -> str:
    if p.lease_id is None:
        return "untagged member of a process group/session proved ours"
    if lease is None:
        return "tagged with this gateway; its lease is not in the lease file"
    if lease.state.is_final:
        return f"tagged with this gateway; its lease is {lease.state.value}"
    owner = f"owner {lease.owner_pid}" if lease.owner_pid else "owner unknown"
    part = "root" if p.pid == lease.root_pid else "tagged process"
    return f"{part} of {lease.state.value} lease; {owner} is not alive"


def _merge(a: Plan, b: Plan) -> Plan:
    skipped = {**b.skipped, **a.skipped}
    targets = order_children_first([*a.targets, *b.targets])
    chosen = {p.pid for p in targets}
    return Plan(
        inspected=list(dict.fromkeys([*a.inspected, *b.inspected])),
        targets=targets,
        skipped={pid: r for pid, r in skipped.items() if pid not in chosen},
        root_reasons=a.root_reasons,
        groups=sorted({*a.groups, *b.groups}),
    )


def gateway_cleanup_deps(
    gateway_instance_id: str, leases: Sequence[ProcessLease]
) -> ProcessCleanupDeps:
    """The real process table, listing only what a reap of this gateway can concern (Linux):
    processes tagged with the gateway, the leases' roots and owners, the members of their
    groups and sessions, and the owners named by owner tags; re-scans read only what
    changed (:class:`~acpx_trio._process.shared_scan.TagScan`).  The plans keep only what
    they can prove ours, so the prefilter changes nothing but the cost."""
    return _gateway_deps(gateway_instance_id, leases)[0]


def _gateway_deps(
    gateway_instance_id: str, leases: Sequence[ProcessLease]
) -> tuple[ProcessCleanupDeps, Callable[[frozenset[str]], None]]:
    """:func:`gateway_cleanup_deps`, and ``arm(doomed)``: from then on a scan SIGKILLs at
    once every process it reads carrying this gateway's tag and one of the ``doomed`` lease
    ids (leases whose owner is proven dead, being reaped): what the plan would target
    anyway, but a pid hopper that leaves its session at every hop is gone before the plan
    of a pass over a busy ``/proc`` is made.  Armed only once the first wave's grace has
    passed (the reap's waves scan again only after it)."""
    deps = default_cleanup_deps()
    if not sys.platform.startswith("linux"):
        return deps, lambda doomed: None
    scan = TagScan(
        gateway_id=gateway_instance_id,
        roots=[x.root_pid for x in leases if x.root_pid > 0],
        extra_pids=[x.owner_pid for x in leases if x.owner_pid],
    )
    lock = threading.Lock()  # one pass at a time (an abandoned one may still run)
    self_pid, self_uid = deps.self_pid, deps.self_uid

    def locked_scan() -> list[ProcessInfo]:
        with lock:
            return scan.scan()

    armed: list[frozenset[str]] = []  # the doomed leases, once armed

    def kill_on_sight(info: ProcessInfo) -> None:
        if armed and info.lease_id in armed[0] and info.gateway_instance_id == gateway_instance_id:
            kill_process_sync(info, signal.SIGKILL, self_pid, self_uid)

    async def list_processes() -> list[ProcessInfo]:
        # the waves' re-scan, after a wave (armed: its grace has passed); read-only but for
        # the kill on sight: a cancelled caller need not wait for the scan to finish
        scan.on_sight = kill_on_sight if armed else None
        return await trio.to_thread.run_sync(locked_scan, abandon_on_cancel=True)

    def kill_groups_now(pgids: Sequence[int], sig: int) -> list[int]:
        # who may be in the groups the reap signals (those that still exist): a re-scan of
        # what changed since the last pass, not another pass over the whole machine, and
        # none at all when every group has emptied
        return kill_groups_sync(pgids, sig, self_pid, self_uid,
                                lambda live: _session_members(locked_scan(), live))

    async def kill_groups(pgids: Sequence[int], sig: int) -> list[int]:
        return await trio.to_thread.run_sync(kill_groups_now, pgids, sig)

    def arm(doomed: frozenset[str]) -> None:
        armed[:] = [doomed] if doomed else []

    deps = dataclasses.replace(deps, list_processes=list_processes, kill_groups=kill_groups)
    return deps, arm


def _session_members(
    table: Sequence[ProcessInfo], pgids: Collection[int]
) -> dict[int, list[tuple[int, int | None]]]:
    """``pgid -> [(pid, uid), ...]``: who in ``table`` may be a member of each group when it
    is signalled.  A process can join a group only from within its session, so every
    process of the group's session counts (one that is not ours keeps the group from being
    signalled); a process created since was forked by one of them.  A zombie is no one's
    (it cannot run, and a signal cannot reach it); a process whose uid could not be read
    counts as not ours."""
    wanted = set(pgids)
    by_session: dict[int, list[tuple[int, int | None]]] = {}
    group_session: dict[int, int] = {}
    for p in table:
        if p.sid is None:
            continue
        if p.pgid in wanted:
            group_session[p.pgid] = p.sid
        if not p.zombie:
            by_session.setdefault(p.sid, []).append((p.pid, p.uid))
    return {g: by_session.get(group_session[g], []) if g in group_session else []
            for g in wanted}


async def reap_gateway(
    gateway_instance_id: str,
    lease_store: _LeaseSource,
    *,
    dry_run: bool = False,
    owner: OwnerTag | None = None,
    grace: float = DEFAULT_GRACE,
    deps: ProcessCleanupDeps | None = None,
    protected_lease_ids: Collection[str] = (),
    steps: Sequence[ReapStep] = DEFAULT_STEPS,
    lease_dir: str | None = None,
    open_leases: bool = True,
    secrets: Collection[str] | None = None,
) -> GatewayReapReport:
    """Reap what dead owners of ``gateway_instance_id`` left behind (see the module
    docstring) and report every action with its reason.

    ``dry_run``: one snapshot, the same plan, no signal and no write.  ``owner``: only that
    (dead) owner's leases and processes (the owner-death watchdog); ``None``: every dead
    owner's.  ``protected_lease_ids``: never reaped (our own live sessions).
    ``open_leases=False``: orphans (processes and leaf cgroups whose lease is unknown or
    final) and the leases this process left behind
    (:func:`~acpx_trio._process.held.left_behind`), every other open lease protected: the
    periodic sweep of a live service, whose own leases name this very process, and its
    stop.  Processes of other gateway ids, of live owners, or not proven ours are never
    signalled.  ``secrets``: credentials redacted from the command lines the report shows
    (``None``: those of this process's environment, see
    :func:`~acpx_trio._errors.environment_credentials`; unmistakable shapes always).

    Crash or cancellation after the ``closing`` write leaves those leases ``closing``; the
    next call reaps them again.  Cancellation once a signal went out: see
    :func:`~acpx_trio._process.reaper.terminate_trees`.  Lease store errors propagate
    (:class:`~acpx_trio.LeaseStoreError`)."""
    if not isinstance(gateway_instance_id, str) or not gateway_instance_id.strip():
        raise AcpxUsageError("gateway_instance_id", gateway_instance_id,
                             "must be a non-empty string")
    known = tuple(environment_credentials() if secrets is None else secrets)
    seen_procs: dict[int, ProcessInfo] = {}
    seen_leases: dict[str, ProcessLease] = {}
    open_now: set[str] = set()  # open/closing lease ids read after the latest snapshot

    async def snapshot() -> list[ProcessInfo]:
        table = await cleanup.list_processes()
        leases = await lease_store.list_all()  # after the snapshot (see the module docstring)
        seen_leases.update({x.lease_id: x for x in leases})
        open_now.clear()
        open_now.update(x.lease_id for x in leases if not x.state.is_final
                        and x.gateway_instance_id == gateway_instance_id)
        for p in table:
            seen_procs.setdefault(p.pid, p)
        return table

    # The leases to reap are those open *before* the snapshot: one saved while it runs is a
    # start in progress (our own process's other service included), protected by the read
    # that follows every snapshot.  Without ``open_leases``: only those this process left
    # behind (a close of ours that could not prove its tree gone).
    left = held.left_behind(gateway_instance_id)
    listed = [x for x in await lease_store.list_all() if not x.state.is_final
              and x.gateway_instance_id == gateway_instance_id]
    held.forget_left(left - {x.lease_id for x in listed})  # final (or gone) meanwhile
    before = listed if open_leases else [x for x in listed if x.lease_id in left]
    # our own live launches (another service of this process holds them) and the caller's;
    # read after the leases: a launch is held before its lease is saved, so every live one
    # in that read is in this one
    protected = frozenset(protected_lease_ids) | held.held_leases()
    cleanup, arm = ((deps, lambda doomed: None) if deps is not None
                    else _gateway_deps(gateway_instance_id, before))
    table = await snapshot()
    by_pid = {p.pid: p for p in table}
    left_alone: dict[str, str] = {}
    to_reap: list[ProcessLease] = []
    for lease in before:
        lease_id = lease.lease_id
        if lease_id not in open_now or not owned_by(lease, owner):
            continue
        if lease_id in protected:
            left_alone[lease_id] = PROTECTED
        elif owner_alive(lease, by_pid, cleanup.self_pid):
            left_alone[lease_id] = OWNER_ALIVE
        else:
            to_reap.append(lease)
    doomed = frozenset(x.lease_id for x in to_reap)
    targets = [LeaseTarget.from_lease(x) for x in to_reap]

    def plan(snap: list[ProcessInfo], known: Collection[tuple[int, int | None]]) -> Plan:
        leases_plan = plan_leases(
            snap, targets, self_pid=cleanup.self_pid, self_uid=cleanup.self_uid,
            current_boot_id=cleanup.boot_id, self_pgid=cleanup.self_pgid, self_sid=cleanup.self_sid,
            known=known,
        )
        keep = (open_now - doomed) | protected  # open at the latest snapshot: a live start
        orphans_plan = plan_orphans(
            snap, gateway_instance_id, keep, self_pid=cleanup.self_pid, self_uid=cleanup.self_uid,
            self_pgid=cleanup.self_pgid, self_sid=cleanup.self_sid, known=known, only_owner=owner,
        )
        return _merge(leases_plan, orphans_plan)

    async def live_ids() -> frozenset[str]:
        fresh = await lease_store.list_all()
        return frozenset(
            x.lease_id for x in fresh
            if x.state in (LeaseState.OPEN, LeaseState.CLOSING) and x.lease_id not in doomed
        ).union(protected)

    actions: list[ReapAction] = []
    if dry_run:
        first = plan(table, ())
        actions = _dry_actions(first, to_reap, left_alone, table, seen_leases, known)
        for step in steps:
            actions += await step(ReapStepRequest(
                gateway_instance_id=gateway_instance_id, lease_dir=lease_dir, dry_run=True,
                owner=owner, grace=grace, live_lease_ids=live_ids, known_leases=seen_leases))
        return GatewayReapReport(gateway_instance_id=gateway_instance_id, dry_run=True,
                                 actions=actions, inspected_pids=first.inspected,
                                 left_alone=left_alone)

    async def mark_closing() -> None:
        if to_reap:
            await lease_store.mark_states(
                {x.lease_id: LeaseState.CLOSING for x in to_reap}, skip_final=True)

    await mark_closing()
    first_wave = trio.Event()

    async def rescan() -> list[ProcessInfo]:  # the waves list again: their first one is over
        first_wave.set()
        return await snapshot()

    waves_deps = dataclasses.replace(cleanup, list_processes=rescan)
    # a reaped lease's leaf that still holds a process once the first wave's grace has
    # passed (a member without tags, a pid hopper) is killed whole (``cgroup.kill``) beside
    # the first wave's SIGKILLs and the later waves, which need not outrun a hopper there;
    # its emptiness proves the lease's tree gone.  The leaves already empty go to the
    # leftover step (one pass).
    ends: dict[str, tuple[bool, bool]] = {}  # lease id -> (held members, emptied)
    grace_ends: list[float] = []  # when the first wave signalled: the end of its grace

    def after_grace(at: float) -> None:
        grace_ends.append(at)
        first_wave.set()

    async def end_leaves() -> None:
        await first_wave.wait()
        busy = await trio.to_thread.run_sync(busy_leaves_of, gateway_instance_id, to_reap)
        if busy and grace_ends and trio.current_time() < grace_ends[0]:
            # every process the wave signalled exited early; a member it did not signal (no
            # tags, a session of its own, told by its agent) is owed the grace too
            await trio.sleep_until(grace_ends[0])
            busy = await trio.to_thread.run_sync(busy_leaves_of, gateway_instance_id, to_reap)

        async def end_leaf(lease_id: str, leaf: str) -> None:
            ends[lease_id] = (True, await kill_leaf(leaf, grace + 1.0))

        async with trio.open_nursery() as leaves:
            for lease_id, leaf in busy.items():
                leaves.start_soon(end_leaf, lease_id, leaf)

    arm(doomed)  # the waves list again only once their first one's grace has passed
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(end_leaves)
            out = await run_waves(plan, grace, waves_deps, table, after_grace=after_grace)
            first_wave.set()  # (waves that never listed again)
    except BaseExceptionGroup as group:  # a cancel (or a bug) out of that nursery: one
        raise collapse_group(group) from None
    final, kept = lease_outcomes(
        to_reap, out.terminated, out.survived, UNPROVEN if out.unproven else None,
        leaf_ends=ends)
    left_alone.update(kept)
    if final:
        # a lease another reaper finished meanwhile (the watchdog, a restart) stays as it is
        moved = await lease_store.mark_states(final, skip_final=True)
        final = {k: v for k, v in final.items() if k in moved}
        held.forget_left(set(final))
    for p in out.terminated:
        actions.append(ReapAction(action="terminated", pid=p.pid, lease_id=p.lease_id,
                                  reason=_why(p, seen_leases.get(p.lease_id or "")),
                                  command=_cmd(p, known)))
    for p in out.survived:
        actions.append(ReapAction(action="survived", pid=p.pid, lease_id=p.lease_id,
                                  reason="still alive after SIGKILL; retried on the next reap",
                                  command=_cmd(p, known)))
    for pid, reason in sorted(out.skipped.items()):
        info = seen_procs.get(pid)
        if info is not None and info.gateway_instance_id == gateway_instance_id:
            actions.append(ReapAction(action="skipped", pid=pid, reason=reason,
                                      lease_id=info.lease_id, command=_cmd(info, known)))
    for lease_id, state in final.items():
        actions.append(ReapAction(
            action="lease-closed" if state is LeaseState.CLOSED else "lease-lost",
            lease_id=lease_id,
            reason="owner was not alive; its processes are gone" if state is LeaseState.CLOSED
            else "owner was not alive; none of its processes was alive"))
    for lease_id, reason in left_alone.items():
        actions.append(ReapAction(action="lease-left-alone", lease_id=lease_id,
                                  reason=_left_alone_reason(reason, seen_leases.get(lease_id))))
    for step in steps:
        actions += await step(ReapStepRequest(
            gateway_instance_id=gateway_instance_id, lease_dir=lease_dir, dry_run=False,
            owner=owner, grace=grace, live_lease_ids=live_ids, known_leases=seen_leases))
    return GatewayReapReport(gateway_instance_id=gateway_instance_id, actions=actions,
                             unproven=out.unproven, **out.figures(final, left_alone))


def _left_alone_reason(reason: str, lease: ProcessLease | None) -> str:
    if reason == OWNER_ALIVE and lease is not None:
        return f"{OWNER_ALIVE}: owner {lease.owner_pid} is running"
    if reason == UNPROVEN:
        return f"{UNPROVEN}: scans kept finding processes; retried on the next reap"
    return reason


def _dry_actions(
    first: Plan, doomed: Sequence[ProcessLease], left_alone: dict[str, str],
    table: Sequence[ProcessInfo], leases: dict[str, ProcessLease], secrets: Collection[str],
) -> list[ReapAction]:
    by_pid = {p.pid: p for p in table}
    rows: list[ReapAction] = []
    targeted: set[int] = set()
    for p in first.targets:
        targeted.add(p.pid)
        rows.append(ReapAction(action="would-terminate", pid=p.pid, lease_id=p.lease_id,
                               reason=_why(p, leases.get(p.lease_id or "")),
                               command=_cmd(p, secrets)))
    live = {k for k, v in left_alone.items() if v == OWNER_ALIVE}
    for pid, reason in sorted(first.skipped.items()):
        info = by_pid.get(pid)
        if info is not None and info.lease_id in live:
            continue  # listed below, with its lease
        rows.append(ReapAction(action="skipped", pid=pid, reason=reason,
                               lease_id=info.lease_id if info else None,
                               command=_cmd(info, secrets)))
    for lease in doomed:
        has = any(p.lease_id == lease.lease_id for p in first.targets)
        root = first.root_reasons.get(lease.lease_id)
        rows.append(ReapAction(
            action="would-close-lease" if has else "would-mark-lost", lease_id=lease.lease_id,
            reason="owner is not alive" + ("" if has else "; none of its processes is alive")
            + (f" ({root})" if root else ""),
        ))
    for lease_id, reason in left_alone.items():
        rows.append(ReapAction(action="lease-left-alone", lease_id=lease_id,
                               reason=_left_alone_reason(reason, leases.get(lease_id))))
        if reason == OWNER_ALIVE:
            for p in table:
                if p.lease_id == lease_id and not p.zombie and p.pid not in targeted:
                    rows.append(ReapAction(action="skipped", pid=p.pid, lease_id=lease_id,
                                           reason=OWNER_ALIVE, command=_cmd(p, secrets)))
    return rows
