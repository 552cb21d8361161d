"""``acpx-trio reap [--dry-run]``: end this gateway's orphaned agent processes, and say why.

What is reaped (everything else is left alone, with a reason):

1. open or closing leases of this state dir's gateway whose owner is dead: their process trees
   (verified root and its tagged descendants, plus anything carrying the lease's tags wherever
   it was re-parented); the lease then becomes ``closed`` (something was killed) or ``lost``
   (nothing of it was alive) - :func:`acpx_trio._process.reaper.reap_open_leases`;
2. every other live process tagged with this gateway id whose lease is not an open lease of a
   live owner (a closed or lost lease, or one no longer in the file) -
   :func:`acpx_trio._process.reaper.reap_stale_orphans`.

Race safety: an agent being started right now by another ``acpx-trio`` process of this state
dir is never touched, because its lease (with a live owner) is written before it is spawned and
the lease file is re-read *after* every process snapshot the reaper takes.

``--dry-run`` takes one snapshot, runs the pure planner over it and prints what would be
terminated and what would be left alone; it sends no signal and writes nothing (the gateway id
file is read, never created).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec
import trio

from acpx_trio._cli.exits import EXIT_ERROR, EXIT_OK
from acpx_trio._cli.output import Output, format_table
from acpx_trio._process.identity import ProcessInfo, boot_id, snapshot_processes
from acpx_trio._process.reap_plan import (
    OWNER_ALIVE,
    LeaseTarget,
    owner_alive,
    plan_leases,
    plan_orphans,
)
from acpx_trio._process.reaper import (
    DEFAULT_GRACE,
    ProcessCleanupDeps,
    default_cleanup_deps,
    reap_open_leases,
    reap_stale_orphans,
)
from acpx_trio._store.dirs import check_lease_dirs
from acpx_trio._store.instance import peek_gateway_instance_id, resolve_gateway_instance_id
from acpx_trio._store.leases import LeaseStore, ProcessLease, peek_leases

__all__ = ["ReapRow", "reap_command"]

WRAPPER_DIR_NAME = "acpx"


class ReapRow(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """One line of the report.  ``action``: ``terminated``, ``would-terminate``, ``survived``,
    ``skipped`` (a process left alone), ``lease-closed``/``lease-lost`` (final state written),
    ``would-close-lease``/``would-mark-lost`` (dry run), ``lease-left-alone``."""

    action: str
    reason: str
    pid: int | None = None
    lease_id: str | None = None
    command: str | None = None


def _live_protected(leases: Iterable[ProcessLease], by_pid: dict[int, ProcessInfo],
                    self_pid: int) -> dict[str, ProcessLease]:
    """Open/closing leases whose owner is alive (and is not us): never reaped."""
    return {x.lease_id: x for x in leases
            if not x.state.is_final and owner_alive(x, by_pid, self_pid)}


def _cmd(p: ProcessInfo | None) -> str | None:
    if p is None or not p.cmdline:
        return None
    text = " ".join(p.cmdline)
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


class _Seen:
    """Every process the reaper's snapshots showed, and the lease file after each snapshot."""

    def __init__(self, store: LeaseStore, gateway_id: str, base: ProcessCleanupDeps) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.base = base
        self.procs: dict[int, ProcessInfo] = {}
        self.leases: dict[str, ProcessLease] = {}

    async def list_processes(self) -> list[ProcessInfo]:
        table = await self.base.list_processes()
        # Read leases AFTER the snapshot: a lease is written before its agent is spawned, so
        # every tagged process in `table` that belongs to a live start has its lease here.
        leases = await self.store.list_all()
        self.leases.update({x.lease_id: x for x in leases})
        for p in table:
            self.procs.setdefault(p.pid, p)
        by_pid = {p.pid: p for p in table}
        live = _live_protected(leases, by_pid, self.base.self_pid)
        return [p for p in table if p.lease_id not in live]

    def deps(self) -> ProcessCleanupDeps:
        # everything of the base (group kill, our own group/session), listing filtered
        return dataclasses.replace(self.base, list_processes=self.list_processes)


