"""Escapes per variant through an agent close (``AgentProcess.aclose``, what ``close()`` and
runtime close use), process-group or whatever mode the build uses.  Usage:
``python benchmarks/attack/escapes.py [TRIALS] [VARIANT ...]``; prints one JSON line per
variant: escapes/trials, decoy deaths, escaped leases recorded ``closed``."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).parent)]

from _escape_helpers import Decoys, cleanup_marker, marked, new_marker  # noqa: E402
from _variant_agent import VARIANTS  # noqa: E402

from acpx_trio._process.agent import AgentProcess  # noqa: E402
from acpx_trio._store.leases import LeaseState, LeaseStore  # noqa: E402

AGENT = str(Path(__file__).parent / "_variant_agent.py")


async def seen_running(marker: str, hopper: bool, decoys: set[int]) -> None:
    """Until the escaper runs (a hopper: until it has hopped once)."""
    first: set[int] = set()
    with trio.fail_after(30):
        while True:
            pids = set(marked(marker)) - decoys
            if pids and (not hopper or (first and pids - first)):
                return
            first |= pids
            await trio.sleep(0.01)


async def one(tmp: Path, variant: str) -> tuple[bool, bool, LeaseState | None]:
    marker = new_marker()
    store = LeaseStore(tmp / "state")
    agent = AgentProcess(
        argv=[sys.executable, AGENT, variant, marker], cwd=str(tmp), session_key="s",
        gateway_instance_id="gw-attack", lease_store=store, wrapper_root=tmp, kill_grace=0.3,
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
                await seen_running(marker, "hopper" in variant, set(decoys.pids))
                await agent.aclose()
            escaped = False
            for _ in range(5):
                if set(marked(marker)) - set(decoys.pids):
                    escaped = True
                    break
                await trio.sleep(0.05)
            lease = None if agent.lease_id is None else await store.load(agent.lease_id)
            return escaped, decoys.alive(), None if lease is None else lease.state
    finally:
        decoys.close()


async def main(n: int, variants: list[str]) -> None:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for variant in variants:
        esc = dead = closed_esc = 0
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            for i in range(n):
                tmp = Path(d) / str(i)
                tmp.mkdir()
                e, decoys_ok, state = await one(tmp, variant)
                esc += e
                dead += not decoys_ok
                closed_esc += e and state is LeaseState.CLOSED
        print(json.dumps({"path": "agent-close", "variant": variant, "escapes": esc,
                          "trials": n, "decoy_deaths": dead, "escaped_but_closed": closed_esc,
                          "commit": commit, "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 30,
             sys.argv[2:] or list(VARIANTS))
