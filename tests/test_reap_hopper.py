"""Process-group mode catches the classic pid hopper (``setsid`` once, then ``fork`` +
``_exit`` every 2 ms, tags inherited) on every close, over many trials: real agents, real
hoppers (plain and ignoring SIGTERM), decoys with the same command line that must survive,
and a lease recorded ``closed`` only when nothing of the tree is left."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import trio
from _cli_helpers import MOCK as MOCK_CMD
from _cli_helpers import run_cli
from _escape_helpers import Decoys, cleanup_marker, group_members, marked, new_marker, stat_ids
from _proc_helpers import poll_until
from _runtime_helpers import RuntimeEnv, output, run
from test_terminal_ownership import Escapers

from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._process.cgroup import probe_cgroup_kill
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import LeaseStore, SyncLeaseStore

MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]
#: The >= 30-trial soaks (``ACPX_HOPPER_TRIALS=30 pytest tests/test_reap_hopper.py``; about
#: 2 minutes on 2 loaded cores); the default suite runs a few trials of each path.
TRIALS = int(os.environ.get("ACPX_HOPPER_TRIALS", "0"))
soak = pytest.mark.skipif(TRIALS <= 0, reason="set ACPX_HOPPER_TRIALS=30 to run the soak")


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
        AgentSpawn(
            argv=tuple(argv), cwd=str(tmp), session_key="s", gateway_instance_id="gw-hopper-test",
            kill_grace=0.3,
        ),
        lease_store=store,
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
@soak
@pytest.mark.parametrize("ignore_sigterm", [False, True])
async def test_hopper_never_escapes_close_30(tmp_path: Path, ignore_sigterm: bool) -> None:
    await _trials(tmp_path, TRIALS, ignore_sigterm)


# -- through ``acpx-trio exec`` (a whole CLI run: the agent's close at the end) ---------------


def _exec_once(tmp: Path, ignore_sigterm: bool) -> tuple[bool, set[str]]:
    """One ``acpx-trio exec`` whose agent starts a hopper; ``(escaped, lease states)``."""
    hop = new_marker()
    decoys = Decoys(hop, "lease-decoy")
    try:
        with cleanup_marker(hop, ()):
            agent = f"{MOCK_CMD} --spawn-pid-hopper {hop}" + (
                " --ignore-sigterm" if ignore_sigterm else "")
            done = run_cli("exec", "--agent-command", agent, "/sleep 300", state_dir=tmp)
            assert done.returncode == 0, done.stderr
            escaped = False
            for _ in range(10):  # a hopper that got away keeps hopping: look a few times
                if set(marked(hop)) - set(decoys.pids):
                    escaped = True
                    break
                time.sleep(0.02)
            assert decoys.alive()
            states = {x.state.value for x in SyncLeaseStore(tmp / "acpx").list_all()}
            return escaped, states
    finally:
        decoys.close()


def _exec_trials(tmp_path: Path, n: int, ignore_sigterm: bool) -> None:
    escapes = 0
    for i in range(n):
        d = tmp_path / str(i)
        escaped, states = _exec_once(d, ignore_sigterm)
        escapes += escaped
        assert escaped or states == {"closed"}, states
        assert not escaped or "closed" not in states, "an escaped lease was recorded closed"
    assert escapes == 0, f"{escapes}/{n} escaped"


@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_hopper_never_escapes_exec(tmp_path: Path, ignore_sigterm: bool) -> None:
    _exec_trials(tmp_path, 2, ignore_sigterm)


@pytest.mark.slow
@soak
@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_hopper_never_escapes_exec_30(tmp_path: Path, ignore_sigterm: bool) -> None:
    _exec_trials(tmp_path, TRIALS, ignore_sigterm)


# -- through ``terminal/release`` (the command exits, leaving the hopper behind) ---------------


def _exists(path: str) -> bool:
    return os.path.exists(path)  # a cgroupfs stat: never waits on a disk


async def _release_trials(env: RuntimeEnv, tmp_path: Path, n: int) -> None:
    escapes = 0
    with trio.fail_after(60 + 5 * n):
        async with env.runtime(permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            for i in range(n):
                d = tmp_path / f"t{i}"
                d.mkdir()
                esc = Escapers(d)
                esc.line = esc.line.replace("exec sleep 30", "exit 0")  # leave them behind
                with esc.guarded():
                    text = output(await run(rt, handle, f"/terminal {esc.line}"))
                    assert text, "the terminal directive said nothing"
                    esc.up()
                    assert esc.groups, "the hopper never started"
                    gone = True
                    for _ in range(10):
                        if not esc.gone():
                            gone = False
                            break
                        await trio.sleep(0.02)
                    escapes += not gone
    leases = [x for x in SyncLeaseStore(env.root / "leases").list_all()
              if ":terminal:" in x.session_key]
    assert len(leases) == n
    assert escapes == 0, f"{escapes}/{n} escaped"
    assert {x.state for x in leases} == {LeaseState.CLOSED}, leases
    if probe_cgroup_kill().usable:  # containment "auto": each terminal had its own leaf
        assert all(x.cgroup for x in leases), leases
        assert not [x.cgroup for x in leases if x.cgroup and _exists(x.cgroup)]


async def test_hopper_never_escapes_terminal_release(env: RuntimeEnv, tmp_path: Path) -> None:
    await _release_trials(env, tmp_path, 3)


@pytest.mark.slow
@soak
async def test_hopper_never_escapes_terminal_release_30(
    env: RuntimeEnv, tmp_path: Path
) -> None:
    await _release_trials(env, tmp_path, TRIALS)
