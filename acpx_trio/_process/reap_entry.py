"""The reaper's entry points for one lease, a gateway's orphans and its open leases
(:func:`cleanup_owned_process_tree`, :func:`reap_stale_orphans`, :func:`reap_open_leases`):
each checks its arguments (:class:`~acpx_trio.AcpxUsageError` before anything is read),
plans with :mod:`~acpx_trio._process.reap_plan` and ends what it proved ours with the waves
of :mod:`~acpx_trio._process.reaper`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from acpx_trio._errors import AcpxUsageError
from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.reap_plan import (
    MISSING_ROOT,
    OWNER_ALIVE,
    PROTECTED,
    SURVIVED,
    LeaseTarget,
    Plan,
    lease_outcomes,
    owner_alive,
    plan_leases,
    plan_orphans,
)
from acpx_trio._process.reap_report import ReapFigures
from acpx_trio._process.reaper import (
    DEFAULT_GRACE,
    CleanupResult,
    ProcessCleanupDeps,
    default_cleanup_deps,
    require_grace,
    run_waves,
)
from acpx_trio._store.lease_model import LeaseState, ProcessLease

__all__ = ["ReapResult", "cleanup_owned_process_tree", "reap_open_leases",
           "reap_stale_orphans"]


class ReapResult(ReapFigures, frozen=True, kw_only=True):
    """Outcome of :func:`reap_open_leases`.  ``left_alone`` maps lease id -> reason
    (``"owner-alive"``, ``"protected"``, or ``"survived"`` when a process outlived SIGKILL:
    that lease stays ``closing`` and is retried next time)."""


class _LeaseStoreLike(Protocol):
    async def list_open(self, gateway_instance_id: str | None = None) -> list[ProcessLease]: ...

    async def mark_states(self, updates: dict[str, LeaseState], *,
                          skip_final: bool = ...) -> dict[str, ProcessLease]: ...


# -- public entry points -----------------------------------------------------------------------


def _require_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise AcpxUsageError(name, value, "must be a non-empty string")



def _protected_ids(value: object) -> frozenset[str]:
    """``protected_lease_ids`` as a set of ids; anything but an iterable of strings (a bare
    string included: it would protect its letters) is :class:`~acpx_trio.AcpxUsageError`."""
    ids = _id_set(value, str, "protected_lease_ids", "lease ids")
    return frozenset(x for x in ids if isinstance(x, str))


def _id_set(value: object, kind: type, argument: str, what: str) -> frozenset[object]:
    """``value`` (any iterable but a string) as a set whose members are all ``kind``."""
    if isinstance(value, str | bytes):
        raise AcpxUsageError(argument, value, f"must be a collection of {what}")
    try:
        ids: frozenset[object] = frozenset(value)  # type: ignore[call-overload]
    except TypeError:
        raise AcpxUsageError(argument, value, f"must be a collection of {what}") from None
    if not all(isinstance(x, kind) and not isinstance(x, bool) for x in ids):
        raise AcpxUsageError(argument, value, f"must be a collection of {what}")
    return ids


def _deps(deps: object) -> ProcessCleanupDeps:
    """``deps`` (or the real process table when ``None``)."""
    if deps is None:
        return default_cleanup_deps()
    if not isinstance(deps, ProcessCleanupDeps):
        raise AcpxUsageError("deps", deps, "must be a ProcessCleanupDeps (or None)")
    return deps


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
    all when the scan proves the tree gone (see :func:`~acpx_trio._process.reaper.run_waves`).
    Bad input (empty ids, negative pid or grace) raises :class:`~acpx_trio.AcpxUsageError`
    before anything is listed.  Cancellation: see :func:`terminate_trees`."""
    _require_id("expected_lease_id", expected_lease_id)
    _require_id("expected_gateway_instance_id", expected_gateway_instance_id)
    require_grace(grace)
    if type(root_pid) is not int or root_pid < 0:
        raise AcpxUsageError("root_pid", root_pid, "must be an integer >= 0")
    groups = _id_set(verified_groups, int, "verified_groups", "process group ids")
    verified_groups = frozenset(g for g in groups if isinstance(g, int))
    deps = _deps(deps)
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

    out = await run_waves(plan, grace, deps, before_signal=before_signal)
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
    are never touched; ``ppid`` is not consulted.  Cancellation: see :func:`terminate_trees`.
    Bad input (an empty id, a negative grace, protected ids that are not strings) raises
    :class:`~acpx_trio.AcpxUsageError` before anything is listed."""
    _require_id("gateway_instance_id", gateway_instance_id)
    require_grace(grace)
    protected = _protected_ids(protected_lease_ids)
    deps = _deps(deps)

    def plan(table: list[ProcessInfo], known: Collection[tuple[int, int | None]]) -> Plan:
        return plan_orphans(
            table, gateway_instance_id, protected, self_pid=deps.self_pid,
            self_uid=deps.self_uid, self_pgid=deps.self_pgid, self_sid=deps.self_sid,
            known=known,
        )

    out = await run_waves(plan, grace, deps)
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
    ``protected_lease_ids`` (``"protected"``).  The rest are marked ``closing`` in one write,
    their trees collected from one snapshot and terminated in one wave, then each marked
    ``closed`` (something of it was alive and is confirmed gone) or ``lost`` (nothing was) in
    one write; a lease another reaper finished meanwhile stays as it is.  A lease with a
    process that outlived SIGKILL stays ``closing`` (``left_alone[id] == "survived"``), retried
    next time.  Pending leases (``root_pid == 0``) are reaped by their tags; processes of other
    gateway ids are never touched.

    Crash or cancellation after the ``closing`` write leaves those leases ``closing``; the next
    call reaps them again.  Lease store errors propagate (:class:`~acpx_trio.LeaseStoreError`).
    Bad input (an empty id, a negative grace, a store without ``list_open`` and
    ``mark_states``, protected ids that are not strings) raises
    :class:`~acpx_trio.AcpxUsageError` before anything is read."""
    _require_id("gateway_instance_id", gateway_instance_id)
    require_grace(grace)
    if not all(inspect.iscoroutinefunction(getattr(lease_store, m, None))
               for m in ("list_open", "mark_states")):  # a SyncLeaseStore is not one
        raise AcpxUsageError("lease_store", lease_store, "must be a LeaseStore")
    protected = _protected_ids(protected_lease_ids)
    deps = _deps(deps)
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
    await lease_store.mark_states(
        {x.lease_id: LeaseState.CLOSING for x in to_reap}, skip_final=True)
    targets = [LeaseTarget.from_lease(x) for x in to_reap]

    def plan(snapshot: list[ProcessInfo], known: Collection[tuple[int, int | None]]) -> Plan:
        return plan_leases(
            snapshot, targets, self_pid=deps.self_pid, self_uid=deps.self_uid,
            current_boot_id=deps.boot_id, self_pgid=deps.self_pgid, self_sid=deps.self_sid,
            known=known,
        )

    out = await run_waves(plan, grace, deps, table)
    final, kept = lease_outcomes(
        to_reap, out.terminated, out.survived, SURVIVED if out.unproven else None)
    left_alone.update(kept)
    moved = await lease_store.mark_states(final, skip_final=True) if final else {}
    final = {k: v for k, v in final.items() if k in moved}
    return ReapResult(**out.figures(final, left_alone))
