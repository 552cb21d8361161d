"""``session/resume`` and ``session/close`` of the mock agent, and its UPPER_SNAKE."""

from __future__ import annotations

import os
import re
from typing import Any

import msgspec
from msgspec import Raw

from acpx_trio.testing._mock_state import AgentCore
from acpx_trio.testing._mock_wire import Empty, Params, RpcFailure

__all__ = ["LIST_PAGE", "env_name", "on_close", "on_delete", "on_list", "on_logout",
           "on_resume"]

#: Sessions per ``session/list`` page (small, so that tests follow the cursor).
LIST_PAGE = 2


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


def on_list(self: AgentCore, req_id: int | str, params: Raw) -> None:
    """``session/list`` (``--list``): the sessions in the session dir (and in memory), by id,
    filtered by ``cwd``, ``LIST_PAGE`` per page; the cursor is the next index.  Each has a
    title (its first prompt) and, with ``--list-junk``, a malformed entry is added per page.
    ``--list-hang``: never answered."""
    if not self.args.list:
        raise RpcFailure(-32601, "Method not found: session/list")
    if self.args.list_hang:
        self.log(f"--list-hang: session/list {req_id!r} will never be answered")
        return
    p = msgspec.json.decode(params, type=Params)
    ids = set(self.sessions)
    if self.session_dir and os.path.isdir(self.session_dir):
        ids.update(n[:-5] for n in os.listdir(self.session_dir) if n.endswith(".json"))
    records = [r for r in map(self.load_record, sorted(ids)) if r is not None]
    if p.cwd:
        records = [r for r in records if r.cwd == p.cwd]
    start = int(p.cursor or 0)
    page = records[start:start + LIST_PAGE]
    entries: list[Any] = [
        {"sessionId": r.session_id, "cwd": r.cwd,
         "title": r.turns[0].user if r.turns else None,
         "updatedAt": "2026-01-01T00:00:00Z"}
        for r in page
    ]
    if self.args.list_junk:
        entries.append({"sessionId": 42, "cwd": []})
    result: dict[str, Any] = {"sessions": entries}
    if start + LIST_PAGE < len(records):
        result["nextCursor"] = str(start + LIST_PAGE)
    self.respond(req_id, result)


def on_delete(self: AgentCore, req_id: int | str, params: Raw) -> None:
    """``session/delete`` (``--delete``): the session leaves memory and the session dir (an
    unknown id succeeds silently, as the spec says)."""
    if not self.args.delete:
        raise RpcFailure(-32601, "Method not found: session/delete")
    p = msgspec.json.decode(params, type=Params)
    with self.state_lock:
        self.sessions.pop(p.session_id, None)
    path = self._path(p.session_id)
    if path is not None and os.path.exists(path):
        os.unlink(path)
    self.respond(req_id, Empty())


def on_logout(self: AgentCore, req_id: int | str, params: Raw) -> None:
    """``logout`` (``--logout``): back to unauthenticated (with ``--require-auth``, the next
    session needs ``authenticate`` again)."""
    if not self.args.logout:
        raise RpcFailure(-32601, "Method not found: logout")
    self.authenticated = self.args.require_auth is None
    self.respond(req_id, Empty())
