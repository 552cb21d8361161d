"""Driving one prompt turn: the prompt request, its deadlines, cancel, and the final event.

Guarantees of :func:`drive_turn`: the turn always gets exactly one final event (``DoneEvent``
or ``ErrorEvent``), even when the driver itself is cancelled; whenever the agent can no longer
be trusted (timeout, unanswered cancel, crash, protocol error) its tree is killed before the
final event is queued, so a consumer that sees the error also sees a closed lease.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any

import msgspec
import trio

from acpx_trio._acp import CancelNotification, PromptRequest, PromptResponse, text_block
from acpx_trio._errors import AcpConnectionClosedError, AcpProtocolError, AcpRuntimeError
from acpx_trio._events import AcpRuntimeEvent, DoneEvent, ErrorEvent
from acpx_trio._log import Logger
from acpx_trio._runtime.auth import auth_required_error, is_auth_required
from acpx_trio._runtime.live_session import LiveSession, Turn
from acpx_trio._runtime.turn_redaction import TurnRedactor
from acpx_trio._runtime.update_map import token_usage

__all__ = [
    "CANCEL_WAIT_SECONDS",
    "abandon_turn",
    "drive_turn",
    "send_cancel",
    "settle_abandoned",
    "stream_turn",
    "turn_error",
]

#: How long a cancelled turn waits for the agent's ``cancelled`` answer before killing it.
CANCEL_WAIT_SECONDS = 2.5
#: Bound on the wait of a consumer that abandons a turn (cancel wait + kill + lease writes).
ABANDON_WAIT_SECONDS = CANCEL_WAIT_SECONDS + 15.0

Retire = Callable[[LiveSession, str], Awaitable[None]]
_FINAL_EVENTS: frozenset[type[Any]] = frozenset({DoneEvent, ErrorEvent})


async def stream_turn(  # noqa: ASYNC900  # consumers use contextlib.aclosing
    session: LiveSession, text: str, *, nursery: trio.Nursery, turn_timeout: float | None,
    retire: Retire, log: Logger, secrets: Iterable[str] = (), meta: dict[str, Any] | None = None,
) -> AsyncGenerator[list[AcpRuntimeEvent], None]:
    """Run one turn on ``session``; yields its events in non-empty lists, in wire order (one
    list per read batch), the last list ending with the one final event.  A busy session
    yields ``[ErrorEvent(ACP_SESSION_BUSY)]``.  If the consumer leaves early (``aclose``,
    cancel), it leaves at once: the turn is cancelled at the agent in the runtime's nursery
    (the agent's answer awaited :data:`CANCEL_WAIT_SECONDS`, then its tree killed; a oneshot
    session closed): see :func:`settle_abandoned` for the next turn.
    Every credential in ``secrets`` is redacted from the events, also
    when the agent streams it split across pieces (:class:`TurnRedactor`).  ``meta`` goes to
    the agent as the prompt's ``_meta``."""
    if session.turn is not None:
        yield [ErrorEvent(
            code="ACP_SESSION_BUSY", retryable=True,
            message=f'ACP session "{session.session_key}" is already running a turn; '
            "wait for it to finish or cancel it.",
        )]
        await trio.lowlevel.checkpoint()
        return
    turn = Turn(text)
    turn.meta = meta
    session.turn = turn
    session.turns_run += 1
    nursery.start_soon(functools.partial(
        drive_turn, session, turn, turn_timeout=turn_timeout, retire=retire, log=log
    ))
    finished = False
    redactor = TurnRedactor(secrets)
    try:
        while not finished:
            batch = await turn.receive_batch()
            finished = type(batch[-1]) in _FINAL_EVENTS
            batch = redactor.batch(batch)
            if batch:
                yield batch
        await trio.lowlevel.checkpoint()
    finally:
        if not finished:
            turn.abandon()  # its events are dropped from now on
            settled = session.settled = trio.Event()
            try:
                nursery.start_soon(abandon_turn, session, turn, retire, settled)
            except RuntimeError:  # a closed nursery: its agents are gone with it
                settled.set()


