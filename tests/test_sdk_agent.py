"""Against an agent built on the official Python SDK (``agent-client-protocol``, in the test
extra): authenticate, terminal/*, error details, ``session/list`` (authenticated first),
config options and models, and elicitation (form and url) — through the API and the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
from _cli_helpers import json_lines, run_cli
from _runtime_helpers import RuntimeEnv, elicitation_recorder, output, run

from acpx_trio import (
    AcpRuntimeError,
    ErrorEvent,
    StatusEvent,
)

pytest.importorskip("acp", reason="test extra agent-client-protocol not installed")

SCRIPT = str(Path(__file__).with_name("_sdk_agent.py"))
AGENT = {"sdk": {"command": sys.executable, "args": [SCRIPT]}}


def _agent(session_file: Path) -> dict[str, object]:
    return {"sdk": {"command": sys.executable,
                    "args": [SCRIPT, "--session-file", str(session_file)]}}


async def test_sdk_agent_auth_terminal_and_errors(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        async with env.runtime(agents=AGENT, permissionMode="approve-all") as rt:
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key="s", agent="sdk")
            assert info.value.code == "ACP_AUTH_REQUIRED" and "SDK_KEY" in info.value.message
        monkeypatch.setenv("ACPX_AUTH_SDK_KEY", "sdk-credential")
        async with env.runtime(agents=AGENT, permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="s", agent="sdk")
            assert output(await run(rt, handle, "hello")) == "hello"
            assert output(await run(rt, handle, "terminal echo hi; exit 4")) == (
                "exit=4 output=hi\n")
            events = await run(rt, handle, "fail adapter exited with code 1")
            final = events[-1]
            assert isinstance(final, ErrorEvent) and final.rpc_code == -32603
            assert final.detail == "adapter exited with code 1"


async def test_sdk_agent_list_is_authenticated_and_follows_pages(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    agents = _agent(tmp_path / "sdk-sessions.json")
    other = tmp_path / "other"
    other.mkdir()
    with trio.fail_after(60):
        async with env.runtime(agents=agents, authPolicy="fail") as rt:
            with pytest.raises(AcpRuntimeError) as info:  # no credential: refused before list
                await rt.list_sessions(agent="sdk")
            assert info.value.code == "ACP_AUTH_REQUIRED"
        monkeypatch.setenv("ACPX_AUTH_SDK_KEY", "sdk-credential")
        async with env.runtime(agents=agents) as rt:
            made = [await rt.ensure_session(session_key=f"k{n}", agent="sdk",
                                            cwd=str(other) if n == 2 else None)
                    for n in range(3)]
            listed = await rt.list_sessions(agent="sdk")  # one per page: three pages
            assert sorted(s.session_id for s in listed) == sorted(
                h.backend_session_id for h in made)
            only = await rt.list_sessions(agent="sdk", cwd=str(other))
            assert [(s.session_id, s.cwd) for s in only] == [
                (made[2].backend_session_id, str(other))]
            assert only[0].title == "session 3" and only[0].updated_at


async def test_sdk_agent_config_options_and_model(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACPX_AUTH_SDK_KEY", "sdk-credential")
    with trio.fail_after(60):
        async with env.runtime(agents=AGENT) as rt:
            handle = await rt.ensure_session(session_key="s", agent="sdk")
            await rt.set_model(handle=handle, model="smart")
            await rt.set_config_option(handle=handle, key="verbose", value=True)
            assert json.loads(output(await run(rt, handle, "config"))) == {
                "model": "smart", "verbose": True}
            with pytest.raises(AcpRuntimeError) as info:
                await rt.set_model(handle=handle, model="huge")
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
            assert "fast" in info.value.message and "smart" in info.value.message
            with pytest.raises(AcpRuntimeError) as info:
                await rt.set_config_option(handle=handle, key="colour", value="red")
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
            assert "model" in info.value.message and "verbose" in info.value.message
            status = await rt.get_status(handle=handle)
    shown = {o["id"]: o for o in status.details["config_options"]}
    assert shown["model"]["current_value"] == "smart"
    assert shown["model"]["category"] == "model"
    assert shown["verbose"]["current_value"] is True


async def test_sdk_agent_elicitation_form_and_url(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACPX_AUTH_SDK_KEY", "sdk-credential")
    asked, answer = elicitation_recorder("accept", {"name": "Ada"})
    with trio.fail_after(60):
        async with env.runtime(agents=AGENT) as rt:
            rt.set_elicitation_handler(answer)
            handle = await rt.ensure_session(session_key="s", agent="sdk")
            form = await run(rt, handle, "elicit")
            url = await run(rt, handle, "elicit-url")
    assert output(form) == 'form accept {"name": "Ada"}'
    assert output(url) == "url accept"
    assert [a.mode for a in asked] == ["form", "url"]
    assert asked[0].message == "Who are you?" and asked[0].requested_schema is not None
    assert asked[0].requested_schema["required"] == ["name"]
    assert asked[1].url == "https://example.com/login" and asked[1].elicitation_id
    shown = [e.text for e in url if isinstance(e, StatusEvent)]
    assert any(str(asked[1].elicitation_id) in t for t in shown)  # elicitation/complete seen


@pytest.mark.slow
def test_sdk_agent_through_the_cli(tmp_path: Path) -> None:
    command = f"{sys.executable} {SCRIPT} --session-file {tmp_path / 'sdk-sessions.json'}"
    env = {"ACPX_AUTH_SDK_KEY": "sdk-credential"}
    done = run_cli("exec", "--agent-command", command, "--model", "smart", "config",
                   state_dir=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["model"] == "smart"
    bad = run_cli("exec", "--agent-command", command, "--model", "huge", "config",
                  state_dir=tmp_path, env=env)
    assert bad.returncode == 2 and "smart" in bad.stderr, bad
    listed = run_cli("sessions", "list", "--agent-command", command, "--json",
                     state_dir=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json_lines(listed.stdout)
    assert len(rows) == 2 and all(r["cwd"] for r in rows)
    # no one to answer at a command-line run: nonInteractivePermissions decides
    failed = run_cli("exec", "--agent-command", command, "elicit", state_dir=tmp_path, env=env)
    assert failed.returncode == 1 and "ACP_ELICITATION_UNAVAILABLE" in failed.stderr, failed
    config = tmp_path / "deny.json"
    config.write_text(json.dumps({"nonInteractivePermissions": "deny"}))
    form = run_cli("exec", "--agent-command", command, "--config", str(config), "elicit",
                   state_dir=tmp_path, env=env)
    assert form.returncode == 0 and "form decline" in form.stdout, form
