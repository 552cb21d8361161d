"""The owner-death watchdog process's second half: the reap once its owner is gone.

Imported by :mod:`.watchdog_wait` once its owner has lived half a second (:func:`preload`), or
after the owner died, whichever comes first (Trio, psutil and the reaper are loaded then).
Reaps exactly the dead owner's leases and the processes whose owner tag names it (see
:mod:`.watchdog` for the guarantees).
"""

from __future__ import annotations

from typing import Any

__all__ = ["after_owner_death", "preload", "reap_dead_owner"]


def preload() -> None:
    """Load every module the reap needs, while the owner still lives: after its death the
    reap then starts at once (an import under the load of the dead owner's agents took
    0.25-0.7 s)."""
    import trio  # noqa: F401

    from acpx_trio._process import gateway_reap, owner_tag  # noqa: F401
    from acpx_trio._store import leases  # noqa: F401


async def _reap(
    lease_dir: str, gateway_id: str, owner_pid: int, owner_start: float, grace: float,
    owner_ticks: int | None = None,
) -> Any:
    from acpx_trio._process.gateway_reap import reap_gateway
    from acpx_trio._process.owner_tag import OwnerTag
    from acpx_trio._store.leases import LeaseStore

    dead = OwnerTag(pid=owner_pid, start_ticks=owner_ticks, create_time=owner_start)
    # only the dead owner's leases, and processes whose owner tag names it (those whose
    # lease record was lost to a corrupt file included)
    return await reap_gateway(gateway_id, LeaseStore(lease_dir), owner=dead, grace=grace,
                              lease_dir=lease_dir)


def reap_dead_owner(
    lease_dir: str, gateway_id: str, owner_pid: int, owner_start: float, grace: float,
    owner_ticks: int | None = None,
) -> Any:
    """Reap the open leases of the dead owner ``(owner_pid, owner_start)`` (a psutil create
    time; ``owner_ticks`` its start ticks when known) in ``lease_dir``, then every process of
    the gateway whose owner tag names it; returns the
    :class:`~acpx_trio._process.gateway_reap.GatewayReapReport`.  Imports Trio and the
    reaper only now."""
    import trio as _trio

    return _trio.run(_reap, lease_dir, gateway_id, owner_pid, owner_start, grace, owner_ticks)


def after_owner_death(
    lease_dir: str, gateway_id: str, owner_pid: int, owner_start: float, grace: float,
    owner_ticks: int | None, log: str | None = None,
) -> None:
    """The watchdog process's work once its owner is gone (called by
    :mod:`.watchdog_wait`): :func:`reap_dead_owner`, then one line of figures appended to the
    file ``log`` when given (``$ACPX_TRIO_WATCHDOG_LOG``: tests and benchmarks)."""
    import time

    seen = time.monotonic()
    result = reap_dead_owner(lease_dir, gateway_id, owner_pid, owner_start, grace, owner_ticks)
    if log:  # measurements for tests and benchmarks (no secrets: pids and lease ids only)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"owner={owner_pid} reap_seconds={time.monotonic() - seen:.3f} "
                     f"terminated={len(result.terminated_pids)} "
                     f"survived={len(result.survived_pids)} "
                     f"closed={len(result.closed_lease_ids)} lost={len(result.lost_lease_ids)}\n")
