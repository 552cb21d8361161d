"""One warm session in the owner: a FIFO of turns and the worker task that runs them.

Guarantees:

* Turns of a session run one at a time, in arrival order (one writer per ACP session).
* A cancel for a queued turn removes it (it ends ``cancelled`` without reaching the agent); a
  cancel that arrives while the turn is starting (agent start-up, ``session/load``) is kept and
  applied when the turn becomes active — it then ends ``cancelled`` without a prompt being
  sent; a cancel of the active turn is ``session/cancel`` through the runtime.
* Every queued turn gets exactly one final event (``done`` or ``error``), also when the session
  is closed or the owner stops; a client that went away never blocks the worker.
* A turn with ``timeout_seconds`` is bounded from the moment it leaves the queue: start-up past
  the deadline is abandoned (nothing keeps running), a running turn gets ``session/cancel``
  (the agent is killed if it does not stop in the runtime's cancel bound) and ends with
  ``ACP_TURN_TIMEOUT``; the session stays warm when the agent honoured the cancel.
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
from acpx_trio._owner.wire import EventFrame, PromptRequest, encode_frame, encode_frames
from acpx_trio._store.caps import TURN_OVERHEAD_BYTES
from acpx_trio._store.transcript import TranscriptWriter

__all__ = ["QueuedTurn", "WarmSession"]

TurnState = Literal["queued", "starting", "active", "done"]
#: What goes to a waiting client's stream in one hand-off: the frames of one batch of the
#: turn's events (all the runtime had read since the last one), encoded, one line each.
FrameBatch = bytes
#: Batches buffered per waiting client before the worker waits for it (backpressure); the
#: channel holds one more, kept for the final frame :meth:`QueuedTurn.abort` may have to add.
CLIENT_BUFFER = 1024
#: ... and bytes of those frames: a client that stops reading (Ctrl-Z) holds at most this
#: much of the owner's memory until it is dropped, whatever the size of the agent's lines
#: (1,024 frames of 4 MB lines held 1.2 GiB); one batch larger than that alone is let
#: through (the runtime held it already).
CLIENT_BUFFER_BYTES = 16 * 1024 * 1024


class QueuedTurn:
    """A prompt waiting for, or holding, its session."""

    def __init__(self, request: PromptRequest) -> None:
        self.request = request
        self.state: TurnState = "queued"
        self.cancel_requested = False
        self.final_sent = False
        #: Bytes this turn holds while queued: its text and what the owner keeps for any
        #: turn (so a flood of empty prompts meets the queue caps too).
        self.size = len(request.text.encode("utf-8", "surrogatepass")) + TURN_OVERHEAD_BYTES
        self.timed_out = False
        self.send: trio.MemorySendChannel[FrameBatch] | None = None
        #: bytes of the batches in the client's channel (see :data:`CLIENT_BUFFER_BYTES`)
        self.buffered = 0
        self._taken = trio.Event()
        self.receive: trio.MemoryReceiveChannel[FrameBatch] | None = None
        if request.wait:
            self.send, self.receive = trio.open_memory_channel[FrameBatch](CLIENT_BUFFER + 1)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def batches(self) -> int:
        """Batches in the client's channel, not yet taken by its stream."""
        return 0 if self.send is None else self.send.statistics().current_buffer_used

    async def emit(self, event: AcpRuntimeEvent, agent_pid: int | None) -> None:
        """:meth:`emit_many` of one event."""
        await self.emit_many([event], agent_pid)

    async def emit_many(self, events: list[AcpRuntimeEvent], agent_pid: int | None) -> None:
        """Forward ``events`` (non-empty; only the last may be final) to the waiting client
        as one batch (if the client is still there).  A final event counts as sent only once
        it is in the client's channel: cancelled before that (a close landing as the turn
        ends), the turn has no final yet and :meth:`abort` sends one, so no waiting client is
        left with heartbeats and no end."""
        final = isinstance(events[-1], DoneEvent | ErrorEvent)
        if self.final_sent:
            return
        if self.send is not None:
            rid = self.request_id
            batch = encode_frames([EventFrame(request_id=rid, event=event, agent_pid=agent_pid)
                                   for event in events])
            size = len(batch)
            while self.send is not None and (self.batches >= CLIENT_BUFFER or (
                    self.buffered and self.buffered + size > CLIENT_BUFFER_BYTES)):
                await self._taken.wait()  # the client reads, or goes (see :meth:`taken`)
                self._taken = trio.Event()
            try:
                if self.send is not None:
                    await self.send.send(batch)  # never waits: a slot is free (see above)
                    self.buffered += size
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.send = None  # the client went away; the turn goes on
        if final:
            self.final_sent = True
            if self.send is not None:
                self.send.close()  # no schedule point: nothing can come between
                self.send = None

    def taken(self, batch: FrameBatch | None) -> None:
        """The client's stream took ``batch`` off the channel (``None``: the client is gone,
        nothing more will be taken): the worker may buffer more."""
        if batch is None:
            self.buffered = 0
            if self.send is not None:
                self.send.close()
                self.send = None
        else:
            self.buffered -= len(batch)
        self._taken.set()

    async def end_cancelled(self) -> None:
        await self.emit(DoneEvent(stop_reason="cancelled"), None)

    def abort(self) -> None:
        """End the turn ``cancelled`` without waiting for the client (shutdown path).  A
        client still there gets that final frame after what it has not read yet: the
        channel keeps a slot for it however far behind the client is."""
        if self.final_sent:
            return
        self.final_sent = True
        send, self.send = self.send, None
        if send is not None:
            frame = EventFrame(request_id=self.request_id,
                               event=DoneEvent(stop_reason="cancelled"))
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(encode_frame(frame))  # the kept slot: never WouldBlock
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
        #: Prompt bytes of the queued turns (the active one not counted).
        self.queued_bytes = 0
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
        self.queued_bytes += turn.size
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
                    self.queued_bytes -= turn.size
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
                    self.queued_bytes -= turn.size
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
            self.queued_bytes = 0
            for turn in leftovers:
                turn.abort()
            self.worker_done.set()
            self._on_change()

    async def _stream(self, turn: QueuedTurn, handle: AcpRuntimeHandle,
                      limit: float | None) -> None:
        """The turn's events to the client; the final one becomes ``ACP_TURN_TIMEOUT`` when
        the turn's timeout cancelled it."""
        pid = handle.agent_pid
        try:
            async with aclosing(self.runtime.run_turn_batches(
                    handle=handle, text=turn.request.text,
                    request_id=turn.request_id)) as batches:
                async for events in batches:
                    last = events[-1]
                    if turn.timed_out and (isinstance(last, ErrorEvent) or (
                            isinstance(last, DoneEvent) and last.stop_reason == "cancelled")):
                        events[-1] = ErrorEvent(
                            code="ACP_TURN_TIMEOUT",
                            message=f"the turn did not finish within its timeout "
                            f"({limit:g}s); cancelled it")
                    await turn.emit_many(events, pid)
        except AcpxError as exc:  # a problem of the call (e.g. the session died meanwhile)
            await turn.emit(ErrorEvent.from_error(exc), pid)

    async def _time_out(self, turn: QueuedTurn, handle: AcpRuntimeHandle,
                        deadline: float) -> None:
        await trio.sleep_until(deadline)
        turn.timed_out = True
        with contextlib.suppress(AcpxError):  # the session is gone: the turn ends anyway
            await self.runtime.cancel(handle=handle, reason="turn timeout")

    async def _run(self, turn: QueuedTurn) -> None:
        req = turn.request
        if turn.cancel_requested:
            await turn.end_cancelled()
            return
        limit = req.timeout_seconds
        deadline = math.inf if limit is None else trio.current_time() + limit
        try:
            with trio.move_on_at(deadline) as starting:
                handle: AcpRuntimeHandle = await self.runtime.ensure_session(
                    session_key=self.key, agent=req.agent, mode="persistent", cwd=req.cwd)
                self.handle = handle
                if req.model is not None:  # prompt --session --model: before the prompt
                    await self.runtime.set_model(handle=handle, model=req.model)
        except AcpxError as exc:
            await turn.emit(ErrorEvent.from_error(exc), None)
            return
        if starting.cancelled_caught:
            await turn.emit(ErrorEvent(
                code="ACP_TURN_TIMEOUT",
                message=f"the agent did not start within the turn's timeout ({limit:g}s)"), None)
            return
        self.agent = req.agent
        if turn.cancel_requested:  # kept while starting: applied now, before any prompt
            await turn.end_cancelled()
            return
        # No checkpoint between here and the first ``__anext__``: the runtime registers the
        # turn synchronously there, so a cancel that sees ``active`` reaches the agent.
        turn.state = "active"
        async with trio.open_nursery() as nursery:
            if limit is not None:
                nursery.start_soon(self._time_out, turn, handle, deadline)
            await self._stream(turn, handle, limit)
            nursery.cancel_scope.cancel()
        if not turn.final_sent:
            await turn.emit(ErrorEvent(code="ACP_TURN_FAILED",
                                       message="the turn ended without a result"),
                            handle.agent_pid)
