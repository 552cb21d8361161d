"""The leases this process holds now, by lease id: a spare leaf from its making to its
hand-over or discard, a launch from just before its lease is saved to the end of its close.

This process's own reaps leave them alone: a spare is no leftover leaf, and a second
service started on the same state dir in this process (or its start-up reap) must never end
a session a sibling service still runs; their holder is alive, here, and ends them itself.
A lease this process saved whose holder has ended (a close that left survivors, a holder
that failed before it could close) is not held: a reap of ours takes it up, as it takes up
a dead owner's.  Another process knows nothing of this; it goes by the owner's liveness
(the lease's owner pid and start time, the processes' owner tags).

A lease id may be held twice at once (a spare handed over to the launch it becomes): it is
held until both holders released it.
"""

from __future__ import annotations

import collections

__all__ = ["held_leases", "hold", "release"]

_held: collections.Counter[str] = collections.Counter()


def hold(lease_id: str) -> None:
    """Mark ``lease_id`` held (call before its leaf is made or its lease saved: no reap of
    ours sees it unheld while its holder runs)."""
    _held[lease_id] += 1


def release(lease_id: str) -> None:
    """One holder of ``lease_id`` is done with it (handed over, closed, failed, given up)."""
    if _held[lease_id] <= 1:
        del _held[lease_id]
    else:
        _held[lease_id] -= 1


def held_leases() -> frozenset[str]:
    """The lease ids held now."""
    return frozenset(_held)
