"""ACP as agents speak it today (issue 21): ``_meta`` passed through on prompts, and
``$/cancel_request`` honoured for the agent's requests to us (the handler is cancelled and
the request answered -32800).  Real bundled agent."""

from __future__ import annotations

import json
import sys

import pytest
import trio
from _runtime_helpers import RuntimeEnv, elicitation_recorder, output

from acpx_trio import AcpRuntimeError, DoneEvent


async def _turn(rt: object, handle: object, text: str, **kw: object) -> list[object]:
    events = []
    async for ev in rt.run_turn(handle=handle, text=text, **kw):  # type: ignore[attr-defined]
        events.append(ev)
    return events


async def test_meta_reaches_the_agent_unchanged(env: RuntimeEnv) -> None:
    meta = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "app": {"n": 1}}
    async with env.runtime() as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        with trio.fail_after(30):
            said = output(await _turn(rt, handle, "/meta", meta=meta))
            assert json.loads(said) == meta
            assert output(await _turn(rt, handle, "/meta")) == "null"  # none: no _meta
            with pytest.raises(AcpRuntimeError) as info:
                await _turn(rt, handle, "/meta", meta={"x": object()})
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
            assert output(await _turn(rt, handle, "again")) == "again"  # the session lives


async def test_cancel_request_from_the_agent_is_answered_request_cancelled(
    env: RuntimeEnv,
) -> None:
    """The agent asks ``terminal/wait_for_exit`` on a command that runs for 30 s, then
    cancels that request: we stop waiting at once and answer -32800; the turn goes on."""
    async with env.runtime(permissionMode="approve-all") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        with trio.fail_after(20):
            events = await _turn(rt, handle, "/cancel-request sleep 30")
    assert output(events) == "cancel_request: error -32800"
    assert isinstance(events[-1], DoneEvent) and events[-1].stop_reason == "end_turn"


_HTTP = {"docs": {"type": "http", "url": "https://mcp.example/docs",
                  "headers": {"X-Team": "a"}},
         "feed": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
         "files": {"command": "mcp-files", "args": ["--root", "."]}}


async def test_http_and_sse_mcp_servers_reach_an_agent_that_takes_them(env: RuntimeEnv) -> None:
    agents = {"mcp": {"command": sys.executable, "args": ["-m", "acpx_trio.testing.mock_agent",
                                                      "--mcp-http", "--mcp-sse"]}}
    async with env.runtime(agents=agents, mcpServers=_HTTP) as rt:
        handle = await rt.ensure_session(session_key="k", agent="mcp")
        with trio.fail_after(30):
            said = output(await _turn(rt, handle, "/mcp"))
    assert sorted(said.split(",")) == ["docs:http", "feed:sse", "files:stdio"]


async def test_an_http_mcp_server_for_an_agent_without_http_is_a_typed_error(
    env: RuntimeEnv,
) -> None:
    async with env.runtime(mcpServers=_HTTP) as rt:
        with trio.fail_after(30), pytest.raises(AcpRuntimeError) as info:
            await rt.ensure_session(session_key="k", agent="mock")
    assert info.value.code == "ACP_MCP_TRANSPORT_UNSUPPORTED"
    assert "docs" in info.value.message and "http" in info.value.message


def test_mcp_server_config_is_checked(tmp_path: object) -> None:
    from acpx_trio import ConfigError, resolve_config

    for bad, field in (({"x": {"type": "http"}}, "mcpServers.x.url"),
                       ({"x": {"type": "sse", "url": "ftp://h"}}, "mcpServers.x.url"),
                       ({"x": {"type": "http", "url": "https://h", "command": "c"}},
                        "mcpServers.x.command"),
                       ({"x": {"args": ["a"]}}, "mcpServers.x.command")):
        with pytest.raises(ConfigError) as info:
            resolve_config({"mcpServers": bad}, tmp_path)  # type: ignore[arg-type]
        assert info.value.field == field, (bad, info.value)


async def test_elicitation_answered_by_the_hosts_handler(env: RuntimeEnv) -> None:
    from acpx_trio import StatusEvent

    asked, answer = elicitation_recorder("decline", {"choice": "b"})
    async with env.runtime() as rt:
        rt.set_elicitation_handler(answer)
        handle = await rt.ensure_session(session_key="k", agent="mock")
        with trio.fail_after(30):
            form = await _turn(rt, handle, "/elicit form Which approach?")
            url = await _turn(rt, handle, "/elicit url https://login.example/x")
    assert output(form) == 'elicitation: accept {"choice":"b"}'
    assert output(url) == "elicitation: decline"
    assert [a.mode for a in asked] == ["form", "url"]
    assert asked[0].message == "Which approach?" and asked[0].requested_schema is not None
    assert asked[1].url == "https://login.example/x" and asked[1].session_key == "k"
    shown = [e.text for e in url if isinstance(e, StatusEvent)]
    assert any("https://login.example/x" in t for t in shown)  # shown to the user
    assert any("mock-elicit-1" in t for t in shown)  # elicitation/complete reported


async def test_elicitation_without_a_handler_follows_the_non_interactive_policy(
    env: RuntimeEnv,
) -> None:
    from acpx_trio import ErrorEvent

    async with env.runtime(nonInteractivePermissions="deny") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        with trio.fail_after(30):
            assert output(await _turn(rt, handle, "/elicit form Pick")) == "elicitation: decline"
    async with env.runtime(nonInteractivePermissions="fail") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        with trio.fail_after(30):
            events = await _turn(rt, handle, "/elicit form Pick")
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].code == "ACP_ELICITATION_UNAVAILABLE"


def test_cli_shows_the_elicitation_and_declines_under_deny(tmp_path: object) -> None:
    from pathlib import Path

    from _cli_helpers import MOCK as CLI_MOCK
    from _cli_helpers import run_cli

    config = Path(str(tmp_path)) / "c.json"
    config.write_text(json.dumps({"nonInteractivePermissions": "deny"}))
    done = run_cli("exec", "--config", str(config), "--agent-command", CLI_MOCK,
                   "/elicit url https://login.example/x", state_dir=Path(str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "elicitation: decline"
    assert "https://login.example/x" in done.stderr  # [status] the agent asks: ...
