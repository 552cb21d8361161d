"""Helpers for the warm-owner tests: the owner's pid, waits on its exit and on its status."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from _cli_helpers import CliProcess, run_cli

#: Bound of waiting for an owner to exit or a status to appear.
WAIT_SECONDS = 30.0


def owner_info(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state_dir / "owner.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def owner_pid(state_dir: Path) -> int:
    """The pid ``owner.json`` names (there must be one)."""
    info = owner_info(state_dir)
    assert info is not None
    return int(info["pid"])


def wait_owner_log(state_dir: Path, needle: str, owner: int,
                   client: CliProcess | None = None, timeout: float = WAIT_SECONDS) -> None:
    """Wait (bounded) for the owner's log to say ``needle``; fails at once when the owner
    exits first, saying what the owner logged and how ``client`` stands."""
    deadline = time.monotonic() + timeout
    while needle not in (log := (state_dir / "owner.log").read_text()):
        gone = not alive(owner)
        if gone or time.monotonic() >= deadline:
            seen = "" if client is None else (
                f"\nclient: exit {client.popen.poll()}, {len(client.stdout)} lines read, "
                f"stderr {client.err()!r}")
            raise AssertionError(f"no {needle!r} in the owner's log (owner "
                                 f"{'exited' if gone else 'alive'}){seen}\n{log}")
        time.sleep(0.05)


def status(state_dir: Path, *args: str) -> dict[str, Any]:
    done = run_cli("status", "--json", *args, state_dir=state_dir)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def wait_status(state_dir: Path, pred: Callable[[dict[str, Any]], bool],
                timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    """Ask the owner for its status until ``pred`` holds (each ask is a CLI run, so this
    waits on the owner's real state, bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(state_dir)
        if pred(current):
            return current
        assert time.monotonic() < deadline, f"status never matched: {current}"


def turn_state(current: dict[str, Any], key: str) -> str | None:
    for s in current["sessions"]:
        if s["session_key"] == key:
            return str(s["turn_state"])
    return None


def wait_gone(pid: int, timeout: float = WAIT_SECONDS) -> None:
    """Wait for process ``pid`` to exit (event-driven through psutil; bounded)."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    _gone, alive = psutil.wait_procs([proc], timeout=timeout)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"process {pid} still alive after {timeout}s"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def owners_of(state_dir: Path) -> list[int]:
    """Live owner processes serving ``state_dir``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "acpx_trio._owner" in cmd and str(state_dir.resolve()) in cmd and (
                proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc.pid)
    return found


def wait_backed_up(agent: int) -> None:
    """Wait (bounded) until a stopped client's stream is backed up all the way to the agent:
    every thread of the agent asleep (its write to the owner waits) and no CPU time used,
    five looks in a row.  Only then does the owner hold more for that client than its socket
    takes: stopped at once, the owner could still hand it everything it held (the final
    frame included) and close the connection, so no client would be left to wait for."""
    proc = psutil.Process(agent)
    deadline = time.monotonic() + 30
    quiet, last = 0, -1.0
    while quiet < 5:
        assert time.monotonic() < deadline, "the agent never waited on its output"
        times = proc.cpu_times()
        used = times.user + times.system
        asleep = all(psutil.Process(t.id).status() == psutil.STATUS_SLEEPING
                     for t in proc.threads())
        quiet = quiet + 1 if asleep and used == last else 0
        last = used
        time.sleep(0.02)