def _dry_plan(table: Sequence[ProcessInfo], leases: Sequence[ProcessLease], gateway_id: str
              ) -> list[ReapRow]:
    self_pid, self_uid = os.getpid(), os.getuid()
    by_pid = {p.pid: p for p in table}
    by_id = {x.lease_id: x for x in leases}
    ours = [x for x in leases if x.gateway_instance_id == gateway_id and not x.state.is_final]
    protected = _live_protected(ours, by_pid, self_pid)
    doomed = [x for x in ours if x.lease_id not in protected]
    lease_plan = plan_leases(table, [LeaseTarget.from_lease(x) for x in doomed],
                             self_pid=self_pid, self_uid=self_uid, current_boot_id=boot_id(),
                             self_pgid=os.getpgid(0), self_sid=os.getsid(0))
    orphan_plan = plan_orphans(table, gateway_id, protected, self_pid=self_pid,
                               self_uid=self_uid, self_pgid=os.getpgid(0),
                               self_sid=os.getsid(0))
    rows: list[ReapRow] = []
    targeted: set[int] = set()
    for p in [*lease_plan.targets, *orphan_plan.targets]:
        if p.pid not in targeted:
            targeted.add(p.pid)
            rows.append(ReapRow(action="would-terminate", pid=p.pid, lease_id=p.lease_id,
                                reason=_why(p, by_id.get(p.lease_id or "")), command=_cmd(p)))
    skipped = {**orphan_plan.skipped, **lease_plan.skipped}
    for pid, reason in sorted(skipped.items()):
        if pid not in targeted:
            info = by_pid.get(pid)
            rows.append(ReapRow(action="skipped", pid=pid, reason=reason,
                                lease_id=info.lease_id if info else None, command=_cmd(info)))
    for lease in doomed:
        has = any(p.lease_id == lease.lease_id for p in table if p.pid in targeted)
        rows.append(ReapRow(
            action="would-close-lease" if has else "would-mark-lost", lease_id=lease.lease_id,
            reason="owner is not alive" + ("" if has else "; none of its processes is alive")
            + (f" ({lease_plan.root_reasons[lease.lease_id]})"
               if lease.lease_id in lease_plan.root_reasons else ""),
        ))
    for lease in protected.values():
        rows.append(ReapRow(action="lease-left-alone", lease_id=lease.lease_id,
                            reason=f"{OWNER_ALIVE}: owner {lease.owner_pid} is running"))
        for p in table:
            if p.lease_id == lease.lease_id and not p.zombie and p.pid not in targeted:
                rows.append(ReapRow(action="skipped", pid=p.pid, lease_id=lease.lease_id,
                                    reason=OWNER_ALIVE, command=_cmd(p)))
    return rows


