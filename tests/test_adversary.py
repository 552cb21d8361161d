"""Attacks on acpx-trio's promises, with real processes (engineer ``adversary``).

Each test states the attack and the promise it checks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import trio
from _proc_helpers import poll_until
from test_watchdog import GRACE, MARGIN, _alive, read_records, start_owner, watchdogs_of

from acpx_trio._store.leases import LeaseState, SyncLeaseStore


def _kill_all(owner: subprocess.Popen[bytes], pids: list[int]) -> None:
    if owner.poll() is None:
        owner.kill()
        owner.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
async def test_agent_that_kills_the_watchdog_still_dies_with_its_owner(tmp_path: Path) -> None:
    """Attack: the agent runs as our uid, so it can find the owner-death watchdog (its argv
    names the owner pid) and SIGKILL it, then wait for the owner to die.  Promise: no agent
    outlives its owner, without a restart.  The owner notices its watchdog died and arms a
    new one; when the owner is then SIGKILLed, its agent (which ignores SIGTERM and stdin
    EOF) is gone within grace + 1 s (plus margin)."""
    state = tmp_path / "state"
    owner = start_owner(state, 1, ["--ignore-stdin-eof", "--ignore-sigterm"])
    agents: list[int] = []
    try:
        with trio.fail_after(60):
            records = await trio.to_thread.run_sync(read_records, owner, 2)
            agents = [int(str(r["pid"])) for r in records]
            await poll_until(lambda: len(watchdogs_of(owner.pid)) == 1)
            first = watchdogs_of(owner.pid)[0]
            os.kill(first, signal.SIGKILL)  # what a hostile agent of ours can do
            try:
                await poll_until(lambda: [p for p in watchdogs_of(owner.pid)
                                          if p != first and _alive(p)] != [], seconds=10)
            except trio.TooSlowError:
                raise AssertionError("the owner did not re-arm a killed watchdog") from None
            second = next(p for p in watchdogs_of(owner.pid) if p != first)
            assert psutil.Process(second).status() != psutil.STATUS_ZOMBIE
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            try:
                await poll_until(lambda: not any(_alive(p) for p in agents),
                                 seconds=GRACE + 1 + MARGIN, interval=0.005)
            except trio.TooSlowError:
                raise AssertionError(
                    f"agents {[p for p in agents if _alive(p)]} outlived their owner"
                ) from None
            await poll_until(lambda: watchdogs_of(owner.pid) == [], seconds=5)
            leases = SyncLeaseStore(state / "acpx").list_all()
            assert leases and all(x.state is LeaseState.CLOSED for x in leases), leases
    finally:
        _kill_all(owner, agents)
