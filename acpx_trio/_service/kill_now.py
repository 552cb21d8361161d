"""The second signal: end this process's agent and terminal trees at once.

The first SIGTERM (or Ctrl-C) of a turn command, or of the warm owner, closes the agents the
normal way: SIGTERM, ``killGraceSeconds`` for each to exit, then SIGKILL.  A further signal
must not wait for that grace.  :func:`kill_own_launches` runs a second, grace-free pass of the
same reaper over every lease this process holds (open or closing) on the state dir: the
reaper proves each process ours (lease tags, root start time, our uid) before signalling it,
sends SIGTERM and SIGKILL at once, and the close already under way then sees its tree gone
and finalises the lease.  Nothing in ``_process`` changes: the normal close keeps its own
grace, this pass only makes it short.  Used by the command line and the warm owner.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import psutil
import trio

from acpx_trio._errors import AcpxError
from acpx_trio._process.reap_entry import cleanup_owned_process_tree
from acpx_trio._process.tools import lease_cleanup_deps, owner_identity
from acpx_trio._service.context import WRAPPER_DIR_NAME
from acpx_trio._store.lease_model import ProcessLease
from acpx_trio._store.leases import LeaseStore

__all__ = ["kill_own_launches"]

#: Owner start times are compared with this tolerance (psutil create times).
_START_TOLERANCE = 1.0
_log = logging.getLogger("acpx_trio.service")


def _our_live_child(pid: int) -> bool:
    """Whether ``pid`` is our unreaped child (its pid, and so its group id, cannot be reused
    while that holds)."""
    try:
        return psutil.Process(pid).ppid() == os.getpid()
    except psutil.Error:
        return False


async def _kill(lease: ProcessLease) -> None:
    await trio.lowlevel.checkpoint()
    root = lease.root_pid
    verified = (root,) if root and await trio.to_thread.run_sync(_our_live_child, root) else ()
    try:
        await cleanup_owned_process_tree(
            root_pid=root, expected_lease_id=lease.lease_id,
            expected_gateway_instance_id=lease.gateway_instance_id,
            root_create_time=lease.root_create_time, root_start_ticks=lease.root_start_ticks,
            root_boot_id=lease.boot_id, grace=0.0,
            deps=lease_cleanup_deps(lease.lease_id, root), verified_groups=verified)
    except (OSError, ValueError) as exc:  # the normal close still runs: it is the backstop
        _log.debug("immediate kill of lease %s failed: %r", lease.lease_id, exc)


async def kill_own_launches(state_dir: Path, gateway_instance_id: str) -> int:
    """SIGKILL, without grace, every process tree this process holds a lease for on
    ``state_dir`` (agents and terminals); returns how many leases it went through.  Only
    processes the reaper proves ours are signalled; errors are logged, never raised (the
    normal close path still ends everything)."""
    pid, start = await owner_identity()
    leases: list[ProcessLease] = []
    with contextlib.suppress(AcpxError, OSError):
        leases = await LeaseStore(Path(state_dir) / WRAPPER_DIR_NAME).list_open(
            gateway_instance_id)
    mine = [x for x in leases if x.owner_pid == pid and x.owner_start_time is not None
            and abs(x.owner_start_time - start) <= _START_TOLERANCE]
    async with trio.open_nursery() as nursery:
        for lease in mine:
            nursery.start_soon(_kill, lease)
    return len(mine)
