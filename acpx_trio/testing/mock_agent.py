"""The bundled ACP v1 agent: ``python -m acpx_trio.testing.mock_agent [flags]``.

It speaks ACP over stdin/stdout (one JSON-RPC message per line) and logs only to stderr.  It
imports only the standard library and msgspec (no Trio, nothing else from acpx-trio), so it
starts fast and is an implementation independent of the client it tests.

A prompt is echoed back unless its text starts with a directive:

``/sleep MS``, ``/chunks N``, ``/think TEXT``, ``/tool``, ``/crash``, ``/hang``, ``/garbage``,
``/huge BYTES``, ``/flood N``, ``/close-stdout``, ``/spawn-grandchild``, ``/daemonize``,
``/permission KIND``, ``/read PATH``, ``/write PATH TEXT``, ``/mode``, ``/history``, ``/pid``.

Terminal directives (client ``terminal/*``, command run through ``/bin/sh -c``):
``/terminal CMD`` (create, output, wait_for_exit, output, release), ``/terminal-limit N CMD``
(with ``outputByteLimit`` N), ``/terminal-kill CMD`` (create, first output, kill,
wait_for_exit, output, release), ``/terminal-hold CMD`` (create, first output, wait for exit;
never released).  ``/error-data TEXT`` answers the prompt with -32603 and ``data.details``;
``/auth-required`` with -32000 "Authentication required".
``/env NAME`` says whether NAME is set (and its length, never the value); ``/env-path NAME``
says its value (for paths such as ``CODEX_HOME``).

Flags: ``--ignore-sigterm``, ``--slow-start MS``, ``--no-load-session``,
``--protocol-version N``, ``--auth-methods``, ``--session-dir DIR`` (or env
``ACPX_MOCK_AGENT_SESSION_DIR``), ``--exit-on-stdin-eof`` (default) / ``--ignore-stdin-eof``,
``--require-auth METHOD`` (advertises METHOD; ``authenticate`` succeeds only when env
``UPPER_SNAKE(METHOD)`` is set; every session call before it gets -32000 "Authentication
required"), ``--error-data TEXT`` (``session/new`` fails with -32603 and ``data.details``),
``--resume`` / ``--close`` (advertise and serve ``session/resume`` / ``session/close``;
``--resume-fails``: resume answers -32603),
``--unknown-session-message TEXT`` (load/resume of an unknown id fail with -32603 TEXT),
``--method-log FILE`` (append each request's method name to FILE),
``--spawn-pid-hopper MARKER``, ``--spawn-scrubbed-child MARKER``, ``--spawn-daemon MARKER``
(escape artists started at launch, see ``acpx_trio.testing._mock_escape``).
Unknown flags exit with status 2.

Guarantees: on stdin EOF it exits at once with status 0 (unless ``--ignore-stdin-eof``), even
mid-turn; ``session/cancel`` (or a new prompt on the same session) ends a running turn with
``stopReason: "cancelled"`` (except ``/hang``); an unknown session gives -32002.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import select
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from acpx_trio.testing._mock_escape import spawn_escapers
from acpx_trio.testing._mock_sessions import env_name, on_close, on_resume
from acpx_trio.testing._mock_turns import run_turn
from acpx_trio.testing._mock_wire import (
    AGENT_NAME,
    AGENT_VERSION,
    MODES,
    AgentCaps,
    AuthMethod,
    Chunk,
    ConfigResult,
    Empty,
    Info,
    InitResult,
    InMsg,
    ModeUpdate,
    Msg,
    Params,
    RpcErr,
    RpcFailure,
    SessionRecord,
    SessionResult,
    UpdateParams,
    config_options,
    modes_state,
)

__all__ = ["main"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
_BATCH = 256


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


class MockAgent:
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

    # ------------------------------------------------------------------ input

    def run(self) -> None:
        stdin = sys.stdin.buffer
        while True:
            line = stdin.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                self.dispatch(line)
            except Exception as exc:  # never die of one bad message
                self.log(f"error handling {line[:200]!r}: {exc!r}")
        self.log("stdin closed")
        if self.args.exit_on_stdin_eof:
            self.exit(0)
        threading.Event().wait()  # --ignore-stdin-eof: keep running until killed

    def exit(self, status: int) -> None:
        self.write_lock.acquire(timeout=0.5)  # do not cut a message in half (unless stuck)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os._exit(status)

    def dispatch(self, line: bytes) -> None:
        try:
            msg = msgspec.json.decode(line, type=InMsg)
        except msgspec.DecodeError as exc:
            self.log(f"skipping non-JSON-RPC input line: {exc}")
            return
        if isinstance(msg.method, UnsetType):
            if not isinstance(msg.id, int):
                return
            with self.state_lock:
                call = self.calls.pop(msg.id, None)
            if call is not None:
                call.result = msg.result if len(msg.result) else None
                call.error = msg.error if len(msg.error) else None
                call.event.set()
            return
        params = msg.params if len(msg.params) else Raw(b"{}")
        if isinstance(msg.id, UnsetType) or msg.id is None:
            if msg.method == "session/cancel":
                sid = msgspec.json.decode(params, type=Params).session_id
                with self.state_lock:
                    ctl = self.active.get(sid)
                if ctl is not None:
                    ctl.cancel()
            return
        req_id = msg.id
        if self.args.method_log:
            with open(self.args.method_log, "a", encoding="utf-8") as log:
                log.write(msg.method + "\n")
        handler = self.handlers().get(msg.method)
        try:
            if not self.authenticated and msg.method.startswith("session/"):
                raise RpcFailure(-32000, "Authentication required")
            if handler is None:
                raise RpcFailure(-32601, f"Method not found: {msg.method}")
            handler(req_id, params)
        except RpcFailure as exc:
            self.respond_error(req_id, exc.code, exc.message, exc.data)
        except msgspec.ValidationError as exc:
            self.respond_error(req_id, -32602, f"Invalid params: {exc}")

    def handlers(self) -> dict[str, Callable[[int | str, Raw], None]]:
        return {
            "initialize": self.on_initialize,
            "authenticate": self.on_authenticate,
            "session/new": self.on_new,
            "session/load": self.on_load,
            "session/resume": functools.partial(on_resume, self),
            "session/close": functools.partial(on_close, self),
            "session/set_mode": self.on_set_mode,
            "session/set_config_option": self.on_set_config,
            "session/prompt": self.on_prompt,
        }

    # ------------------------------------------------------------------ methods

    def on_initialize(self, req_id: int | str, params: Raw) -> None:
        auth = [AuthMethod(id="mock-login", name="Mock login", description="accepts anything")]
        if not self.args.auth_methods:
            auth = []
        if self.args.require_auth:
            method = self.args.require_auth
            auth.append(AuthMethod(id=method, name=f"{method} (env {env_name(method)})",
                                   description="a credential in the environment"))
        session_caps: dict[str, Any] = {}
        if self.args.resume:
            session_caps["resume"] = {}
        if self.args.close:
            session_caps["close"] = {}
        result = InitResult(
            protocol_version=self.args.protocol_version,
            agent_capabilities=AgentCaps(
                load_session=not self.args.no_load_session, session_capabilities=session_caps
            ),
            auth_methods=auth,
            agent_info=Info(name=AGENT_NAME, version=AGENT_VERSION),
        )
        self.respond(req_id, result)

    def on_authenticate(self, req_id: int | str, params: Raw) -> None:
        method_id = msgspec.json.decode(params, type=Params).method_id
        if self.args.require_auth and method_id == self.args.require_auth:
            if not os.environ.get(env_name(method_id)):
                raise RpcFailure(-32000, "Authentication required",
                                 {"methodId": method_id, "reason": "no credential in env"})
            self.authenticated = True
            self.respond(req_id, Empty())
            return
        if not self.args.auth_methods or method_id != "mock-login":
            raise RpcFailure(-32602, f"unknown auth method: {method_id}")
        self.respond(req_id, Empty())

    def session_state(self, record: SessionRecord, *, new: bool = False) -> SessionResult:
        return SessionResult(
            session_id=record.session_id if new else UNSET,
            modes=modes_state(record.mode_id),
            config_options=config_options(record.model),
        )

    def on_new(self, req_id: int | str, params: Raw) -> None:
        p = msgspec.json.decode(params, type=Params)
        if self.args.error_data:
            raise RpcFailure(-32603, "Internal error", {"details": self.args.error_data})
        if not os.path.isabs(p.cwd):
            raise RpcFailure(-32602, f"cwd must be an absolute path, got {p.cwd!r}")
        record = SessionRecord(session_id=str(uuid.uuid4()), cwd=p.cwd)
        with self.state_lock:
            self.sessions[record.session_id] = record
        self.save(record)
        self.respond(req_id, self.session_state(record, new=True))

    def on_load(self, req_id: int | str, params: Raw) -> None:
        if self.args.no_load_session:
            raise RpcFailure(
                -32601, "Method not found: session/load (loadSession is not supported)"
            )
        p = msgspec.json.decode(params, type=Params)
        found = self.load_record(p.session_id)
        if found is None and self.args.unknown_session_message:
            raise RpcFailure(-32603, self.args.unknown_session_message)
        record = found or SessionRecord(session_id=p.session_id, cwd=p.cwd)
        if p.cwd:
            record.cwd = p.cwd
        with self.state_lock:
            self.sessions[record.session_id] = record
        replay: list[Msg] = []
        for turn in record.turns:
            replay.append(
                self.update_msg(record.session_id, Chunk.make("user_message_chunk", turn.user))
            )
            replay.append(
                self.update_msg(record.session_id, Chunk.make("agent_message_chunk", turn.agent))
            )
        for start in range(0, len(replay), _BATCH):
            self.send(*replay[start : start + _BATCH])
        self.save(record)
        self.respond(req_id, self.session_state(record))

    def on_set_mode(self, req_id: int | str, params: Raw) -> None:
        p = msgspec.json.decode(params, type=Params)
        record = self.session(p.session_id)
        if p.mode_id not in MODES:
            raise RpcFailure(
                -32602,
                f"unknown mode: {p.mode_id}",
                {"availableModes": list(MODES), "reason": "invalid mode id"},
            )
        record.mode_id = p.mode_id
        self.save(record)
        self.send(self.update_msg(record.session_id, ModeUpdate(current_mode_id=p.mode_id)))
        self.respond(req_id, Empty())

    def on_set_config(self, req_id: int | str, params: Raw) -> None:
        p = msgspec.json.decode(params, type=Params)
        record = self.session(p.session_id)
        if p.config_id != "model":
            raise RpcFailure(-32602, f"unknown config option: {p.config_id}")
        if p.value not in ("mock-small", "mock-large"):
            raise RpcFailure(-32602, f"invalid value for model: {p.value!r}")
        record.model = str(p.value)
        self.save(record)
        self.respond(req_id, ConfigResult(config_options=config_options(record.model)))

    def on_prompt(self, req_id: int | str, params: Raw) -> None:
        p = msgspec.json.decode(params, type=Params)
        record = self.session(p.session_id)
        text = "".join(b.text for b in p.prompt if b.type == "text" and b.text)
        if text.split(maxsplit=1)[:1] == ["/hang"]:
            self.log(f"/hang: request {req_id!r} will never be answered")
            return
        ctl = TurnCtl()
        with self.state_lock:
            previous = self.active.get(record.session_id)
            self.active[record.session_id] = ctl
        if previous is not None:
            previous.cancel()
        threading.Thread(
            target=run_turn, args=(self, ctl, record, req_id, text), daemon=True
        ).start()

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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m acpx_trio.testing.mock_agent",
        description="ACP v1 mock agent over stdio (fault injection for tests)",
    )
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--slow-start", type=int, default=0, metavar="MS")
    parser.add_argument("--no-load-session", action="store_true")
    parser.add_argument("--protocol-version", type=int, default=1, metavar="N")
    parser.add_argument("--auth-methods", action="store_true")
    parser.add_argument("--session-dir", default=None, metavar="DIR")
    parser.add_argument("--require-auth", default=None, metavar="METHOD")
    parser.add_argument("--error-data", default=None, metavar="TEXT")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--close", action="store_true")
    parser.add_argument("--resume-fails", action="store_true")
    parser.add_argument("--unknown-session-message", default=None, metavar="TEXT")
    parser.add_argument("--method-log", default=None, metavar="FILE")
    eof = parser.add_mutually_exclusive_group()
    eof.add_argument(
        "--exit-on-stdin-eof", dest="exit_on_stdin_eof", action="store_true", default=True
    )
    eof.add_argument("--ignore-stdin-eof", dest="exit_on_stdin_eof", action="store_false")
    parser.add_argument("--spawn-pid-hopper", default=None, metavar="MARKER")
    parser.add_argument("--spawn-scrubbed-child", default=None, metavar="MARKER")
    parser.add_argument("--spawn-daemon", default=None, metavar="MARKER")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)
    if args.slow_start > 0:
        time.sleep(args.slow_start / 1000)
    agent = MockAgent(args)
    spawn_escapers(
        hopper=args.spawn_pid_hopper, scrubbed=args.spawn_scrubbed_child,
        daemon=args.spawn_daemon, keep=agent.children,
    )
    try:
        agent.run()
    except KeyboardInterrupt:
        os._exit(130)


if __name__ == "__main__":
    main()
