"""Against an agent built on the official Python SDK (optional extra ``agent-client-protocol``;
skipped when it is not installed): authenticate, terminal/*, and error details."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from _runtime_helpers import RuntimeEnv, output, run

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import ErrorEvent

pytest.importorskip("acp", reason="optional test extra agent-client-protocol not installed")

AGENT = {"sdk": {"command": sys.executable,
                 "args": [str(Path(__file__).with_name("_sdk_agent.py"))]}}


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
