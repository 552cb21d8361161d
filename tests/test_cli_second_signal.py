"""A second Ctrl-C or SIGTERM skips ``killGraceSeconds``: the agent's tree is SIGKILLed now,
and still no process is left (issue 19, hole 4)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from _cli_helpers import MOCK, assert_nothing_left, background_cli

#: The configured grace the second signal must not wait for.
GRACE = 40


@pytest.mark.parametrize(("first", "second", "rc"), [
    (signal.SIGTERM, signal.SIGTERM, 143),
    (signal.SIGTERM, signal.SIGINT, 143),
    (signal.SIGINT, signal.SIGINT, 130),
])
def test_second_signal_skips_the_kill_grace(tmp_path: Path, first: int, second: int,
                                            rc: int) -> None:
    config = tmp_path / "c.json"
    config.write_text(f'{{"killGraceSeconds": {GRACE}}}')
    agent = f"{MOCK} --ignore-sigterm --ignore-stdin-eof"
    state = tmp_path / "state"
    with background_cli("-v", "--config", str(config), "prompt", "--agent-command", agent,
                        "/hang", state_dir=state) as cli:
        cli.wait_stderr("turn started")
        cli.signal(first)
        cli.wait_stderr("cancelling the turn" if first == signal.SIGINT
                        else "stopping the agent")
        start = time.monotonic()
        cli.signal(second)
        got = cli.wait(timeout=GRACE + 30)
        elapsed = time.monotonic() - start
        assert elapsed < GRACE / 4, (elapsed, cli.err())
        assert got == rc, cli.err()
        assert "killing the agent now (no grace)" in cli.err()
    assert_nothing_left(state)
