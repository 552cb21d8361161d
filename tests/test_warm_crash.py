"""A SIGKILLed warm owner leaves nothing behind once the next prompt has run, and that prompt
works (a new owner, start-up reap of the dead owner's agents, the session resumed)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from _cli_helpers import MOCK, CliProcess, gateway_id, run_cli, tagged_pids
from _warm_helpers import alive, owner_info, owners_of, turn_state, wait_gone, wait_status


def _agent_pid(out: str) -> int:
    match = re.search(r"pid=(\d+)", out)
    assert match, out
    return int(match.group(1))


def _mock_with_store(tmp_path: Path) -> list[str]:
    """A mock agent that keeps its sessions on disk, so a new agent can session/load."""
    store = tmp_path / "agent-sessions"
    store.mkdir(exist_ok=True)
    return ["--agent-command", f"{MOCK} --session-dir {store}"]


def _kill_owner(tmp_path: Path) -> int:
    info = owner_info(tmp_path)
    assert info is not None
    os.kill(info["pid"], signal.SIGKILL)
    wait_gone(info["pid"])
    return int(info["pid"])


def _next_prompt_cleans_up(tmp_path: Path, agent_args: list[str], old_agent: int,
                           old_owner: int) -> None:
    done = run_cli("prompt", "--session", "k", *agent_args, "/history", state_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "history turns=" in done.stdout  # the recorded session was loaded, not replaced
    new_owner = owner_info(tmp_path)
    assert new_owner is not None and new_owner["pid"] != old_owner
    assert owners_of(tmp_path) == [new_owner["pid"]]
    assert not alive(old_agent)  # reaped by the new owner's start-up (or the watchdog)
    gw = gateway_id(tmp_path) or "-"
    closed = run_cli("sessions", "close", "k", state_dir=tmp_path)
    assert closed.returncode == 0, closed.stderr
    wait_gone(new_owner["pid"])
    assert tagged_pids(gw) == []


def test_sigkill_of_an_idle_owner(tmp_path: Path) -> None:
    agent_args = _mock_with_store(tmp_path)
    first = run_cli("prompt", "--session", "k", *agent_args, "/pid", state_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    agent = _agent_pid(first.stdout)
    owner = _kill_owner(tmp_path)
    assert (tmp_path / "owner.sock").exists()  # a stale socket must not block a new owner
    _next_prompt_cleans_up(tmp_path, agent_args, agent, owner)


def test_sigkill_of_an_owner_during_a_turn(tmp_path: Path) -> None:
    agent_args = _mock_with_store(tmp_path)
    first = run_cli("prompt", "--session", "k", *agent_args, "/pid", state_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    agent = _agent_pid(first.stdout)
    turn = CliProcess("prompt", "--session", "k", *agent_args, "/sleep 60000",
                      state_dir=tmp_path)
    try:
        wait_status(tmp_path, lambda s: turn_state(s, "k") == "active")
        owner = _kill_owner(tmp_path)
        assert turn.wait() == 1
        assert "ACPX_OWNER_LOST" in turn.err()
        _next_prompt_cleans_up(tmp_path, agent_args, agent, owner)
    finally:
        turn.kill()


def test_an_agent_that_dies_while_warm_is_replaced(tmp_path: Path) -> None:
    agent_args = _mock_with_store(tmp_path)
    first = run_cli("prompt", "--session", "k", *agent_args, "/pid", state_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    agent = _agent_pid(first.stdout)
    os.kill(agent, signal.SIGKILL)
    wait_gone(agent)
    current = wait_status(tmp_path, lambda s: s["sessions"][0]["agent_pid"] is None)
    assert current["owner_pid"] is not None  # the owner lives on
    again = run_cli("prompt", "--session", "k", *agent_args, "/history", state_dir=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "history turns=" in again.stdout  # a new agent, the same ACP session (loaded)
    new_agent = wait_status(tmp_path, lambda s: s["sessions"][0]["agent_pid"] is not None)
    assert new_agent["sessions"][0]["agent_pid"] != agent


async def test_an_owner_whose_service_crashed_exits(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash of the owner's runtime service (once: the owner-death watchdog check out of
    file descriptors) closed the runtime, but the owner served on: every prompt failed with
    ``ACP runtime is shut down`` until the session's TTL.  It now exits, so the next prompt
    starts a fresh owner."""
    import trio

    import acpx_trio._service.service as service_module
    from acpx_trio._owner.server import run_owner
    from acpx_trio._owner.wire import OwnerLaunch

    async def crashing_sweep(*args: object) -> None:
        raise RuntimeError("a duty crashed")

    monkeypatch.setattr(service_module, "sweep_once", crashing_sweep)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (tmp_path / "ws").mkdir()
    launch = OwnerLaunch(raw_config={"sweepIntervalSeconds": 0.05},
                         workspace_dir=str(tmp_path / "ws"), default_ttl_seconds=300.0)
    from acpx_trio._owner.server import EMPTY_GRACE_SECONDS

    start = trio.current_time()
    with trio.fail_after(EMPTY_GRACE_SECONDS * 0.8):  # before an idle owner would leave
        await run_owner(state, launch)  # returns: the owner exits
    assert trio.current_time() - start < EMPTY_GRACE_SECONDS * 0.8
    assert not (state / "owner.sock").exists()
