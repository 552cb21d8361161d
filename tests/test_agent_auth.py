"""Real agents that need ``authenticate`` or fail with reasons: credential lookup, the env
hand-over, ACP_AUTH_REQUIRED, error details — and credentials never written anywhere."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
import pytest
import trio
from _runtime_helpers import MOCK, RuntimeEnv, output, run
from hypothesis import given
from hypothesis import strategies as st

from acpx_trio._acp import AuthMethod
from acpx_trio._errors import AcpRuntimeError, redact
from acpx_trio._events import ErrorEvent
from acpx_trio._runtime.auth import (
    choose_method,
    credential_names,
    find_credential,
    spawn_env,
    upper_snake,
)

SECRET = "s3cr3t-credential-value-1234"


def _mock(*flags: str) -> dict[str, dict[str, object]]:
    return {"mock": {"command": MOCK[0], "args": [*MOCK[1:], *flags]}}


def test_upper_snake_and_lookup_order() -> None:
    assert upper_snake("verify-key") == "VERIFY_KEY"
    assert upper_snake("codex-api-key") == "CODEX_API_KEY"
    assert upper_snake("fastAgentKey") == "FAST_AGENT_KEY"
    assert credential_names("verify-key") == ["verify-key", "VERIFY_KEY", "ACPX_AUTH_VERIFY_KEY"]
    env = {"ACPX_AUTH_VERIFY_KEY": "b", "verify-key": "a"}
    assert find_credential("verify-key", env, {"verify-key": "c"}) == ("a", "verify-key")
    assert find_credential("verify-key", {"ACPX_AUTH_VERIFY_KEY": "b"}, {}) == (
        "b", "ACPX_AUTH_VERIFY_KEY")
    assert find_credential("verify-key", {}, {"verify-key": "c"}) == (
        "c", "config auth[verify-key]")
    assert find_credential("verify-key", {"VERIFY_KEY": ""}, {}) is None


def test_spawn_env_places_known_credentials_under_upper_snake() -> None:
    environ = {"ACPX_AUTH_OTHER_KEY": "o", "CODEX_API_KEY": "inherited"}
    plan = spawn_env(environ, {"verify-key": "v"}, ["codex-api-key"])
    assert plan.env == {"VERIFY_KEY": "v", "OTHER_KEY": "o"}  # CODEX_API_KEY is inherited
    assert "v" not in repr(plan) and "o" not in repr(plan).replace("env", "")
    methods = [AuthMethod(id="a"), AuthMethod(id="verify-key")]
    chosen = choose_method(methods, {}, {"verify-key": "v"})
    assert chosen is not None and chosen.id == "verify-key"


@given(st.text(min_size=4, max_size=40).filter(lambda s: s.strip() == s and "\n" not in s))
def test_redact_removes_known_secrets(secret: str) -> None:
    assert secret not in redact(f"prefix {secret} suffix {secret}", [secret])


async def test_authenticate_with_config_credential(env: RuntimeEnv) -> None:
    agents = _mock("--require-auth", "verify-key")
    with trio.fail_after(30):
        async with env.runtime(agents=agents, auth={"verify-key": SECRET}) as rt:
            handle = await rt.ensure_session(session_key="a", agent="mock")
            assert output(await run(rt, handle, "hi")) == "hi"
            session = rt._sessions["a"]
            assert session.auth_method == "verify-key"


async def test_authenticate_with_owner_env_credential(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACPX_AUTH_VERIFY_KEY", SECRET)
    with trio.fail_after(30):
        async with env.runtime(agents=_mock("--require-auth", "verify-key")) as rt:
            handle = await rt.ensure_session(session_key="a", agent="mock")
            assert output(await run(rt, handle, "hi")) == "hi"


async def test_auth_required_lists_methods_and_env_names(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(agents=_mock("--require-auth", "verify-key")) as rt:
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key="a", agent="mock")
    err = info.value
    assert err.code == "ACP_AUTH_REQUIRED"
    assert "verify-key" in err.message and "VERIFY_KEY" in err.message
    assert "ACPX_AUTH_VERIFY_KEY" in err.message
    assert err.rpc_code == -32000


async def test_auth_policy_fail_refuses_without_credential(env: RuntimeEnv) -> None:
    log = env.root / "methods.log"
    agents = _mock("--require-auth", "verify-key", "--method-log", str(log))
    with trio.fail_after(30):
        async with env.runtime(agents=agents, authPolicy="fail") as rt:
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key="a", agent="mock")
    assert info.value.code == "ACP_AUTH_REQUIRED"
    assert "VERIFY_KEY" in info.value.message
    assert log.read_text().split() == ["initialize"]  # refused before any session call


async def test_credentials_never_persisted_or_logged(
    env: RuntimeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agents = _mock("--require-auth", "verify-key")
    with trio.fail_after(30):
        async with env.runtime(agents=agents, auth={"verify-key": SECRET}) as rt:
            handle = await rt.ensure_session(session_key="a", agent="mock")
            events = await run(rt, handle, "/error-data boom")
            encoded = b"".join(msgspec.json.encode(e) for e in events)
            status = msgspec.json.encode(await rt.get_status(handle=handle))
    assert SECRET.encode() not in encoded + status
    assert SECRET not in caplog.text
    for path in env.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


async def test_prompt_error_carries_rpc_code_data_and_detail(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(agents=_mock()) as rt:
            handle = await rt.ensure_session(session_key="a", agent="mock")
            events = await run(rt, handle, "/error-data Claude Code process exited with code 1")
    final = events[-1]
    assert isinstance(final, ErrorEvent)
    assert final.code == "ACP_TURN_FAILED"
    assert final.rpc_code == -32603
    assert final.rpc_data == {"details": "Claude Code process exited with code 1"}
    assert final.detail == "Claude Code process exited with code 1"
    assert "-32603: Internal error: Claude Code process exited with code 1" in final.message


async def test_setup_error_carries_detail(env: RuntimeEnv) -> None:
    agents = _mock("--error-data", "Claude Code process exited with code 1")
    with trio.fail_after(30):
        async with env.runtime(agents=agents) as rt:
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key="a", agent="mock")
    err = info.value
    assert err.code == "ACP_SESSION_INIT_FAILED"
    assert err.rpc_code == -32603 and err.detail == "Claude Code process exited with code 1"
    assert "Internal error: Claude Code process exited with code 1" in err.message
    event = ErrorEvent.from_error(err)
    assert event.detail == err.detail and event.rpc_code == -32603


def test_error_event_is_backward_compatible() -> None:
    old = b'{"type":"error","message":"m","code":"C"}'
    event = msgspec.json.decode(old, type=ErrorEvent)
    assert event.rpc_code is None and event.rpc_data is None and event.detail is None


async def test_stderr_tail_is_redacted(tmp_path: Path, env: RuntimeEnv) -> None:
    script = tmp_path / "leaky.sh"
    script.write_text(
        f"#!/bin/sh\necho \"token: {SECRET}\" >&2\n"
        "echo OPENAI_API_KEY=sk-abcdefghijklmnopqrst >&2\nexit 3\n"
    )
    script.chmod(0o755)
    with trio.fail_after(30):
        async with env.runtime(agents={"leaky": {"command": str(script)}}) as rt:
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key="a", agent="leaky")
    text = str(info.value) + (info.value.detail or "")
    assert SECRET not in text and "sk-abcdefghijklmnopqrst" not in text
    assert "[redacted]" in text
    assert os.environ.get("VERIFY_KEY") is None


async def test_credential_reaches_agent_env_under_upper_snake(env: RuntimeEnv) -> None:
    agents = _mock()
    with trio.fail_after(30):
        async with env.runtime(agents=agents, auth={"verify-key": SECRET}) as rt:
            handle = await rt.ensure_session(session_key="a", agent="mock")
            assert output(await run(rt, handle, "/env VERIFY_KEY")) == (
                f"VERIFY_KEY=set({len(SECRET)})")


async def test_codex_home_is_created_private_and_given_to_codex(env: RuntimeEnv) -> None:
    home = env.root / "codex-home"
    agents = {"codex": {"command": MOCK[0], "args": MOCK[1:]}, **_mock()}
    with trio.fail_after(30):
        async with env.runtime(agents=agents, codexHome=str(home)) as rt:
            codex = await rt.ensure_session(session_key="c", agent="codex")
            assert output(await run(rt, codex, "/env-path CODEX_HOME")) == f"CODEX_HOME={home}"
            other = await rt.ensure_session(session_key="m", agent="mock")
            assert output(await run(rt, other, "/env-path CODEX_HOME")) == (
                f"CODEX_HOME={os.environ.get('CODEX_HOME', '')}")
    assert home.is_dir() and (home.stat().st_mode & 0o777) == 0o700


async def test_prompt_answered_auth_required_is_typed(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(agents=_mock("--auth-methods")) as rt:
            handle = await rt.ensure_session(session_key="a", agent="mock")
            events = await run(rt, handle, "/auth-required")
    final = events[-1]
    assert isinstance(final, ErrorEvent) and final.code == "ACP_AUTH_REQUIRED"
    assert final.rpc_code == -32000
    assert "mock-login" in final.message and "ACPX_AUTH_MOCK_LOGIN" in final.message
