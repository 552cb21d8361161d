"""A tap on an agent's raw stdio, set through the task context.

``stream_tap`` holds a :data:`StreamTap` (or ``None``).  When it is set in a task, every agent
process that task starts (directly or through tasks it spawns: Trio tasks inherit the context
of the task that spawns them) has its stdin/stdout wrapped by :func:`tap_streams`, and the tap
sees every chunk written (``"out"``, whole messages) and read (``"in"``, raw chunks, lines may
be split across chunks).  One call per chunk, not per line: a busy stream pays almost nothing.
The tap must not raise or block.  It is how a warm session keeps its transcript without the
runtime knowing about it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Literal

import trio

__all__ = ["StreamTap", "stream_tap", "tap_streams"]

StreamTap = Callable[[Literal["in", "out"], bytes], None]
stream_tap: contextvars.ContextVar[StreamTap | None] = contextvars.ContextVar(
    "acpx_trio_stream_tap", default=None)


class _TapSend(trio.abc.SendStream):
    def __init__(self, inner: trio.abc.SendStream, tap: StreamTap) -> None:
        self._inner = inner
        self._tap = tap

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)
        self._tap("out", bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TapReceive(trio.abc.ReceiveStream):
    def __init__(self, inner: trio.abc.ReceiveStream, tap: StreamTap) -> None:
        self._inner = inner
        self._tap = tap

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        if data:
            self._tap("in", bytes(data))
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


def tap_streams(
    send: trio.abc.SendStream, receive: trio.abc.ReceiveStream
) -> tuple[trio.abc.SendStream, trio.abc.ReceiveStream]:
    """``(send, receive)`` wrapped with the context's :data:`stream_tap`, or as they are."""
    tap = stream_tap.get()
    if tap is None:
        return send, receive
    return _TapSend(send, tap), _TapReceive(receive, tap)
