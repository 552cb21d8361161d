"""``session/resume`` and ``session/close`` of the mock agent, and its UPPER_SNAKE."""

from __future__ import annotations

import re

import msgspec
from msgspec import Raw

from acpx_trio.testing._mock_state import AgentCore
from acpx_trio.testing._mock_wire import Empty, Params, RpcFailure

__all__ = ["env_name", "on_close", "on_resume"]


def env_name(method_id: str) -> str:
    """``verify-key`` -> ``VERIFY_KEY`` (the mock's own UPPER_SNAKE)."""
    out = []
    for i, ch in enumerate(method_id):
        if ch.isupper() and i and method_id[i - 1].islower():
            out.append("_")
        out.append(ch.upper() if ch.isalnum() else "_")
    return re.sub("_+", "_", "".join(out)).strip("_")


def on_resume(self: AgentCore, req_id: int | str, params: Raw) -> None:
    """``session/resume`` (``--resume``): like load, without replay."""
    if not self.args.resume:
        raise RpcFailure(-32601, "Method not found: session/resume")
    p = msgspec.json.decode(params, type=Params)
    if self.args.resume_fails:
        raise RpcFailure(-32603, "Internal error", {"details": "resume needs a live session"})
    record = self.load_record(p.session_id)
    if record is None:
        message = self.args.unknown_session_message or f"Session not found: {p.session_id}"
        raise RpcFailure(-32603 if self.args.unknown_session_message else -32002, message)
    if p.cwd:
        record.cwd = p.cwd
    with self.state_lock:
        self.sessions[record.session_id] = record
    self.respond(req_id, self.session_state(record))


def on_close(self: AgentCore, req_id: int | str, params: Raw) -> None:
    """``session/close`` (``--close``): cancel its turn and forget the session."""
    if not self.args.close:
        raise RpcFailure(-32601, "Method not found: session/close")
    p = msgspec.json.decode(params, type=Params)
    with self.state_lock:
        ctl = self.active.pop(p.session_id, None)
        self.sessions.pop(p.session_id, None)
    if ctl is not None:
        ctl.cancel()
    self.respond(req_id, Empty())
