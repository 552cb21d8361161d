"""The bundled mock agent, run as a real process and driven through AcpConnection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import trio
import trio.testing
from _runtime_helpers import wait_pid_exit, wait_until

from acpx_trio._acp import (
    AcpConnection,
    AgentMessageChunk,
    AgentThoughtChunk,
    CancelNotification,
    CurrentModeUpdate,
    EmptyResponse,
    Implementation,
    InitializeRequest,
    InitializeResponse,
    LoadSessionRequest,
    LoadSessionResponse,
    NewSessionRequest,
    NewSessionResponse,
    PromptRequest,
    PromptResponse,
    ReadTextFileRequest,
    ReadTextFileResponse,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SelectedOutcome,
    SessionUpdate,
    SetSessionConfigOptionRequest,
    SetSessionConfigOptionResponse,
    SetSessionModeRequest,
    ToolCall,
    ToolCallUpdate,
    UserMessageChunk,
    WriteTextFileRequest,
    decode_session_notification,
    text_block,
)
from acpx_trio._errors import AcpConnectionClosedError, AcpProtocolError, AcpRuntimeError

ROOT = Path(__file__).resolve().parents[1]
AGENT = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "ACPX_TEST_MARKER": "mock-agent-test"}


class Agent:
    def __init__(self, proc: trio.Process, conn: AcpConnection) -> None:
        self.proc = proc
        self.conn = conn
        self.updates: list[SessionUpdate] = []
        self.stderr = bytearray()
        self.serve_error: BaseException | None = None
        self.serve_done = trio.Event()

    def texts(self, kind: type[Any] = AgentMessageChunk) -> str:
        return "".join(u.content.text or "" for u in self.updates if isinstance(u, kind))

    async def init(self) -> InitializeResponse:
        params = InitializeRequest(
            protocol_version=1, client_info=Implementation(name="tests", version="0")
        )
        return await self.conn.request("initialize", params, InitializeResponse)

    async def new(self, cwd: str = "/tmp") -> str:
        params = NewSessionRequest(cwd=cwd, mcp_servers=[])
        result = await self.conn.request("session/new", params, NewSessionResponse)
        return result.session_id

    async def prompt(self, sid: str, text: str) -> str:
        params = PromptRequest(session_id=sid, prompt=[text_block(text)])
        return (await self.conn.request("session/prompt", params, PromptResponse)).stop_reason


@asynccontextmanager
async def mock_agent(*flags: str, max_line_bytes: int = 8 * 1024 * 1024) -> AsyncIterator[Agent]:
    proc = await trio.lowlevel.open_process(
        [*AGENT, *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    conn = AcpConnection(proc.stdin, proc.stdout, max_line_bytes=max_line_bytes)
    agent = Agent(proc, conn)
    conn.set_notification_handler(
        "session/update", lambda p: agent.updates.append(decode_session_notification(p).update)
    )
    stderr = proc.stderr

    async def read_stderr() -> None:
        while chunk := await stderr.receive_some():
            agent.stderr += chunk

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await conn.serve(task_status=task_status)
        except AcpProtocolError as exc:
            agent.serve_error = exc
        finally:
            agent.serve_done.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stderr)
            await nursery.start(serve)
            try:
                with trio.fail_after(60):
                    yield agent
            finally:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
                    with trio.move_on_after(10):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()


async def kill_pid(pid: int) -> None:
    """SIGKILLs ``pid`` and waits until it is gone or a zombie (its reaper may be slow)."""
    with trio.fail_after(10):
        try:
            proc = psutil.Process(pid)
            proc.kill()
        except psutil.NoSuchProcess:
            return
        await wait_pid_exit(pid)  # a pidfd turns readable at exit (zombie or reaped)


async def wait_exit(proc: trio.Process, seconds: float = 10) -> int:
    with trio.fail_after(seconds):
        return await proc.wait()


async def test_initialize_new_and_echo() -> None:
    async with mock_agent() as agent:
        init = await agent.init()
        assert init.protocol_version == 1
        assert init.agent_capabilities.load_session is True
        assert init.agent_info is not None and init.agent_info.name == "acpx-trio-mock-agent"
        assert init.auth_methods == []
        new = await agent.conn.request(
            "session/new", NewSessionRequest(cwd="/tmp", mcp_servers=[]), NewSessionResponse
        )
        assert new.modes is not None and new.modes.current_mode_id == "default"
        assert [m.id for m in new.modes.available_modes] == ["default", "plan", "yolo"]
        assert new.config_options is not None and new.config_options[0].id == "model"
        assert await agent.prompt(new.session_id, "hello there") == "end_turn"
        assert agent.texts() == "hello there"
        assert await agent.prompt(new.session_id, "/pid") == "end_turn"
        assert f"pid={agent.proc.pid}" in agent.texts()


async def test_bad_agent_flags() -> None:
    async with mock_agent("--protocol-version", "2", "--auth-methods", "--no-load-session") as a:
        init = await a.init()
        assert init.protocol_version == 2
        assert init.agent_capabilities.load_session is False
        assert [m.id for m in init.auth_methods] == ["mock-login"]
        await a.conn.request("authenticate", {"methodId": "mock-login"}, EmptyResponse)
        params = LoadSessionRequest(session_id="x", cwd="/tmp", mcp_servers=[])
        with pytest.raises(AcpRuntimeError) as info:
            await a.conn.request("session/load", params, LoadSessionResponse)
        assert info.value.rpc_code == -32601


async def test_chunks_are_fast_and_ordered() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        with trio.fail_after(30):
            assert await agent.prompt(sid, "/chunks 10000") == "end_turn"
        chunks = [u for u in agent.updates if isinstance(u, AgentMessageChunk)]
        assert len(chunks) == 10000
        assert chunks[0].content.text == "chunk 0\n" and chunks[-1].content.text == "chunk 9999\n"


async def test_sleep_then_cancel_answers_cancelled() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        result: list[str] = []

        async def run() -> None:
            result.append(await agent.prompt(sid, "/sleep 60000"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()  # the prompt is written
            with trio.fail_after(5):
                await agent.conn.notify("session/cancel", CancelNotification(session_id=sid))
        assert result == ["cancelled"]


async def test_new_prompt_cancels_the_running_one() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        first: list[str] = []

        async def run() -> None:
            first.append(await agent.prompt(sid, "/sleep 60000"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()  # the prompt is written
            assert await agent.prompt(sid, "second") == "end_turn"
        assert first == ["cancelled"]


async def test_hang_ignores_cancel() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        with trio.move_on_after(0.6) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(agent.prompt, sid, "/hang")
                await wait_until(lambda: b"/hang: request" in agent.stderr)
                await agent.conn.notify("session/cancel", {"sessionId": sid})
        assert scope.cancelled_caught
        assert await agent.prompt(sid, "still alive") == "end_turn"


async def test_crash_mid_turn_fails_request_with_closed_error() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        with pytest.raises(AcpConnectionClosedError):
            await agent.prompt(sid, "/crash")
        assert await wait_exit(agent.proc) == 1
        assert agent.texts() == "crashing"


async def test_garbage_line_is_tolerated() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        assert await agent.prompt(sid, "/garbage after junk") == "end_turn"
        assert agent.conn.junk_lines == 1
        assert agent.texts() == "after junk"


async def test_huge_line_is_fatal() -> None:
    async with mock_agent(max_line_bytes=100_000) as agent:
        await agent.init()
        sid = await agent.new()
        with pytest.raises(AcpProtocolError) as info:
            await agent.prompt(sid, "/huge 400000")
        assert info.value.code == "ACP_LINE_TOO_LONG"
        await agent.serve_done.wait()
        assert isinstance(agent.serve_error, AcpProtocolError)


async def test_think_tool_flood_and_unknown_session() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        assert await agent.prompt(sid, "/think pondering") == "end_turn"
        assert agent.texts(AgentThoughtChunk) == "pondering"
        assert await agent.prompt(sid, "/tool") == "end_turn"
        tool = [u for u in agent.updates if isinstance(u, ToolCall | ToolCallUpdate)]
        assert [type(u) for u in tool] == [ToolCall, ToolCallUpdate]
        assert tool[1].status == "completed" and tool[0].tool_call_id == tool[1].tool_call_id
        agent.updates.clear()
        assert await agent.prompt(sid, "/flood 3000") == "end_turn"
        assert len(agent.updates) == 3000
        with pytest.raises(AcpRuntimeError) as info:
            await agent.prompt("no-such-session", "hi")
        assert info.value.rpc_code == -32002


async def test_modes_and_config() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        await agent.conn.request(
            "session/set_mode", SetSessionModeRequest(session_id=sid, mode_id="plan"), EmptyResponse
        )
        assert any(
            isinstance(u, CurrentModeUpdate) and u.current_mode_id == "plan" for u in agent.updates
        )
        with pytest.raises(AcpRuntimeError) as info:
            await agent.conn.request(
                "session/set_mode",
                SetSessionModeRequest(session_id=sid, mode_id="x"),
                EmptyResponse,
            )
        assert info.value.rpc_code == -32602
        assert await agent.prompt(sid, "/mode") == "end_turn"
        assert agent.texts().endswith("mode=plan")
        params = SetSessionConfigOptionRequest(
            session_id=sid, config_id="model", value="mock-large"
        )
        resp = await agent.conn.request(
            "session/set_config_option", params, SetSessionConfigOptionResponse
        )
        assert resp.config_options[0].current_value == "mock-large"


async def test_session_dir_resume_replays_history(tmp_path: Path) -> None:
    async with mock_agent("--session-dir", str(tmp_path)) as first:
        await first.init()
        sid = await first.new()
        assert await first.prompt(sid, "first prompt") == "end_turn"
        assert await first.prompt(sid, "second prompt") == "end_turn"
        await first.conn.request(
            "session/set_mode", SetSessionModeRequest(session_id=sid, mode_id="yolo"), EmptyResponse
        )
    assert (tmp_path / f"{sid}.json").exists()
    async with mock_agent("--session-dir", str(tmp_path)) as second:
        await second.init()
        params = LoadSessionRequest(session_id=sid, cwd="/tmp", mcp_servers=[])
        loaded = await second.conn.request("session/load", params, LoadSessionResponse)
        # the replay arrived before the answer
        replay = [
            (type(u).__name__, u.content.text)
            for u in second.updates
            if isinstance(u, UserMessageChunk | AgentMessageChunk)
        ]
        assert replay == [
            ("UserMessageChunk", "first prompt"),
            ("AgentMessageChunk", "first prompt"),
            ("UserMessageChunk", "second prompt"),
            ("AgentMessageChunk", "second prompt"),
        ]
        assert loaded.modes is not None and loaded.modes.current_mode_id == "yolo"
        second.updates.clear()
        assert await second.prompt(sid, "/history") == "end_turn"
        assert second.texts() == "history turns=2"


async def test_permission_and_fs_requests_reach_client_handlers(tmp_path: Path) -> None:
    async with mock_agent() as agent:
        seen: list[Any] = []

        async def permission(params: msgspec.Raw) -> RequestPermissionResponse:
            req = msgspec.json.decode(params, type=RequestPermissionRequest)
            seen.append(req)
            allow = next(o for o in req.options if o.kind == "allow_once")
            return RequestPermissionResponse(outcome=SelectedOutcome(option_id=allow.option_id))

        async def read(params: msgspec.Raw) -> ReadTextFileResponse:
            req = msgspec.json.decode(params, type=ReadTextFileRequest)
            if req.path.endswith("missing"):
                raise AcpRuntimeError("X", "Resource not found", rpc_code=-32002)
            return ReadTextFileResponse(content=f"read:{req.path}")

        async def write(params: msgspec.Raw) -> None:
            seen.append(msgspec.json.decode(params, type=WriteTextFileRequest))

        agent.conn.set_request_handler("session/request_permission", permission)
        agent.conn.set_request_handler("fs/read_text_file", read)
        agent.conn.set_request_handler("fs/write_text_file", write)
        await agent.init()
        sid = await agent.new()
        assert await agent.prompt(sid, "/permission edit") == "end_turn"
        assert agent.texts() == "permission outcome=selected:allow"
        assert seen[0].tool_call.kind == "edit" and seen[0].session_id == sid
        agent.updates.clear()
        assert await agent.prompt(sid, f"/read {tmp_path}/a.txt") == "end_turn"
        assert agent.texts() == f"read:{tmp_path}/a.txt"
        agent.updates.clear()
        assert await agent.prompt(sid, f"/read {tmp_path}/missing") == "end_turn"
        assert agent.texts() == "error: -32002 Resource not found"
        agent.updates.clear()
        assert await agent.prompt(sid, f"/write {tmp_path}/b.txt two words") == "end_turn"
        assert agent.texts() == f"wrote {tmp_path}/b.txt"
        assert seen[1] == WriteTextFileRequest(
            session_id=sid, path=f"{tmp_path}/b.txt", content="two words"
        )


async def test_permission_unanswered_then_cancelled() -> None:
    async with mock_agent() as agent:
        got_request = trio.Event()

        async def permission(params: msgspec.Raw) -> None:
            got_request.set()
            await trio.sleep_forever()

        agent.conn.set_request_handler("session/request_permission", permission)
        await agent.init()
        sid = await agent.new()
        result: list[str] = []

        async def run() -> None:
            result.append(await agent.prompt(sid, "/permission execute"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await got_request.wait()
            await agent.conn.notify("session/cancel", {"sessionId": sid})
        assert result == ["cancelled"]


async def test_spawn_grandchild_and_daemonize_report_live_pids() -> None:
    pids: list[int] = []
    try:
        async with mock_agent() as agent:
            await agent.init()
            sid = await agent.new()
            assert await agent.prompt(sid, "/spawn-grandchild") == "end_turn"
            assert await agent.prompt(sid, "/daemonize") == "end_turn"
            text = agent.texts()
            grandchild = int(text.split("grandchild pid=")[1].split("daemon")[0])
            daemon = int(text.split("daemon pid=")[1])
            pids += [grandchild, daemon]
            for pid in pids:
                proc = psutil.Process(pid)
                assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
                assert proc.environ().get("ACPX_TEST_MARKER") == "mock-agent-test"
            assert psutil.Process(grandchild).ppid() == agent.proc.pid
            assert os.getsid(daemon) != os.getsid(agent.proc.pid)
    finally:
        with trio.CancelScope(shield=True):
            for pid in pids:
                await kill_pid(pid)


async def test_stdin_eof_exits_promptly_even_mid_turn() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        errors: list[Exception] = []

        async def run() -> None:
            try:
                await agent.prompt(sid, "/sleep 60000")
            except AcpConnectionClosedError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()  # the prompt is written
            await agent.conn.aclose()
            assert await wait_exit(agent.proc, 5) == 0
        assert len(errors) == 1


async def test_ignore_stdin_eof_and_sigterm_keep_running() -> None:
    async with mock_agent("--ignore-stdin-eof", "--ignore-sigterm") as agent:
        await agent.init()
        await agent.conn.aclose()
        agent.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(0.5) as scope:
            await agent.proc.wait()
        assert scope.cancelled_caught, "the agent should have survived stdin EOF and SIGTERM"
        agent.proc.kill()
        assert await wait_exit(agent.proc) == -signal.SIGKILL


async def test_close_stdout_keeps_process_alive_until_stdin_eof() -> None:
    async with mock_agent() as agent:
        await agent.init()
        sid = await agent.new()
        with pytest.raises(AcpConnectionClosedError):
            await agent.prompt(sid, "/close-stdout")
        await agent.serve_done.wait()
        assert agent.proc.poll() is None
        await agent.conn.aclose()
        assert await wait_exit(agent.proc) == 0


async def test_slow_start_and_unknown_flag() -> None:
    result = await trio.run_process(
        [*AGENT, "--definitely-not-a-flag"], env=ENV, check=False, capture_stderr=True
    )
    assert result.returncode == 2
    assert b"--definitely-not-a-flag" in result.stderr
    async with mock_agent("--slow-start", "300") as agent:
        start = trio.current_time()
        await agent.init()
        assert trio.current_time() - start >= 0.25