async def settle_abandoned(session: LiveSession) -> None:
    """Wait (bounded, cancellable) while the cancel of a turn whose consumer left early is
    still under way, so the next turn finds the session idle, or gone when its agent had to
    be killed or it was a oneshot session."""
    settled = session.settled
    if settled is not None:
        with trio.move_on_after(ABANDON_WAIT_SECONDS):
            await settled.wait()


async def send_cancel(session: LiveSession, turn: Turn) -> None:
    """Mark the turn cancelling (the agent gets :data:`CANCEL_WAIT_SECONDS` to answer) and
    send ``session/cancel`` if the prompt went out.  Bounded; never raises."""
    turn.request_cancel(CANCEL_WAIT_SECONDS)
    proc = session.process
    if not turn.prompt_sent or proc is None or proc.connection is None:
        return
    with trio.move_on_after(1.0), contextlib.suppress(AcpRuntimeError):
        params = CancelNotification(session_id=session.backend_session_id or "")
        await proc.connection.notify("session/cancel", params)


async def abandon_turn(session: LiveSession, turn: Turn, retire: Retire,
                       settled: trio.Event) -> None:
    """The consumer left early (a task of the runtime's nursery, bounded): drop its queue,
    cancel the turn at the agent, wait for the driver; a oneshot session is closed.
    ``settled`` is set at the end, whatever happens."""
    try:
        turn.abandon()
        if not turn.finished.is_set():
            with trio.move_on_after(ABANDON_WAIT_SECONDS):
                await send_cancel(session, turn)
                await turn.finished.wait()
        if session.mode == "oneshot":
            await retire(session, "oneshot turn abandoned")
    finally:
        settled.set()
        if session.settled is settled:
            session.settled = None


def turn_error(session: LiveSession, code: str, message: str, retryable: bool) -> ErrorEvent:
    """An error event for a turn whose agent is gone: how it ended plus its stderr tail."""
    proc = session.process
    if not message:
        exit_text = proc.describe_exit() if proc is not None else "the agent is gone"
        message = f"The ACP turn failed: {exit_text}."
    tail = proc.stderr_tail().strip() if proc is not None else ""
    if tail:
        message += f"\n--- agent stderr (tail) ---\n{tail[-4000:]}"
    return ErrorEvent(code=code, message=message, retryable=retryable)


#: Lines of the agent's stderr tail kept in a timed-out turn's detail.
TIMEOUT_STDERR_LINES = 5


def timeout_detail(session: LiveSession) -> str | None:
    """Why a turn that never ended may have stalled: the last error the agent reported in
    ``_meta`` during the turn and the last lines of its (redacted) stderr; ``None`` when the
    agent said nothing."""
    parts: list[str] = []
    if session.agent_error:
        parts.append(f"the agent reported: {session.agent_error}")
    proc = session.process
    tail = proc.stderr_tail().strip() if proc is not None else ""
    if tail:
        lines = tail.splitlines()[-TIMEOUT_STDERR_LINES:]
        parts.append("agent stderr (last lines):\n" + "\n".join(lines))
    return "\n".join(parts) or None


def prompt_error_event(session: LiveSession, exc: AcpRuntimeError) -> ErrorEvent:
    """The final event of a turn the agent answered with a JSON-RPC error: ``ACP_TURN_FAILED``
    with the agent's rpc code, data and detail, or ``ACP_AUTH_REQUIRED`` (listing the auth
    methods and the environment variables that would satisfy them)."""
    if is_auth_required(exc):
        methods = session.init.auth_methods if session.init is not None else []
        return ErrorEvent.from_error(
            auth_required_error(methods, exc, session.spec.name, session.spec.command)
        )
    return ErrorEvent(
        code="ACP_TURN_FAILED", message=exc.message, retryable=False, rpc_code=exc.rpc_code,
        rpc_data=exc.rpc_data, detail=exc.detail,
    )


