"""Ctrl-C, SIGTERM and SIGHUP during a ``prompt`` turn: clean cancel, close, and no process
left; a Ctrl-C while the command line loads ends it cleanly."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from _cli_helpers import (
    MOCK,
    REPO_ROOT,
    assert_nothing_left,
    background_cli,
    cli_argv,
    cli_env,
    gateway_id,
    json_lines,
    tagged_pids,
)

from acpx_trio._runtime.turns import CANCEL_WAIT_SECONDS


def test_sigint_during_sleep_turn_cancels_cleanly(tmp_path: Path) -> None:
    with background_cli("-v", "prompt", "/sleep 60000", state_dir=tmp_path) as cli:
        cli.wait_stderr("turn started")
        gw = gateway_id(tmp_path)
        assert gw is not None and len(tagged_pids(gw)) == 1  # the agent is running
        cli.signal(signal.SIGINT)
        rc = cli.wait()
        assert rc == 130, cli.err()
        assert "interrupted: cancelling the turn" in cli.err()
        assert "stopping the agent" not in cli.err()  # the agent honoured session/cancel
        assert "slept" not in cli.out()
    assert_nothing_left(tmp_path)


def test_sigint_json_mode_reports_cancelled(tmp_path: Path) -> None:
    with background_cli("-v", "--json", "prompt", "/sleep 60000", state_dir=tmp_path) as cli:
        cli.wait_stderr("turn started")
        cli.signal(signal.SIGINT)
        assert cli.wait() == 130, cli.err()
        assert json_lines(cli.out())[-1] == {"type": "done", "stop_reason": "cancelled"}
    assert_nothing_left(tmp_path)


def test_second_sigint_closes_agent_that_ignores_cancel(tmp_path: Path) -> None:
    """The second Ctrl-C kills the agent at once instead of waiting out the runtime's cancel
    grace (CANCEL_WAIT_SECONDS) for an agent that never answers."""
    config = tmp_path / "c.json"
    config.write_text('{"killGraceSeconds": 0}')
    agent = f"{MOCK} --ignore-sigterm"
    with background_cli("-v", "--config", str(config), "prompt", "--agent-command", agent,
                        "/hang", state_dir=tmp_path / "state") as cli:
        cli.wait_stderr("turn started")
        cli.signal(signal.SIGINT)
        cli.wait_stderr("cancelling the turn")
        start = time.monotonic()
        cli.signal(signal.SIGINT)
        rc = cli.wait()
        elapsed = time.monotonic() - start
        assert rc == 130, cli.err()
        assert "interrupted again: stopping the agent" in cli.err()
        assert elapsed < CANCEL_WAIT_SECONDS - 0.5, elapsed
    assert_nothing_left(tmp_path / "state")


def test_sigint_before_turn_and_sigterm_close(tmp_path: Path) -> None:
    # SIGINT while the agent is still starting (slow start): no turn to cancel, close at once.
    slow = f"{MOCK} --slow-start 60000"
    with background_cli("-v", "prompt", "--agent-command", slow, "hi",
                        state_dir=tmp_path) as cli:
        cli.wait_stderr("starting agent custom")
        cli.signal(signal.SIGINT)
        assert cli.wait() == 130, cli.err()
        assert "interrupted: stopping the agent" in cli.err()
    gw = gateway_id(tmp_path)
    assert gw is not None and tagged_pids(gw) == []
    with background_cli("-v", "prompt", "/sleep 60000", state_dir=tmp_path) as cli:
        cli.wait_stderr("turn started")
        cli.signal(signal.SIGTERM)
        assert cli.wait() == 143, cli.err()
        assert "terminated: stopping the agent" in cli.err()
    assert_nothing_left(tmp_path)


# -- a Ctrl-C while the command line loads; SIGHUP ---------------------------------------------


def _child(tmp_path: Path, when: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).with_name("_sigint_child.py")
    return subprocess.run([sys.executable, str(script), when, "--state-dir",
                           str(tmp_path / "state"), *args], capture_output=True, text=True,
                          env=cli_env(), timeout=60, check=False)


@pytest.mark.parametrize(("when", "args", "loaded"), [
    # argparse's state was left half restored (a traceback, or AttributeError: save_nargs)
    ("call:parse_known_args", ["status"], []),
    # a KeyboardInterrupt inside an import left the module half made (it once crashed the
    # interpreter inside msgspec's decoder set-up)
    ("import:trio", ["status"], ["trio"]),
    ("import:acpx_trio._cli.run", ["status"], ["acpx_trio._cli.run"]),
    # inside the event loop, before the command has a signal receiver
    ("import:acpx_trio._cli.warm", ["status"], ["acpx_trio._cli.warm"]),
])
def test_a_ctrl_c_while_the_command_line_loads_ends_it_cleanly(
    tmp_path: Path, when: str, args: list[str], loaded: list[str]
) -> None:
    """Held until what is loading is loaded, then the command ends ``interrupted`` (130):
    one line, no traceback, no module left half imported."""
    done = _child(tmp_path, when, *args)
    assert "fired: True" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stderr.strip() == "acpx-trio: interrupted", done.stderr
    for module in loaded:
        assert f"loaded: {module}" in done.stdout, done.stdout


def test_a_ctrl_c_as_the_command_finishes_prints_no_traceback(tmp_path: Path) -> None:
    """A Ctrl-C that lands as the finished command returns killed the exiting interpreter
    (status -2, a ``KeyboardInterrupt`` traceback)."""
    done = _child(tmp_path, "return:main", "leases")
    assert "fired: True" in done.stdout, done.stdout + done.stderr
    assert done.returncode in (0, 130), done.returncode
    assert "Traceback" not in done.stderr, done.stderr


def test_sighup_stops_the_agent_like_sigterm(tmp_path: Path) -> None:
    """The terminal went away: the agent (one that ignores its closed stdin, as real ones
    may) is closed before the CLI exits (it used to die at once, leaving the agent to the
    owner-death watchdog), exit 129."""
    agent = f"{MOCK} --ignore-stdin-eof"
    with background_cli("-v", "exec", "--agent-command", agent, "/sleep 60000",
                        state_dir=tmp_path) as cli:
        cli.wait_stderr("turn started")
        gw = gateway_id(tmp_path)
        assert gw is not None and len(tagged_pids(gw)) == 1
        # the Ctrl-C held while the command line loaded is not held for what it starts
        for pid in (*tagged_pids(gw), cli.popen.pid):
            blocked = Path(f"/proc/{pid}/status").read_text().split("SigBlk:")[1].split()[0]
            assert not int(blocked, 16) & (1 << (signal.SIGINT - 1)), (pid, blocked)
        cli.signal(signal.SIGHUP)
        assert cli.wait() == 129, cli.err()
        assert "hung up: stopping the agent" in cli.err()
        assert tagged_pids(gw) == []  # gone when the CLI is, not later
    assert_nothing_left(tmp_path)


def test_a_terminal_that_hangs_up_mid_turn_leaves_no_agent(tmp_path: Path) -> None:
    """The CLI on a pseudo-terminal that closes (an SSH session dropped): SIGHUP, and every
    later write to the terminal fails with EIO; the agent is still closed, exit 129."""
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    agent = f"{MOCK} --ignore-stdin-eof"
    proc = subprocess.Popen(
        cli_argv("--state-dir", str(tmp_path), "-v", "exec", "--agent-command", agent,
                 "/sleep 60000"),
        stdin=slave, stdout=slave, stderr=slave, env=cli_env(), cwd=REPO_ROOT,
        preexec_fn=controlling_tty)
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"turn started" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if ready:
                seen += os.read(master, 4096)
        assert b"turn started" in seen, seen
        gw = gateway_id(tmp_path)
        assert gw is not None and len(tagged_pids(gw)) == 1
        os.close(master)  # the terminal goes away
        master = -1
        assert proc.wait(timeout=30) == 129
        assert tagged_pids(gw) == []
    finally:
        if master != -1:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_nothing_left(tmp_path)
