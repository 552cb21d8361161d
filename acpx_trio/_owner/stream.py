"""Writing to one client of the owner: bounded writes, a turn's frames, heartbeats.

Guarantees: no write to a client waits longer than :data:`CLIENT_SEND_SECONDS` (then
:class:`ClientStalled`: the caller drops the connection, the turn goes on); a turn's frames
are coalesced into writes of up to :data:`SEND_BATCH_BYTES` (a larger batch of the turn's
events goes in several, each bounded); a waiting client hears from the
owner at least every :data:`HEARTBEAT_SECONDS` (a
:class:`~acpx_trio._owner.wire.HeartbeatFrame` when there is nothing else to send).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from acpx_trio._owner.wire import HeartbeatFrame, encode_frame

__all__ = ["CLIENT_SEND_SECONDS", "HEARTBEAT_SECONDS", "ClientStalled", "send_bounded",
           "stream_turn"]

#: Bound of one write to a client (a client that does not read loses its stream).
CLIENT_SEND_SECONDS = 15.0
#: A waiting client gets a heartbeat frame after this long without any frame.
HEARTBEAT_SECONDS = 5.0
#: Frames a turn's stream coalesces into one write.
SEND_BATCH_BYTES = 256 * 1024


class ClientStalled(Exception):
    """A client did not take a write within :data:`CLIENT_SEND_SECONDS`."""


async def send_bounded(stream: trio.abc.SendStream,
                       data: bytes | bytearray | memoryview) -> None:
    """Write ``data``; :class:`ClientStalled` if the client does not take it in time."""
    with trio.move_on_after(CLIENT_SEND_SECONDS) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise ClientStalled


async def stream_turn(batches: trio.MemoryReceiveChannel[bytes],
                      stream: trio.abc.SendStream,
                      taken: Callable[[bytes], None] = lambda batch: None) -> None:
    """Forward a turn's batches of encoded frames until the channel ends (after the final
    frame), with a heartbeat after :data:`HEARTBEAT_SECONDS` of silence; ``taken`` hears of
    each batch taken off the channel."""
    heartbeat = encode_frame(HeartbeatFrame(owner_pid=os.getpid()))
    ended = False
    while not ended:
        batch: bytes | None = None
        with trio.move_on_after(HEARTBEAT_SECONDS):  # noqa: ASYNC912 (receive checkpoints)
            try:
                batch = await batches.receive()
            except trio.EndOfChannel:
                return
        if batch is None:
            await send_bounded(stream, heartbeat)
            continue
        taken(batch)
        parts, size = [batch], len(batch)
        while size < SEND_BATCH_BYTES:
            try:
                batch = batches.receive_nowait()
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                ended = True
                break
            taken(batch)
            parts.append(batch)
            size += len(batch)
        # each write bounded on its own: a client that keeps reading is never dropped
        # because one batch was large (16 MiB of an agent's long lines)
        view = memoryview(b"".join(parts))  # (one part: that same object, no copy)
        del parts
        for start in range(0, size, SEND_BATCH_BYTES):
            await send_bounded(stream, view[start : start + SEND_BATCH_BYTES])
