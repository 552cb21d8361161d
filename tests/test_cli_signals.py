"""Ctrl-C and SIGTERM during a ``prompt`` turn: clean cancel, close, and no process left."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from _cli_helpers import MOCK, background_cli, gateway_id, json_lines, run_cli, tagged_pids

from acpx_trio._runtime.turns import CANCEL_WAIT_SECONDS


def _assert_nothing_left(state_dir: Path) -> None:
    gw = gateway_id(state_dir)
    assert gw is not None
    assert tagged_pids(gw) == []
    leases = json_lines(run_cli("leases", "--all", "--json", state_dir=state_dir).stdout)
    assert leases and all(x["state"] in ("closed", "lost") and not x["alive"] for x in leases)


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
    _assert_nothing_left(tmp_path)


def test_sigint_json_mode_reports_cancelled(tmp_path: Path) -> None:
    with background_cli("-v", "--json", "prompt", "/sleep 60000", state_dir=tmp_path) as cli:
        cli.wait_stderr("turn started")
        cli.signal(signal.SIGINT)
        assert cli.wait() == 130, cli.err()
        assert json_lines(cli.out())[-1] == {"type": "done", "stop_reason": "cancelled"}
    _assert_nothing_left(tmp_path)


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
    _assert_nothing_left(tmp_path / "state")


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
    _assert_nothing_left(tmp_path)
