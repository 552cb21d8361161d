"""AcpxRuntime session lifecycle: resume across restarts, fresh sessions, errors, doctor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from _runtime_helpers import (
    MOCK,
    RuntimeEnv,
    output,
    pid_gone,
    run,
)

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import DoneEvent
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.sessions import SessionStore


def _persisting_mock(session_dir: Path) -> dict[str, dict[str, object]]:
    return {"mock": {"command": MOCK[0], "args": [*MOCK[1:], "--session-dir", str(session_dir)]}}


async def test_resume_via_session_load_across_restart(env: RuntimeEnv) -> None:
    agents = _persisting_mock(env.root / "agent-sessions")
    with trio.fail_after(60):
        async with env.runtime(agents=agents) as rt:
            first = await rt.ensure_session(session_key="chat", agent="mock")
            assert output(await run(rt, first, "hello")) == "hello"
            assert output(await run(rt, first, "/history")) == "history turns=1"
        async with env.runtime(agents=agents) as rt:
            second = await rt.ensure_session(session_key="chat", agent="mock")
            assert second.backend_session_id == first.backend_session_id
            assert second.agent_pid != first.agent_pid
            events = await run(rt, second, "/history")
            # the load replay is not part of the turn: only this turn's text
            assert output(events) == "history turns=2"


async def test_prepare_fresh_session_is_persisted(env: RuntimeEnv) -> None:
    agents = _persisting_mock(env.root / "agent-sessions")
    with trio.fail_after(60):
        async with env.runtime(agents=agents) as rt:
            first = await rt.ensure_session(session_key="chat", agent="mock")
            await run(rt, first, "hello")
            await rt.prepare_fresh_session(session_key="chat")
        record = await SessionStore(env.state_dir).load("chat")
        assert record is not None and record.reset_on_next_ensure
        async with env.runtime(agents=agents) as rt:
            second = await rt.ensure_session(session_key="chat", agent="mock")
            assert second.backend_session_id != first.backend_session_id
            assert output(await run(rt, second, "/history")) == "history turns=0"
        record = await SessionStore(env.state_dir).load("chat")
        assert record is not None and not record.reset_on_next_ensure


async def test_prepare_fresh_session_replaces_live_session(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            first = await rt.ensure_session(session_key="chat", agent="mock")
            await rt.prepare_fresh_session(session_key="chat")
            second = await rt.ensure_session(session_key="chat", agent="mock")
        assert second.backend_session_id != first.backend_session_id
        assert second.agent_pid != first.agent_pid
        assert first.agent_pid is not None and pid_gone(first.agent_pid)


async def test_reuse_live_session(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            first = await rt.ensure_session(session_key="chat", agent="mock")
            again = await rt.ensure_session(session_key="chat", agent="mock")
        assert again == first


async def test_close_discard_persistent_state(env: RuntimeEnv) -> None:
    agents = _persisting_mock(env.root / "agent-sessions")
    async with env.runtime(agents=agents) as rt:
        with trio.fail_after(30):
            first = await rt.ensure_session(session_key="chat", agent="mock")
            await run(rt, first, "hello")
            await rt.close(handle=first, reason="reset", discard_persistent_state=True)
            assert first.agent_pid is not None and pid_gone(first.agent_pid)
            assert (await env.lease(first.lease_id)).state is LeaseState.CLOSED
            record = await SessionStore(env.state_dir).load("chat")
            assert record is not None and record.closed and record.reset_on_next_ensure
            await rt.close(handle=first, reason="again")  # idempotent
            second = await rt.ensure_session(session_key="chat", agent="mock")
            assert second.backend_session_id != first.backend_session_id
            assert output(await run(rt, second, "/history")) == "history turns=0"


async def test_close_keeps_state_for_resume(env: RuntimeEnv) -> None:
    agents = _persisting_mock(env.root / "agent-sessions")
    async with env.runtime(agents=agents) as rt:
        with trio.fail_after(30):
            first = await rt.ensure_session(session_key="chat", agent="mock")
            await run(rt, first, "hello")
            await rt.close(handle=first)
            # a closed handle is a problem of the call: it raises before the first event
            with pytest.raises(AcpRuntimeError) as info:
                await run(rt, first, "hello")
            assert info.value.code == "ACP_SESSION_NOT_FOUND" and info.value.retryable
            second = await rt.ensure_session(session_key="chat", agent="mock")
            assert second.backend_session_id == first.backend_session_id


async def test_input_errors(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with pytest.raises(AcpRuntimeError) as info:
            await rt.ensure_session(session_key="k", agent="nosuch")
        assert info.value.code == "ACP_AGENT_UNKNOWN"
        assert "mock" in info.value.message and "agents.nosuch" in info.value.message
        with pytest.raises(AcpRuntimeError) as info:
            await rt.ensure_session(session_key="k", agent="mock", mode="forever")  # type: ignore[arg-type]
        assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
        assert info.value.message == (
            'Unsupported ACP runtime session mode "forever". Expected one of: '
            "persistent, oneshot."
        )
        for key, agent in (("", "mock"), ("  ", "mock"), ("k", "")):
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key=key, agent=agent)
            assert info.value.code == "ACP_SESSION_INIT_FAILED"
        with pytest.raises(AcpRuntimeError) as info:
            await rt.ensure_session(session_key="k", agent="mock", cwd="/nonexistent/dir")
        assert info.value.code == "ACP_SESSION_INIT_FAILED"


async def test_spawn_failure_marks_lease_lost(env: RuntimeEnv) -> None:
    agents = {"ghost": {"command": "/nonexistent/ghost-agent-acp"}}
    async with env.runtime(agents=agents) as rt:
        with pytest.raises(AcpRuntimeError) as info:
            await rt.ensure_session(session_key="k", agent="ghost")
        assert info.value.code == "ACP_AGENT_SPAWN_FAILED"
        assert "ghost-agent-acp" in info.value.message
    leases = await env.lease_store.list_all()
    assert [x.state for x in leases] == [LeaseState.LOST]


async def test_wrong_protocol_version_fails_init_and_kills(env: RuntimeEnv) -> None:
    agents = {"v2": {"command": MOCK[0], "args": [*MOCK[1:], "--protocol-version", "2"]}}
    async with env.runtime(agents=agents) as rt:
        with trio.fail_after(30), pytest.raises(AcpRuntimeError) as info:
            await rt.ensure_session(session_key="k", agent="v2")
        assert info.value.code == "ACP_SESSION_INIT_FAILED"
        assert "version 2" in info.value.message
        leases = await env.lease_store.list_all()
        assert [x.state for x in leases] == [LeaseState.CLOSED]
        assert pid_gone(leases[0].root_pid)


async def test_handshake_timeout_kills_agent(env: RuntimeEnv) -> None:
    agents = {"slow": {"command": MOCK[0], "args": [*MOCK[1:], "--slow-start", "30000"]}}
    async with env.runtime(agents=agents, timeoutSeconds=1.0) as rt:
        with trio.fail_after(30), pytest.raises(AcpRuntimeError) as info:
            await rt.ensure_session(session_key="k", agent="slow")
        assert info.value.code == "ACP_SESSION_INIT_FAILED"
        assert "initialize" in info.value.message and info.value.retryable
        leases = await env.lease_store.list_all()
        assert [x.state for x in leases] == [LeaseState.CLOSED]


_LOAD_AGENT = r"""
import json, sys
code = int(sys.argv[1])
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    method, r = m["method"], {}
    if method == "initialize":
        r = {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}}
    elif method == "session/load":
        err = {"code": code, "message": "Session not found" if code == -32002 else "boom"}
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "error": err}), flush=True)
        continue
    elif method == "session/new":
        r = {"sessionId": "new-1"}
    elif method == "session/prompt":
        r = {"stopReason": "end_turn"}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"""


@pytest.mark.parametrize("code", [-32002, -32603])
async def test_load_falls_back_to_new_only_when_not_found(env: RuntimeEnv, code: int) -> None:
    agents = {"loader": {"command": sys.executable, "args": ["-c", _LOAD_AGENT, str(code)]}}
    async with env.runtime(agents=agents) as rt:
        with trio.fail_after(30):
            if code == -32002:
                handle = await rt.ensure_session(
                    session_key="k", agent="loader", resume_session_id="old-1"
                )
                assert handle.backend_session_id == "new-1"
                assert isinstance((await run(rt, handle, "hi"))[-1], DoneEvent)
            else:
                with pytest.raises(AcpRuntimeError) as info:
                    await rt.ensure_session(
                        session_key="k", agent="loader", resume_session_id="old-1"
                    )
                assert info.value.code == "ACP_SESSION_INIT_FAILED"
                assert info.value.rpc_code == -32603 and "session/load" in info.value.message


async def test_doctor_reports_ok_and_failure(env: RuntimeEnv) -> None:
    async with env.runtime(probeAgent="mock") as rt:
        assert not rt.is_healthy()
        with trio.fail_after(30):
            report = await rt.doctor()
        assert report.ok, report
        assert "agent=mock" in report.details and "protocolVersion=1" in report.details
        assert rt.is_healthy()
    broken = {"broken": {"command": "/nonexistent/broken-acp"}}
    async with env.runtime(probeAgent="broken", agents=broken) as rt:
        await rt.probe_availability()
        assert not rt.is_healthy()
        report = await rt.doctor()
        assert not report.ok and report.code == "ACP_BACKEND_UNAVAILABLE"
    crashing = {"crash": {"command": sys.executable, "args": ["-c", "import sys; "
                                                                  "sys.stderr.write('boom'); "
                                                                  "sys.exit(3)"]}}
    async with env.runtime(probeAgent="crash", agents=crashing) as rt:
        with trio.fail_after(30):
            report = await rt.doctor()
        assert not report.ok and any("boom" in str(d) for d in report.details)
    leases = await env.lease_store.list_all()
    assert all(x.state in (LeaseState.CLOSED, LeaseState.LOST) for x in leases)


async def test_aclose_is_idempotent_and_final(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="k", agent="mock")
        await rt.aclose()
        await rt.aclose()
        assert handle.agent_pid is not None and pid_gone(handle.agent_pid)
        for call in (
            rt.ensure_session(session_key="k", agent="mock"),
            rt.get_status(handle=handle),
            rt.doctor(),
            rt.cancel(handle=handle),
        ):
            with pytest.raises(AcpRuntimeError) as info:
                await call
            assert info.value.code == "ACP_BACKEND_UNAVAILABLE"
            assert info.value.message == "ACP runtime is shut down."
        assert not rt.is_healthy()
