"""The cgroup side of a gateway reap: the leaves of the leases it reaps that still hold a
process once the first wave's grace has passed (found by name under the gateway's own parent
cgroup, killed beside the first wave's SIGKILLs and the later waves) and, a step after
them, the leftover leaves (:func:`reap_cgroup_leftovers`: a lease final, missing, or its
owner dead).  Only leaves under the gateway's own parent cgroup are ever touched."""

from __future__ import annotations

import os
from collections.abc import Sequence

import trio

from acpx_trio._process import held
from acpx_trio._process.cgroup import (
    gateway_parent,
    leaf_members,
    leaf_populated,
    leftover_leaves,
    remove_empty_leaf,
    remove_empty_parent,
)
from acpx_trio._process.identity import ProcessInfo, process_info
from acpx_trio._process.leaf_end import kill_leaf
from acpx_trio._process.owner_tag import (
    OwnerTag,
    names_owner,
    owner_alive_elsewhere,
    parse_owner_tag,
)
from acpx_trio._process.reap_report import ReapAction, ReapStepRequest, owned_by
from acpx_trio._store.lease_model import ProcessLease

__all__ = ["busy_leaves_of", "leaf_kept", "reap_cgroup_leftovers"]


async def reap_cgroup_leftovers(request: ReapStepRequest) -> list[ReapAction]:
    """Leaf cgroups of this gateway whose lease is final, missing, or whose owner is dead:
    killed (``cgroup.kill``), waited empty, removed.  Only leaves under this gateway's own
    parent cgroup are touched."""
    # leaves first, leases second: a lease is saved before its leaf is made, so every leaf
    # listed here that belongs to a live start has its lease in the read that follows
    leaves = await trio.to_thread.run_sync(
        _leftovers_or_tidy, request.gateway_instance_id, request.dry_run)
    if not leaves:
        return []
    # this process's warm leaves, read before the leases: one released since was saved
    # first, so it is in the read that follows
    mine = held.held_leases()
    leaves = [leaf for leaf in leaves if leaf.rsplit("/", 1)[-1] not in mine]
    live = frozenset() if request.live_lease_ids is None else await request.live_lease_ids()
    leaves = [leaf for leaf in leaves if leaf.rsplit("/", 1)[-1] not in live]
    # a leaf's lease names its owner (with ``owner``, the watchdog's: only that owner's
    # leaves); a leaf whose lease record was lost (a damaged lease file) but whose members
    # name a live owner other than us is that owner's: left alone, as the tag sweep leaves
    # its processes
    kept = []
    for leaf in leaves:
        lease = request.known_leases.get(leaf.rsplit("/", 1)[-1])
        if lease is not None:
            kept.append(not owned_by(lease, request.owner))
        else:
            kept.append(await trio.to_thread.run_sync(leaf_kept, leaf, request.owner))
    leaves = [leaf for leaf, keep in zip(leaves, kept, strict=True) if not keep]
    if request.dry_run:
        return [ReapAction(action="would-kill-cgroup", lease_id=leaf.rsplit("/", 1)[-1],
                           reason=f"leaf cgroup {leaf}: its lease is not open with a live "
                           "owner") for leaf in leaves]
    # the empty ones (the tree already exited or was reaped above) are removed in one pass;
    # the others are killed together
    busy = await trio.to_thread.run_sync(_remove_empty, leaves)
    gone: dict[str, bool] = {}

    async def kill(leaf: str) -> None:
        gone[leaf] = await kill_leaf(leaf, request.grace + 1.0)

    async with trio.open_nursery() as nursery:
        for leaf in busy:
            nursery.start_soon(kill, leaf)
    return [ReapAction(
        action="killed-cgroup" if gone[leaf] else "survived",
        lease_id=leaf.rsplit("/", 1)[-1],
        reason=f"leaf cgroup {leaf}: its lease is not open with a live owner"
        + ("" if gone[leaf] else "; it did not empty, retried on the next reap"))
        for leaf in busy]


def busy_leaves_of(gateway_instance_id: str,
                   leases: Sequence[ProcessLease]) -> dict[str, str]:
    """Lease id -> its leaf, for ``leases`` whose leaf under this gateway's own parent cgroup
    (found by name there, never by the path a lease file records) holds a process.
    Blocking."""
    wanted = {x.lease_id for x in leases}
    return {leaf.rsplit("/", 1)[-1]: leaf
            for leaf in leftover_leaves(gateway_instance_id, frozenset())
            if leaf.rsplit("/", 1)[-1] in wanted and leaf_populated(leaf)}


def _leftovers_or_tidy(gateway_instance_id: str, dry_run: bool) -> list[str]:
    """The gateway's leaves (:func:`leftover_leaves`); when it has none, its parent cgroup is
    removed too (unless ``dry_run``): a parent whose last leaf went another way (a start that
    failed between the two ``mkdir``, a leaf removed without its parent) must not outlive
    the reap.  A start making a leaf at the same moment retries on the missing parent
    (:func:`~acpx_trio._process.cgroup.make_leaf`).  Blocking."""
    leaves = leftover_leaves(gateway_instance_id, frozenset())
    if not leaves and not dry_run and (parent := gateway_parent(gateway_instance_id)):
        remove_empty_parent(str(parent))
    return leaves


def _remove_empty(leaves: list[str]) -> list[str]:
    """Remove the leaves that hold no process (then each parent left empty, once); the
    others.  Blocking."""
    busy = [leaf for leaf in leaves if not remove_empty_leaf(leaf, parent=False)]
    for parent in {os.path.dirname(leaf) for leaf in leaves}:
        remove_empty_parent(parent)
    return busy


#: Membership reads of one leftover leaf before deciding on what the last one saw.
_MEMBER_READS = 100


def _live_members(leaf: str) -> list[ProcessInfo]:
    """The members of ``leaf`` that were alive (not zombies) when read; empty only when the
    leaf holds no process.  A member may exit between the listing and its read (a pid
    hopper forks and exits every few ms): when every listed one did, its successor is
    already in the leaf, so the listing is read again, while it changes (bounded).  A
    listing of zombies that stays the same is returned as it is.  Blocking."""
    members: list[ProcessInfo] = []
    listed: list[int] = []
    for _ in range(_MEMBER_READS):
        pids = leaf_members(leaf)
        if not pids:
            return []
        if pids == listed:  # the same zombies again: nobody new to read
            return members
        listed = pids
        members = [p for p in map(process_info, pids) if p is not None]
        live = [p for p in members if not p.zombie]
        if live:
            return live
    return members


def leaf_kept(leaf: str, only_owner: OwnerTag | None) -> bool:
    """Whether a leftover leaf must be left alone: a live member names a live owner other
    than us, or (``only_owner``: the watchdog) no live member names that dead owner.
    Decided on members read alive, never on a listing whose members all exited under our
    eyes (that would hand another owner's launch to the kill).  Blocking."""
    members = _live_members(leaf)
    if not members:
        return False
    me, uid = os.getpid(), os.getuid()
    for p in members:
        tag = parse_owner_tag(p.owner)
        owner = None if tag is None else process_info(tag.pid)
        table = {p.pid: p} if owner is None else {p.pid: p, owner.pid: owner}
        if owner_alive_elsewhere(p, table, me, uid):
            return True
    return only_owner is not None and not any(names_owner(p, only_owner) for p in members)
