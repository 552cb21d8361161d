"""One warm session in the owner: a FIFO of turns and the worker task that runs them.

Guarantees:

* Turns of a session run one at a time, in arrival order (one writer per ACP session).
* A cancel for a queued turn removes it (it ends ``cancelled`` without reaching the agent); a
  cancel that arrives while the turn is starting (agent start-up, ``session/load``) is kept and
  applied when the turn becomes active — it then ends ``cancelled`` without a prompt being
  sent; a cancel of the active turn is ``session/cancel`` through the runtime.
* Every queued turn gets exactly one final event (``done`` or ``error``), also when the session
  is closed or the owner stops; a client that went away never blocks the worker.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Callable
from contextlib import aclosing, suppress
from typing import Any, Literal

import trio

from acpx_trio._acp import stream_tap
from acpx_trio._errors import AcpxError
from acpx_trio._events import AcpRuntimeEvent, AcpRuntimeHandle, DoneEvent, ErrorEvent
from acpx_trio._owner.wire import EventFrame, PromptRequest, Reply
from acpx_trio._store.transcript import TranscriptWriter

__all__ = ["QueuedTurn", "WarmSession"]

TurnState = Literal["queued", "starting", "active", "done"]
#: Frames buffered per waiting client before the worker waits for it (backpressure).
CLIENT_BUFFER = 1024


class QueuedTurn:
    """A prompt waiting for, or holding, its session."""

    def __init__(self, request: PromptRequest) -> None:
        self.request = request
        self.state: TurnState = "queued"
        self.cancel_requested = False
        self.final_sent = False
        self.send: trio.MemorySendChannel[Reply] | None = None
        self.receive: trio.MemoryReceiveChannel[Reply] | None = None
        if request.wait:
            self.send, self.receive = trio.open_memory_channel[Reply](CLIENT_BUFFER)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    async def emit(self, event: AcpRuntimeEvent, agent_pid: int | None) -> None:
        """Forward ``event`` to the waiting client (if any is still there)."""
        final = isinstance(event, DoneEvent | ErrorEvent)
        if self.final_sent:
            return
        self.final_sent = final
        if self.send is not None:
            frame = EventFrame(request_id=self.request_id, event=event, agent_pid=agent_pid)
            try:
                await self.send.send(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.send = None  # the client went away; the turn goes on
        if final and self.send is not None:
            await self.send.aclose()
            self.send = None

    async def end_cancelled(self) -> None:
        await self.emit(DoneEvent(stop_reason="cancelled"), None)

    def abort(self) -> None:
        """End the turn ``cancelled`` without waiting for the client (shutdown path)."""
        if self.final_sent:
            return
        self.final_sent = True
        send, self.send = self.send, None
        if send is not None:
            frame = EventFrame(request_id=self.request_id,
                               event=DoneEvent(stop_reason="cancelled"))
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(frame)
            send.close()


class WarmSession:
    """A session key the owner keeps warm.  ``worker`` runs in the owner's nursery."""

    def __init__(self, *, key: str, runtime: Any, ttl_seconds: float,
                 on_change: Callable[[], None],
                 transcript: TranscriptWriter | None = None) -> None:
        self.key = key
        self.transcript = transcript
        self.runtime = runtime
        self.ttl_seconds = ttl_seconds
        self.agent = ""
        self.handle: AcpRuntimeHandle | None = None
        self.queue: collections.deque[QueuedTurn] = collections.deque()
        self.active: QueuedTurn | None = None
        self.idle_since = trio.current_time()
        self.closing = False
        self.worker_scope = trio.CancelScope()
        self.worker_done = trio.Event()
        self._wake = trio.Event()
        self._on_change = on_change

    # -- queries ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.active is not None or bool(self.queue)

    def expires_at(self) -> float:
        """When the idle TTL runs out (``inf``: busy, or TTL 0 = forever).  A session whose
        agent never started (its only turn failed at start-up) expires at once."""
        if self.busy:
            return math.inf
        if self.handle is None:
            return self.idle_since
        if self.ttl_seconds <= 0:
            return math.inf
        return self.idle_since + self.ttl_seconds

    @property
    def agent_pid(self) -> int | None:
        return None if self.handle is None else self.handle.agent_pid

    # -- changes ----------------------------------------------------------------------------
    def enqueue(self, turn: QueuedTurn) -> int:
        """Append ``turn``; returns how many turns go before it."""
        position = len(self.queue) + (1 if self.active is not None else 0)
        self.queue.append(turn)
        self._wake.set()
        self._on_change()
        return position

    async def cancel(self, request_id: str | None) -> bool:
        """Cancel ``request_id`` (queued or active) or, with ``None``, the active turn.
        Returns whether there was something to cancel."""
        if request_id is not None:
            for turn in self.queue:
                if turn.request_id == request_id:
                    self.queue.remove(turn)
                    self._on_change()
                    await turn.end_cancelled()
                    return True
        active = self.active
        if active is None or (request_id is not None and active.request_id != request_id):
            return False
        active.cancel_requested = True
        if active.state == "active" and self.handle is not None:
            # AcpxError: the session is already gone, the turn ends on its own.
            with contextlib.suppress(AcpxError):
                await self.runtime.cancel(handle=self.handle, reason="cancelled by a client")
        return True

    async def close(self) -> None:
        """Stop the worker (queued and active turns end ``cancelled``) and end the agent."""
        self.closing = True
        self.worker_scope.cancel()
        self._wake.set()
        await self.worker_done.wait()
        handle, self.handle = self.handle, None
        if handle is not None:
            with suppress(AcpxError):
                await self.runtime.close(handle=handle, reason="warm session closed")

    # -- the worker -------------------------------------------------------------------------
    async def worker(self) -> None:
        """Run queued turns one after another until :meth:`close`.  Every agent this task
        starts reports its messages to the session's transcript (when there is one)."""
        if self.transcript is not None:
            stream_tap.set(self.transcript.on_chunk)
        try:
            with self.worker_scope:
                while not self.closing:
                    if not self.queue:
                        self._wake = trio.Event()
                        await self._wake.wait()
                        continue
                    turn = self.queue.popleft()
                    self.active = turn
                    turn.state = "starting"
                    self._on_change()
                    try:
                        await self._run(turn)
                        if self.transcript is not None:
                            await self.transcript.flush()
                    finally:
                        turn.abort()  # no-op when the turn already got its final event
                        turn.state = "done"
                        self.active = None
                        self.idle_since = trio.current_time()
                        self._on_change()
        finally:
            if self.transcript is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await self.transcript.aclose()
            leftovers = ([self.active] if self.active else []) + list(self.queue)
            self.queue.clear()
            for turn in leftovers:
                turn.abort()
            self.worker_done.set()
            self._on_change()

    async def _run(self, turn: QueuedTurn) -> None:
        req = turn.request
        if turn.cancel_requested:
            await turn.end_cancelled()
            return
        try:
            self.handle = await self.runtime.ensure_session(
                session_key=self.key, agent=req.agent, mode="persistent", cwd=req.cwd)
        except AcpxError as exc:
            await turn.emit(ErrorEvent.from_error(exc), None)
            return
        self.agent = req.agent
        if turn.cancel_requested:  # kept while starting: applied now, before any prompt
            await turn.end_cancelled()
            return
        handle = self.handle
        pid = handle.agent_pid
        # No checkpoint between here and the first ``__anext__``: the runtime registers the
        # turn synchronously there, so a cancel that sees ``active`` reaches the agent.
        turn.state = "active"
        try:
            async with aclosing(self.runtime.run_turn(handle=handle, text=req.text,
                                                      request_id=req.request_id)) as events:
                async for event in events:
                    await turn.emit(event, pid)
        except AcpxError as exc:  # a problem of the call (e.g. the session died meanwhile)
            await turn.emit(ErrorEvent.from_error(exc), pid)
            return
        if not turn.final_sent:
            await turn.emit(ErrorEvent(code="ACP_TURN_FAILED",
                                       message="the turn ended without a result"), pid)
