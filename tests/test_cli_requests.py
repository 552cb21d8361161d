"""What the command line refuses before it asks anyone: a warm request the owner would refuse
(a blank, empty or over-long session key, an empty option value), ``--ttl``/``--no-wait``
without ``--session``, an empty prompt; and what it says when it asks: the status of no
owner in the shape of an owner's status, a session that is not warm by its name, doctor's
install advice only where installing would help.  Real subprocesses, the bundled agent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _cli_helpers import MOCK, json_lines, run_cli

LONG_KEY = "k" * 1025  # one more than the wire's bound


def _one_line_error(done: object, *needles: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)  # type: ignore[attr-defined]
    err = done.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("acpx-trio: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def _no_owner(state: Path) -> None:
    assert not (state / "owner.sock").exists() and not (state / "owner.json").exists()


@pytest.mark.parametrize(("args", "option"), [
    (["prompt", "--session", "", "hi"], "--session"),
    (["prompt", "--session", "  ", "hi"], "--session"),
    (["prompt", "--session", LONG_KEY, "hi"], "--session"),
    (["prompt", "--session", "k", "--model", "", "hi"], "--model"),
    (["prompt", "--model", " ", "hi"], "--model"),
    (["exec", "--model", "", "hi"], "--model"),
    (["set", "model", "", "--session", "k"], "VALUE"),
    (["set", "", "v", "--session", "k"], "KEY"),
    (["set-mode", "", "--session", "k"], "MODE"),
    (["cancel", "--session", ""], "--session"),
    (["status", "--session", LONG_KEY], "--session"),
], ids=["empty-key", "blank-key", "long-key", "empty-model", "blank-model-in-process",
        "empty-model-exec", "empty-value", "empty-key-name",
        "empty-mode", "cancel-empty-key", "status-long-key"])
def test_a_request_the_owner_would_refuse_is_a_usage_error_and_starts_no_owner(
    tmp_path: Path, args: list[str], option: str,
) -> None:
    done = run_cli(*args, "--agent-command", MOCK, "-v", state_dir=tmp_path) \
        if args[0] in ("prompt", "exec") else run_cli(*args, state_dir=tmp_path)
    _one_line_error(done, f"acpx-trio: {option}: ")
    _no_owner(tmp_path)


def test_warm_only_options_need_a_session_and_an_empty_prompt_is_refused(
    tmp_path: Path,
) -> None:
    no_wait = run_cli("prompt", "--no-wait", "hi", state_dir=tmp_path)
    _one_line_error(no_wait, "--no-wait needs --session")
    assert no_wait.stdout == ""  # no turn ran
    both = run_cli("prompt", "--ttl", "5", "--no-wait", "hi", state_dir=tmp_path)
    _one_line_error(both, "--ttl and --no-wait need --session")
    for args in (["prompt", ""], ["exec", " ", " "], ["prompt", "--session", "k", ""]):
        empty = run_cli(*args, state_dir=tmp_path)
        _one_line_error(empty, "the prompt is empty")
        assert empty.stdout == ""
    _no_owner(tmp_path)


def test_status_without_an_owner_has_an_owners_shape_and_names_a_session_not_warm(
    tmp_path: Path,
) -> None:
    none = json.loads(run_cli("status", "--json", state_dir=tmp_path).stdout)
    try:
        warm = run_cli("prompt", "--session", "k", "--agent-command", MOCK, "hi",
                       state_dir=tmp_path)
        assert warm.returncode == 0, warm.stderr
        live = json.loads(run_cli("status", "--json", state_dir=tmp_path).stdout)
        assert set(none) == set(live) and none["kind"] == live["kind"] == "status_result"
        assert none["owner_pid"] is None and none["uptime_seconds"] is None
        assert none["sessions"] == []
        other = run_cli("status", "--session", "nope", state_dir=tmp_path)
        assert other.returncode == 0, other.stderr
        assert "no warm session nope" in other.stdout
        assert "no warm sessions" not in other.stdout  # k is warm
    finally:
        run_cli("sessions", "close", "k", state_dir=tmp_path)


def test_doctor_advises_installing_only_a_program_that_is_missing_or_died(
    tmp_path: Path,
) -> None:
    slow = run_cli("doctor", "--agent", "mock", "--timeout", "0.01", state_dir=tmp_path)
    assert slow.returncode == 1 and "FAIL  mock: " in slow.stdout, slow.stdout
    assert "install:" not in slow.stdout and "not found" not in slow.stdout
    (row,) = json_lines(run_cli("doctor", "--agent", "mock", "--timeout", "0.01", "--json",
                                state_dir=tmp_path).stdout)
    assert row["found"] is True and row["install_command"] is None
    unusable = tmp_path / "a-file"
    unusable.write_text("")
    bad_state = run_cli("doctor", "--agent", "mock", state_dir=unusable)
    assert bad_state.returncode == 1 and "ACPX_STATE_FILE_UNSAFE" in bad_state.stdout
    assert "not found" not in bad_state.stdout and "install:" not in bad_state.stdout
    # a program that runs and dies before answering: its install command when it has one
    # (the launcher found, its package perhaps not), nothing when it has none
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gemini"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"agents": {"dies": {"command": "/bin/false"}}}))
    died = run_cli("--config", str(config), "doctor", "--agent", "gemini", "--agent", "dies",
                   state_dir=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert died.returncode == 1
    blocks = {m.group(1): m.group(0) for m in re.finditer(
        r"FAIL  ([\w-]+): .*?(?=\nFAIL|\ncontainment)", died.stdout, re.DOTALL)}
    assert "not found" not in blocks["gemini"], died.stdout
    assert "install: npm install -g @google/gemini-cli" in blocks["gemini"], died.stdout
    assert "install:" not in blocks["dies"], died.stdout


def test_sessions_list_with_cwd_lists_the_sessions_started_there(tmp_path: Path) -> None:
    state, one, two = tmp_path / "state", tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    link = tmp_path / "link-to-one"
    link.symlink_to(one)
    try:
        for key, where in (("a", one), ("b", two)):
            done = run_cli("prompt", "--session", key, "--cwd", str(where), "--agent-command",
                           MOCK, "hi", state_dir=state)
            assert done.returncode == 0, done.stderr
        every = json_lines(run_cli("sessions", "list", "--json", state_dir=state).stdout)
        assert sorted(r["session_key"] for r in every) == ["a", "b"]
        for where in (one, link):  # by path, or the same directory through another
            listed = run_cli("sessions", "list", "--json", "--cwd", str(where),
                             state_dir=state)
            assert [r["session_key"] for r in json_lines(listed.stdout)] == ["a"], listed
        empty = tmp_path / "empty"
        empty.mkdir()
        none = run_cli("sessions", "list", "--cwd", str(empty), state_dir=state)
        assert none.returncode == 0 and f"no sessions started in {empty}" in none.stdout
    finally:
        for key in ("a", "b"):
            run_cli("sessions", "close", key, state_dir=state)


async def _record_session(state: Path, workspace: Path, key: str) -> None:
    from acpx_trio import open_runtime_service

    async with open_runtime_service(workspace_dir=workspace, state_dir=state) as service:
        runtime = service.require_runtime()
        handle = await runtime.ensure_session(session_key=key, agent="mock")
        await runtime.close(handle=handle, reason="recorded")


def test_a_stored_session_whose_key_no_warm_owner_carries_is_shown_and_closed(
    tmp_path: Path,
) -> None:
    """The library stores a key of any length; the owner's wire carries 1,024 characters.
    ``sessions show/close/history`` of a longer one work on the record (no owner can hold it),
    and name no option the user did not give."""
    import trio

    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    trio.run(_record_session, state, workspace, LONG_KEY)
    for action in ("show", "history", "close"):
        done = run_cli("sessions", action, LONG_KEY, state_dir=state)
        assert done.returncode == 0, (action, done.stderr)
        assert "--session:" not in done.stderr and "Expected" not in done.stderr
    shown = run_cli("sessions", "show", LONG_KEY, "--json", state_dir=state)
    assert json.loads(shown.stdout)["closed"] is True


@pytest.mark.parametrize("args", [
    ["exec", "--bogus", "hi"], ["exec", "--timeout", "abc", "hi"],
    ["prompt", "--ttl", "-1", "--session", "k", "hi"], ["nosuch"], [],
])
def test_a_parse_error_is_one_line_too(tmp_path: Path, args: list[str]) -> None:
    """argparse printed its usage block (3-4 lines) for an unknown option or a bad value:
    every usage error is one line on stderr (README), exit 2."""
    done = run_cli(*args, state_dir=tmp_path)
    _one_line_error(done, "--help")
    _no_owner(tmp_path)
