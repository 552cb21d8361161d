"""``acpx-trio set KEY VALUE --session K``, ``set-mode MODE --session K`` and ``prompt
--session K --model M`` (issue 21, DESIGN third round): a running warm session's mode, config
options and model change through the owner; an unknown key, value or mode exits 2 naming the
choices; no owner or no such session exits 4.  Real owner, real bundled agent."""

from __future__ import annotations

import json
from pathlib import Path

from _cli_helpers import MOCK, run_cli

AGENT = ["--agent-command", MOCK]


def _say(state: Path, key: str, text: str, *extra: str) -> str:
    done = run_cli("prompt", "--session", key, *AGENT, *extra, text, state_dir=state)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_set_mode_and_model_on_a_warm_session(tmp_path: Path) -> None:
    try:
        assert _say(tmp_path, "k", "/mode") == "mode=default"
        done = run_cli("set-mode", "plan", "--session", "k", state_dir=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "mode = plan" in done.stdout
        assert _say(tmp_path, "k", "/mode") == "mode=plan"
        done = run_cli("set", "model", "mock-large", "--session", "k", "--json",
                       state_dir=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["applied"] is True
        assert _say(tmp_path, "k", "/model") == "model=mock-large"
        done = run_cli("set", "model", "mock-small", "--session", "k", state_dir=tmp_path)
        assert done.returncode == 0, done.stderr  # the option by its id works the same way
        assert _say(tmp_path, "k", "/model") == "model=mock-small"
    finally:
        run_cli("sessions", "close", "k", state_dir=tmp_path)


def test_unknown_values_exit_2_naming_the_choices_and_the_session_lives(tmp_path: Path) -> None:
    try:
        _say(tmp_path, "k", "hello")
        bad_model = run_cli("set", "model", "mock-huge", "--session", "k", state_dir=tmp_path)
        assert bad_model.returncode == 2
        assert "mock-small" in bad_model.stderr and "mock-large" in bad_model.stderr
        bad_key = run_cli("set", "verbosity", "high", "--session", "k", state_dir=tmp_path)
        assert bad_key.returncode == 2 and "model" in bad_key.stderr
        bad_mode = run_cli("set-mode", "turbo", "--session", "k", state_dir=tmp_path)
        assert bad_mode.returncode == 2, bad_mode.stderr
        assert _say(tmp_path, "k", "still here") == "still here"
    finally:
        run_cli("sessions", "close", "k", state_dir=tmp_path)


def test_no_owner_or_no_session_exits_4(tmp_path: Path) -> None:
    done = run_cli("set-mode", "plan", "--session", "k", state_dir=tmp_path)
    assert done.returncode == 4 and "prompt --session" in done.stderr
    try:
        _say(tmp_path, "k", "hello")
        other = run_cli("set", "model", "mock-large", "--session", "other",
                        state_dir=tmp_path)
        assert other.returncode == 4 and "other" in other.stderr
    finally:
        run_cli("sessions", "close", "k", state_dir=tmp_path)
    assert run_cli("set", "model", "x", state_dir=tmp_path).returncode == 2  # --session needed


def test_prompt_with_session_and_model(tmp_path: Path) -> None:
    try:
        assert _say(tmp_path, "m", "/model", "--model", "mock-large") == "model=mock-large"
        bad = run_cli("prompt", "--session", "m", *AGENT, "--model", "nope", "/model",
                      state_dir=tmp_path)
        assert bad.returncode == 2 and "mock-small" in bad.stderr
    finally:
        run_cli("sessions", "close", "m", state_dir=tmp_path)


def test_legacy_models_agent_through_set_and_prompt(tmp_path: Path) -> None:
    """An agent that still lists ``models`` and answers ``session/set_model`` (no model
    config option): ``set model``, ``prompt --session --model`` and ``exec --model`` use the
    legacy method; an unknown model exits 2 naming the agent's models."""
    legacy = ["--agent-command", f"{MOCK} --legacy-models"]
    try:
        first = run_cli("prompt", "--session", "l", *legacy, "--model", "mock-large", "/model",
                        state_dir=tmp_path)
        assert first.returncode == 0 and first.stdout.strip() == "model=mock-large", first.stderr
        done = run_cli("set", "model", "mock-small", "--session", "l", state_dir=tmp_path)
        assert done.returncode == 0, done.stderr
        again = run_cli("prompt", "--session", "l", *legacy, "/model", state_dir=tmp_path)
        assert again.stdout.strip() == "model=mock-small"
        bad = run_cli("set", "model", "mock-huge", "--session", "l", state_dir=tmp_path)
        assert bad.returncode == 2 and "mock-large" in bad.stderr
    finally:
        run_cli("sessions", "close", "l", state_dir=tmp_path)
    once = run_cli("exec", *legacy, "--model", "mock-large", "/model", state_dir=tmp_path)
    assert once.returncode == 0 and once.stdout.strip() == "model=mock-large", once.stderr
