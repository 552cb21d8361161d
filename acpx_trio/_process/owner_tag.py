"""The owner tag of a launch (``OPENCLAW_ACPX_OWNER=PID:TICKS:CREATE``): which process
spawned it, so a tag sweep can tell a live owner's processes (left alone, even when their
lease record was lost) from an orphan's.  Pure: no I/O."""

from __future__ import annotations

import msgspec

from acpx_trio._process.identity import CREATE_TIME_TOLERANCE, ProcessInfo

__all__ = ["OwnerTag", "names_owner", "owner_alive_elsewhere", "owner_tag", "parse_owner_tag"]


class OwnerTag(msgspec.Struct, frozen=True, kw_only=True):
    """The owner a launch names (:data:`OWNER_ENV_KEY`): its pid, start ticks (Linux, else
    ``None``) and psutil create time."""

    pid: int
    start_ticks: int | None
    create_time: float

    def names(self, p: ProcessInfo) -> bool:
        """Whether ``p`` is this owner, alive: same pid, not a zombie, same start ticks (when
        both are known) else the same create time within :data:`CREATE_TIME_TOLERANCE`."""
        if p.pid != self.pid or p.zombie:
            return False
        if self.start_ticks is not None and p.start_ticks is not None:
            return p.start_ticks == self.start_ticks
        return abs(p.create_time - self.create_time) <= CREATE_TIME_TOLERANCE


def owner_tag(pid: int, start_ticks: int | None, create_time: float) -> str:
    """The value of :data:`OWNER_ENV_KEY` for the owner ``pid`` (``PID:TICKS:CREATE``,
    ``TICKS`` empty when unknown)."""
    ticks = "" if start_ticks is None else str(start_ticks)
    return f"{pid}:{ticks}:{create_time:.3f}"


def parse_owner_tag(value: str | None) -> OwnerTag | None:
    """The :class:`OwnerTag` of an :func:`owner_tag` value; ``None`` when absent or
    malformed (then it protects nothing)."""
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 3:
        return None
    try:
        pid = int(parts[0])
        ticks = int(parts[1]) if parts[1] else None
        create = float(parts[2])
    except ValueError:
        return None
    if pid <= 1 or (ticks is not None and ticks < 0) or create != create:
        return None
    return OwnerTag(pid=pid, start_ticks=ticks, create_time=create)


def owner_alive_elsewhere(
    p: ProcessInfo, by_pid: dict[int, ProcessInfo], self_pid: int, self_uid: int
) -> bool:
    """Whether ``p`` names (by its owner tag) an owner that is alive, under our uid, and is
    not us — proven by pid + start ticks (or create time) in the same scan ``by_pid``.  Then a
    tag sweep leaves ``p`` alone: that owner closes it, or its watchdog / the next start-up
    does once it dies.  No tag, a malformed one, a dead owner or a reused pid: ``False``.

    An owner is a runtime, never one of the launches of this gateway: a process that
    carries this gateway's lease tags (``p`` itself, re-``exec``ed with an owner tag naming
    itself, or two launches naming each other) protects nothing."""
    tag = parse_owner_tag(p.owner)
    if tag is None or tag.pid == self_pid:
        return False
    owner = by_pid.get(tag.pid)
    if owner is None or owner.uid != self_uid or not tag.names(owner):
        return False
    return not (owner.lease_id is not None
                and owner.gateway_instance_id == p.gateway_instance_id)


def names_owner(p: ProcessInfo, owner: OwnerTag) -> bool:
    """Whether ``p``'s owner tag names exactly ``owner`` (pid and start time)."""
    tag = parse_owner_tag(p.owner)
    if tag is None or tag.pid != owner.pid:
        return False
    if tag.start_ticks is not None and owner.start_ticks is not None:
        return tag.start_ticks == owner.start_ticks
    return abs(tag.create_time - owner.create_time) <= CREATE_TIME_TOLERANCE
