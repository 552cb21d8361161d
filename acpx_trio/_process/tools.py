"""Small OS-facing helpers of :mod:`._agent_process`: a gated receive stream, the owner's
identity, and a lease-scoped process listing for the reaper."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable

import trio

from acpx_trio._process.identity import (
    LEASE_ENV_KEY,
    ProcessInfo,
    self_identity,
    snapshot_processes,
)
from acpx_trio._process.reaper import ProcessCleanupDeps, default_cleanup_deps
from acpx_trio._process.scan import fast_process_info, fast_snapshot, newest_pids

__all__ = ["GatedReceiveStream", "lease_cleanup_deps", "owner_identity"]


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


def _stat_ids(name: str) -> tuple[str, int, int, int] | None:
    """``(state, ppid, pgid, sid)`` of ``/proc/NAME/stat``, or ``None``."""
    try:
        with open(f"/proc/{name}/stat", "rb") as fh:
            data = fh.read()
        fields = data[data.rfind(b")") + 1 :].split()
        return fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[2]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _pids_tagged(lease_id: str, root_pid: int) -> list[ProcessInfo]:
    """The root, every process whose environment carries ``LEASE_ENV_KEY=lease_id``, and
    every member of their process groups and sessions (plus children of zombies there).

    A prefilter over ``/proc`` (blocking): the reaper's plan keeps only processes it can
    prove ours, so listing just these candidates gives the same targets while inspecting a
    handful of processes instead of all of them.  Newest pids are read first (a pid hopper is
    among them).  The environment bytes are searched for the one tag and dropped at once."""
    needle = f"{LEASE_ENV_KEY}={lease_id}\0".encode()
    ids = {root_pid}
    try:
        listed = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return snapshot_processes()  # no /proc listing: the full (slower) table
    # a pid hopper is among the newest pids: probe them first (again after the listing)
    newest = [str(pid) for pid in newest_pids()]
    names = newest + sorted(listed, key=int, reverse=True) + [str(p) for p in newest_pids()]
    stats: dict[int, tuple[str, int, int, int]] = {}
    infos: dict[int, ProcessInfo] = {}
    for name in names:
        if int(name) in infos:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                data = fh.read()
        except OSError:
            data = b""
        hit = data.startswith(needle) or (b"\0" + needle) in data
        del data
        if hit or int(name) == root_pid:
            info = fast_process_info(int(name))  # at once: a hopper may be gone in 1 ms
            if info is not None:
                infos[info.pid] = info
                ids.update(x for x in (info.pgid, info.sid) if x is not None)
        st = _stat_ids(name)
        if st is not None:
            stats[int(name)] = st
    extra = {pid for pid, st in stats.items() if st[2] in ids or st[3] in ids}
    zombies = {pid for pid in extra | set(infos) if stats.get(pid, ("",))[0] == "Z"}
    extra.update(pid for pid, st in stats.items() if st[1] in zombies)
    for info in fast_snapshot(extra - set(infos)):
        infos[info.pid] = info
    return sorted(infos.values(), key=lambda p: p.pid)


def lease_cleanup_deps(lease_id: str, root_pid: int) -> ProcessCleanupDeps:
    """The real process table, listing only this lease's candidates (Linux); we reap our
    direct child ourselves, so the reaper does not (its exit status stays readable)."""
    deps = default_cleanup_deps(reap_children=False)
    if not sys.platform.startswith("linux"):
        return deps

    async def list_processes() -> list[ProcessInfo]:
        return await trio.to_thread.run_sync(_pids_tagged, lease_id, root_pid)

    return dataclasses.replace(deps, list_processes=list_processes)


async def owner_identity() -> tuple[int, float]:
    """``self_identity()``, computed once per process (it cannot change)."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), await trio.to_thread.run_sync(self_identity))
    return _owner[1]
