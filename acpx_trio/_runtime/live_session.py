"""A live ACP session: its agent process, the turn in progress, and the agent's requests.

Guarantees:

* Turn events are delivered in wire order.  Memory is bounded: when the consumer lags by
  :data:`HIGH_WATER` events, reading from the agent pauses (the agent then blocks on its
  stdout) until the consumer catches up, gives up, or the turn ends.
* ``session/update`` is routed by ``sessionId``: updates for another session, updates outside a
  turn (before ``session/new`` returns, during a ``session/load`` replay, after the prompt
  response) never become turn events; they are counted (:attr:`LiveSession.stray_updates`).
  Mode changes are tracked whenever they arrive.
* Every agent request is answered: permissions by :class:`PermissionPolicy` (``cancelled`` while
  the turn is cancelling), ``fs/*`` by :class:`FsGate`, ``terminal/*`` by
  :class:`~acpx_trio._runtime.terminals.TerminalManager` (set by the handshake; without one,
  ``terminal/*`` gets -32601); with config ``fs: false`` ``fs/*`` gets -32601 too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

import msgspec
import trio

from acpx_trio._acp import (
    AcpConnection,
    CompleteElicitationNotification,
    ConfigOptionUpdate,
    CreateElicitationRequest,
    CurrentModeUpdate,
    InitializeResponse,
    ReadTextFileRequest,
    ReadTextFileResponse,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SessionConfigOption,
    SessionInfoUpdate,
    SessionModelState,
    SessionModeState,
    SessionUpdate,
    SessionUpdateLine,
    WriteTextFileRequest,
    decode_session_update_line,
    decode_session_update_lines,
)
from acpx_trio._errors import AcpRuntimeError, redact, redact_argv, replace_secrets
from acpx_trio._events import (
    AcpRuntimeCapabilities,
    AcpRuntimeEvent,
    AcpRuntimeHandle,
    AcpRuntimeStatus,
    ElicitationAnswer,
    ElicitationRequest,
    StatusEvent,
)
from acpx_trio._log import Logger
from acpx_trio._process.agent import AgentProcess
from acpx_trio._runtime.agents import AgentSpec
from acpx_trio._runtime.permissions import (
    RESOURCE_NOT_FOUND,
    FsGate,
    PermissionPolicy,
    WorkDir,
)
from acpx_trio._runtime.terminals import TERMINAL_KINDS, TerminalManager
from acpx_trio._runtime.turn_queue import HIGH_WATER, Turn
from acpx_trio._runtime.update_map import (
    MAPPERS,
    config_option_info,
    decode_notification,
    map_update,
    reported_error,
)
from acpx_trio._store.sessions import SessionRecord

#: answers ``elicitation/create`` for the host (``runtime.set_elicitation_handler``)
ElicitationHandler = Callable[[ElicitationRequest], Awaitable[ElicitationAnswer]]

__all__ = ["HIGH_WATER", "LiveSession", "Turn"]

_log = logging.getLogger("acpx_trio.runtime")


def _set_mode(session: LiveSession, update: CurrentModeUpdate) -> None:
    session.current_mode = update.current_mode_id


def _set_config_options(session: LiveSession, update: ConfigOptionUpdate) -> None:
    session.config_options = update.config_options


def _note_agent_error(session: LiveSession, update: SessionInfoUpdate) -> None:
    session.agent_error = reported_error(update.meta) or session.agent_error


#: What each update kind that changes the session's own state does to it: the one home of
#: that rule (``LiveSession._take`` applies it; the batch path sends exactly these kinds there).
_APPLY: dict[type[Any], Callable[[LiveSession, Any], None]] = {
    CurrentModeUpdate: _set_mode,
    ConfigOptionUpdate: _set_config_options,
    SessionInfoUpdate: _note_agent_error,
}


class _SessionRef(msgspec.Struct, rename="camel"):
    session_id: str


class LiveSession:
    """The runtime's view of one session key with a running agent."""

    def __init__(
        self,
        *,
        session_key: str,
        spec: AgentSpec,
        mode: Literal["persistent", "oneshot"],
        cwd: WorkDir,
        policy: PermissionPolicy,
        on_turn_failure: Callable[[LiveSession, AcpRuntimeError], None],
        logger: Logger | None = None,
    ) -> None:
        self.session_key = session_key
        self.spec = spec
        #: the host's answerer of ``elicitation/create`` (``None``: the non-interactive policy)
        self.elicitation_handler: Callable[[], ElicitationHandler | None] = lambda: None
        self.mode = mode
        self.cwd = cwd.path
        self.policy = policy
        self.log = logger or _log
        self._on_turn_failure = on_turn_failure
        #: file requests, confined to ``cwd`` as the session started in it
        self.fs = FsGate(cwd, policy, on_turn_failure=self._fail_turn)
        #: ``False`` (config ``fs: false``): ``fs/*`` requests are refused (-32601).
        self.fs_enabled = True
        self.process: AgentProcess | None = None
        self.backend_session_id: str | None = None
        self.init: InitializeResponse | None = None
        self.modes: SessionModeState | None = None
        self.config_options: list[SessionConfigOption] | None = None
        #: the legacy model selection (agents without a model config option)
        self.models: SessionModelState | None = None
        self.current_mode: str | None = None
        self.turn: Turn | None = None
        #: set once the cancel of a turn its consumer left early is over (see ``turns``)
        self.settled: trio.Event | None = None
        self.fresh_requested = False
        self.stray_updates = 0
        self.turns_run = 0
        self.controls_in_flight = 0
        self._gate_waiter: trio.Event | None = None
        #: Terminals the agent created (``terminal/*``); set when the session is started.
        self.terminals: TerminalManager | None = None
        #: The auth method ``authenticate`` succeeded with (an id, never a credential).
        self.auth_method: str | None = None
        #: The last error the agent reported in an update's ``_meta`` during the current
        #: turn (reset when a prompt is sent): the detail of a turn that times out.
        self.agent_error: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def alive(self) -> bool:
        """The agent runs (checked against the OS for our direct child) and no close began."""
        proc = self.process
        if proc is None or not proc.alive or proc.process is None:
            return False
        return proc.process.poll() is None

    @property
    def connection(self) -> AcpConnection:
        assert self.process is not None and self.process.connection is not None
        return self.process.connection

    def handle(self) -> AcpRuntimeHandle:
        assert self.backend_session_id is not None
        return AcpRuntimeHandle(
            session_key=self.session_key,
            backend="acpx",
            agent=self.spec.name,
            mode=self.mode,
            cwd=self.cwd,
            backend_session_id=self.backend_session_id,
            lease_id=None if self.process is None else self.process.lease_id,
            agent_pid=None if self.process is None else self.process.pid,
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """The credentials its agent holds (redacted from whatever we keep or show)."""
        proc = self.process
        return () if proc is None else proc.secrets

    @property
    def shown_mode(self) -> str | None:
        """The current mode as we keep or show it: a credential its agent holds redacted."""
        mode = self.current_mode
        return None if mode is None else redact(mode, self.secrets)

    def record(self) -> SessionRecord:
        """The persistent record of this session as it is now (a credential in the agent's
        command line or its mode id is redacted: records are never a place for one)."""
        proc = self.process
        secrets = self.secrets
        return SessionRecord(
            session_key=self.session_key,
            agent=self.spec.name,
            agent_command=redact_argv(self.spec.command, secrets),
            cwd=self.cwd,
            mode=self.mode,
            backend_session_id=self.backend_session_id,
            lease_id=None if proc is None else proc.lease_id,
            agent_pid=None if proc is None else proc.pid,
            agent_create_time=None if proc is None else proc.create_time,
            agent_start_ticks=None if proc is None else proc.start_ticks,
            current_mode=self.shown_mode,
        )

    def capabilities(self) -> AcpRuntimeCapabilities:
        controls = []
        if self.modes is not None:
            controls.append("session/set_mode")
        if self.config_options is not None:
            controls.append("session/set_config_option")
        controls.append("session/status")
        keys = tuple(redact(o.id, self.secrets) for o in self.config_options or ())
        load = bool(self.init and self.init.agent_capabilities.load_session)
        return AcpRuntimeCapabilities(
            controls=tuple(controls), config_option_keys=keys, load_session=load
        )

    def status(self) -> AcpRuntimeStatus:
        proc = self.process
        alive = self.alive
        stats = self.policy.stats
        conn = None if proc is None else proc.connection
        details: dict[str, Any] = {
            "agent": self.spec.name,
            "cwd": self.cwd,
            "mode": self.mode,
            "lease_id": None if proc is None else proc.lease_id,
            "turn_running": self.turn is not None,
            "turns": self.turns_run,
            "stray_updates": self.stray_updates,
            "junk_lines": 0 if conn is None else conn.junk_lines,
            "permissions": msgspec.structs.asdict(stats),
            # issue 21: the options as last advertised (new/load/resume, config_option_update),
            # with the credentials its agent holds redacted, as on the turn's events
            "config_options": replace_secrets([msgspec.to_builtins(config_option_info(o))
                                               for o in self.config_options or ()],
                                              self.secrets),
        }
        pid = None if proc is None else proc.pid
        state = "running a turn" if self.turn is not None else "idle"
        return AcpRuntimeStatus(
            summary=f"{state} (agent {self.spec.name}, pid {pid})" if alive
            else "agent not running",
            backend_session_id=self.backend_session_id,
            agent_pid=pid,
            alive=alive,
            current_mode=self.shown_mode,
            details=details,
        )

    def _fail_turn(self, error: AcpRuntimeError) -> None:
        self._on_turn_failure(self, error)

    def fail_turn(self, error: AcpRuntimeError) -> None:
        """Fail the running turn with ``error`` (a request needed a person, policy ``fail``)."""
        self._fail_turn(error)

    # ------------------------------------------------------------------ wiring

    async def wait_room(self) -> None:
        """Gate for the agent reader: returns when the current turn's consumer has room, or
        while a control call waits for its answer (so a consumer that calls ``set_mode``
        between two events cannot deadlock itself)."""
        while True:
            turn = self.turn
            if turn is None or turn.room.is_set() or self.controls_in_flight:
                return
            self._gate_waiter = turn.room
            await turn.room.wait()

    @contextlib.contextmanager
    def control_call(self) -> Iterator[None]:
        """Mark a control request in flight (the reader gate stays open meanwhile)."""
        self.controls_in_flight += 1
        if self._gate_waiter is not None:
            self._gate_waiter.set()
        try:
            yield
        finally:
            self.controls_in_flight -= 1

    def install(self, conn: AcpConnection) -> None:
        """Register the agent->client handlers on a new connection."""
        conn.set_notification_handler("session/update", self._on_update)
        conn.set_fast_notification_handler(
            "session/update", decode_session_update_line, self._on_update_lines,
            decode_batch=decode_session_update_lines,
        )
        conn.set_request_handler("session/request_permission", self._on_permission,
                                 kind="wait")
        conn.set_request_handler("elicitation/create", self._on_elicitation, kind="wait")
        conn.set_notification_handler("elicitation/complete", self._on_elicitation_complete)
        conn.set_request_handler("fs/read_text_file", self._on_read, kind="heavy")
        conn.set_request_handler("fs/write_text_file", self._on_write)
        for method, kind in TERMINAL_KINDS.items():
            conn.set_request_handler(method, functools.partial(self._on_terminal, method),
                                     kind=kind)

    def _take(self, session_id: str, update: SessionUpdate) -> bool:
        """Applies what ``update`` reports about this session (its mode, config options, an
        agent-reported error) if it is this session's; whether its event belongs to a running
        turn.  An update of another session, or of none running, is counted as stray."""
        if session_id != self.backend_session_id:
            self.stray_updates += 1
            return False
        apply = _APPLY.get(type(update))
        if apply is not None:
            apply(self, update)
        turn = self.turn
        if turn is None or turn.abandoned or turn.done:
            self.stray_updates += 1
            return False
        return True

    def _on_update(self, raw: msgspec.Raw) -> None:
        note = decode_notification(raw)
        if self._take(note.session_id, note.update) and self.turn is not None:
            event = map_update(note.update)
            if event is not None:
                self.turn.emit(event, len(raw))

    def _on_update_lines(self, lines: list[SessionUpdateLine], size: int) -> None:
        """:meth:`_on_update` for a read batch of typed lines (``size`` bytes of the wire):
        one pass, one queue hand-off.  The common line (an update of no session state, for
        the running turn of this session) goes straight to its mapper; the others through
        :meth:`_take`."""
        sid = self.backend_session_id
        turn = self.turn
        live = turn is not None and not turn.abandoned and not turn.done
        mapper = MAPPERS.get
        events: list[AcpRuntimeEvent] = []
        append = events.append
        for line in lines:
            note = line.params
            update = note.update
            cls = type(update)
            if (cls in _APPLY or note.session_id != sid or not live) and not self._take(
                    note.session_id, update):
                continue
            event = mapper(cls, map_update)(update)
            if event is not None:
                append(event)
        if events:
            assert turn is not None
            turn.emit_many(events, size)

    def _check_session(self, session_id: str) -> None:
        if session_id != self.backend_session_id:
            raise AcpRuntimeError(
                "ACP_FS_REFUSED", f"Session not found: {session_id}", rpc_code=RESOURCE_NOT_FOUND
            )

    async def _on_permission(self, raw: msgspec.Raw) -> RequestPermissionResponse:
        request = msgspec.json.decode(raw, type=RequestPermissionRequest)
        self._check_session(request.session_id)
        turn = self.turn
        cancelling = turn is None or turn.cancelling or not turn.accepting
        decision = self.policy.decide(request, cancelling=cancelling)
        self.log.debug(
            "permission %s for %r: %s", redact(request.tool_call.tool_call_id, self.secrets),
            redact(request.tool_call.title or "", self.secrets), decision.verdict,
        )
        if decision.fail_turn is not None:
            self._fail_turn(decision.fail_turn)
        return decision.response

    async def _on_elicitation(self, raw: msgspec.Raw) -> dict[str, Any]:
        """``elicitation/create``: shown on the turn's events (tag ``elicitation``), answered
        by the host's handler, else by ``nonInteractivePermissions`` (``deny``: ``decline``;
        ``fail``: ``cancel`` and the turn fails with ``ACP_ELICITATION_UNAVAILABLE``).  A URL
        is never opened by us."""
        request = msgspec.json.decode(raw, type=CreateElicitationRequest)
        if request.session_id is not None:
            self._check_session(request.session_id)
        if request.mode not in ("form", "url"):
            raise AcpRuntimeError("ACP_INVALID_PARAMS", f"unsupported elicitation mode "
                                  f"{request.mode!r}", rpc_code=-32602)
        if request.mode == "url" and not request.url:
            raise AcpRuntimeError("ACP_INVALID_PARAMS", "a url elicitation needs a url",
                                  rpc_code=-32602)
        asked = ElicitationRequest(
            session_key=self.session_key, mode=request.mode, message=request.message,
            requested_schema=request.requested_schema, url=request.url,
            elicitation_id=request.elicitation_id, tool_call_id=request.tool_call_id)
        where = f" (open {request.url})" if request.url else ""
        self._emit(StatusEvent(tag="elicitation",
                               text=f"the agent asks: {request.message}{where}"))
        handler = self.elicitation_handler()
        if handler is not None:
            answer = await handler(asked)
            if not isinstance(answer, ElicitationAnswer):
                raise AcpRuntimeError("ACP_RUNTIME_INTERNAL_ERROR",
                                      "the elicitation handler did not return an "
                                      "ElicitationAnswer")
        elif self.policy.non_interactive == "deny":
            answer = ElicitationAnswer(action="decline")
        else:
            self._fail_turn(AcpRuntimeError(
                "ACP_ELICITATION_UNAVAILABLE",
                f"the agent asked the user ({request.mode}: {request.message!r}) and nobody "
                "can answer here (nonInteractivePermissions: fail; an embedding host can "
                "answer with runtime.set_elicitation_handler)"))
            answer = ElicitationAnswer(action="cancel")
        out: dict[str, Any] = {"action": answer.action}
        if answer.action == "accept" and answer.content is not None:
            out["content"] = answer.content
        return out

    def _on_elicitation_complete(self, raw: msgspec.Raw) -> None:
        done = msgspec.json.decode(raw, type=CompleteElicitationNotification)
        self._emit(StatusEvent(tag="elicitation_complete",
                               text=f"the agent finished elicitation {done.elicitation_id}"))

    def _emit(self, event: AcpRuntimeEvent) -> None:
        turn = self.turn
        if turn is not None and not turn.abandoned and not turn.done:
            turn.emit(event)

    def _check_fs(self, method: str) -> None:
        if not self.fs_enabled:
            raise AcpRuntimeError(
                "ACP_FS_REFUSED", f"Method not found: {method} (file access is turned off)",
                rpc_code=-32601,
            )

    async def _on_read(self, raw: msgspec.Raw) -> ReadTextFileResponse:
        self._check_fs("fs/read_text_file")
        request = msgspec.json.decode(raw, type=ReadTextFileRequest)
        self._check_session(request.session_id)
        return await self.fs.read_text_file(request)

    async def _on_terminal(self, method: str, raw: msgspec.Raw) -> Any:
        terminals = self.terminals
        if terminals is None:
            raise AcpRuntimeError(
                "ACP_TERMINAL_UNSUPPORTED", f"Method not found: {method}", rpc_code=-32601
            )
        session_id = msgspec.json.decode(raw, type=_SessionRef).session_id
        self._check_session(session_id)
        return await terminals.handle(method, raw)

    async def _on_write(self, raw: msgspec.Raw) -> Any:
        self._check_fs("fs/write_text_file")
        request = msgspec.json.decode(raw, type=WriteTextFileRequest)
        self._check_session(request.session_id)
        return await self.fs.write_text_file(request)
