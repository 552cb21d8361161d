"""An in-memory :class:`~acpx_trio.AcpRuntimeProtocol` with scripted turns, for testing apps.

:class:`StubRuntime` starts no process and touches no file: every call is answered from
memory, so a service built with ``runtime_factory=lambda params: StubRuntime()`` runs under
``trio.testing.MockClock(autojump_threshold=0)`` and an hour of virtual time passes in
microseconds.

A turn plays a **script**: a sequence of items, each either an event (``TextDeltaEvent``,
``ToolCallEvent``, ``StatusEvent``, ``DoneEvent``, ``ErrorEvent``) yielded as is, a
:class:`Delay` (wait that many seconds of *trio* time), a :class:`Fail` (raise an
:class:`~acpx_trio.AcpRuntimeError` from the turn) or :class:`Hang` (wait until cancelled).
A script that does not end with a ``DoneEvent``/``ErrorEvent`` gets ``DoneEvent("end_turn")``
appended, so every turn ends the way the real runtime's do.

Which script a turn plays: the next one queued with :meth:`StubRuntime.push_script` (FIFO, all
sessions), else the ``script`` given to the constructor (a sequence, or a callable taking the
:class:`StubCall` of the turn and returning one), else an echo of the prompt.

Every call is recorded in :attr:`StubRuntime.calls` as a :class:`StubCall`
(``method``, ``session_key``, ``args``, trio ``at`` time), in call order.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import typing
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import trio

from acpx_trio._errors import AcpRuntimeError, AcpxError
from acpx_trio._events import (
    AcpRuntimeCapabilities,
    AcpRuntimeEvent,
    AcpRuntimeHandle,
    AcpRuntimeStatus,
    DoctorReport,
    DoneEvent,
    ErrorEvent,
    TextDeltaEvent,
)
from acpx_trio._runtime.arguments import (
    checked_meta,
    close_args,
    config_option_args,
    handle_arg,
    optional_text_arg,
    text_arg,
    turn_args,
    validate_ensure_args,
)

if TYPE_CHECKING:
    from acpx_trio._service.backends import AcpRuntimeProtocol

__all__ = ["Delay", "Fail", "Hang", "ScriptItem", "StubCall", "StubRuntime"]

BACKEND = "stub"


class Delay(msgspec.Struct, frozen=True):
    """Wait ``seconds`` of trio time (a :meth:`StubRuntime.cancel` cuts it short)."""

    seconds: float


class Hang(msgspec.Struct, frozen=True):
    """Wait until the turn is cancelled (then it ends with ``DoneEvent("cancelled")``)."""


class Fail(msgspec.Struct, frozen=True, kw_only=True):
    """Raise ``AcpRuntimeError(code, message, retryable=...)`` from the turn's iterator."""

    code: str = "ACP_TURN_FAILED"
    message: str = "scripted failure"
    retryable: bool = False


ScriptItem = AcpRuntimeEvent | Delay | Hang | Fail
_SCRIPT_TYPES = (*typing.get_args(AcpRuntimeEvent), Delay, Hang, Fail)
Script = Sequence[ScriptItem]


class StubCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call the runtime received.  ``session_key`` is ``None`` for runtime-wide calls
    (``doctor``, ``probe_availability``, ``sweep_dead_sessions``, ``aclose``, capabilities
    without a handle); ``args`` holds the other keyword arguments (handles are not repeated
    there); ``at`` is :func:`trio.current_time` when the call arrived."""

    method: str
    session_key: str | None = None
    args: dict[str, Any] = {}
    at: float = 0.0


class _Session:
    __slots__ = ("cancel", "handle", "mode", "options", "turn_running", "turns")

    def __init__(self, handle: AcpRuntimeHandle) -> None:
        self.handle = handle
        self.mode: str | None = None
        self.options: dict[str, str | bool] = {}
        self.turns = 0
        self.turn_running = False
        self.cancel = trio.Event()


def _echo(call: StubCall) -> Script:
    text = call.args.get("text", "")
    return (TextDeltaEvent(text=f"echo: {text}"), DoneEvent(stop_reason="end_turn"))


class StubRuntime:
    """An in-memory :class:`~acpx_trio.AcpRuntimeProtocol` whose turns play scripts in trio time.

    Guarantees:

    * no process, thread, file or wall-clock call: safe under ``MockClock`` with autojump;
    * every turn ends with exactly one ``DoneEvent`` or ``ErrorEvent`` (or raises the
      :class:`Fail` it was scripted to raise); like the real runtime, a turn on an unknown or closed
      session raises ``AcpRuntimeError("ACP_SESSION_NOT_FOUND")`` before the first event (a
      problem of the call) and a second concurrent turn on one session ends with
      ``ErrorEvent("ACP_SESSION_BUSY")`` (a problem of the turn);
    * :meth:`cancel` ends the running turn of that session at its next script item (a
      :class:`Delay` or :class:`Hang` is cut short) with ``DoneEvent(stop_reason="cancelled")``;
      cancelling the consumer's scope simply stops the turn;
    * after :meth:`aclose` running turns end cancelled and every call raises
      ``AcpRuntimeError("ACP_BACKEND_UNAVAILABLE")`` (``aclose`` itself is idempotent);
    * errors queued with :meth:`fail_next` are raised by the next call of that method.

    ``healthy`` is what :meth:`is_healthy` answers (after :meth:`probe_availability`, or at
    once when ``probe_required=False``)."""

    def __init__(
        self,
        script: Script | Callable[[StubCall], Script] | None = None,
        *,
        healthy: bool = True,
        probe_required: bool = False,
        capabilities: AcpRuntimeCapabilities | None = None,
        default_cwd: str = "/stub-workspace",
    ) -> None:
        self._script = script
        self._healthy = healthy
        self._probed = not probe_required
        self._capabilities = capabilities or AcpRuntimeCapabilities(
            controls=("session/set_mode", "session/set_config_option")
        )
        self._default_cwd = default_cwd
        self._queued: list[Script] = []
        self._failures: dict[str, list[AcpxError]] = {}
        self._sessions: dict[str, _Session] = {}
        self._dead: set[str] = set()
        self._ids = itertools.count(1)
        self._closed = False
        self._changed = trio.lowlevel.ParkingLot()
        #: Every call received, in order (see :class:`StubCall`).
        self.calls: list[StubCall] = []

    # -- scripting and inspection -------------------------------------------------------------
    def push_script(self, *items: ScriptItem) -> None:
        """Queue a script for the next turn of any session (FIFO).  Each item is an event, a
        :class:`Delay`, a :class:`Hang` or a :class:`Fail` (anything else, a list of them
        given as one argument say, is a ``TypeError`` here, not a strange event later)."""
        for item in items:
            if not isinstance(item, _SCRIPT_TYPES):
                raise TypeError(f"push_script takes events, Delay, Hang or Fail items (as "
                                f"separate arguments), not {type(item).__name__}")
        self._queued.append(tuple(items))

    def fail_next(self, method: str, error: AcpxError) -> None:
        """Make the next call of ``method`` (e.g. ``"ensure_session"``) raise ``error``."""
        self._failures.setdefault(method, []).append(error)

    def kill_session(self, session_key: str) -> None:
        """Simulate the session's agent dying: its status turns not alive, a running turn ends
        with ``ErrorEvent("ACP_CONNECTION_CLOSED")``, and the next
        :meth:`sweep_dead_sessions` removes it."""
        session = self._sessions.get(session_key)
        if session is not None:
            self._dead.add(session_key)
            session.cancel.set()
            self._changed.unpark_all()

    def calls_to(self, method: str) -> list[StubCall]:
        """The recorded calls of ``method``, in order."""
        return [c for c in self.calls if c.method == method]

    @property
    def sessions(self) -> dict[str, AcpRuntimeHandle]:
        """Open sessions by key (a copy)."""
        return {k: s.handle for k, s in self._sessions.items()}

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_for_call(self, method: str, count: int = 1) -> StubCall:
        """Wait until ``method`` was called at least ``count`` times; return that call.

        Event-driven (no polling), cancellable."""
        while True:
            seen = self.calls_to(method)
            if len(seen) >= count:
                await trio.lowlevel.checkpoint()
                return seen[count - 1]
            await self._changed.park()

    # -- internals -----------------------------------------------------------------------------
    def _record(self, method: str, session_key: str | None = None, **args: Any) -> StubCall:
        call = StubCall(method=method, session_key=session_key, args=args, at=trio.current_time())
        self.calls.append(call)
        self._changed.unpark_all()
        return call

    def _raise_queued(self, method: str) -> None:
        if self._closed and method != "aclose":
            raise AcpRuntimeError("ACP_BACKEND_UNAVAILABLE", "stub runtime is closed")
        queued = self._failures.get(method)
        if queued:
            raise queued.pop(0)

    def _require(self, handle: AcpRuntimeHandle) -> _Session:
        handle = handle_arg(handle)  # not a handle: ACP_INVALID_RUNTIME_OPTION, as the real one
        session = self._current(handle)
        if session is None or handle.session_key in self._dead:
            raise AcpRuntimeError(
                "ACP_SESSION_NOT_FOUND",
                f'stub session "{handle.session_key}" is not running; call ensure_session again.',
                retryable=True,
            )
        return session

    async def _enter(self, method: str, session_key: str | None = None, **args: Any) -> StubCall:
        await trio.lowlevel.checkpoint()
        call = self._record(method, session_key, **args)
        self._raise_queued(method)
        return call

    async def _enter_on(self, method: str, handle: object, **args: Any) -> AcpRuntimeHandle:
        """:meth:`_enter` for a call on a handle, checked first as the real runtime checks it
        (not a handle: ``ACP_INVALID_RUNTIME_OPTION``)."""
        checked = handle_arg(handle)
        await self._enter(method, checked.session_key, **args)
        return checked

    def _current(self, handle: AcpRuntimeHandle) -> _Session | None:
        """The session ``handle`` names, unless closed or replaced since (a later session of
        its key is another session)."""
        session = self._sessions.get(handle.session_key)
        if session is None or session.handle.backend_session_id != handle.backend_session_id:
            return None
        return session

    def _script_for(self, call: StubCall) -> Script:
        if self._queued:
            return self._queued.pop(0)
        if self._script is None:
            return _echo(call)
        if callable(self._script):
            return self._script(call)
        return self._script

    # -- the AcpRuntimeProtocol -----------------------------------------------------------------
    async def ensure_session(
        self,
        *,
        session_key: str,
        agent: str,
        mode: Literal["persistent", "oneshot"] = "persistent",
        cwd: str | None = None,
        resume_session_id: str | None = None,
    ) -> AcpRuntimeHandle:
        """Return the open session of ``session_key`` (same agent) or open a new one.  Its
        arguments are checked as the real runtime checks them."""
        await self._enter(
            "ensure_session", session_key, agent=agent, mode=mode, cwd=cwd,
            resume_session_id=resume_session_id,
        )
        session_key = validate_ensure_args(session_key, agent, mode)
        cwd = optional_text_arg("cwd", cwd, path=True)
        resume_session_id = optional_text_arg("resume_session_id", resume_session_id)
        current = self._sessions.get(session_key)
        if current is not None and session_key not in self._dead and current.handle.agent == agent:
            return current.handle
        self._dead.discard(session_key)
        handle = AcpRuntimeHandle(
            session_key=session_key,
            backend=BACKEND,
            agent=agent,
            mode=mode,
            cwd=cwd or self._default_cwd,
            backend_session_id=resume_session_id or f"stub-session-{next(self._ids)}",
        )
        self._sessions[session_key] = _Session(handle)
        return handle

    # Async generators by the AcpRuntimeProtocol contract (consumed under ``aclosing``); neither
    # yields inside a nursery or cancel scope, which is what ASYNC900 guards against.
    async def run_turn(  # noqa: ASYNC900
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[AcpRuntimeEvent, None]:
        """Play this turn's script (see the module docstring); arguments are checked as the
        real runtime checks them (``meta`` is recorded in the call when given)."""
        extra = {} if meta is None else {"meta": checked_meta(meta)}
        async with contextlib.aclosing(self._turn(handle, text, mode, request_id,
                                                  **extra)) as events:
            async for event in events:
                yield event

    async def _turn(  # noqa: ASYNC900
        self, handle: AcpRuntimeHandle, text: str, mode: str, request_id: str | None,
        **extra: Any,
    ) -> AsyncGenerator[AcpRuntimeEvent, None]:
        call = await self._enter(
            "run_turn", getattr(handle, "session_key", None), text=text, mode=mode,
            request_id=request_id, **extra
        )
        turn_args(text, mode, request_id)  # call problems: raised before the first event
        session = self._require(handle)
        if session.turn_running:
            yield ErrorEvent(
                code="ACP_SESSION_BUSY", retryable=True,
                message=f'stub session "{handle.session_key}" is already running a turn',
            )
            return
        session.turn_running = True
        session.turns += 1
        session.cancel = trio.Event()
        cancel = session.cancel
        try:
            async for event in self._play(self._script_for(call), cancel, handle.session_key):
                yield event
        finally:
            session.turn_running = False
            self._changed.unpark_all()

    async def run_turn_batches(  # noqa: ASYNC900
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[list[AcpRuntimeEvent], None]:
        """:meth:`run_turn` in lists of one event each (the real runtime's
        ``run_turn_batches`` form); recorded as a ``run_turn`` call with ``batches=True``."""
        extra = {} if meta is None else {"meta": checked_meta(meta)}
        async with contextlib.aclosing(self._turn(handle, text, mode, request_id,
                                                  batches=True, **extra)) as events:
            async for event in events:
                yield [event]

    async def _play(  # noqa: ASYNC900
        self, script: Script, cancel: trio.Event, session_key: str
    ) -> AsyncGenerator[AcpRuntimeEvent, None]:
        for item in script:
            if not cancel.is_set() and isinstance(item, Delay | Hang):
                seconds = math.inf if isinstance(item, Hang) else max(item.seconds, 0.0)
                with trio.move_on_after(seconds):
                    await cancel.wait()
            if cancel.is_set():
                yield self._cancelled_event(session_key)
                return
            if isinstance(item, Fail):
                raise AcpRuntimeError(item.code, item.message, retryable=item.retryable)
            if isinstance(item, Delay | Hang):
                continue
            await trio.lowlevel.checkpoint()
            yield item
            if isinstance(item, DoneEvent | ErrorEvent):
                return
        if cancel.is_set():
            yield self._cancelled_event(session_key)
        else:
            await trio.lowlevel.checkpoint()
            yield DoneEvent(stop_reason="end_turn")

    def _cancelled_event(self, session_key: str) -> AcpRuntimeEvent:
        if session_key in self._dead:
            return ErrorEvent(
                code="ACP_CONNECTION_CLOSED", retryable=True,
                message=f'stub session "{session_key}" died during the turn',
            )
        return DoneEvent(stop_reason="cancelled")

    async def cancel(self, *, handle: AcpRuntimeHandle, reason: str | None = None) -> None:
        """End the session's running turn with ``DoneEvent("cancelled")``; no-op when idle
        or when ``handle`` names an earlier session of that key (as the real one)."""
        handle = await self._enter_on("cancel", handle,
                                      reason=optional_text_arg("reason", reason))
        session = self._current(handle)
        if session is not None and session.turn_running:
            session.cancel.set()

    async def close(
        self,
        *,
        handle: AcpRuntimeHandle,
        reason: str = "closed",
        discard_persistent_state: bool = False,
    ) -> None:
        """Forget the session (a running turn ends cancelled).  Unknown sessions: no-op."""
        reason, discard = close_args(reason, discard_persistent_state)
        handle = await self._enter_on("close", handle, reason=reason,
                                      discard_persistent_state=discard)
        session = self._current(handle)
        if session is not None:
            session.cancel.set()
            del self._sessions[handle.session_key]
            self._dead.discard(handle.session_key)

    async def get_capabilities(
        self, *, handle: AcpRuntimeHandle | None = None
    ) -> AcpRuntimeCapabilities:
        if handle is None:
            await self._enter("get_capabilities")
        else:  # a session that is not running: ACP_SESSION_NOT_FOUND, as the real one
            self._require(await self._enter_on("get_capabilities", handle))
        return self._capabilities

    async def get_status(self, *, handle: AcpRuntimeHandle) -> AcpRuntimeStatus:
        """``summary`` is ``"running"`` during a turn, ``"idle"`` otherwise, ``"dead"`` after
        :meth:`kill_session`, ``"closed"`` for an unknown session (``alive=False``)."""
        handle = await self._enter_on("get_status", handle)
        session = self._current(handle)
        if session is None:
            return AcpRuntimeStatus(summary="closed", alive=False)
        dead = handle.session_key in self._dead
        return AcpRuntimeStatus(
            summary="dead" if dead else ("running" if session.turn_running else "idle"),
            backend_session_id=handle.backend_session_id,
            alive=not dead,
            current_mode=session.mode,
            details={"turns": session.turns, "options": dict(session.options)},
        )

    async def set_mode(self, *, handle: AcpRuntimeHandle, mode: str) -> None:
        mode = text_arg("mode", mode)
        self._require(await self._enter_on("set_mode", handle, mode=mode)).mode = mode

    async def set_config_option(
        self, *, handle: AcpRuntimeHandle, key: str, value: str | bool
    ) -> None:
        key, value = config_option_args(key, value)
        handle = await self._enter_on("set_config_option", handle, key=key, value=value)
        self._require(handle).options[key] = value

    async def prepare_fresh_session(self, *, session_key: str) -> None:
        """Drop the session so the next ``ensure_session`` opens a new one."""
        session_key = text_arg("session_key", session_key)
        await self._enter("prepare_fresh_session", session_key)
        session = self._sessions.pop(session_key, None)
        if session is not None:
            session.cancel.set()
        self._dead.discard(session_key)

    async def doctor(self) -> DoctorReport:
        await self._enter("doctor")
        ok = self.is_healthy()
        return DoctorReport(ok=ok, message="stub runtime ready" if ok else "stub runtime unhealthy")

    async def probe_availability(self) -> None:
        await self._enter("probe_availability")
        self._probed = True

    def is_healthy(self) -> bool:
        return self._healthy and self._probed and not self._closed

    def set_healthy(self, healthy: bool) -> None:
        """Change what :meth:`is_healthy` answers."""
        self._healthy = healthy

    async def sweep_dead_sessions(self) -> int:
        """Remove sessions killed with :meth:`kill_session`; return how many."""
        await self._enter("sweep_dead_sessions")
        dead = [k for k in self._dead if k in self._sessions]
        for key in dead:
            del self._sessions[key]
        self._dead.clear()
        return len(dead)

    async def aclose(self) -> None:
        """Close every session (running turns end cancelled) and refuse further calls."""
        await self._enter("aclose")
        self._closed = True
        for session in self._sessions.values():
            session.cancel.set()
        self._sessions.clear()
        self._dead.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._sessions)} sessions"
        return f"<StubRuntime {state}, {len(self.calls)} calls>"


if TYPE_CHECKING:  # mypy proves StubRuntime implements the whole AcpRuntimeProtocol protocol

    def _conforms(stub: StubRuntime) -> AcpRuntimeProtocol:
        return stub
