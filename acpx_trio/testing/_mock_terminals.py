"""Terminal directives of the mock agent: they drive the client's ``terminal/*`` methods.

``/terminal CMD``, ``/terminal-limit N CMD``, ``/terminal-kill CMD``,
``/terminal-kill-now N CMD``, ``/terminal-hold CMD`` (see
:mod:`acpx_trio.testing.mock_agent`).  Commands run through ``/bin/sh -c``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import msgspec

from acpx_trio.testing._mock_state import TurnCtx, _Call
from acpx_trio.testing._mock_wire import (
    Empty,
    Msg,
    RpcErr,
    RpcFailure,
    TermCreated,
    TermCreateParams,
    TermEnv,
    TermExit,
    TermOutput,
    TermRef,
)

__all__ = ["cancel_request", "terminal", "terminal_hold", "terminal_kill", "terminal_kill_now",
           "terminal_limit", "terminal_strict"]

_T = TypeVar("_T")


class _Stop(Exception):
    """A terminal call failed or the turn was cancelled (already reported)."""


def _term_call(t: TurnCtx, method: str, params: object, result_type: type[_T]) -> _T:
    status, raw = t.agent.call(t.ctl, method, params)
    if status == "cancelled":
        raise _Stop("cancelled")
    if status == "error":
        t.report_error(raw)
        raise _Stop("end_turn")
    return msgspec.json.decode(raw or b"{}", type=result_type)


def _term_create(t: TurnCtx, cmd: str, limit: int | None = None) -> str:
    params = TermCreateParams(
        session_id=t.sid, command="/bin/sh", args=["-c", cmd],
        env=[TermEnv(name="MOCK_TERMINAL", value="1")], output_byte_limit=limit,
    )
    return _term_call(t, "terminal/create", params, TermCreated).terminal_id


def _term_output(t: TurnCtx, tid: str) -> TermOutput:
    return _term_call(t, "terminal/output", TermRef(session_id=t.sid, terminal_id=tid),
                      TermOutput)


def _term_first_output(t: TurnCtx, tid: str) -> TermOutput:
    """Poll ``terminal/output`` until the command printed something (or the turn ends)."""
    while True:
        out = _term_output(t, tid)
        if out.output or out.exit_status is not None:
            return out
        if t.ctl.cancelled.wait(0.02):
            raise _Stop("cancelled")


def _term_simple(t: TurnCtx, method: str, tid: str, result_type: type[_T]) -> _T:
    return _term_call(t, method, TermRef(session_id=t.sid, terminal_id=tid), result_type)


def _exit_text(status: TermExit | None) -> str:
    if status is None:
        return "running"
    return f"exit={status.exit_code}" if status.signal is None else f"signal={status.signal}"


def _terminal_directive(
    body: Callable[[TurnCtx, str], str | None],
) -> Callable[[TurnCtx, str], str | None]:
    def run(t: TurnCtx, arg: str) -> str | None:
        try:
            return body(t, arg)
        except _Stop as stop:
            return "cancelled" if t.cancelled else str(stop)

    return run


@_terminal_directive
def terminal(t: TurnCtx, arg: str) -> str | None:
    """create, output, wait_for_exit, output, release."""
    tid = _term_create(t, arg)
    _term_output(t, tid)
    status = _term_simple(t, "terminal/wait_for_exit", tid, TermExit)
    out = _term_output(t, tid)
    _term_simple(t, "terminal/release", tid, Empty)
    t.say(f"{_exit_text(status)} truncated={out.truncated} output={out.output}")
    return "end_turn"


@_terminal_directive
def terminal_strict(t: TurnCtx, arg: str) -> str | None:
    """``/terminal-strict CMD``: like ``/terminal``, but a refused ``terminal/create`` makes
    the agent answer the prompt with an error (as some real agents do) instead of reporting
    it in its reply."""
    params = TermCreateParams(session_id=t.sid, command="/bin/sh", args=["-c", arg])
    status, raw = t.agent.call(t.ctl, "terminal/create", params)
    if status == "cancelled":
        return "cancelled"
    if status == "error":
        err = msgspec.json.decode(raw or b"null", type=RpcErr)
        raise RpcFailure(-32603, f"tool failed: {err.message}")
    tid = msgspec.json.decode(raw or b"{}", type=TermCreated).terminal_id
    status_ = _term_simple(t, "terminal/wait_for_exit", tid, TermExit)
    out = _term_output(t, tid)
    _term_simple(t, "terminal/release", tid, Empty)
    t.say(f"{_exit_text(status_)} output={out.output}")
    return "end_turn"


@_terminal_directive
def terminal_limit(t: TurnCtx, arg: str) -> str | None:
    """``/terminal-limit N CMD``: like ``/terminal`` with ``outputByteLimit`` N."""
    limit, _, cmd = arg.partition(" ")
    tid = _term_create(t, cmd, int(limit))
    status = _term_simple(t, "terminal/wait_for_exit", tid, TermExit)
    out = _term_output(t, tid)
    _term_simple(t, "terminal/release", tid, Empty)
    t.say(f"{_exit_text(status)} truncated={out.truncated} output={out.output}")
    return "end_turn"


@_terminal_directive
def terminal_kill(t: TurnCtx, arg: str) -> str | None:
    """create, wait for first output, kill, wait_for_exit, output, release."""
    tid = _term_create(t, arg)
    first = _term_first_output(t, tid)
    _term_simple(t, "terminal/kill", tid, Empty)
    status = _term_simple(t, "terminal/wait_for_exit", tid, TermExit)
    out = _term_output(t, tid)
    _term_simple(t, "terminal/release", tid, Empty)
    t.say(f"first={first.output.strip()} {_exit_text(status)} output={out.output.strip()}")
    return "end_turn"


@_terminal_directive
def terminal_kill_now(t: TurnCtx, arg: str) -> str | None:
    """``/terminal-kill-now N CMD``: N times: create, kill at once (no wait for anything),
    wait_for_exit, release; says how each ended."""
    count, _, cmd = arg.partition(" ")
    ends = []
    for _ in range(int(count)):
        tid = _term_create(t, cmd)
        _term_simple(t, "terminal/kill", tid, Empty)
        ends.append(_exit_text(_term_simple(t, "terminal/wait_for_exit", tid, TermExit)))
        _term_simple(t, "terminal/release", tid, Empty)
    t.say(" ".join(ends))
    return "end_turn"


@_terminal_directive
def terminal_hold(t: TurnCtx, arg: str) -> str | None:
    """create, report the first output, then wait for the exit (never released)."""
    tid = _term_create(t, arg)
    first = _term_first_output(t, tid)
    t.say(f"first={first.output.strip()}\n")
    status = _term_simple(t, "terminal/wait_for_exit", tid, TermExit)
    t.say(_exit_text(status))
    return "end_turn"


@_terminal_directive
def cancel_request(t: TurnCtx, arg: str) -> str | None:
    """``/cancel-request CMD``: run CMD in a terminal, ask ``terminal/wait_for_exit``, then
    cancel that request with ``$/cancel_request``; says what the client answered
    (``cancel_request: error -32800`` when it honoured it), then kills and releases."""
    tid = _term_create(t, arg)
    call = _Call()
    with t.agent.state_lock:
        call_id = t.agent.next_call_id
        t.agent.next_call_id += 1
        t.agent.calls[call_id] = call
    t.agent.send(Msg(id=call_id, method="terminal/wait_for_exit",
                     params=TermRef(session_id=t.sid, terminal_id=tid)))
    time.sleep(0.2)  # the client is waiting on the command now
    t.agent.send(Msg(method="$/cancel_request", params={"requestId": call_id}))
    answered = call.event.wait(10)
    if not answered:
        said = "cancel_request: no answer"
    elif call.error is not None:
        code = msgspec.json.decode(call.error, type=RpcErr).code
        said = f"cancel_request: error {code}"
    else:
        said = "cancel_request: result"
    _term_simple(t, "terminal/kill", tid, Empty)
    _term_simple(t, "terminal/release", tid, Empty)
    t.say(said)
    return "end_turn"
