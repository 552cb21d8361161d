"""The cgroup side of a gateway reap: the leaves of the leases it reaps that still hold a
process once the first wave's grace has passed (found by name under the gateway's own parent
cgroup, killed beside the first wave's SIGKILLs and the later waves) and, a step after
them, the leftover leaves (:func:`reap_cgroup_leftovers`: a lease final, missing, or its
owner dead).  Only leaves under the gateway's own parent cgroup are ever touched."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Literal

import trio

from acpx_trio._process import held
from acpx_trio._process.cgroup import (
    gateway_parent,
    leaf_populated,
    leftover_leaves,
    remove_empty_leaf,
    remove_empty_parent,
    tree_members,
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

__all__ = ["Verdict", "busy_leaves_of", "leaf_verdict", "reap_cgroup_leftovers"]

#: What a reap may do with a leftover leaf (:func:`leaf_verdict`).
Verdict = Literal["keep", "kill", "empty"]


async def reap_cgroup_leftovers(request: ReapStepRequest) -> list[ReapAction]:
    """Leaf cgroups of this gateway whose lease is final, missing, or whose owner is dead:
    killed (``cgroup.kill``), waited empty, removed.  Only leaves under this gateway's own
    parent cgroup are touched."""
    # leaves first, leases second: a lease is saved before its leaf is made, so every leaf
    # listed here that belongs to a live start has its lease in the read that follows; a
    # spare's leaf has none until the spare is taken, and is decided by who is in it (an
    # empty one is removed, never killed: its spare may be moving in)
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
    verdicts: dict[str, Verdict] = {}
    for leaf in leaves:
        lease = request.known_leases.get(leaf.rsplit("/", 1)[-1])
        if lease is not None:
            verdicts[leaf] = "kill" if owned_by(lease, request.owner) else "keep"
        else:
            verdicts[leaf] = await trio.to_thread.run_sync(leaf_verdict, leaf, request.owner)
    leaves = [leaf for leaf in leaves if verdicts[leaf] != "keep"]
    if request.dry_run:
        return [ReapAction(action="would-kill-cgroup", lease_id=leaf.rsplit("/", 1)[-1],
                           reason=f"leaf cgroup {leaf}: its lease is not open with a live "
                           "owner") for leaf in leaves]
    # the empty ones (the tree already exited or was reaped above) are removed in one pass;
    # the others are killed together
    busy = await trio.to_thread.run_sync(_remove_empty, leaves)
    unproven = [leaf for leaf in busy if verdicts[leaf] == "empty"]
    if unproven:  # entered since it was read empty: never killed on that read
        doomed = await trio.to_thread.run_sync(_decide_again, unproven, request.owner)
        busy = [leaf for leaf in busy if verdicts[leaf] != "empty" or leaf in doomed]
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
    """The members of ``leaf`` and the cgroups below it that were alive (not zombies) when
    read; empty only when none holds a process.  A member may exit between the listing and
    its read (a pid hopper forks and exits every few ms): when every listed one did, its
    successor is already in the leaf, so the listing is read again, while it changes
    (bounded).  A listing of zombies that stays the same is returned as it is.  Blocking."""
    members: list[ProcessInfo] = []
    listed: list[int] = []
    for _ in range(_MEMBER_READS):
        pids = tree_members(leaf)
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


def leaf_verdict(leaf: str, only_owner: OwnerTag | None) -> Verdict:
    """What a reap may do with a leftover leaf that has no lease record.

    ``keep``: a live member names a live owner other than us, or (``only_owner``: the
    watchdog) no live member names that dead owner.  ``kill``: members were read alive and
    none is kept.  ``empty``: no process in it or below it; such a leaf may only be
    removed, never killed, since a launch may be entering it: a live owner's spare leaf has
    no lease record until the spare is taken, and is empty until the spare has moved in.
    Decided on members read alive, never on a listing whose members all exited under our
    eyes (that would hand another owner's launch to the kill), and never on a member read
    without tags before it was read again for :data:`UNTAGGED_READ_SECONDS`: a process in the
    middle of an ``exec`` shows no environment (its new memory has none yet), so a live
    owner's spare becoming its agent would read as nobody's.  Blocking."""
    members = _live_members(leaf)
    if not members:
        return "empty"
    deadline = time.monotonic() + UNTAGGED_READ_SECONDS
    while True:
        if _kept(members, only_owner):
            return "keep"
        untagged = [p.pid for p in members if p.owner is None and not p.zombie]
        if not untagged or time.monotonic() > deadline:
            return "kill"
        time.sleep(UNTAGGED_READ_PAUSE)  # no event marks the end of an exec: read again
        again = {pid: process_info(pid) for pid in untagged}
        members = [q for p in members
                   if (q := again.get(p.pid, p)) is not None]
        if not members:
            return "empty"


#: How long a leaf member read without tags is read again before it counts as untagged, and
#: the pause between its reads (see :func:`leaf_verdict`).  Measured: a tagged process that
#: ``exec``s without pause (one every 0.2 ms) read untagged in 114 of 12,155 reads; read
#: again 1 ms apart, each showed its tags within 1-3 reads.
UNTAGGED_READ_SECONDS = 0.05
UNTAGGED_READ_PAUSE = 0.001


def _kept(members: list[ProcessInfo], only_owner: OwnerTag | None) -> bool:
    """A live member names a live owner other than us, or (``only_owner``) none names that
    dead owner.  Blocking."""
    me, uid = os.getpid(), os.getuid()
    for p in members:
        tag = parse_owner_tag(p.owner)
        owner = None if tag is None else process_info(tag.pid)
        table = {p.pid: p} if owner is None else {p.pid: p, owner.pid: owner}
        if owner_alive_elsewhere(p, table, me, uid):
            return True
    return only_owner is not None and not any(names_owner(p, only_owner) for p in members)


#: Verdicts of one leaf read empty but busy at its removal (:func:`_decide_again`).
_DECISIONS = 5


def _decide_again(leaves: list[str], only_owner: OwnerTag | None) -> set[str]:
    """Of ``leaves``, read empty and then busy when they were to be removed (a process
    moved in meanwhile: a spare of a live owner entering its leaf), those to kill: decided
    again on the members read now.  While none is read, the removal is tried again; a leaf
    still undecided after :data:`_DECISIONS` tries is left for the next reap.  Blocking."""
    doomed = set()
    for leaf in leaves:
        for _ in range(_DECISIONS):
            verdict = leaf_verdict(leaf, only_owner)
            if verdict == "kill":
                doomed.add(leaf)
            if verdict != "empty" or remove_empty_leaf(leaf, parent=False):
                break
    return doomed
