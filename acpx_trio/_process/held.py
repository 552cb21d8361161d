"""The leases this process holds now, by lease id: a spare leaf from its making to its
hand-over or discard, a launch from just before its lease is saved to the end of its close.

This process's own reaps leave them alone: a spare is no leftover leaf, and a second
service started on the same state dir in this process (or its start-up reap) must never end
a session a sibling service still runs; their holder is alive, here, and ends them itself.
A lease this process saved whose holder has ended (a close that left survivors, a holder
that failed before it could close) is not held: a reap of ours takes it up, as it takes up
a dead owner's.  Another process knows nothing of this; it goes by the owner's liveness
(the lease's owner pid and start time, the processes' owner tags).

A close that could not prove its tree gone lets go of a lease that is not final: it is
*left behind* (:func:`left_behind`), and this process's own sweeps (the service's periodic
one and its stop) take it up without waiting for the next start.

A lease id may be held twice at once (a spare handed over to the launch it becomes): it is
held until both holders released it.
"""

from __future__ import annotations

import collections

__all__ = ["forget_left", "held_leases", "hold", "left_behind", "release"]

_held: collections.Counter[str] = collections.Counter()
#: lease id -> gateway instance id of the leases left behind (not final, not held)
_left: dict[str, str] = {}


def hold(lease_id: str) -> None:
    """Mark ``lease_id`` held (call before its leaf is made or its lease saved: no reap of
    ours sees it unheld while its holder runs)."""
    _held[lease_id] += 1


def release(lease_id: str, *, left_in: str | None = None) -> None:
    """One holder of ``lease_id`` is done with it (handed over, closed, failed, given up).
    ``left_in``: the gateway instance id, when the holder lets go of it not final (a close
    that could not prove its tree gone)."""
    if _held[lease_id] <= 1:
        del _held[lease_id]
    else:
        _held[lease_id] -= 1
    if left_in is not None:
        _left[lease_id] = left_in


def held_leases() -> frozenset[str]:
    """The lease ids held now."""
    return frozenset(_held)


def left_behind(gateway_instance_id: str) -> frozenset[str]:
    """The leases of that gateway this process left behind and holds no more."""
    return frozenset(k for k, gw in _left.items() if gw == gateway_instance_id
                     and k not in _held)


def forget_left(lease_ids: frozenset[str] | set[str]) -> None:
    """These leases are final now (or gone from the lease file): nothing left to take up."""
    for lease_id in lease_ids:
        _left.pop(lease_id, None)
