"""The launches this process holds now, by lease id: from just before a launch's lease is
saved to the end of its close.

This process's own reaps leave them alone: a second service started on the same state dir
in this process (or its start-up reap) must never end a session a sibling service still
runs; their holder is alive, here, and ends them itself.  A lease this process saved whose
holder has ended (a close that left survivors, a holder that failed before it could close)
is not held: a reap of ours takes it up, as it takes up a dead owner's.  Another process
knows nothing of this set; it goes by the owner's liveness (the lease's owner pid and start
time, the processes' owner tags).
"""

from __future__ import annotations

__all__ = ["held_launches", "hold_launch", "release_launch"]

_launches: set[str] = set()


def hold_launch(lease_id: str) -> None:
    """Mark ``lease_id`` held (call before its lease is saved: no reap of ours sees it
    unheld while its holder runs)."""
    _launches.add(lease_id)


def release_launch(lease_id: str) -> None:
    """The holder of ``lease_id`` is done with it (closed, failed or given up)."""
    _launches.discard(lease_id)


def held_launches() -> frozenset[str]:
    """The lease ids held now."""
    return frozenset(_launches)
