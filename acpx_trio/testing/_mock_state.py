"""Shared state of the mock agent: the agent core (state, output, persistence, agent->client
calls), a turn's control and a directive's context.  Standard library and msgspec only; the
modules of the mock agent import this one, it imports none of them."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import sys
import threading
from typing import Any

import msgspec
from msgspec import UNSET, Raw

from acpx_trio.testing._mock_wire import (
    Chunk,
    Msg,
    RpcErr,
    RpcFailure,
    SessionRecord,
    SessionResult,
    UpdateParams,
    config_options,
    legacy_models,
    modes_state,
)

__all__ = ["AgentCore", "TurnCtl", "TurnCtx"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")


class _Call:
    """An agent->client request waiting for the client's answer."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: Raw | None = None
        self.error: Raw | None = None


class TurnCtl:
    """A running prompt turn; ``cancel()`` also wakes its waiting agent->client requests."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.calls: list[_Call] = []

    def cancel(self) -> None:
        self.cancelled.set()
        for call in list(self.calls):
            call.event.set()


class AgentCore:
    """The mock agent's state, output, persistence and agent->client calls (the ACP
    methods and the input loop are :class:`acpx_trio.testing.mock_agent.MockAgent`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.encoder = msgspec.json.Encoder()
        self.write_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.stdout_closed = False
        self.sessions: dict[str, SessionRecord] = {}
        self.active: dict[str, TurnCtl] = {}
        self.calls: dict[int, _Call] = {}
        self.next_call_id = 0
        self.children: list[Any] = []
        self.session_dir: str | None = args.session_dir or os.environ.get(
            "ACPX_MOCK_AGENT_SESSION_DIR"
        )
        self.authenticated = args.require_auth is None
        #: the ``_meta`` of the last ``session/prompt`` (``/meta`` reports it)
        self.prompt_meta: dict[str, Any] | None = None
        #: The client's ``initialize`` capabilities as sent (for ``/client-caps``).
        self.client_caps: Any = None

    # ------------------------------------------------------------------ output

    def log(self, text: str) -> None:
        # The client may be gone (its end of stderr closed): logging must never kill us, or
        # --ignore-stdin-eof would not keep running as documented.
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"[mock-agent {os.getpid()}] {text}\n")
            sys.stderr.flush()

    def write_raw(self, data: bytes) -> None:
        with self.write_lock:
            if self.stdout_closed:
                return
            view = memoryview(data)
            try:
                while view:
                    try:
                        view = view[os.write(1, view) :]
                    except BlockingIOError:
                        select.select([], [1], [])
            except OSError as exc:
                self.stdout_closed = True
                self.log(f"stdout is gone ({exc}); dropping output")

    def send(self, *messages: Msg) -> None:
        buf = bytearray()
        for message in messages:
            self.encoder.encode_into(message, buf, len(buf))
            buf += b"\n"
        self.write_raw(bytes(buf))

    def respond(self, req_id: int | str, result: Any) -> None:
        self.send(Msg(id=req_id, result=result))

    def respond_error(self, req_id: int | str, code: int, message: str, data: Any = None) -> None:
        self.send(Msg(id=req_id, error=RpcErr(code=code, message=message, data=data)))

    def update_msg(self, session_id: str, update: Any) -> Msg:
        return Msg(
            method="session/update", params=UpdateParams(session_id=session_id, update=update)
        )

    def chunk(self, session_id: str, text: str, kind: str = "agent_message_chunk") -> None:
        self.send(self.update_msg(session_id, Chunk.make(kind, text)))

    def close_stdout(self) -> None:
        with self.write_lock:
            if not self.stdout_closed:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)
                self.stdout_closed = True

    # ------------------------------------------------------------------ persistence

    def _path(self, session_id: str) -> str | None:
        if not self.session_dir or not _SAFE_ID.match(session_id):
            return None
        return os.path.join(self.session_dir, f"{session_id}.json")

    def save(self, record: SessionRecord) -> None:
        path = self._path(record.session_id)
        if path is None:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(record))
        os.replace(tmp, path)

    def load_record(self, session_id: str) -> SessionRecord | None:
        with self.state_lock:
            record = self.sessions.get(session_id)
        if record is not None:
            return record
        path = self._path(session_id)
        if path is None or not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as f:
                return msgspec.json.decode(f.read(), type=SessionRecord)
        except (OSError, msgspec.DecodeError) as exc:
            self.log(f"cannot read session file {path}: {exc}")
            return None

    def session(self, session_id: str) -> SessionRecord:
        with self.state_lock:
            record = self.sessions.get(session_id)
        if record is None:
            raise RpcFailure(-32002, f"Session not found: {session_id}")
        return record

    def exit(self, status: int) -> None:
        self.write_lock.acquire(timeout=0.5)  # do not cut a message in half (unless stuck)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os._exit(status)

    def session_state(self, record: SessionRecord, *, new: bool = False) -> SessionResult:
        if self.args.legacy_models:  # models the old way: no model config option
            return SessionResult(
                session_id=record.session_id if new else UNSET,
                modes=modes_state(record.mode_id), config_options=[],
                models=legacy_models(record.model))
        return SessionResult(
            session_id=record.session_id if new else UNSET,
            modes=modes_state(record.mode_id),
            config_options=config_options(record.model),
        )

    # ------------------------------------------------------------------ agent -> client

    def call(self, ctl: TurnCtl, method: str, params: Any) -> tuple[str, Raw | None]:
        """Sends a request; returns ("result"|"error", raw) or ("cancelled", None)."""
        call = _Call()
        with self.state_lock:
            call_id = self.next_call_id
            self.next_call_id += 1
            self.calls[call_id] = call
        ctl.calls.append(call)
        if ctl.cancelled.is_set():  # cancelled before we were registered
            call.event.set()
        self.send(Msg(id=call_id, method=method, params=params))
        call.event.wait()
        ctl.calls.remove(call)
        if call.result is None and call.error is None:
            with self.state_lock:
                self.calls.pop(call_id, None)
            return "cancelled", None
        return ("error", call.error) if call.error is not None else ("result", call.result)

    def finish_turn(self, ctl: TurnCtl, record: SessionRecord) -> None:
        with self.state_lock:
            if self.active.get(record.session_id) is ctl:
                del self.active[record.session_id]


