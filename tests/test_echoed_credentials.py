"""A credential the agent holds and echoes back in what it advertises (a mode id, a config
option's key and values, a legacy model id, a session title, a permission's title, a terminal's
command) never reaches a session record, an error message, a status, a session listing or a
log line of ours: each is redacted by value, as the turn's events are."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from _runtime_helpers import RuntimeEnv, run

from acpx_trio import AcpRuntimeError

SECRET = "Zq9vXk2mPw7rLt4nHb8c"

#: Advertises modes, options and models named after ``$MY_API_KEY``; lists a session titled
#: with it; a prompt asks a permission titled with it and runs a terminal that echoes it.
_ECHOER = textwrap.dedent("""
    import json, os, sys
    key = os.environ["MY_API_KEY"]
    def say(o):
        sys.stdout.write(json.dumps(o) + "\\n"); sys.stdout.flush()
    sid = "echo-1"
    for line in sys.stdin:
        m = json.loads(line)
        method, rid = m.get("method"), m.get("id")
        if method == "initialize":
            say({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": 1,
                 "agentCapabilities": {"sessionCapabilities": {"list": {}}}, "authMethods": []}})
        elif method == "session/new":
            say({"jsonrpc": "2.0", "id": rid, "result": {"sessionId": sid,
                 "modes": {"currentModeId": "m-" + key,
                           "availableModes": [{"id": "m-" + key, "name": "n"}]},
                 "configOptions": [{"id": "effort", "name": "E", "type": "select",
                                    "currentValue": "v-" + key,
                                    "options": [{"value": "v-" + key, "name": "x"}]},
                                   {"id": "o-" + key, "name": "O", "type": "boolean",
                                    "currentValue": True}],
                 "models": {"currentModelId": "lm-" + key,
                            "availableModels": [{"modelId": "lm-" + key, "name": "n"}]}}})
        elif method == "session/list":
            say({"jsonrpc": "2.0", "id": rid, "result": {"sessions": [
                {"sessionId": sid, "cwd": os.getcwd(), "title": "about " + key}]}})
        elif method == "session/set_mode":
            say({"jsonrpc": "2.0", "id": rid, "result": {}})
        elif method == "session/prompt":
            say({"jsonrpc": "2.0", "id": 900, "method": "session/request_permission",
                 "params": {"sessionId": sid, "toolCall": {"toolCallId": "tc-" + key,
                            "title": "deploy --key " + key},
                            "options": [{"optionId": "a", "name": "ok", "kind": "allow_once"}]}})
            say({"jsonrpc": "2.0", "id": 901, "method": "terminal/create",
                 "params": {"sessionId": sid, "command": "echo", "args": [key]}})
            answered = 0
            for reply in sys.stdin:
                if json.loads(reply).get("id") in (900, 901):
                    answered += 1
                if answered == 2:
                    break
            say({"jsonrpc": "2.0", "id": rid, "result": {"stopReason": "end_turn"}})
""")


@pytest.fixture
def echoer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setenv("MY_API_KEY", SECRET)
    script = tmp_path / "echoer.py"
    script.write_text(_ECHOER)
    return {"echoer": {"command": sys.executable, "args": [str(script)]}}


async def test_what_the_agent_echoes_is_redacted_everywhere_we_keep_or_show_it(
    env: RuntimeEnv, echoer: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="acpx_trio")
    errors: list[str] = []
    async with env.runtime(agents=echoer, permissionMode="approve-all") as rt:
        with trio.fail_after(60):
            handle = await rt.ensure_session(session_key="k", agent="echoer")
            for call in (lambda: rt.set_mode(handle=handle, mode="bogus"),
                         lambda: rt.set_config_option(handle=handle, key="effort",
                                                      value="bogus"),
                         lambda: rt.set_model(handle=handle, model="bogus")):
                with pytest.raises(AcpRuntimeError) as info:
                    await call()
                assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
                errors.append(str(info.value))
            await rt.set_mode(handle=handle, mode=f"m-{SECRET}")
            await run(rt, handle, "go")
            status = await rt.get_status(handle=handle)
            caps = await rt.get_capabilities(handle=handle)
            listed = await rt.list_sessions(agent="echoer")
            await rt.close(handle=handle, reason="done")
    assert all("[redacted]" in e for e in errors), errors
    assert status.current_mode == "m-[redacted]"
    assert "o-[redacted]" in caps.config_option_keys
    shown = [*errors, repr(status), repr(caps), repr(listed), caplog.text]
    assert not [s for s in shown if SECRET in s], shown
    assert "tc-[redacted]" in caplog.text and "echo '[redacted]'" in caplog.text
    kept = [p for p in env.root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not kept, kept
    records = [json.loads(p.read_text()) for p in env.state_dir.rglob("session-*.json")]
    assert records and all(r["current_mode"] == "m-[redacted]" for r in records), records
