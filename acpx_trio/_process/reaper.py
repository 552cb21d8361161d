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

The planning core (:func:`plan_leases`, :func:`plan_orphans`, :func:`order_children_first`) is
pure and synchronous; the async layer only adds the process table, signals and waiting, all
injectable through :class:`ProcessCleanupDeps` (see ``acpx_trio.testing.fake_processes``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import msgspec

from acpx_trio._errors import AcpxUsageError
from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.reap_plan import (
    ACCESS_DENIED,
    INIT,
    MISSING_ROOT,
    NOT_OWNED,
    OTHER_USER,
    OWNER_ALIVE,
    PID_REUSED,
    PROTECTED,
    SELF,
    SURVIVED,
    UNVERIFIED_ROOT,
    LeaseTarget,
    Plan,
    guard_reason,
    order_children_first,
    owner_alive,
    plan_leases,
    plan_orphans,
)
from acpx_trio._store.leases import LeaseState, ProcessLease

__all__ = [
    "ACCESS_DENIED",
    "DEFAULT_GRACE",
    "INIT",
    "KILL_CONFIRM",
    "MISSING_ROOT",
    "NOT_OWNED",
    "OTHER_USER",
    "OWNER_ALIVE",
    "PID_REUSED",
    "PROTECTED",
    "SELF",
    "SURVIVED",
    "UNVERIFIED_ROOT",
    "CleanupResult",
    "LeaseTarget",
    "Plan",
    "ProcessCleanupDeps",
    "ReapResult",
    "cleanup_owned_process_tree",
    "default_cleanup_deps",
    "guard_reason",
    "order_children_first",
    "owner_alive",
    "plan_leases",
    "plan_orphans",
    "reap_open_leases",
    "reap_stale_orphans",
    "terminate_trees",
    "wave_budget",
]

from acpx_trio._process.waves import (
    DEFAULT_GRACE,
    KILL_CONFIRM,
    CleanupResult,
    ProcessCleanupDeps,
    default_cleanup_deps,
    terminate_trees,
    wave_budget,
)
from acpx_trio._process.waves import SHIELD_BUDGET as SHIELD_BUDGET  # re-exported
from acpx_trio._process.waves import run_waves as _run_waves


class ReapResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of :func:`reap_open_leases`.  ``left_alone`` maps lease id -> reason
    (``"owner-alive"``, ``"protected"``, or ``"survived"`` when a process outlived SIGKILL:
    that lease stays ``closing`` and is retried next time)."""

    inspected_pids: list[int] = []
    terminated_pids: list[int] = []
    survived_pids: list[int] = []
    closed_lease_ids: list[str] = []
    lost_lease_ids: list[str] = []
    left_alone: dict[str, str] = {}


class _LeaseStoreLike(Protocol):
    async def list_open(self, gateway_instance_id: str | None = None) -> list[ProcessLease]: ...

    async def mark_states(self, updates: dict[str, LeaseState]) -> dict[str, ProcessLease]: ...


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _require_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise AcpxUsageError(name, value, "must be a non-empty string")


async def cleanup_owned_process_tree(
    *,
    root_pid: int,
    expected_lease_id: str,
    expected_gateway_instance_id: str,
    root_create_time: float | None = None,
    root_start_ticks: int | None = None,
    root_boot_id: str | None = None,
    grace: float = DEFAULT_GRACE,
    deps: ProcessCleanupDeps | None = None,
    verified_groups: Collection[int] = (),
    before_signal: Callable[[], Awaitable[None]] | None = None,
) -> CleanupResult:
    """End every process of one lease: the verified root's tagged tree, the members of its
    process group and session, plus every process anywhere carrying the lease's tags.
    ``root_pid == 0`` (pending lease): tags only.  ``verified_groups``: group/session ids
    the caller proved ours while a member lived (see
    :func:`~acpx_trio._process.reap_plan.plan_leases`).

    ``skipped_reason`` says why the root was not used: ``"missing-root"`` (gone, or pending
    and nothing tagged found), ``"pid-reused"`` (its start time differs from the lease's), or
    ``"unverified-root"`` (not tagged, not ours, or forbidden; ``skipped[root_pid]`` has the
    detail).  ``before_signal`` is awaited once before the first signal goes out, and not at
    all when the scan proves the tree gone (see :func:`~acpx_trio._process.waves.run_waves`).
    Bad input (empty ids, negative pid or grace) raises :class:`~acpx_trio.AcpxUsageError`
    before anything is listed.  Cancellation: see :func:`terminate_trees`."""
    _require_id("expected_lease_id", expected_lease_id)
    _require_id("expected_gateway_instance_id", expected_gateway_instance_id)
    if type(root_pid) is not int or root_pid < 0:
        raise AcpxUsageError("root_pid", root_pid, "must be an integer >= 0")
    deps = deps or default_cleanup_deps()
    target = LeaseTarget(
        lease_id=expected_lease_id,
        gateway_instance_id=expected_gateway_instance_id,
        root_pid=root_pid,
        root_create_time=root_create_time,
        root_start_ticks=root_start_ticks,
        root_boot_id=root_boot_id,
    )

    def plan(table: list[ProcessInfo], known: Collection[tuple[int, int | None]]) -> Plan:
        return plan_leases(
            table, [target], self_pid=deps.self_pid, self_uid=deps.self_uid,
            current_boot_id=deps.boot_id, self_pgid=deps.self_pgid, self_sid=deps.self_sid,
            known=known, verified_groups=verified_groups,
        )

    out = await _run_waves(plan, grace, deps, before_signal=before_signal)
    reason = out.first_plan.root_reasons.get(expected_lease_id)
    if root_pid == 0 and not out.first_plan.targets:
        reason = MISSING_ROOT
    return out.cleanup_result(reason)


async def reap_stale_orphans(
    *,
    gateway_instance_id: str,
    protected_lease_ids: Collection[str] = (),
    grace: float = DEFAULT_GRACE,
    deps: ProcessCleanupDeps | None = None,
) -> CleanupResult:
    """End every live process tagged with our gateway id whose lease is not protected
    (protected: leases of live owners, our own live sessions).  Processes of other gateway ids
    are never touched; ``ppid`` is not consulted.  Cancellation: see :func:`terminate_trees`."""
    _require_id("gateway_instance_id", gateway_instance_id)
    deps = deps or default_cleanup_deps()
    protected = frozenset(protected_lease_ids)

    def plan(table: list[ProcessInfo], known: Collection[tuple[int, int | None]]) -> Plan:
        return plan_orphans(
            table, gateway_instance_id, protected, self_pid=deps.self_pid,
            self_uid=deps.self_uid, self_pgid=deps.self_pgid, self_sid=deps.self_sid,
            known=known,
        )

    out = await _run_waves(plan, grace, deps)
    return out.cleanup_result()


async def reap_open_leases(
    gateway_instance_id: str,
    lease_store: _LeaseStoreLike,
    *,
    grace: float = DEFAULT_GRACE,
    deps: ProcessCleanupDeps | None = None,
    protected_lease_ids: Collection[str] = (),
) -> ReapResult:
    """Start-up (or sweep) reaping of this gateway's open and closing leases.

    Leases of a live owner other than us are left alone (``"owner-alive"``), as are
    ``protected_lease_ids`` (``"protected"``).  The rest are marked ``closing`` in one write;
    their trees are collected from one process snapshot and terminated in one wave; then each
    is marked ``closed`` (something of it was alive and is now confirmed gone) or ``lost``
    (nothing of it was alive) in one write.  A lease with a process that outlived SIGKILL stays
    ``closing`` (``left_alone[id] == "survived"``) and is retried next time.  Pending leases
    (``root_pid == 0``) are reaped by their tags.  Processes of other gateway ids are never
    touched.

    Crash or cancellation after the ``closing`` write leaves those leases ``closing``; the next
    call reaps them again (closing leases are listed).  Lease store errors propagate
    (:class:`~acpx_trio.LeaseStoreError`)."""
    _require_id("gateway_instance_id", gateway_instance_id)
    deps = deps or default_cleanup_deps()
    protected = frozenset(protected_lease_ids)
    leases = [
        x
        for x in await lease_store.list_open(gateway_instance_id)
        if x.gateway_instance_id == gateway_instance_id
    ]
    if not leases:
        return ReapResult()
    table = await deps.list_processes()
    by_pid = {p.pid: p for p in table}
    left_alone: dict[str, str] = {}
    to_reap: list[ProcessLease] = []
    for lease in leases:
        if lease.lease_id in protected:
            left_alone[lease.lease_id] = PROTECTED
        elif owner_alive(lease, by_pid, deps.self_pid):
            left_alone[lease.lease_id] = OWNER_ALIVE
        else:
            to_reap.append(lease)
    if not to_reap:
        return ReapResult(left_alone=left_alone)
    await lease_store.mark_states({x.lease_id: LeaseState.CLOSING for x in to_reap})
    targets = [LeaseTarget.from_lease(x) for x in to_reap]

    def plan(snapshot: list[ProcessInfo], known: Collection[tuple[int, int | None]]) -> Plan:
        return plan_leases(
            snapshot, targets, self_pid=deps.self_pid, self_uid=deps.self_uid,
            current_boot_id=deps.boot_id, self_pgid=deps.self_pgid, self_sid=deps.self_sid,
            known=known,
        )

    out = await _run_waves(plan, grace, deps, table)
    dead: dict[str, int] = {}
    alive: dict[str, int] = {}
    for p in out.terminated:
        dead[p.lease_id or ""] = dead.get(p.lease_id or "", 0) + 1
    for p in out.survived:
        alive[p.lease_id or ""] = alive.get(p.lease_id or "", 0) + 1
    final: dict[str, LeaseState] = {}
    for lease in to_reap:
        if alive.get(lease.lease_id) or out.unproven:
            left_alone[lease.lease_id] = SURVIVED
        else:
            final[lease.lease_id] = (
                LeaseState.CLOSED if dead.get(lease.lease_id) else LeaseState.LOST
            )
    if final:
        await lease_store.mark_states(final)
    return ReapResult(
        inspected_pids=out.inspected,
        terminated_pids=[p.pid for p in out.terminated],
        survived_pids=[p.pid for p in out.survived],
        closed_lease_ids=[k for k, v in final.items() if v is LeaseState.CLOSED],
        lost_lease_ids=[k for k, v in final.items() if v is LeaseState.LOST],
        left_alone=left_alone,
    )
