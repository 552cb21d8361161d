"""Process-group mode catches the classic pid hopper (``setsid`` once, then ``fork`` +
``_exit`` every 2 ms, tags inherited) on every close, over many trials: real agents, real
hoppers (plain and ignoring SIGTERM), decoys with the same command line that must survive,
and a lease recorded ``closed`` only when nothing of the tree is left."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from _escape_helpers import Decoys, cleanup_marker, group_members, marked, new_marker, stat_ids
from _proc_helpers import poll_until

from acpx_trio._process.agent import AgentProcess
from acpx_trio._store.leases import LeaseState, LeaseStore

MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]


async def _hopper_group(marker: str, agent_pid: int, decoys: set[int]) -> int:
    """Wait until the hopper has hopped at least once; its (leaderless) process group."""
    found: list[int] = []

    def seen() -> bool:
        for pid in marked(marker):
            st = stat_ids(pid)
            if (pid not in decoys and st is not None and st[1] == st[2]
                    and st[1] not in (pid, agent_pid)):
                found.append(st[1])
                return True
        return False

    await poll_until(seen, seconds=20)
    return found[0]


async def _one_close(tmp: Path, ignore_sigterm: bool) -> tuple[bool, LeaseState | None]:
    """One agent with a hopper, closed; ``(escaped, final lease state)``."""
    hop = new_marker()
    store = LeaseStore(tmp / "state")
    argv = [*MOCK, "--spawn-pid-hopper", hop]
    if ignore_sigterm:
        argv.append("--ignore-sigterm")
    agent = AgentProcess(
        argv=argv, cwd=str(tmp), session_key="s", gateway_instance_id="gw-hopper-test",
        lease_store=store, wrapper_root=tmp, kill_grace=0.3,
    )
    pgids: list[int] = []
    decoys = Decoys(hop, "lease-decoy")
    try:
        with cleanup_marker(hop, pgids), trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await agent.wait_recorded()
                assert agent.pid is not None and agent.lease_id is not None
                pgids.append(agent.pid)
                pgids.append(await _hopper_group(hop, agent.pid, set(decoys.pids)))
                await agent.aclose()
            # a SIGKILLed process takes a moment to turn zombie: look several times
            escaped = False
            for _ in range(5):
                if set(marked(hop)) - set(decoys.pids) or group_members(pgids[1]):
                    escaped = True
                    break
                await trio.sleep(0.05)
            assert decoys.alive()
            lease = await store.load(agent.lease_id)
            return escaped, None if lease is None else lease.state
    finally:
        decoys.close()


async def _trials(tmp_path: Path, n: int, ignore_sigterm: bool) -> None:
    escapes, closed_escapes = 0, 0
    for i in range(n):
        d = tmp_path / str(i)
        d.mkdir()
        escaped, state = await _one_close(d, ignore_sigterm)
        escapes += escaped
        closed_escapes += escaped and state is LeaseState.CLOSED
        if not escaped:
            assert state is LeaseState.CLOSED
    assert (escapes, closed_escapes) == (0, 0), f"{escapes}/{n} escaped"


@pytest.mark.parametrize("ignore_sigterm", [False, True])
async def test_hopper_never_escapes_close(tmp_path: Path, ignore_sigterm: bool) -> None:
    await _trials(tmp_path, 5, ignore_sigterm)


@pytest.mark.slow
@pytest.mark.parametrize("ignore_sigterm", [False, True])
async def test_hopper_never_escapes_close_30(tmp_path: Path, ignore_sigterm: bool) -> None:
    await _trials(tmp_path, int(os.environ.get("ACPX_HOPPER_TRIALS", "30")), ignore_sigterm)
