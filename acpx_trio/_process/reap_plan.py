"""The reaper's pure planning core: which processes of a table are provably ours.

No I/O and no clock: plain functions over
:class:`~acpx_trio._process.identity.ProcessInfo` lists, so
hypothesis drives them directly and the async layer (:mod:`acpx_trio._process.reaper`) stays thin.

Rules (fail closed; anything unproven is left alone, with a reason):

* never our own pid (``"self"``), pid 0/1 (``"init"``), an uninspectable process
  (``"access-denied"``) or another uid's process (``"other-user"``), whatever its tags say;
* a process is a lease's only when it carries the lease id **and** gateway id tags
  (``"not-owned"`` otherwise);
* the lease root must also match the recorded boot id and start ticks / create time
  (``"pid-reused"``); only a verified root's descendants are walked (breadth-first,
  cycle-safe) and each must be tagged too;
* every other process carrying a lease's tags is included, wherever it was re-parented;
* zombies are dead: never targets;
* **groups and sessions** (:func:`expand_groups`): the process group and session whose id is
  a verified root's pid (or a root that exited but is not reaped yet, a zombie still
  holding its pid, proved the lease's by its start ticks: :func:`dead_root_proven`), or the
  pid of any other target leading its own group/session, are ours while any member lives
  (a pid in use as a pgid/sid is never reused), and so are all their members, tagged or
  not.  A group/session whose leader is gone (a ``setsid`` + fork hopper) is ours when a
  member carries the lease's tags and no live member has an ancestry that avoids every
  owned process (a "foreign" member).  Never our own group or session,
  never pid 0/1.  A group whose members all pass :func:`guard_reason` is listed in
  :attr:`Plan.groups` to be signalled as a whole (``killpg``: atomic against forks);
* a zombie proved ours (in ``known``, or in an owned group/session) does not hide its
  children: they are targets too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import msgspec

from acpx_trio._process.identity import CREATE_TIME_TOLERANCE, ProcessInfo
from acpx_trio._process.owner_tag import OwnerTag, names_owner, owner_alive_elsewhere
from acpx_trio._store.lease_model import LeaseState, ProcessLease

__all__ = [
    "ACCESS_DENIED",
    "INIT",
    "MISSING_ROOT",
    "NOT_OWNED",
    "OTHER_USER",
    "OWNER_ALIVE",
    "PID_REUSED",
    "PROTECTED",
    "SELF",
    "SURVIVED",
    "UNVERIFIED_ROOT",
    "LeaseTarget",
    "Plan",
    "expand_groups",
    "guard_reason",
    "order_children_first",
    "owner_alive",
    "plan_leases",
    "plan_orphans",
]

MISSING_ROOT = "missing-root"
UNVERIFIED_ROOT = "unverified-root"
NOT_OWNED = "not-owned"
PID_REUSED = "pid-reused"
ACCESS_DENIED = "access-denied"
OTHER_USER = "other-user"
SELF = "self"
INIT = "init"
OWNER_ALIVE = "owner-alive"
PROTECTED = "protected"
SURVIVED = "survived"


class LeaseTarget(msgspec.Struct, frozen=True, kw_only=True):
    """What a lease says about its processes.  ``root_pid == 0`` means pending (tags only)."""

    lease_id: str
    gateway_instance_id: str
    root_pid: int = 0
    root_create_time: float | None = None
    root_start_ticks: int | None = None
    root_boot_id: str | None = None

    @classmethod
    def from_lease(cls, lease: ProcessLease) -> LeaseTarget:
        return cls(
            lease_id=lease.lease_id,
            gateway_instance_id=lease.gateway_instance_id,
            root_pid=max(lease.root_pid, 0),
            root_create_time=lease.root_create_time,
            root_start_ticks=lease.root_start_ticks,
            root_boot_id=lease.boot_id,
        )


class Plan(msgspec.Struct, kw_only=True):
    """What to terminate.  ``targets`` are in kill order (children before parents);
    ``root_reasons`` maps lease id -> why its root was not used."""

    inspected: list[int]
    targets: list[ProcessInfo]
    skipped: dict[int, str]
    root_reasons: dict[str, str]
    #: Process group ids that are wholly ours: ``killpg`` them (after the per-pid signals).
    groups: list[int] = []


def guard_reason(p: ProcessInfo, self_pid: int, self_uid: int) -> str | None:
    """Why ``p`` may never be signalled whatever its tags say, or ``None``."""
    if p.pid == self_pid:
        return SELF
    if p.pid <= 1:
        return INIT
    if not p.inspectable or p.uid is None:
        return ACCESS_DENIED
    if p.uid != self_uid:
        return OTHER_USER
    return None


def root_matches(p: ProcessInfo, t: LeaseTarget, current_boot_id: str | None) -> bool:
    """Whether ``p`` (found at the lease's root pid) is the process the lease recorded, as far
    as the lease can tell: another boot's lease matches nothing; recorded start ticks must be
    equal, a recorded create time within ``CREATE_TIME_TOLERANCE``; a lease that recorded
    neither matches (its tags decide)."""
    if t.root_boot_id and current_boot_id and t.root_boot_id != current_boot_id:
        return False  # recorded in an earlier boot: whatever has this pid now is not it
    if t.root_start_ticks is not None and p.start_ticks is not None:
        return p.start_ticks == t.root_start_ticks
    if t.root_create_time is not None:
        return abs(p.create_time - t.root_create_time) <= CREATE_TIME_TOLERANCE
    # Ticks recorded but unreadable here: cannot prove it; nothing recorded: tags decide.
    return t.root_start_ticks is None


def dead_root_proven(p: ProcessInfo, t: LeaseTarget, current_boot_id: str | None) -> bool:
    """Whether ``p``, a zombie at the lease's root pid, is the lease's root: its start ticks
    equal the recorded ones (same boot) and it leads its group and session.  A zombie still
    holds its pid, so no other process can start a group or a session with that id, and a
    session leader never leaves its group: the members of both are what the root left (an
    ``env -i`` child, which carries no tag, among them).  Its tags cannot be read any more:
    the identity is the proof, so ticks are required (a create time within a tolerance is
    not enough without tags)."""
    return (p.zombie and t.root_start_ticks is not None and p.start_ticks is not None
            and root_matches(p, t, current_boot_id) and p.pgid == p.pid and p.sid == p.pid)


def order_children_first(procs: Sequence[ProcessInfo]) -> list[ProcessInfo]:
    """Unique by pid (first wins), every process before its parent when both are listed.

    Stable otherwise; cycle-safe (a ppid loop cannot make it spin)."""
    unique: dict[int, ProcessInfo] = {}
    for p in procs:
        unique.setdefault(p.pid, p)
    depth: dict[int, int] = {}
    for pid, p in unique.items():
        d, seen, cur = 0, {pid}, p.ppid
        while cur in unique and cur not in seen:
            seen.add(cur)
            d += 1
            cur = unique[cur].ppid
        depth[pid] = d
    order = list(unique.values())
    order.sort(key=lambda p: -depth[p.pid])
    return order


def plan_leases(
    table: Sequence[ProcessInfo],
    leases: Sequence[LeaseTarget],
    *,
    self_pid: int,
    self_uid: int,
    current_boot_id: str | None = None,
    self_pgid: int | None = None,
    self_sid: int | None = None,
    known: Collection[tuple[int, int | None]] = (),
    verified_groups: Collection[int] = (),
) -> Plan:
    """Every process provably owned by one of ``leases`` in ``table`` (see module docstring).

    ``verified_groups``: group/session ids the caller proved ours while a member lived (our
    own child's pid, its exit seen moments ago): claimed like a verified root's.

    Group/session expansion runs only when ``self_pgid`` and ``self_sid`` are given (so our
    own group and session can be excluded); ``known`` holds ``(pid, start_ticks)`` of
    processes proved ours earlier (a previous wave), so a zombie among them still counts.
    Pure: no I/O.  Zombies are dead and never targeted."""
    by_pid = {p.pid: p for p in table}
    children: dict[int, list[int]] = {}
    for p in table:
        if p.ppid != p.pid:
            children.setdefault(p.ppid, []).append(p.pid)
    wanted = {(t.lease_id, t.gateway_instance_id) for t in leases}
    inspected: dict[int, None] = {}
    targets: dict[int, ProcessInfo] = {}
    skipped: dict[int, str] = {}
    root_reasons: dict[str, str] = {}
    dead_roots: set[int] = set()

    def consider(p: ProcessInfo, t: LeaseTarget) -> None:
        inspected.setdefault(p.pid)
        if p.zombie or p.pid in targets or p.pid in skipped:
            return
        reason = guard_reason(p, self_pid, self_uid)
        if reason is None and (p.lease_id, p.gateway_instance_id) != (
            t.lease_id,
            t.gateway_instance_id,
        ):
            reason = NOT_OWNED
        if reason is None:
            targets[p.pid] = p
        else:
            skipped[p.pid] = reason

    for t in leases:
        if t.root_pid <= 0:
            continue
        root = by_pid.get(t.root_pid)
        if root is None or root.zombie:
            root_reasons[t.lease_id] = MISSING_ROOT
            if root is not None and dead_root_proven(root, t, current_boot_id):
                dead_roots.add(root.pid)  # never a target; its group and session are claimed
            continue
        inspected.setdefault(root.pid)
        reason = guard_reason(root, self_pid, self_uid)
        if reason is None and not root_matches(root, t, current_boot_id):
            reason = PID_REUSED
        if reason is None and (root.lease_id, root.gateway_instance_id) != (
            t.lease_id,
            t.gateway_instance_id,
        ):
            reason = NOT_OWNED
        if reason is not None:
            skipped.setdefault(root.pid, reason)
            root_reasons[t.lease_id] = PID_REUSED if reason == PID_REUSED else UNVERIFIED_ROOT
            continue
        targets[root.pid] = root
        queue, seen = [root.pid], {root.pid}
        while queue:
            nxt: list[int] = []
            for pid in queue:
                for child in children.get(pid, ()):
                    if child not in seen:
                        seen.add(child)
                        consider(by_pid[child], t)
                        nxt.append(child)
            queue = nxt

    by_tags = {(t.lease_id, t.gateway_instance_id): t for t in leases}
    for p in table:
        key = (p.lease_id, p.gateway_instance_id)
        if key in wanted and not p.zombie:
            t = by_tags[key]  # type: ignore[index,unused-ignore]
            consider(p, t)
    groups: list[int] = []
    if self_pgid is not None and self_sid is not None:
        roots = ({t.root_pid for t in leases if t.root_pid in targets} | dead_roots
                 | set(verified_groups))
        groups = expand_groups(
            table, targets, skipped, inspected, roots=roots, tags=wanted, known=known,
            self_pid=self_pid, self_uid=self_uid, self_pgid=self_pgid, self_sid=self_sid,
        )
    return Plan(
        inspected=list(inspected),
        targets=order_children_first(list(targets.values())),
        skipped=skipped,
        root_reasons=root_reasons,
        groups=groups,
    )


def _tagged(p: ProcessInfo, tags: Collection[tuple[str, str]]) -> bool:
    return (p.lease_id, p.gateway_instance_id) in tags and not p.zombie


def expand_groups(
    table: Sequence[ProcessInfo],
    targets: dict[int, ProcessInfo],
    skipped: dict[int, str],
    inspected: dict[int, None],
    *,
    roots: Collection[int],
    tags: Collection[tuple[str, str]],
    known: Collection[tuple[int, int | None]],
    self_pid: int,
    self_uid: int,
    self_pgid: int,
    self_sid: int,
) -> list[int]:
    """Add the members of owned process groups and sessions to ``targets`` (in place; see the
    module docstring for the rules) and return the group ids safe to ``killpg``.

    ``roots`` are verified lease roots (pids in ``targets``); ``tags`` the wanted
    ``(lease id, gateway id)`` pairs.  Pure; a fixpoint over ``table`` (at most one pass per
    newly owned id, so bounded by the table size)."""
    by_pid = {p.pid: p for p in table}
    # indexes of the table (fixed here): the fixpoint below asks them once per owned id
    kids: dict[int, list[ProcessInfo]] = {}
    live_in: dict[str, dict[int, list[ProcessInfo]]] = {"pgid": {}, "sid": {}}
    for p in table:
        kids.setdefault(p.ppid, []).append(p)
        if not p.zombie:
            for attr, ident in (("pgid", p.pgid), ("sid", p.sid)):
                if ident is not None:
                    live_in[attr].setdefault(ident, []).append(p)
    forbidden = {0, 1, self_pid, self_pgid, self_sid}
    known_keys = set(known)
    groups: set[int] = set()
    sessions: set[int] = set()
    tainted: set[int] = set()

    def ours(p: ProcessInfo) -> bool:
        return p.pid in targets or (p.pid, p.start_ticks) in known_keys

    def foreign(p: ProcessInfo) -> bool:
        """Live, not tagged, and no ancestor within reach is ours or tagged."""
        cur: ProcessInfo | None = p
        for _ in range(64):
            if cur is None or cur.pid <= 1:
                return True
            if ours(cur) or _tagged(cur, tags):
                return False
            cur = by_pid.get(cur.ppid) if cur.ppid != cur.pid else None
        return True

    def leaderless_ok(ident: int, attr: str) -> bool:
        """Group/session ``ident`` whose leader is gone (or a zombie): ours when nothing
        foreign lives in it."""
        leader = by_pid.get(ident)
        if leader is not None and not leader.zombie:
            return ours(leader)
        return not any(foreign(p) for p in live_in[attr].get(ident, ()))

    def claim(ident: int | None, kind: set[int]) -> bool:
        if ident is None or ident in forbidden or ident in kind:
            return False
        kind.add(ident)
        return True

    for pid in roots:
        claim(pid, groups)
        claim(pid, sessions)
    changed = True
    while changed:
        changed = False
        for p in table:
            mine = ours(p)
            if not mine and p.zombie and (p.pgid in groups or p.sid in sessions):
                mine = True  # a dead member of an owned group: its children are ours
            if not mine:
                continue
            if p.pgid == p.pid:
                changed |= claim(p.pgid, groups)
            if p.sid == p.pid:
                changed |= claim(p.sid, sessions)
            if _tagged(p, tags):
                if p.pgid is not None and p.pgid not in groups and leaderless_ok(p.pgid, "pgid"):
                    changed |= claim(p.pgid, groups)
                if p.sid is not None and p.sid not in sessions and leaderless_ok(p.sid, "sid"):
                    changed |= claim(p.sid, sessions)
            if p.zombie:
                for child in kids.get(p.pid, ()):
                    if child.pid not in targets and not child.zombie:
                        changed |= _take(child, targets, skipped, inspected, tainted,
                                         self_pid, self_uid)
        for p in table:
            if p.zombie or p.pid in targets:
                continue
            if p.pgid in groups or p.sid in sessions:
                changed |= _take(p, targets, skipped, inspected, tainted, self_pid, self_uid)
                if p.sid in sessions:
                    changed |= claim(p.pgid, groups)
    for p in table:  # a group with a forbidden member is never signalled as a whole
        if p.pgid in groups and not p.zombie and guard_reason(p, self_pid, self_uid):
            tainted.add(p.pgid)
    return sorted(groups - tainted)


def _take(
    p: ProcessInfo,
    targets: dict[int, ProcessInfo],
    skipped: dict[int, str],
    inspected: dict[int, None],
    tainted: set[int],
    self_pid: int,
    self_uid: int,
) -> bool:
    inspected.setdefault(p.pid)
    reason = guard_reason(p, self_pid, self_uid)
    if reason is not None:
        skipped[p.pid] = reason
        if p.pgid is not None:
            tainted.add(p.pgid)
        return False
    skipped.pop(p.pid, None)  # an untagged member of an owned group is ours after all
    targets[p.pid] = p
    return True


def plan_orphans(
    table: Sequence[ProcessInfo],
    gateway_instance_id: str,
    protected_lease_ids: Collection[str] = (),
    *,
    self_pid: int,
    self_uid: int,
    self_pgid: int | None = None,
    self_sid: int | None = None,
    known: Collection[tuple[int, int | None]] = (),
    only_owner: OwnerTag | None = None,
) -> Plan:
    """Every live process tagged with ``gateway_instance_id`` and an unprotected lease id.

    No reliance on ``ppid == 1``.  A process with our gateway tag but no lease tag is
    ``"not-owned"``; one of a protected lease is ``"protected"``; one whose owner tag names a
    live owner other than us (its lease record may be lost) is ``"owner-alive"``.  With
    ``only_owner`` (the owner-death watchdog), only processes naming that owner count.
    Pure: no I/O."""
    protected = set(protected_lease_ids)
    every = {p.pid: p for p in table}
    inspected: list[int] = []
    targets: list[ProcessInfo] = []
    skipped: dict[int, str] = {}
    for p in table:
        if p.zombie or p.gateway_instance_id != gateway_instance_id:
            continue
        inspected.append(p.pid)
        reason = guard_reason(p, self_pid, self_uid)
        if reason is None and p.lease_id is None:
            reason = NOT_OWNED
        if reason is None and p.lease_id in protected:
            reason = PROTECTED
        if reason is None and (
            not names_owner(p, only_owner) if only_owner is not None
            else owner_alive_elsewhere(p, every, self_pid, self_uid)
        ):
            reason = OWNER_ALIVE if only_owner is None else NOT_OWNED
        if reason is None:
            targets.append(p)
        else:
            skipped[p.pid] = reason
    groups: list[int] = []
    by_pid = {p.pid: p for p in targets}
    if self_pgid is not None and self_sid is not None and targets:
        seen = dict.fromkeys(inspected)
        groups = expand_groups(
            table, by_pid, skipped, seen, roots=(),
            tags={(p.lease_id or "", gateway_instance_id) for p in targets}, known=known,
            self_pid=self_pid, self_uid=self_uid, self_pgid=self_pgid, self_sid=self_sid,
        )
        inspected = list(seen)
    return Plan(
        inspected=inspected,
        targets=order_children_first(list(by_pid.values())),
        skipped=skipped,
        root_reasons={},
        groups=groups,
    )


def owner_alive(
    lease: ProcessLease, by_pid: dict[int, ProcessInfo], self_pid: int
) -> bool:
    """Whether the lease's owner is a live process other than us.

    Owner unknown, gone, a zombie, or with another create time (pid reused): not alive.  Owner
    pid alive but no start time recorded: alive (cannot prove it is dead; leave it alone)."""
    if lease.owner_pid is None or lease.owner_pid <= 0 or lease.owner_pid == self_pid:
        return False
    p = by_pid.get(lease.owner_pid)
    if p is None or p.zombie:
        return False
    if lease.owner_start_time is None:
        return True
    return abs(p.create_time - lease.owner_start_time) <= CREATE_TIME_TOLERANCE


def lease_outcomes(
    reaped: Sequence[ProcessLease], terminated: Sequence[ProcessInfo],
    survived: Sequence[ProcessInfo], unproven: str | None,
    leaf_ends: Mapping[str, tuple[bool, bool]] | None = None,
) -> tuple[dict[str, LeaseState], dict[str, str]]:
    """``(final, kept)`` for leases a reap's waves went through: ``closed`` when one of its
    processes was terminated, ``lost`` when none was alive; kept as they are, with the
    reason, while one of its processes survived (``survived``) or while the waves ended
    without their proof (``unproven``: the reason to give, ``None`` when they proved it).
    ``leaf_ends``: lease id -> (its leaf held members, it emptied) for the leases whose leaf
    was ended beside the waves: members killed count as terminated, a leaf that did not
    empty as a survivor."""
    ends = leaf_ends or {}
    dead = {p.lease_id for p in terminated} | {k for k, (held, _) in ends.items() if held}
    alive = {p.lease_id for p in survived} | {k for k, (_, emptied) in ends.items()
                                              if not emptied}
    final: dict[str, LeaseState] = {}
    kept: dict[str, str] = {}
    for lease in reaped:
        if lease.lease_id in alive:
            kept[lease.lease_id] = SURVIVED
        elif unproven is not None:
            kept[lease.lease_id] = unproven
        else:
            final[lease.lease_id] = LeaseState.CLOSED if lease.lease_id in dead else LeaseState.LOST
    return final, kept
