"""Small OS-facing helpers of :mod:`._agent_process`: a gated receive stream, the owner's
identity, and a lease-scoped process listing for the reaper."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from acpx_trio._process.identity import ProcessInfo, read_start_ticks, self_identity
from acpx_trio._process.owner_tag import owner_tag
from acpx_trio._process.reaper import (
    ProcessCleanupDeps,
    default_cleanup_deps,
)
from acpx_trio._process.scan import PidWindow
from acpx_trio._process.shared_scan import TagScan, empty_groups, shared_scan

__all__ = ["GatedReceiveStream", "lease_cleanup_deps", "owner_identity", "owner_tag_value"]


class GatedReceiveStream(trio.abc.ReceiveStream):
    """Waits on ``gate`` before each read: backpressure from the event consumer to the agent."""

    def __init__(
        self, inner: trio.abc.ReceiveStream, gate: Callable[[], Awaitable[None]]
    ) -> None:
        self._inner = inner
        self._gate = gate

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._gate()
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._inner.aclose()


_owner: tuple[int, tuple[int, float]] | None = None


def lease_cleanup_deps(
    lease_id: str, root_pid: int, root_start_ticks: int | None = None,
    window: PidWindow | None = None,
) -> ProcessCleanupDeps:
    """The real process table, listing only this lease's candidates (Linux); we reap our
    direct child ourselves, so the reaper does not (its exit status stays readable).
    ``root_start_ticks`` (the root's recorded start): processes that started before it are
    not read for tags (see :func:`~acpx_trio._process.shared_scan.pids_tagged`); ``window``
    (opened before the root's spawn): while it holds, the scans probe only the pids allocated
    since, not every process on the machine (see :class:`~acpx_trio._process.scan.PidWindow`)."""
    deps = default_cleanup_deps(reap_children=False)
    if not sys.platform.startswith("linux"):
        return deps

    base_kill_groups = deps.kill_groups
    empty: set[int] = set()  # owned groups the scan just taken found empty (used once)
    scan = TagScan(lease_ids=(lease_id,), roots=(root_pid,), min_start_ticks=root_start_ticks,
                   window=window)

    def rescan() -> tuple[list[ProcessInfo], frozenset[int]]:
        table = scan.scan()
        return table, empty_groups((root_pid,))

    async def list_processes() -> list[ProcessInfo]:
        if scan.mark is None:
            # one /proc pass shared with the other cleanups asking at the same time
            table, gone, mark = await shared_scan(lease_id, root_pid, root_start_ticks, window)
            scan.adopt(table, mark)
        else:  # later looks: only what changed since (see TagScan)
            table, gone = await trio.to_thread.run_sync(rescan)
        empty.clear()
        empty.update(gone)
        return table

    async def kill_groups(pgids: Sequence[int], sig: int) -> list[int]:
        # the reaper's "anything to signal?" probe right after a scan: that scan already
        # probed the root's group at its end (an empty group cannot gain members): no hop
        probed = sig == 0 and bool(pgids) and set(pgids) <= empty
        empty.clear()
        if probed or base_kill_groups is None:
            return []
        return await base_kill_groups(pgids, sig)

    return dataclasses.replace(deps, list_processes=list_processes, kill_groups=kill_groups)


async def owner_identity() -> tuple[int, float]:
    """``self_identity()``, computed once per process (it cannot change)."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), await trio.to_thread.run_sync(self_identity))
    return _owner[1]


_owner_tag: tuple[int, str] | None = None


async def owner_tag_value() -> str:
    """This process's owner tag (computed once per process: it cannot change)."""
    global _owner_tag
    pid, create_time = await owner_identity()
    if _owner_tag is None or _owner_tag[0] != pid:
        ticks = await trio.to_thread.run_sync(read_start_ticks, pid)
        _owner_tag = (pid, owner_tag(pid, ticks, create_time))
    return _owner_tag[1]
