"""Prompt turns of the mock agent: the echo and the ``/directive`` fault injections.

Each turn runs in its own thread.  It returns the stop reason to answer with, or None for no
answer at all (``/close-stdout``).  Directives check for cancellation wherever they wait.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from acpx_trio.testing._mock_state import AgentCore, TurnCtl, TurnCtx
from acpx_trio.testing._mock_terminals import (
    cancel_request,
    terminal,
    terminal_hold,
    terminal_kill,
    terminal_kill_now,
    terminal_limit,
    terminal_strict,
)
from acpx_trio.testing._mock_wire import (
    Chunk,
    PermissionOption,
    PermissionParams,
    PermissionResult,
    PermissionToolCall,
    ReadParams,
    ReadResult,
    RpcFailure,
    SessionRecord,
    StopResult,
    Text,
    ToolCallStart,
    ToolCallUpdate,
    ToolContent,
    Turn,
    WriteParams,
)

__all__ = ["run_turn"]

_BATCH = 256
_FLOOD_BATCH = 64
_SLEEP_FOREVER = "import time\nwhile True: time.sleep(3600)\n"
_DAEMON = (
    "import os, time\n"
    "pid = os.fork()\n"
    "if pid:\n"
    "    os.write(1, b'%d\\n' % pid)\n"
    "    os._exit(0)\n"
    "fd = os.open(os.devnull, os.O_RDWR)\n"
    "for n in (0, 1, 2):\n"
    "    os.dup2(fd, n)\n"
    "while True:\n"
    "    time.sleep(3600)\n"
)


def _sleep(t: TurnCtx, arg: str) -> str | None:
    ms = int(arg.split()[0])
    if t.ctl.cancelled.wait(ms / 1000):
        return "cancelled"
    t.say(f"slept {ms} ms")
    return "end_turn"


def _chunks(t: TurnCtx, arg: str) -> str | None:
    return t.stream("chunk", int(arg.split()[0]), _BATCH)


def _split(t: TurnCtx, arg: str) -> str | None:
    """``/split N,M,... TEXT``: TEXT streamed as reply chunks cut at those offsets (and as
    thought chunks the same way), as real agents stream (a credential in pieces)."""
    cuts_text, _, text = arg.partition(" ")
    cuts = sorted({int(c) for c in cuts_text.split(",") if c.strip()} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    for kind in ("agent_thought_chunk", "agent_message_chunk"):
        for piece in pieces:
            t.say(piece, kind)
    return "end_turn"


def _tool_key(t: TurnCtx, arg: str) -> str | None:
    """``/tool-key KEY``: a tool call whose raw input and output use KEY as an object key."""
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    start = ToolCallStart(tool_call_id=call_id, title="mock tool", kind="read",
                          status="pending", raw_input={arg: "value"})
    done = ToolCallUpdate(tool_call_id=call_id, status="completed", raw_output={arg: 1})
    t.agent.send(t.update(start), t.update(done))
    return "end_turn"


def _elicit(t: TurnCtx, arg: str) -> str | None:
    """``/elicit form MESSAGE`` (a one-field form: ``choice`` in a/b) or ``/elicit url URL``:
    ``elicitation/create``, then says what came back; with ``url`` it also sends
    ``elicitation/complete``."""
    mode, _, rest = arg.partition(" ")
    params: dict[str, Any] = {"sessionId": t.sid, "mode": mode}
    if mode == "url":
        params.update(url=rest, elicitationId="mock-elicit-1", message="please sign in")
    else:
        params.update(message=rest, requestedSchema={
            "type": "object", "required": ["choice"],
            "properties": {"choice": {"type": "string", "enum": ["a", "b"]}}})
    status, raw = t.agent.call(t.ctl, "elicitation/create", params)
    if status == "cancelled":
        return "cancelled"
    if status == "error":
        code = msgspec.json.decode(raw or b"{}").get("code")
        t.say(f"elicitation: error {code}")
        return "end_turn"
    answer = msgspec.json.decode(raw or b"{}")
    if mode == "url":
        t.agent.send(t.update_raw("elicitation/complete", {"elicitationId": "mock-elicit-1"}))
    content = answer.get("content")
    t.say(f"elicitation: {answer.get('action')}"
          + (f" {msgspec.json.encode(content).decode()}" if content is not None else ""))
    return "end_turn"


def _mcp(t: TurnCtx, arg: str) -> str | None:
    """``/mcp``: the MCP servers the session was given (``name:type``, comma-separated).
    ``/mcp given``: each server whole as JSON, env and header values included, streamed in
    3-character pieces (an agent that repeats the credentials it was handed)."""
    if arg.strip() != "given":
        t.say(",".join(t.record.mcp) or "none")
        return "end_turn"
    text = "\n".join(t.record.mcp_given) or "none"
    for start in range(0, len(text), 3):
        t.say(text[start:start + 3])
    return "end_turn"


def _meta(t: TurnCtx, arg: str) -> str | None:
    """``/meta``: the prompt's ``_meta`` as JSON (``null`` when it had none)."""
    t.say(msgspec.json.encode(t.agent.prompt_meta).decode())
    return "end_turn"


