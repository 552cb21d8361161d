"""One prompt turn's event queue (backpressure, batch hand-off) and its cancel state.

Guarantees: events come out in the order they went in; when the consumer lags by
:data:`HIGH_WATER` events, or by :data:`HIGH_WATER_BYTES` of the agent's lines behind them,
:attr:`Turn.room` is cleared (the agent reader waits on it) until it catches up (to
:data:`LOW_WATER` events, or to nothing queued for a byte lag), gives up, or the turn ends:
a consumer that stops reading holds at most about that much of the agent's output, one read
more, whatever the size of its lines.
"""

from __future__ import annotations

from typing import Any

import trio

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import AcpRuntimeEvent

__all__ = ["HIGH_WATER", "HIGH_WATER_BYTES", "LOW_WATER", "Turn"]

#: Events a consumer may lag behind before reading from the agent pauses.
HIGH_WATER = 256
LOW_WATER = HIGH_WATER // 2
#: ... and bytes of the agent's lines behind the queued events (256 events of 4 MB lines
#: held 1 GiB; counted per read batch, no cost per event).
HIGH_WATER_BYTES = 16 * 1024 * 1024
_BATCH = 64


class Turn:
    """One prompt turn: an ordered event queue with backpressure, and its cancel state.

    One consumer only.  The queue is a list plus a read index and a wake-up event: cheaper
    than a memory channel, which matters at tens of thousands of chunks per turn; a batch of
    events decoded from one read is handed to a waiting consumer without copying."""

    def __init__(self, text: str) -> None:
        self.text = text
        #: the prompt's ``_meta`` (the caller's, passed through)
        self.meta: dict[str, Any] | None = None
        self._queue: list[AcpRuntimeEvent] = []
        self._head = 0
        #: wire bytes behind the queued events (reset when the queue is drained)
        self.pending_bytes = 0
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

    def emit(self, event: AcpRuntimeEvent, size: int = 0) -> None:
        """Queue ``event``; ``size``: the bytes of the agent's line it came from."""
        if self.abandoned or self.done:
            self.late_updates += 1
            return
        self._queue.append(event)
        self.pending_bytes += size
        self._wake()
        self._check_lag()

    def emit_many(self, events: list[AcpRuntimeEvent], size: int = 0) -> None:
        """:meth:`emit` for a batch (the list is owned by the turn afterwards) that came
        from ``size`` bytes of the agent's lines."""
        if self.abandoned or self.done:
            self.late_updates += len(events)
            return
        if self._head == len(self._queue):
            self._queue = events
            self._head = 0
        else:
            self._queue += events
        self.pending_bytes += size
        self._wake()
        self._check_lag()

    def _check_lag(self) -> None:
        if (len(self._queue) - self._head >= HIGH_WATER
                or self.pending_bytes >= HIGH_WATER_BYTES) and self.room.is_set():
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
            self._clear()
        if left <= LOW_WATER and not self.room.is_set() and (
                self.pending_bytes < HIGH_WATER_BYTES):
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
        self._clear()
        if not self.room.is_set():
            self.room.set()
        return batch

    def _clear(self) -> None:
        """Nothing queued any more (a new list: a batch handed out keeps the old one)."""
        self._queue = []
        self._head = 0
        self.pending_bytes = 0

    def abandon(self) -> None:
        """The consumer left: drop queued events, accept no more, never block the reader."""
        self.abandoned = True
        self._clear()
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
