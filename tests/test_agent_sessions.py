"""The agent's own sessions via ``session/list`` (issue 21): every page followed, cwd filter,
malformed entries skipped, a typed error when the agent does not advertise it; API and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _cli_helpers import MOCK as CLI_MOCK
from _cli_helpers import json_lines, run_cli
from _runtime_helpers import MOCK, RuntimeEnv, run

from acpx_trio import AcpRuntimeError, AgentSession


def _agents(session_dir: Path, *flags: str) -> dict[str, object]:
    return {"lister": {"command": MOCK[0],
                       "args": [*MOCK[1:], "--session-dir", str(session_dir), *flags]}}


async def test_list_follows_the_cursor_and_filters_by_cwd(env: RuntimeEnv, tmp_path: Path) -> None:
    sessions = tmp_path / "agent-sessions"
    other = tmp_path / "other"
    other.mkdir()
    async with env.runtime(agents=_agents(sessions, "--list", "--list-junk")) as rt:
        with trio.fail_after(60):
            made = []
            for n in range(5):  # 5 sessions: three pages of two
                handle = await rt.ensure_session(session_key=f"k{n}", agent="lister",
                                                 cwd=str(other) if n == 4 else None)
                await run(rt, handle, f"first prompt {n}")
                made.append(handle)
            listed = await rt.list_sessions(agent="lister")
            assert sorted(s.session_id for s in listed) == sorted(
                h.backend_session_id for h in made)
            assert all(isinstance(s, AgentSession) for s in listed)
            titles = {s.session_id: s.title for s in listed}
            assert titles[made[0].backend_session_id] == "first prompt 0"
            only = await rt.list_sessions(agent="lister", cwd=str(other))
            assert [s.session_id for s in only] == [made[4].backend_session_id]
            assert only[0].cwd == str(other)


async def test_list_unsupported_is_a_typed_error(env: RuntimeEnv, tmp_path: Path) -> None:
    async with env.runtime(agents=_agents(tmp_path / "s")) as rt:
        with trio.fail_after(30), pytest.raises(AcpRuntimeError) as info:
            await rt.list_sessions(agent="lister")
    assert info.value.code == "ACP_BACKEND_UNSUPPORTED_CONTROL"
    assert "session/list" in info.value.message


def test_cli_sessions_list_agent(tmp_path: Path) -> None:
    sessions = tmp_path / "agent-sessions"
    agent = f"{CLI_MOCK} --session-dir {sessions} --list"
    for n in range(3):
        done = run_cli("exec", "--agent-command", agent, f"hello {n}", state_dir=tmp_path)
        if done.returncode != 0:
            pytest.skip(f"exec --agent-command unavailable: {done.stderr[-300:]}")
    listed = run_cli("sessions", "list", "--agent-command", agent, "--json",
                     state_dir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json_lines(listed.stdout)
    assert sorted(r["title"] for r in rows) == ["hello 0", "hello 1", "hello 2"]


def test_cli_sessions_list_agent_unsupported(tmp_path: Path) -> None:
    done = run_cli("sessions", "list", "--agent-command", CLI_MOCK, state_dir=tmp_path)
    assert done.returncode not in (0, 2), done
    assert "ACP_BACKEND_UNSUPPORTED_CONTROL" in done.stderr
    ours = run_cli("sessions", "list", state_dir=tmp_path)  # without --agent: our records
    assert ours.returncode == 0 and "no sessions in" in ours.stdout


async def test_delete_removes_a_session_from_the_list(env: RuntimeEnv, tmp_path: Path) -> None:
    """``session/delete`` when advertised (the session leaves ``session/list``; an unknown id
    succeeds silently); a typed error when not."""
    sessions = tmp_path / "agent-sessions"
    async with env.runtime(agents=_agents(sessions, "--list", "--delete")) as rt:
        with trio.fail_after(60):
            handle = await rt.ensure_session(session_key="k", agent="lister")
            await run(rt, handle, "doomed")
            keep = await rt.ensure_session(session_key="k2", agent="lister")
            await run(rt, keep, "kept")
            await rt.close(handle=handle, reason="test")
            await rt.delete_session(agent="lister", session_id=handle.backend_session_id or "")
            await rt.delete_session(agent="lister", session_id="never-was")
            listed = {s.session_id for s in await rt.list_sessions(agent="lister")}
            assert listed == {keep.backend_session_id}
    async with env.runtime(agents=_agents(sessions, "--list")) as rt:
        with trio.fail_after(30), pytest.raises(AcpRuntimeError) as info:
            await rt.delete_session(agent="lister", session_id="x")
    assert info.value.code == "ACP_BACKEND_UNSUPPORTED_CONTROL"


def test_cli_sessions_delete_and_logout(tmp_path: Path) -> None:
    sessions = tmp_path / "agent-sessions"
    agent = f"{CLI_MOCK} --session-dir {sessions} --list --delete --logout"
    assert run_cli("exec", "--agent-command", agent, "hello", state_dir=tmp_path).returncode == 0
    (row,) = json_lines(run_cli("sessions", "list", "--agent-command", agent, "--json",
                                state_dir=tmp_path).stdout)
    done = run_cli("sessions", "delete", row["session_id"], "--agent-command", agent,
                   state_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    again = run_cli("sessions", "list", "--agent-command", agent, "--json", state_dir=tmp_path)
    assert again.returncode == 0 and json_lines(again.stdout) == []
    assert run_cli("sessions", "delete", "x", state_dir=tmp_path).returncode == 2  # no agent
    out = run_cli("logout", "--agent-command", agent, state_dir=tmp_path)
    assert out.returncode == 0 and "logged out" in out.stdout, out.stderr
    unsupported = run_cli("logout", "--agent-command", CLI_MOCK, state_dir=tmp_path)
    assert unsupported.returncode == 1 and "does not support logout" in unsupported.stderr


@pytest.mark.parametrize("flags", [("--list", "--list-hang"), ("--list", "--slow-start", "8000")],
                         ids=["call-stalls", "initialize-stalls"])
async def test_a_stalled_agent_is_a_control_timeout(env: RuntimeEnv, tmp_path: Path,
                                                    flags: tuple[str, ...]) -> None:
    """An agent that never answers ``session/list`` (or ``initialize``) is
    ``ACP_CONTROL_TIMEOUT`` after the control timeout: a typed error, never a bare
    ``trio.TooSlowError``; and no agent is left."""
    async with env.runtime(agents=_agents(tmp_path / "s", *flags), timeoutSeconds=1) as rt:
        started = trio.current_time()
        with trio.fail_after(30), pytest.raises(AcpRuntimeError) as info:
            await rt.list_sessions(agent="lister")
        assert trio.current_time() - started < 10
    assert info.value.code == "ACP_CONTROL_TIMEOUT", info.value
    assert info.value.retryable


def test_cli_sessions_list_of_a_stalled_agent(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"timeoutSeconds": 1}')
    agent = f"{CLI_MOCK} --list --list-hang"
    done = run_cli("sessions", "list", "--agent-command", agent, "--config", str(config),
                   state_dir=tmp_path)
    assert done.returncode not in (0, 2), done
    assert "ACP_CONTROL_TIMEOUT" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
