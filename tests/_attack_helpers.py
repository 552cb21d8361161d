"""Helpers for the escape measurements (tests/test_attack_escapes.py and
benchmarks/attack/): one agent that starts one escape variant (see ``_attack_agent``),
closed; whether anything carrying the variant's marker is left."""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from _escape_helpers import Decoys, cleanup_marker, marked, new_marker, stat_ids

from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._store.config import ContainmentMode
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import LeaseStore

AGENT = str(Path(__file__).with_name("_attack_agent.py"))


async def seen_running(marker: str, hopper: bool, decoys: set[int],
                       away_from: int | None = None) -> None:
    """Until the escaper runs (a hopper: until it has been seen under two pids; with
    ``away_from``: until it runs in a session other than that one, its escape done: a
    daemon still forking in the agent's session is a member of it, caught by right)."""
    first: set[int] = set()
    with trio.fail_after(30):
        while True:
            pids = set(marked(marker)) - decoys
            if away_from is not None:
                pids = {p for p in pids
                        if (ids := stat_ids(p)) is not None and ids[2] != away_from}
            if pids and (not hopper or (first and pids - first)):
                return
            first |= pids
            await trio.sleep(0.01)


async def still_marked(marker: str, decoys: set[int]) -> bool:
    """Whether a process carrying ``marker`` (not a decoy) is alive; looks 5 times, 50 ms
    apart (a SIGKILLed process takes a moment to turn zombie; a hopper is easy to miss)."""
    for _ in range(5):
        if set(marked(marker)) - decoys:
            return True
        await trio.sleep(0.05)
    return False


async def one_close(
    tmp: Path, variant: str, containment: ContainmentMode = "auto"
) -> tuple[bool, bool, LeaseState | None]:
    """One agent starting ``variant``, closed once the escaper runs: ``(escaped, decoys
    alive, final lease state)``; whatever carries the marker is SIGKILLed afterwards."""
    marker = new_marker()
    store = LeaseStore(tmp / "state")
    agent = AgentProcess(
        AgentSpawn(
            argv=tuple([sys.executable, AGENT, variant, marker]), cwd=str(tmp), session_key="s",
            gateway_instance_id="gw-attack", kill_grace=0.3, containment=containment,
        ),
        lease_store=store,
    )
    decoys = Decoys(marker, "lease-decoy")
    pgids: list[int] = []
    try:
        with cleanup_marker(marker, pgids), trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await agent.wait_recorded()
                assert agent.pid is not None
                pgids.append(agent.pid)
                # the daemon escapes its session only once forked twice: wait for that
                away = agent.pid if variant == "daemon-emptyenv" else None
                await seen_running(marker, "hopper" in variant, set(decoys.pids), away)
                await agent.aclose()
            escaped = await still_marked(marker, set(decoys.pids))
            lease = None if agent.lease_id is None else await store.load(agent.lease_id)
            return escaped, decoys.alive(), None if lease is None else lease.state
    finally:
        decoys.close()