async def _real_reap(store: LeaseStore, gateway_id: str) -> tuple[list[ReapRow], bool]:
    seen = _Seen(store, gateway_id, default_cleanup_deps())
    deps = seen.deps()
    first = await store.list_open(gateway_id)
    # Leases of live owners are skipped by reap_open_leases itself; pass them as protected to
    # the orphan sweep too (the filtered snapshots already hide their processes).
    leases_result = await reap_open_leases(gateway_id, store, grace=DEFAULT_GRACE, deps=deps)
    protected = [k for k, v in leases_result.left_alone.items() if v == OWNER_ALIVE]
    orphans = await reap_stale_orphans(gateway_instance_id=gateway_id,
                                       protected_lease_ids=protected, grace=DEFAULT_GRACE,
                                       deps=deps)
    by_id = {**seen.leases, **{x.lease_id: x for x in first}}
    rows: list[ReapRow] = []
    for pid in [*leases_result.terminated_pids, *orphans.terminated_pids]:
        p = seen.procs.get(pid)
        lease = by_id.get(p.lease_id or "") if p else None
        rows.append(ReapRow(action="terminated", pid=pid, lease_id=p.lease_id if p else None,
                            reason=_why(p, lease) if p else "tagged with this gateway",
                            command=_cmd(p)))
    survived = [*leases_result.survived_pids, *orphans.survived_pids]
    for pid in survived:
        p = seen.procs.get(pid)
        rows.append(ReapRow(action="survived", pid=pid, lease_id=p.lease_id if p else None,
                            reason="still alive after SIGKILL; retried on the next reap",
                            command=_cmd(p)))
    done = {r.pid for r in rows}
    for pid, reason in sorted({**orphans.skipped}.items()):
        if pid not in done:
            p = seen.procs.get(pid)
            rows.append(ReapRow(action="skipped", pid=pid, reason=reason,
                                lease_id=p.lease_id if p else None, command=_cmd(p)))
    for lease_id in leases_result.closed_lease_ids:
        rows.append(ReapRow(action="lease-closed", lease_id=lease_id,
                            reason="owner was not alive; its processes are gone"))
    for lease_id in leases_result.lost_lease_ids:
        rows.append(ReapRow(action="lease-lost", lease_id=lease_id,
                            reason="owner was not alive; none of its processes was alive"))
    for lease_id, reason in leases_result.left_alone.items():
        rows.append(ReapRow(action="lease-left-alone", lease_id=lease_id, reason=reason))
    return rows, not survived


def _dry_snapshot(lease_dir: Path) -> tuple[list[ProcessInfo], list[ProcessLease], str | None]:
    table = snapshot_processes()
    leases, problem = peek_leases(lease_dir)  # read after the snapshot (see _Seen)
    return table, leases, problem


async def reap_command(*, state_dir: Path, dry_run: bool, json_mode: bool) -> int:
    """Reap (or with ``dry_run`` only plan to reap) this state dir's gateway's orphans and
    print one row per process or lease acted on or left alone: a table, or NDJSON
    (:class:`ReapRow`, camelCase) with ``json_mode``.

    Returns 0, or 1 when a process survived SIGKILL.  A dry run signals nothing and writes
    nothing.  Lease store and gateway id errors propagate (:class:`~acpx_trio.AcpxError`)."""
    out = Output()
    state_dir = Path(state_dir)
    await trio.to_thread.run_sync(check_lease_dirs, state_dir)  # typed refusal, nothing read
    store = LeaseStore(state_dir / WRAPPER_DIR_NAME)
    ok = True
    if dry_run:
        gateway_id = await trio.to_thread.run_sync(peek_gateway_instance_id, state_dir)
        if gateway_id is None:
            rows: list[ReapRow] = []
        else:
            table, leases, problem = await trio.to_thread.run_sync(_dry_snapshot, store.path.parent)
            rows = _dry_plan(table, leases, gateway_id)
            if problem:
                rows.append(ReapRow(action="lease-file-problem", reason=problem))
    else:
        gateway_id = await resolve_gateway_instance_id(state_dir)
        rows, ok = await _real_reap(store, gateway_id)
    if json_mode:
        enc = msgspec.json.Encoder()
        for row in rows:
            out.write(enc.encode(row).decode() + "\n")
    elif rows:
        table_rows = [(r.action, r.pid or "-", (r.lease_id or "-")[:8], r.reason,
                       r.command or "") for r in rows]
        out.write(format_table(table_rows, ("ACTION", "PID", "LEASE", "REASON", "COMMAND"))
                  + "\n")
    else:
        what = "would be reaped" if dry_run else "to reap"
        where = f"gateway {gateway_id}" if gateway_id else f"{state_dir} (no gateway id yet)"
        out.write(f"nothing {what} for {where}\n")
    if not ok:
        out.write("acpx-trio: some processes survived SIGKILL\n", err=True)
    await out.drain()
    return EXIT_OK if ok else EXIT_ERROR