def _flood(t: TurnCtx, arg: str) -> str | None:
    return t.stream("flood", int(arg.split()[0]), _FLOOD_BATCH)


def _think(t: TurnCtx, arg: str) -> str | None:
    t.say(arg, "agent_thought_chunk")
    t.say(arg)
    return "end_turn"


def _tool(t: TurnCtx, arg: str) -> str | None:
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    start = ToolCallStart(
        tool_call_id=call_id,
        title="mock tool: read README.md",
        kind="read",
        status="pending",
        raw_input={"path": "README.md"},
    )
    done = ToolCallUpdate(
        tool_call_id=call_id,
        status="completed",
        content=[ToolContent(type="content", content=Text(type="text", text="mock tool output"))],
        raw_output={"ok": True},
    )
    t.agent.send(t.update(start), t.update(done))
    return "end_turn"


def _crash(t: TurnCtx, arg: str) -> str | None:
    t.say("crashing")
    t.agent.log("/crash: exiting with status 1 mid-turn")
    t.agent.exit(1)
    return None


def _garbage(t: TurnCtx, arg: str) -> str | None:
    t.agent.write_raw(b"mock agent says hello: this line is not JSON\n")
    t.say(arg or "garbage")
    return "end_turn"


def _huge(t: TurnCtx, arg: str) -> str | None:
    """``/huge BYTES [COUNT]``: COUNT (default 1) message chunks, each a line of BYTES."""
    size, count = (int(word) for word in [*arg.split(), "1"][:2])
    encoder = msgspec.json.Encoder()
    overhead = len(encoder.encode(t.update(Chunk.make("agent_message_chunk", ""))))
    message = t.update(Chunk.make("agent_message_chunk", "x" * max(0, size - overhead)))
    line = encoder.encode(message) + b"\n"
    for _ in range(count):
        t.agent.write_raw(line)
        t.said.append(f"<{size} bytes>")
    return "end_turn"


def _close_stdout(t: TurnCtx, arg: str) -> str | None:
    t.agent.log("/close-stdout: closing stdout, still reading stdin")
    t.agent.close_stdout()
    return None