async def drive_turn(
    session: LiveSession, turn: Turn, *, turn_timeout: float | None, retire: Retire, log: Logger
) -> None:
    """Run the turn to its end (see the module docstring).  Never raises except
    ``Cancelled``, and even then the turn is finished first."""
    final: AcpRuntimeEvent | None = None
    try:
        final = await _prompt(session, turn, turn_timeout=turn_timeout, retire=retire, log=log)
    finally:
        if session.turn is turn:
            session.turn = None
        turn.finish(final or DoneEvent(stop_reason="cancelled"))


async def _prompt(
    session: LiveSession, turn: Turn, *, turn_timeout: float | None, retire: Retire, log: Logger
) -> AcpRuntimeEvent:
    final: AcpRuntimeEvent | None = None
    failure: tuple[str, str, bool] | None = None  # (code, message, retryable): agent gone
    kill_reason: str | None = None
    answered_error = False  # the agent answered the prompt with a JSON-RPC error
    denied_before = session.policy.stats.denied
    try:
        if turn.cancelling:  # cancelled before the prompt was sent
            return DoneEvent(stop_reason="cancelled")
        with trio.CancelScope() as scope:
            turn.wait_scope = scope
            if turn_timeout is not None:
                scope.deadline = trio.current_time() + turn_timeout
            turn.prompt_sent = True
            session.agent_error = None
            params = PromptRequest(
                session_id=session.backend_session_id or "", prompt=[text_block(turn.text)],
                meta=turn.meta,
            )
            response = await session.connection.request("session/prompt", params, PromptResponse)
            stop_reason = response.stop_reason
            if turn.cancelling and stop_reason != "cancelled":
                # the spec asks for ``cancelled``; whatever the agent says, the turn the
                # caller cancelled (or timed out) reads as one
                log.info("the agent answered a cancelled turn with a stopReason other than "
                         "'cancelled'; it ends cancelled")
                stop_reason = "cancelled"
            final = DoneEvent(stop_reason=stop_reason, usage=token_usage(response.usage))
        if scope.cancelled_caught:
            if turn.cancelling or turn.closed_reason:
                final = DoneEvent(stop_reason="cancelled")
                kill_reason = "the agent did not answer the cancel in time"
            else:
                final = ErrorEvent(
                    code="ACP_TURN_TIMEOUT", retryable=True,
                    message=f"The ACP turn did not finish within {turn_timeout:g}s "
                    "(timeoutSeconds); the agent was stopped.",
                    detail=timeout_detail(session),
                )
                kill_reason = "turn timed out"
    except AcpProtocolError as exc:
        failure, kill_reason = (exc.code, exc.message, False), "protocol error"
    except AcpConnectionClosedError:
        kill_reason = "connection closed"
        if turn.closed_reason is not None:
            final = DoneEvent(stop_reason="cancelled")
        else:
            failure = ("ACP_TURN_FAILED", "", True)
    except AcpRuntimeError as exc:  # the agent answered the prompt with an error: still alive
        final = prompt_error_event(session, exc)
        answered_error = final.code == "ACP_TURN_FAILED"
    except Exception as exc:
        log.exception("ACP turn driver failed: %r", exc)
        failure, kill_reason = ("ACP_TURN_FAILED", f"internal error: {exc!r}", False), "bug"
    if kill_reason is not None:
        await retire(session, kill_reason)
    if failure is not None:
        final = turn_error(session, *failure)
    if turn.failure is not None and (not isinstance(final, ErrorEvent) or answered_error):
        # a refusal that fails the turn wins over the agent's own error about it (exit 5
        # whichever way the agent reacts to the refusal)
        final = ErrorEvent.from_error(turn.failure)
    elif answered_error and session.policy.stats.denied > denied_before:
        assert isinstance(final, ErrorEvent)
        final = msgspec.structs.replace(
            final, code="ACP_PERMISSION_DENIED",
            message=f"The turn failed after a permission was refused: {final.message}",
        )
    assert final is not None
    return final
