"""Session setup order (resume, load, new), not-found fallbacks and ``session/close``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _runtime_helpers import MOCK, RuntimeEnv, output, run

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._runtime.handshake import initialize_request, is_load_not_found


def _mock(root: Path, *flags: str) -> dict[str, dict[str, object]]:
    args = [*MOCK[1:], "--session-dir", str(root / "agent-sessions"),
            "--method-log", str(root / "methods.log"), *flags]
    return {"mock": {"command": MOCK[0], "args": args}}


def _methods(root: Path) -> list[str]:
    return (root / "methods.log").read_text().split()


def test_terminal_capability_is_advertised() -> None:
    assert initialize_request().client_capabilities.terminal is True


def test_gemini_not_found_text_is_recognised() -> None:
    exc = AcpRuntimeError("ACP_RPC_ERROR", "agent answered session/load with JSON-RPC error "
                          "-32603: No previous sessions found for this project.", rpc_code=-32603)
    assert is_load_not_found(exc)
    assert not is_load_not_found(AcpRuntimeError("ACP_RPC_ERROR", "Internal error",
                                                 rpc_code=-32603))


@pytest.mark.parametrize(("message", "data", "proven"), [
    ("Session not found: abc", None, True),
    ("loadSession is not supported", None, True),
    ("Internal error", {"details": "Session 7f3a does not exist"}, True),
    ("Could not find session 123", None, True),
    # real agents (an outside review): codex's app-server through codex-acp, gemini-cli
    ("Internal error", {"details": "thread not found: 0199a1b2-c3d4"}, True),
    ("Internal error", {"details": "no rollout found for thread id 0199a1b2"}, True),
    ("Internal error", {"details": 'Invalid session identifier "x". Searched for sessions '
                                   "in /home/u/.gemini"}, True),
    ("Session ses_1.2 not found", None, True),  # an id with a point is one clause
    ("Session a:b not found", None, True),
    # "not found" or "not supported" about something else proves nothing about the session
    ("Internal error: ripgrep binary not found on PATH", None, False),
    ("Internal error: session worker: ripgrep binary not found", None, False),
    ("Internal error", {"details": "config file not found"}, False),
    ("Internal error: this terminal is not supported", None, False),
    ("thread pool exhausted, file not found", None, False),
])
def test_only_a_session_that_is_not_found_is_not_found(
    message: str, data: object, proven: bool
) -> None:
    exc = AcpRuntimeError("ACP_RPC_ERROR", "agent answered session/load with JSON-RPC error "
                          f"-32603: {message}", rpc_code=-32603, rpc_data=data)
    assert is_load_not_found(exc) is proven


async def test_resume_is_preferred_and_session_close_is_sent(env: RuntimeEnv) -> None:
    agents = _mock(env.root, "--resume", "--close")
    with trio.fail_after(60):
        async with env.runtime(agents=agents) as rt:
            first = await rt.ensure_session(session_key="c", agent="mock")
            await run(rt, first, "hello")
        assert _methods(env.root)[-1] == "session/close"
        (env.root / "methods.log").unlink()
        async with env.runtime(agents=agents) as rt:
            second = await rt.ensure_session(session_key="c", agent="mock")
            assert second.backend_session_id == first.backend_session_id
            assert output(await run(rt, second, "/history")) == "history turns=1"
            assert rt._sessions["c"].stray_updates == 0  # resume replays nothing
    methods = _methods(env.root)
    assert methods[:2] == ["initialize", "session/resume"]
    assert "session/load" not in methods and "session/new" not in methods


async def test_resume_failure_falls_back_to_load(env: RuntimeEnv) -> None:
    agents = _mock(env.root)
    with trio.fail_after(60):
        async with env.runtime(agents=agents) as rt:
            first = await rt.ensure_session(session_key="c", agent="mock")
            await run(rt, first, "hello")
        # the agent now advertises resume but has lost the session for it (fresh bridge)
        (env.root / "methods.log").unlink()
        agents = _mock(env.root, "--resume", "--resume-fails")
        async with env.runtime(agents=agents) as rt:
            second = await rt.ensure_session(session_key="c", agent="mock")
            assert second.backend_session_id == first.backend_session_id
            assert output(await run(rt, second, "/history")) == "history turns=1"
    assert _methods(env.root)[:3] == ["initialize", "session/resume", "session/load"]


async def test_gemini_style_not_found_falls_back_to_new(env: RuntimeEnv) -> None:
    agents = _mock(env.root, "--unknown-session-message",
                   "No previous sessions found for this project.")
    with trio.fail_after(60):
        async with env.runtime(agents=agents) as rt:
            handle = await rt.ensure_session(session_key="g", agent="mock",
                                             resume_session_id="never-seen")
            assert handle.backend_session_id != "never-seen"
            assert output(await run(rt, handle, "hi")) == "hi"
    assert _methods(env.root)[:3] == ["initialize", "session/load", "session/new"]


@pytest.mark.parametrize("message", ["database is locked",
                                     "Internal error: ripgrep binary not found on PATH"])
async def test_load_error_that_is_not_not_found_fails(env: RuntimeEnv, message: str) -> None:
    """A load that fails for another reason never falls back to ``session/new``: the
    recorded conversation would be replaced by an empty one."""
    agents = _mock(env.root, "--unknown-session-message", message)
    with trio.fail_after(60):
        async with env.runtime(agents=agents) as rt:
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key="g", agent="mock",
                                        resume_session_id="never-seen")
    assert info.value.code == "ACP_SESSION_INIT_FAILED"
    assert message in info.value.message
    assert "session/new" not in _methods(env.root)