def _spawn_grandchild(t: TurnCtx, arg: str) -> str | None:
    child = subprocess.Popen(
        [sys.executable, "-c", _SLEEP_FOREVER],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t.agent.children.append(child)  # keep a reference: no "still running" warning
    t.say(f"grandchild pid={child.pid}")
    return "end_turn"


def _daemonize(t: TurnCtx, arg: str) -> str | None:
    with subprocess.Popen(
        [sys.executable, "-c", _DAEMON],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    ) as helper:
        assert helper.stdout is not None
        pid = int(helper.stdout.readline())
    t.say(f"daemon pid={pid}")
    return "end_turn"


def _permission(t: TurnCtx, arg: str) -> str | None:
    kind = arg.split()[0] if arg.split() else "execute"
    params = PermissionParams(
        session_id=t.sid,
        tool_call=PermissionToolCall(
            tool_call_id=f"perm_{uuid.uuid4().hex[:12]}",
            title=f"mock {kind} action",
            kind=kind,
            status="pending",
            raw_input={"kind": kind},
        ),
        options=[
            PermissionOption(option_id="allow", name="Allow once", kind="allow_once"),
            PermissionOption(option_id="reject", name="Reject once", kind="reject_once"),
        ],
    )
    status, raw = t.agent.call(t.ctl, "session/request_permission", params)
    if status == "cancelled":
        return "cancelled"
    if status == "error":
        t.report_error(raw)
    else:
        outcome = msgspec.json.decode(raw or b"null", type=PermissionResult).outcome
        if outcome.get("outcome") == "selected":
            t.say(f"permission outcome=selected:{outcome.get('optionId')}")
        else:
            t.say(f"permission outcome={outcome.get('outcome')}")
    return "cancelled" if t.cancelled else "end_turn"


def _read(t: TurnCtx, arg: str) -> str | None:
    status, raw = t.agent.call(t.ctl, "fs/read_text_file", ReadParams(session_id=t.sid, path=arg))
    if status == "cancelled":
        return "cancelled"
    if status == "error":
        t.report_error(raw)
    else:
        t.say(msgspec.json.decode(raw or b"null", type=ReadResult).content)
    return "end_turn"


def _write(t: TurnCtx, arg: str) -> str | None:
    path, _, content = arg.partition(" ")
    params = WriteParams(session_id=t.sid, path=path, content=content)
    status, raw = t.agent.call(t.ctl, "fs/write_text_file", params)
    if status == "cancelled":
        return "cancelled"
    if status == "error":
        t.report_error(raw)
    else:
        t.say(f"wrote {path}")
    return "end_turn"


#: What ``/report`` sends: one of each structured update kind, with known values.
REPORT_UPDATES: tuple[dict[str, object], ...] = (
    {"sessionUpdate": "plan", "entries": [
        {"content": "read the code", "priority": "high", "status": "completed"},
        {"content": "write the fix", "priority": "medium", "status": "in_progress"},
    ]},
    {"sessionUpdate": "usage_update", "used": 1200, "size": 200000,
     "cost": {"amount": 0.25, "currency": "USD"}},
    {"sessionUpdate": "available_commands_update", "availableCommands": [
        {"name": "web", "description": "Search the web", "input": {"hint": "query"}},
        {"name": "test", "description": "Run the tests"},
    ]},
    {"sessionUpdate": "session_info_update", "title": "Mock report",
     "updatedAt": "2026-01-01T00:00:00Z"},
)
REPORT_USAGE: dict[str, object] = {
    "totalTokens": 150, "inputTokens": 100, "outputTokens": 40, "thoughtTokens": 10,
    "cachedReadTokens": 5,
}


def _report(t: TurnCtx, arg: str) -> str | None:
    """``/report``: a plan, usage with cost, available commands and session info, then a
    prompt answer carrying ``usage`` (``/report bad``: malformed entries and fields mixed in)."""
    updates: list[object] = list(REPORT_UPDATES)
    usage: dict[str, object] = dict(REPORT_USAGE)
    if arg == "bad":
        updates.insert(0, {"sessionUpdate": "plan", "entries": [{"content": 7}]})
        usage["outputTokens"] = "many"
    t.agent.send(*(t.update(u) for u in updates))
    t.say("reported")
    t.usage = usage
    return "end_turn"


def _cost(t: TurnCtx, arg: str) -> str | None:
    """``/cost NUMBER``: a ``usage_update`` whose cost amount is NUMBER, written as it is given
    (a JSON number of any length or form: what an agent may round-trip a credential as)."""
    amount = arg.strip()
    msgspec.json.decode(amount, type=int | float)  # a directive typo fails here, not the wire
    t.agent.send(t.update({"sessionUpdate": "usage_update", "used": 1, "size": 2,
                           "cost": {"amount": msgspec.Raw(amount.encode()), "currency": "USD"}}))
    t.say("costed")
    return "end_turn"


def _mode(t: TurnCtx, arg: str) -> str | None:
    t.say(f"mode={t.record.mode_id}")
    return "end_turn"


def _model(t: TurnCtx, arg: str) -> str | None:
    t.say(f"model={t.record.model}")
    return "end_turn"


def _history(t: TurnCtx, arg: str) -> str | None:
    t.say(f"history turns={len(t.record.turns)}")
    return "end_turn"


def _pid(t: TurnCtx, arg: str) -> str | None:
    t.say(f"pid={os.getpid()}")
    return "end_turn"


def _env(t: TurnCtx, arg: str) -> str | None:
    """``/env NAME``: whether NAME is set in the agent's environment (never its value)."""
    value = os.environ.get(arg)
    t.say(f"{arg}={'unset' if value is None else f'set({len(value)})'}")
    return "end_turn"


def _env_path(t: TurnCtx, arg: str) -> str | None:
    """``/env-path NAME``: the value of a path-valued variable (e.g. ``CODEX_HOME``)."""
    t.say(f"{arg}={os.environ.get(arg, '')}")
    return "end_turn"


def _error_data(t: TurnCtx, arg: str) -> str | None:
    raise RpcFailure(-32603, "Internal error", {"details": arg or "mock failure details"})


def _client_caps(t: TurnCtx, arg: str) -> str | None:
    """``/client-caps``: the client capabilities ``initialize`` advertised, as JSON."""
    t.say(msgspec.json.encode(t.agent.client_caps).decode())
    return "end_turn"


def _invalid_params(t: TurnCtx, arg: str) -> str | None:
    """``/invalid-params FIELD``: -32602 with pydantic-style data, as the official SDK answers
    a request missing FIELD (``Field required``)."""
    field = arg or "sessionId"
    raise RpcFailure(-32602, "Invalid params", [
        {"type": "missing", "loc": [field], "msg": "Field required", "input": {}},
    ])


def _stall_meta_error(t: TurnCtx, arg: str) -> str | None:
    """``/stall-meta-error TEXT``: as codex-acp 1.x offline — report TEXT only in a
    ``session_info_update`` with an empty title and ``_meta.codex.error`` (and on stderr),
    then never end the turn (until cancelled)."""
    error = arg or "stream disconnected before completion"
    info = {"sessionUpdate": "session_info_update", "title": "",
            "_meta": {"codex": {"error": error}}}
    t.agent.send(t.update(info))
    t.agent.log(f"ERROR codex_core: {error}")
    t.ctl.cancelled.wait()
    return "cancelled"


def _auth_required(t: TurnCtx, arg: str) -> str | None:
    raise RpcFailure(-32000, "Authentication required")


DIRECTIVES: dict[str, Callable[[TurnCtx, str], str | None]] = {
    "/auth-required": _auth_required,
    "/stall-meta-error": _stall_meta_error,
    "/invalid-params": _invalid_params,
    "/client-caps": _client_caps,
    "/terminal": terminal,
    "/terminal-limit": terminal_limit,
    "/terminal-strict": terminal_strict,
    "/terminal-kill": terminal_kill,
    "/terminal-kill-now": terminal_kill_now,
    "/terminal-hold": terminal_hold,
    "/cancel-request": cancel_request,
    "/error-data": _error_data,
    "/env": _env,
    "/env-path": _env_path,
    "/sleep": _sleep,
    "/chunks": _chunks,
    "/split": _split,
    "/meta": _meta,
    "/mcp": _mcp,
    "/elicit": _elicit,
    "/tool-key": _tool_key,
    "/flood": _flood,
    "/think": _think,
    "/tool": _tool,
    "/crash": _crash,
    "/garbage": _garbage,
    "/huge": _huge,
    "/close-stdout": _close_stdout,
    "/spawn-grandchild": _spawn_grandchild,
    "/daemonize": _daemonize,
    "/permission": _permission,
    "/read": _read,
    "/write": _write,
    "/mode": _mode,
    "/report": _report,
    "/cost": _cost,
    "/model": _model,
    "/history": _history,
    "/pid": _pid,
}
"""``/hang`` is handled before a turn starts: it never gets a thread or an answer."""


def run_turn(
    agent: AgentCore, ctl: TurnCtl, record: SessionRecord, req_id: int | str, text: str
) -> None:
    """Runs one prompt turn and answers ``session/prompt`` (unless the directive says not to).

    A failing directive (bad argument, OS error) is reported as ``error: ...`` text and the
    turn still ends with ``end_turn``, like acpx's mock agent."""
    turn = TurnCtx(agent, ctl, record)
    head, _, rest = text.strip().partition(" ")
    directive = DIRECTIVES.get(head)
    try:
        stop = _echo(turn, text) if directive is None else directive(turn, rest.strip())
    except RpcFailure as exc:  # answer the prompt with this JSON-RPC error
        agent.finish_turn(ctl, record)
        agent.respond_error(req_id, exc.code, exc.message, exc.data)
        return
    except Exception as exc:
        agent.log(f"turn failed: {exc!r}")
        turn.say(f"error: {exc}")
        stop = "end_turn"
    agent.finish_turn(ctl, record)
    if stop is None:
        return
    if stop == "cancelled" and agent.args.cancel_stop_reason:  # a non-compliant agent
        stop = agent.args.cancel_stop_reason
    if stop == "end_turn":
        with agent.state_lock:
            record.turns.append(Turn(user=text, agent="".join(turn.said)))
        agent.save(record)
    agent.respond(req_id, StopResult(stop_reason=stop, usage=turn.usage))


def _echo(t: TurnCtx, text: str) -> str:
    t.say(text)
    return "end_turn"