class TurnCtx:
    """What a directive works with: the agent, the turn's control and its session."""

    def __init__(self, agent: AgentCore, ctl: TurnCtl, record: SessionRecord) -> None:
        self.agent = agent
        self.ctl = ctl
        self.record = record
        self.sid = record.session_id
        self.said: list[str] = []
        #: ``PromptResponse.usage`` to answer with (``None``: no usage field).
        self.usage: dict[str, object] | None = None

    @property
    def cancelled(self) -> bool:
        return self.ctl.cancelled.is_set()

    def say(self, text: str, kind: str = "agent_message_chunk") -> None:
        self.agent.chunk(self.sid, text, kind)
        if kind == "agent_message_chunk":
            self.said.append(text)

    def update(self, update: object) -> Msg:
        return Msg(method="session/update", params=UpdateParams(session_id=self.sid, update=update))

    def update_raw(self, method: str, params: Any) -> Msg:
        """A notification of any ``method`` (e.g. ``elicitation/complete``)."""
        return Msg(method=method, params=params)

    def stream(self, prefix: str, count: int, batch: int) -> str:
        for start in range(0, count, batch):
            if self.cancelled:
                return "cancelled"
            texts = [f"{prefix} {i}\n" for i in range(start, min(start + batch, count))]
            self.agent.send(*(self.update(Chunk.make("agent_message_chunk", t)) for t in texts))
            self.said.extend(texts)
        return "end_turn"

    def report_error(self, raw: msgspec.Raw | None) -> None:
        try:
            err = msgspec.json.decode(raw or b"null", type=RpcErr)
            self.say(f"error: {err.code} {err.message}")
        except msgspec.ValidationError:
            self.say(f"error: {bytes(raw or b'')!r}")
