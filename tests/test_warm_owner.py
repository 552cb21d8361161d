"""Warm owner with real processes: one agent across prompts, queueing, cancel, close, TTL."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from _cli_helpers import MOCK, CliProcess, gateway_id, run_cli, tagged_pids
from _warm_helpers import (
    alive,
    owner_info,
    owners_of,
    status,
    turn_state,
    wait_gone,
    wait_status,
)


def _pid(out: str) -> int:
    match = re.search(r"pid=(\d+)", out)
    assert match, out
    return int(match.group(1))


def test_same_agent_across_prompts_then_close(tmp_path: Path) -> None:
    first = run_cli("prompt", "--session", "k", "/pid", state_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    agent = _pid(first.stdout)
    started = time.perf_counter()
    second = run_cli("prompt", "--session", "k", "/pid", state_dir=tmp_path)
    latency = time.perf_counter() - started
    assert second.returncode == 0, second.stderr
    assert _pid(second.stdout) == agent  # the same warm agent
    print(f"second prompt latency (whole CLI run): {latency * 1000:.0f} ms")
    info = owner_info(tmp_path)
    assert info is not None and alive(info["pid"])
    current = status(tmp_path)
    assert current["owner_pid"] == info["pid"]
    (session,) = current["sessions"]
    assert session["agent_pid"] == agent and session["queue_depth"] == 0
    assert session["ttl_seconds"] == 300 and session["turn_state"] == "idle"
    shown = run_cli("sessions", "show", "k", "--json", state_dir=tmp_path)
    assert shown.returncode == 0
    assert f'"agent_pid":{agent}' in shown.stdout
    assert f'"owner_pid":{info["pid"]}' in shown.stdout
    # close ends the agent and, nothing else being warm, the owner
    closed = run_cli("sessions", "close", "k", state_dir=tmp_path)
    assert closed.returncode == 0, closed.stderr
    wait_gone(info["pid"])
    assert not alive(agent)
    assert tagged_pids(gateway_id(tmp_path) or "-") == []
    assert not (tmp_path / "owner.sock").exists()
    assert status(tmp_path)["owner_pid"] is None


def test_cancel_from_another_process(tmp_path: Path) -> None:
    assert run_cli("prompt", "--session", "k", "warm up", state_dir=tmp_path).returncode == 0
    turn = CliProcess("prompt", "--session", "k", "/sleep 60000", state_dir=tmp_path)
    try:
        wait_status(tmp_path, lambda s: turn_state(s, "k") == "active")
        cancel = run_cli("cancel", "--session", "k", "--json", state_dir=tmp_path)
        assert cancel.returncode == 0 and '"cancelled":true' in cancel.stdout
        assert turn.wait() == 130  # its turn ended "cancelled"
        again = run_cli("cancel", "--session", "k", state_dir=tmp_path)
        assert again.returncode == 0 and "nothing to cancel" in again.stdout
        # the session is still warm and usable
        assert run_cli("prompt", "--session", "k", "after", state_dir=tmp_path).stdout == (
            "after\n")
    finally:
        turn.kill()
    nobody = run_cli("cancel", "--session", "nope", state_dir=tmp_path / "none")
    assert nobody.returncode == 0


def test_concurrent_prompts_run_in_order(tmp_path: Path) -> None:
    assert run_cli("prompt", "--session", "k", "one", state_dir=tmp_path).returncode == 0
    first = CliProcess("prompt", "--session", "k", "/sleep 60000", state_dir=tmp_path)
    second = third = None
    try:
        wait_status(tmp_path, lambda s: turn_state(s, "k") == "active")
        second = CliProcess("-v", "prompt", "--session", "k", "/history", state_dir=tmp_path)
        second.wait_stderr("queued at position 1")
        third = CliProcess("-v", "prompt", "--session", "k", "/history", state_dir=tmp_path)
        third.wait_stderr("queued at position 2")
        # the active turn (of another client) is cancelled: the queue moves on, in order
        assert run_cli("cancel", "--session", "k", state_dir=tmp_path).returncode == 0
        assert first.wait() == 130
        assert second.wait() == 0 and third.wait() == 0
        before = int(second.out().split("turns=")[1].split()[0])
        after = int(third.out().split("turns=")[1].split()[0])
        assert after == before + 1  # the second ran before the third, each once
    finally:
        for proc in (first, second, third):
            if proc is not None:
                proc.kill()


def test_no_wait_queues_and_returns(tmp_path: Path) -> None:
    assert run_cli("prompt", "--session", "k", "one", state_dir=tmp_path).returncode == 0
    busy = CliProcess("prompt", "--session", "k", "/sleep 60000", state_dir=tmp_path)
    try:
        wait_status(tmp_path, lambda s: turn_state(s, "k") == "active")
        queued = run_cli("prompt", "--session", "k", "--no-wait", "later", state_dir=tmp_path)
        assert queued.returncode == 0, queued.stderr
        assert "queued at position 1" in queued.stdout
        (session,) = status(tmp_path)["sessions"]
        assert session["queue_depth"] == 1
        # Ctrl-C in the busy client cancels its own turn only; the queued one then runs
        busy.signal(2)
        assert busy.wait() == 130
        wait_status(tmp_path, lambda s: s["sessions"][0]["queue_depth"] == 0
                    and turn_state(s, "k") == "idle")
    finally:
        busy.kill()


def test_ctrl_c_of_a_queued_client_drops_its_turn(tmp_path: Path) -> None:
    assert run_cli("prompt", "--session", "k", "one", state_dir=tmp_path).returncode == 0
    busy = CliProcess("prompt", "--session", "k", "/sleep 60000", state_dir=tmp_path)
    waiting = None
    try:
        wait_status(tmp_path, lambda s: turn_state(s, "k") == "active")
        waiting = CliProcess("-v", "prompt", "--session", "k", "never", state_dir=tmp_path)
        waiting.wait_stderr("queued at position 1")
        waiting.signal(2)
        assert waiting.wait() == 130
        current = status(tmp_path)
        assert current["sessions"][0]["queue_depth"] == 0
        assert turn_state(current, "k") == "active"  # the other client's turn goes on
    finally:
        busy.kill()
        if waiting is not None:
            waiting.kill()


def test_ttl_expiry_leaves_nothing(tmp_path: Path) -> None:
    done = run_cli("prompt", "--session", "k", "--ttl", "1", "/pid", state_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    agent = _pid(done.stdout)
    # (from its log: ``owner.json`` is already gone when this command was slow to end)
    owner = re.search(r" owner (\d+): ", (tmp_path / "owner.log").read_text())
    assert owner is not None
    wait_gone(int(owner.group(1)))  # the owner exits on its own once the session idled 1 s
    assert not alive(agent)
    assert tagged_pids(gateway_id(tmp_path) or "-") == []
    assert not (tmp_path / "owner.sock").exists() and owner_info(tmp_path) is None


@pytest.mark.parametrize("clients", [4])
def test_racing_clients_start_one_owner(tmp_path: Path, clients: int) -> None:
    procs = [CliProcess("prompt", "--session", f"k{i}", "/pid", state_dir=tmp_path)
             for i in range(clients)]
    try:
        assert [p.wait() for p in procs] == [0] * clients, [p.err() for p in procs]
        assert len(owners_of(tmp_path)) == 1
        assert len(status(tmp_path)["sessions"]) == clients
    finally:
        for p in procs:
            p.kill()


def test_cancel_while_starting_is_applied_before_the_prompt(tmp_path: Path) -> None:
    # the agent starts only once the cancel is in (a fixed slow start raced two command runs)
    gate = tmp_path / "gate"
    agent = ["--agent-command",
             f"sh -c 'while [ ! -e {gate} ]; do sleep 0.02; done; exec {MOCK}'"]
    turn = CliProcess("prompt", "--session", "k", *agent, "never sent", state_dir=tmp_path)
    try:
        wait_status(tmp_path, lambda s: turn_state(s, "k") == "starting")
        cancel = run_cli("cancel", "--session", "k", "--json", state_dir=tmp_path)
        gate.touch()
        assert '"cancelled":true' in cancel.stdout
        assert turn.wait() == 130
        assert "never sent" not in turn.out()
        # the agent is warm now; the next turn runs normally
        after = run_cli("prompt", "--session", "k", *agent, "next", state_dir=tmp_path)
        assert after.returncode == 0 and after.stdout == "next\n"
        history = run_cli("sessions", "history", "k", "--json", state_dir=tmp_path)
        prompts = [json.loads(line)["prompt"] for line in history.stdout.splitlines()]
        assert prompts == ["next"]  # the cancelled turn never reached the agent
    finally:
        turn.kill()


def test_a_session_whose_agent_cannot_start_does_not_keep_the_owner(tmp_path: Path) -> None:
    bad = run_cli("prompt", "--session", "k", "--agent-command", "/nonexistent/agent", "hi",
                  state_dir=tmp_path)
    assert bad.returncode == 1 and "ACP_AGENT_SPAWN_FAILED" in bad.stderr
    info = owner_info(tmp_path)
    if info is not None:
        wait_gone(info["pid"])  # nothing warm: the owner exits without waiting for a TTL
