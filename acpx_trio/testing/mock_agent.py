"""The bundled ACP v1 agent: ``python -m acpx_trio.testing.mock_agent [flags]``.

It speaks ACP over stdin/stdout (one JSON-RPC message per line) and logs only to stderr.  It
imports only the standard library and msgspec (no Trio, nothing else from acpx-trio), so it
starts fast and is an implementation independent of the client it tests.

A prompt is echoed back unless its text starts with a directive:

``/sleep MS``, ``/chunks N``, ``/split N,M TEXT`` (TEXT streamed in pieces cut there),
``/tool-key KEY``, ``/think TEXT``, ``/tool``, ``/crash``, ``/hang``, ``/garbage``,
``/huge BYTES [COUNT]``, ``/flood N``, ``/close-stdout``, ``/spawn-grandchild``, ``/daemonize``,
``/permission KIND``, ``/read PATH``, ``/write PATH TEXT``, ``/mode``, ``/history``, ``/pid``,
``/model``, ``/report`` (plan, usage with cost, commands, session info; answer with ``usage``),
``/cost NUMBER`` (a ``usage_update`` whose cost amount is NUMBER as written).

Terminal directives (client ``terminal/*``, command run through ``/bin/sh -c``):
``/terminal CMD`` (create, output, wait_for_exit, output, release), ``/terminal-limit N CMD``
(with ``outputByteLimit`` N), ``/terminal-kill CMD`` (create, first output, kill,
wait_for_exit, output, release), ``/terminal-kill-now N CMD`` (N times: create, kill at
once, wait_for_exit, release), ``/terminal-hold CMD`` (create, first output, wait for exit;
never released).  ``/error-data TEXT`` answers the prompt with -32603 and ``data.details``;
``/auth-required`` with -32000 "Authentication required"; ``/invalid-params FIELD`` with
-32602 and pydantic-style data (the official SDK's "Field required");
``/terminal-strict CMD`` answers the prompt with an error when ``terminal/create`` is
refused; ``/stall-meta-error TEXT`` reports TEXT only in a ``session_info_update`` with an
empty title and ``_meta.codex.error`` (and on stderr), then never ends the turn (codex-acp
1.x offline); ``/client-caps`` says the client capabilities ``initialize`` advertised.
``/env NAME`` says whether NAME is set (and its length, never the value); ``/env-path NAME``
says its value (for paths such as ``CODEX_HOME``).

Flags: ``--ignore-sigterm``, ``--slow-start MS``, ``--no-load-session``,
``--protocol-version N``, ``--auth-methods``, ``--session-dir DIR`` (or env
``ACPX_MOCK_AGENT_SESSION_DIR``), ``--exit-on-stdin-eof`` (default) / ``--ignore-stdin-eof``,
``--require-auth METHOD`` (advertises METHOD; ``authenticate`` succeeds only when env
``UPPER_SNAKE(METHOD)`` is set — or every variable of ``--require-auth-env VAR``, repeatable,
as codex-acp's ``api-key`` reads ``CODEX_API_KEY``/``OPENAI_API_KEY``; every session call
before it gets -32000 "Authentication required"), ``--terminal-auth ARGS`` (also advertises
``mock-terminal-login`` of ``type: "terminal"`` with ``args`` ARGS, split on blanks),
``--error-data TEXT`` (``session/new`` fails with -32603 and ``data.details``),
``--resume`` / ``--close`` (advertise and serve ``session/resume`` / ``session/close``;
``--resume-fails``: resume answers -32603), ``--list`` (advertise and serve ``session/list``,
two sessions a page; ``--list-junk``: a malformed entry on every page; ``--list-hang``:
advertised, never answered),
``--cancel-stop-reason REASON`` (a cancelled turn is answered with REASON, not
``cancelled``: an agent that breaks the spec), ``--unknown-session-message TEXT``
(load/resume of an unknown id fail with -32603 TEXT),
``--method-log FILE`` (append each request's method name to FILE),
``--spawn-pid-hopper MARKER``, ``--spawn-setsid-hopper MARKER`` (a new session at every
hop), ``--spawn-scrubbed-child MARKER``, ``--spawn-daemon MARKER``
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
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from msgspec import Raw, UnsetType

from acpx_trio.testing._mock_escape import spawn_escapers
from acpx_trio.testing._mock_sessions import (
    env_name,
    on_close,
    on_delete,
    on_list,
    on_logout,
    on_resume,
)
from acpx_trio.testing._mock_state import AgentCore, TurnCtl
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
    McpCaps,
    ModeUpdate,
    Msg,
    Params,
    RpcFailure,
    SessionRecord,
    config_options,
)

__all__ = ["main"]

_BATCH = 256


class MockAgent(AgentCore):
    """The ACP methods and the input loop on top of :class:`AgentCore`."""

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
            "session/list": functools.partial(on_list, self),
            "session/delete": functools.partial(on_delete, self),
            "logout": functools.partial(on_logout, self),
            "session/set_mode": self.on_set_mode,
            "session/set_config_option": self.on_set_config,
            "session/set_model": self.on_set_model,
            "session/prompt": self.on_prompt,
        }

    # ------------------------------------------------------------------ methods

    def on_initialize(self, req_id: int | str, params: Raw) -> None:
        self.client_caps = msgspec.json.decode(params).get("clientCapabilities")
        auth = [AuthMethod(id="mock-login", name="Mock login", description="accepts anything")]
        if not self.args.auth_methods:
            auth = []
        if self.args.require_auth:
            method = self.args.require_auth
            auth.append(AuthMethod(id=method, name=f"{method} (env {env_name(method)})",
                                   description="a credential in the environment"))
        if self.args.terminal_auth is not None:
            auth.append(AuthMethod(id="mock-terminal-login", name="Log in", type="terminal",
                                   description="run the agent's login in a terminal",
                                   args=self.args.terminal_auth.split()))
        session_caps: dict[str, Any] = {}
        if self.args.resume:
            session_caps["resume"] = {}
        if self.args.close:
            session_caps["close"] = {}
        if self.args.list:
            session_caps["list"] = {}
        if self.args.delete:
            session_caps["delete"] = {}
        result = InitResult(
            protocol_version=self.args.protocol_version,
            agent_capabilities=AgentCaps(
                load_session=not self.args.no_load_session, session_capabilities=session_caps,
                mcp_capabilities=McpCaps(http=self.args.mcp_http, sse=self.args.mcp_sse),
                auth={"logout": {}} if self.args.logout else {},
            ),
            auth_methods=auth,
            agent_info=Info(name=AGENT_NAME, version=AGENT_VERSION),
        )
        self.respond(req_id, result)

    def on_authenticate(self, req_id: int | str, params: Raw) -> None:
        method_id = msgspec.json.decode(params, type=Params).method_id
        if self.args.require_auth and method_id == self.args.require_auth:
            wanted = self.args.require_auth_env or [env_name(method_id)]
            if not all(os.environ.get(name) for name in wanted):
                raise RpcFailure(-32000, "Authentication required",
                                 {"methodId": method_id, "reason": "no credential in env"})
            self.authenticated = True
            self.respond(req_id, Empty())
            return
        if not self.args.auth_methods or method_id != "mock-login":
            raise RpcFailure(-32602, f"unknown auth method: {method_id}")
        self.respond(req_id, Empty())

    def on_new(self, req_id: int | str, params: Raw) -> None:
        p = msgspec.json.decode(params, type=Params)
        if self.args.error_data:
            raise RpcFailure(-32603, "Internal error", {"details": self.args.error_data})
        if not os.path.isabs(p.cwd):
            raise RpcFailure(-32602, f"cwd must be an absolute path, got {p.cwd!r}")
        record = SessionRecord(session_id=str(uuid.uuid4()), cwd=p.cwd, mcp=[
            f"{m.get('name')}:{m.get('type', 'stdio')}" for m in p.mcp_servers
            if isinstance(m, dict)], mcp_given=[msgspec.json.encode(m).decode()
                                                for m in p.mcp_servers])
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

    def on_set_model(self, req_id: int | str, params: Raw) -> None:
        """Legacy ``session/set_model`` (offered with ``--legacy-models``)."""
        p = msgspec.json.decode(params, type=Params)
        if not self.args.legacy_models:
            raise RpcFailure(-32601, "Method not found: session/set_model")
        record = self.session(p.session_id)
        if p.model_id not in ("mock-small", "mock-large"):
            raise RpcFailure(-32602, f"unknown model: {p.model_id!r}")
        record.model = p.model_id
        self.save(record)
        self.respond(req_id, Empty())

    def on_prompt(self, req_id: int | str, params: Raw) -> None:
        p = msgspec.json.decode(params, type=Params)
        record = self.session(p.session_id)
        self.prompt_meta = p.meta  # ``/meta`` says it back
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
    parser.add_argument("--require-auth-env", action="append", default=None, metavar="VAR")
    parser.add_argument("--terminal-auth", default=None, metavar="ARGS")
    parser.add_argument("--error-data", default=None, metavar="TEXT")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--close", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--delete", action="store_true", help="offer session/delete")
    parser.add_argument("--mcp-http", action="store_true", help="advertise MCP over http")
    parser.add_argument("--mcp-sse", action="store_true", help="advertise MCP over sse")
    parser.add_argument("--logout", action="store_true", help="offer logout")
    parser.add_argument("--legacy-models", action="store_true",
                        help="models as session/new `models` + session/set_model, no model "
                             "config option")
    parser.add_argument("--list-junk", action="store_true")
    parser.add_argument("--list-hang", action="store_true")
    parser.add_argument("--cancel-stop-reason", default="", metavar="REASON")
    parser.add_argument("--resume-fails", action="store_true")
    parser.add_argument("--unknown-session-message", default=None, metavar="TEXT")
    parser.add_argument("--method-log", default=None, metavar="FILE")
    eof = parser.add_mutually_exclusive_group()
    eof.add_argument(
        "--exit-on-stdin-eof", dest="exit_on_stdin_eof", action="store_true", default=True
    )
    eof.add_argument("--ignore-stdin-eof", dest="exit_on_stdin_eof", action="store_false")
    parser.add_argument("--spawn-pid-hopper", default=None, metavar="MARKER")
    parser.add_argument("--spawn-setsid-hopper", default=None, metavar="MARKER")
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
        daemon=args.spawn_daemon, keep=agent.children, setsid_hopper=args.spawn_setsid_hopper,
    )
    try:
        agent.run()
    except KeyboardInterrupt:
        os._exit(130)


if __name__ == "__main__":
    main()
