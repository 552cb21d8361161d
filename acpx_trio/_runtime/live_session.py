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
  the turn is cancelling), ``fs/*`` by :class:`FsGate`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import msgspec
import trio

from acpx_trio._acp import (
    AcpConnection,
    ConfigOptionUpdate,
    CurrentModeUpdate,
    InitializeResponse,
    ReadTextFileRequest,
    ReadTextFileResponse,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SessionConfigOption,
    SessionModeState,
    SessionUpdateLine,
    WriteTextFileRequest,
    decode_session_update_line,
)
from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import (
    AcpRuntimeCapabilities,
    AcpRuntimeEvent,
    AcpRuntimeHandle,
    AcpRuntimeStatus,
)
from acpx_trio._process.agent import AgentProcess
from acpx_trio._runtime.agents import AgentSpec
from acpx_trio._runtime.permissions import RESOURCE_NOT_FOUND, FsGate, PermissionPolicy
from acpx_trio._runtime.update_map import MAPPERS, decode_notification, map_update
from acpx_trio._store.sessions import SessionRecord

__all__ = ["HIGH_WATER", "LiveSession", "Turn"]

#: Events a consumer may lag behind before reading from the agent pauses.
HIGH_WATER = 256
_LOW_WATER = HIGH_WATER // 2
_BATCH = 64
_log = logging.getLogger("acpx_trio.runtime")


class Turn:
    """One prompt turn: an ordered event queue with backpressure, and its cancel state.

    One consumer only.  The queue is a list plus a read index and a wake-up event: cheaper
    than a memory channel, which matters at tens of thousands of chunks per turn; a batch of
    events decoded from one read is handed to a waiting consumer without copying."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._queue: list[AcpRuntimeEvent] = []
        self._head = 0
        self._wakeup: trio.Event | None = None
        self.room = trio.Event()
        self.room.set()
        #: Set when the driver is done (the final event is queued unless abandoned).
        self.finished = trio.Event()
        self.cancelling = False
        self.prompt_sent = False
        self.abandoned = False
        #: True once the final event is queued: later updates are late (counted, dropped).
        self.done = False
        self.failure: AcpRuntimeError | None = None
        self.closed_reason: str | None = None
        self.wait_scope: trio.CancelScope | None = None
        self.late_updates = 0
        self._since_checkpoint = 0

    @property
    def pending(self) -> int:
        """Events queued and not yet received."""
        return len(self._queue) - self._head

    @property
    def accepting(self) -> bool:
        return not self.abandoned and not self.done

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def emit(self, event: AcpRuntimeEvent) -> None:
        if self.abandoned or self.done:
            self.late_updates += 1
            return
        self._queue.append(event)
        self._wake()
        if len(self._queue) - self._head >= HIGH_WATER and self.room.is_set():
            self.room = trio.Event()

    def emit_many(self, events: list[AcpRuntimeEvent]) -> None:
        """:meth:`emit` for a batch (the list is owned by the turn afterwards)."""
        if self.abandoned or self.done:
            self.late_updates += len(events)
            return
        if self._head == len(self._queue):
            self._queue = events
            self._head = 0
        else:
            self._queue += events
        self._wake()
        if len(self._queue) - self._head >= HIGH_WATER and self.room.is_set():
            self.room = trio.Event()

    def finish(self, final: AcpRuntimeEvent) -> None:
        if self.done:
            return
        self.done = True
        if not self.abandoned:
            self._queue.append(final)
            self._wake()
        self.finished.set()
        self.room.set()

    def _drained(self) -> None:
        if not self.room.is_set():
            self.room.set()

    async def receive(self) -> AcpRuntimeEvent:
        """The next event.  Queued events are handed out without a scheduler round trip (a
        checkpoint every :data:`_BATCH` events keeps the consumer cancellable and fair)."""
        if self._head < len(self._queue):
            self._since_checkpoint += 1
            if self._since_checkpoint >= _BATCH:
                self._since_checkpoint = 0
                await trio.lowlevel.checkpoint()
        while self._head >= len(self._queue):
            self._since_checkpoint = 0
            wakeup = self._wakeup = trio.Event()
            await wakeup.wait()
        queue = self._queue
        event = queue[self._head]
        self._head += 1
        left = len(queue) - self._head
        if not left:
            self._queue = []
            self._head = 0
        if left <= _LOW_WATER and not self.room.is_set():
            self.room.set()
        return event

    async def receive_batch(self) -> list[AcpRuntimeEvent]:
        """Every queued event (at least one), in order, with one checkpoint per call."""
        if self._head < len(self._queue):
            await trio.lowlevel.checkpoint()
        while self._head >= len(self._queue):
            wakeup = self._wakeup = trio.Event()
            await wakeup.wait()
        batch = self._queue[self._head :] if self._head else self._queue
        self._queue = []
        self._head = 0
        if not self.room.is_set():
            self.room.set()
        return batch

    def abandon(self) -> None:
        """The consumer left: drop queued events, accept no more, never block the reader."""
        self.abandoned = True
        self._queue = []
        self._head = 0
        self.room.set()

    def request_cancel(self, wait: float) -> None:
        """Mark cancelling; the driver waits at most ``wait`` more seconds for the answer."""
        self.cancelling = True
        if self.wait_scope is not None:
            self.wait_scope.deadline = min(self.wait_scope.deadline, trio.current_time() + wait)

    def fail(self, error: AcpRuntimeError, wait: float) -> bool:
        """Record a turn failure (first one wins); True if this started the cancel."""
        if self.failure is None:
            self.failure = error
        started = not self.cancelling
        self.request_cancel(wait)
        return started


class LiveSession:
    """The runtime's view of one session key with a running agent."""

    def __init__(
        self,
        *,
        session_key: str,
        spec: AgentSpec,
        mode: Literal["persistent", "oneshot"],
        cwd: str,
        policy: PermissionPolicy,
        on_turn_failure: Callable[[LiveSession, AcpRuntimeError], None],
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.session_key = session_key
        self.spec = spec
        self.mode = mode
        self.cwd = cwd
        self.policy = policy
        self.log = logger or _log
        self._on_turn_failure = on_turn_failure
        self.fs = FsGate(cwd, policy, on_turn_failure=self._fail_turn)
        self.process: AgentProcess | None = None
        self.backend_session_id: str | None = None
        self.init: InitializeResponse | None = None
        self.modes: SessionModeState | None = None
        self.config_options: list[SessionConfigOption] | None = None
        self.current_mode: str | None = None
        self.turn: Turn | None = None
        self.fresh_requested = False
        self.stray_updates = 0
        self.turns_run = 0
        self.controls_in_flight = 0
        self._gate_waiter: trio.Event | None = None

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

    def record(self) -> SessionRecord:
        """The persistent record of this session as it is now."""
        proc = self.process
        return SessionRecord(
            session_key=self.session_key,
            agent=self.spec.name,
            agent_command=self.spec.command,
            cwd=self.cwd,
            mode=self.mode,
            backend_session_id=self.backend_session_id,
            lease_id=None if proc is None else proc.lease_id,
            agent_pid=None if proc is None else proc.pid,
            agent_create_time=None if proc is None else proc.create_time,
            agent_start_ticks=None if proc is None else proc.start_ticks,
            current_mode=self.current_mode,
        )

    def capabilities(self) -> AcpRuntimeCapabilities:
        controls = []
        if self.modes is not None:
            controls.append("session/set_mode")
        if self.config_options is not None:
            controls.append("session/set_config_option")
        controls.append("session/status")
        keys = tuple(o.id for o in self.config_options or ())
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
        }
        pid = None if proc is None else proc.pid
        state = "running a turn" if self.turn is not None else "idle"
        return AcpRuntimeStatus(
            summary=f"{state} (agent {self.spec.name}, pid {pid})" if alive
            else "agent not running",
            backend_session_id=self.backend_session_id,
            agent_pid=pid,
            alive=alive,
            current_mode=self.current_mode,
            details=details,
        )

    def _fail_turn(self, error: AcpRuntimeError) -> None:
        self._on_turn_failure(self, error)

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
            "session/update", decode_session_update_line, self._on_update_lines
        )
        conn.set_request_handler("session/request_permission", self._on_permission)
        conn.set_request_handler("fs/read_text_file", self._on_read)
        conn.set_request_handler("fs/write_text_file", self._on_write)

    def _on_update(self, raw: msgspec.Raw) -> None:
        note = decode_notification(raw)
        update = note.update
        if note.session_id != self.backend_session_id:
            self.stray_updates += 1
            return
        if isinstance(update, CurrentModeUpdate):
            self.current_mode = update.current_mode_id
        elif isinstance(update, ConfigOptionUpdate):
            self.config_options = update.config_options
        turn = self.turn
        if turn is None or turn.abandoned or turn.done:
            self.stray_updates += 1
            return
        event = map_update(update)
        if event is not None:
            turn.emit(event)

    def _on_update_lines(self, lines: list[SessionUpdateLine]) -> None:
        """:meth:`_on_update` for a read batch of typed lines: one pass, one queue hand-off."""
        sid = self.backend_session_id
        turn = self.turn
        live = turn is not None and not turn.abandoned and not turn.done
        mappers = MAPPERS
        events: list[AcpRuntimeEvent] = []
        for line in lines:
            note = line.params
            if note.session_id != sid:
                self.stray_updates += 1
                continue
            update = note.update
            cls = type(update)
            if cls is CurrentModeUpdate:
                self.current_mode = update.current_mode_id  # type: ignore[union-attr]
            elif cls is ConfigOptionUpdate:
                self.config_options = update.config_options  # type: ignore[union-attr]
            if not live:
                self.stray_updates += 1
                continue
            event = mappers.get(cls, map_update)(update)
            if event is not None:
                events.append(event)
        if events:
            assert turn is not None
            turn.emit_many(events)

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
            "permission %s for %r: %s", request.tool_call.tool_call_id,
            request.tool_call.title, decision.verdict,
        )
        if decision.fail_turn is not None:
            self._fail_turn(decision.fail_turn)
        return decision.response

    async def _on_read(self, raw: msgspec.Raw) -> ReadTextFileResponse:
        request = msgspec.json.decode(raw, type=ReadTextFileRequest)
        self._check_session(request.session_id)
        return await self.fs.read_text_file(request)

    async def _on_write(self, raw: msgspec.Raw) -> Any:
        request = msgspec.json.decode(raw, type=WriteTextFileRequest)
        self._check_session(request.session_id)
        return await self.fs.write_text_file(request)
