"""Newline-delimited framing with a hard line-length limit.

ACP over stdio carries one JSON-RPC message per line.  :class:`LineSplitter` is the synchronous
core (no I/O, so property tests drive it directly); :class:`LineReader` wraps it around a Trio
:class:`~trio.abc.ReceiveStream`.
"""

from __future__ import annotations

import trio

from acpx_trio._errors import AcpProtocolError

__all__ = ["DEFAULT_MAX_LINE_BYTES", "LineReader", "LineSplitter", "line_too_long_error"]

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
"""Default limit on one line (one ACP message), newline excluded: 8 MiB."""

_RECEIVE_SIZE = 64 * 1024


def line_too_long_error(max_line_bytes: int) -> AcpProtocolError:
    """The error raised for a line longer than ``max_line_bytes`` (code ``ACP_LINE_TOO_LONG``)."""
    return AcpProtocolError(
        f"the agent sent a line longer than the limit of {max_line_bytes} bytes "
        "(one ACP message per line); raise the limit with max_line_bytes= "
        "if this agent legitimately sends messages that large",
        code="ACP_LINE_TOO_LONG",
    )


class LineSplitter:
    """Splits a byte stream into ``\\n``-terminated lines, enforcing ``max_line_bytes``.

    Guarantees:

    - :meth:`feed` returns every line completed by the data fed so far, in order, without the
      ``\\n``.  Empty lines are returned too (as ``b""``).
    - No line longer than ``max_line_bytes`` (newline excluded) is ever returned.  As soon as the
      data fed proves that a line is too long, the splitter fails with
      :class:`AcpProtocolError` (``ACP_LINE_TOO_LONG``).  Lines completed before the oversized
      one are still returned first: in that case the error is raised by the *next* call.  Once
      failed, every later call raises the same error.
    - It never buffers more than ``max_line_bytes`` plus the size of the last chunk fed.
    - Scanning is linear in the data fed, however the lines are chunked.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        self._max = max_line_bytes
        self._buf = bytearray()
        self._error: AcpProtocolError | None = None

    @property
    def max_line_bytes(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held for the current, incomplete line."""
        return len(self._buf)

    @property
    def error(self) -> AcpProtocolError | None:
        """The pending or raised oversize error, if the stream has been proven bad."""
        return self._error

    def _fail(self) -> AcpProtocolError:
        # Clear in place: ``feed``'s local alias of the buffer is kept alive by the traceback
        # of the error we raise (and store), which would pin up to max_line_bytes until the
        # cyclic GC ran.
        self._buf.clear()
        self._error = line_too_long_error(self._max)
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Adds ``data``; returns the lines it completes.  Raises as described on the class."""
        block = self.feed_block(data)
        return [] if block is None else block.split(b"\n")

    def feed_block(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """:meth:`feed` without the split: the lines ``data`` completes, still joined by
        ``\\n`` as on the wire (their last ``\\n`` dropped), or ``None`` if it completes
        none.  ``block.split(b"\\n")`` is exactly what :meth:`feed` returns; same guarantees."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if isinstance(data, memoryview):
            data = data.tobytes()
        last = data.rfind(b"\n")
        if last < 0:
            buf += data
            if len(buf) > self._max:
                raise self._fail()
            return None
        # At least one line ends in ``data``: the buffered partial line and the lines
        # completed are copied once, into the block; the rest starts the next partial line.
        view = memoryview(data)
        block = b"".join((buf, view[:last]))
        buf.clear()
        buf += view[last + 1 :]
        limit = self._max
        if len(block) > limit:  # else no line in it can be
            lines = block.split(b"\n")
            if max(map(len, lines)) > limit:
                first_bad = next(i for i, line in enumerate(lines) if len(line) > limit)
                err = self._fail()
                if first_bad:
                    return b"\n".join(lines[:first_bad])
                raise err
        if len(buf) > limit:
            self._fail()  # raised by the next call, after these lines
        return block

    def finish(self) -> bytes | None:
        """Ends the stream: returns the unterminated last line, or None if there is none.

        Raises the pending oversize error, if any.  The splitter is empty afterwards.
        """
        if self._error is not None:
            raise self._error
        if not self._buf:
            return None
        line = bytes(self._buf)
        self._buf = bytearray()
        return line


class LineReader:
    """Reads lines from a Trio receive stream with a hard length limit.

    - :meth:`receive_line` returns the next line without its ``\\n``; ``None`` at clean EOF
      (and on every call after).  An unterminated last line before EOF is returned as a line.
    - A line over ``max_line_bytes`` raises :class:`AcpProtocolError` (``ACP_LINE_TOO_LONG``),
      after any complete lines that preceded it; every later call raises it again.
    - Cancellation is safe: a cancelled call loses no data; the next call carries on.
    - Errors of the underlying stream (``trio.BrokenResourceError`` ...) propagate unchanged.
    """

    def __init__(
        self,
        receive_stream: trio.abc.ReceiveStream,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        *,
        receive_size: int = _RECEIVE_SIZE,
    ) -> None:
        self._stream = receive_stream
        self._splitter = LineSplitter(max_line_bytes)
        self._lines: list[bytes] = []
        self._next = 0
        self._eof = False
        self._receive_size = receive_size

    @property
    def max_line_bytes(self) -> int:
        return self._splitter.max_line_bytes

    async def receive_block(self) -> bytes | None:
        """Every complete line available now (at least one), still joined by ``\\n`` as on
        the wire (see :meth:`LineSplitter.feed_block`), or ``None`` at clean EOF.

        One checkpoint per call, not per line: a reader that handles lines synchronously
        processes a burst of messages in one scheduler pass, and one that decodes the block
        whole never splits it.  Same error and cancellation guarantees as
        :meth:`receive_line`."""
        if self._next < len(self._lines):  # left by receive_line
            await trio.lowlevel.checkpoint()
            block = b"\n".join(self._lines[self._next :])
            self._lines = []
            self._next = 0
            return block
        splitter = self._splitter
        while True:
            error = splitter.error
            if error is not None:
                raise error
            if self._eof:
                await trio.lowlevel.checkpoint()
                return None
            data = await self._stream.receive_some(self._receive_size)
            if not data:
                self._eof = True
                last = splitter.finish()
                if last is not None:
                    return last
                continue
            completed = splitter.feed_block(data)
            if completed is not None:
                return completed

    async def receive_line(self) -> bytes | None:
        if self._next < len(self._lines):
            await trio.lowlevel.checkpoint()  # before taking the line: a cancel loses none
        else:
            block = await self.receive_block()
            if block is None:
                return None
            self._lines = block.split(b"\n")
            self._next = 0
        line = self._lines[self._next]
        self._next += 1
        if self._next == len(self._lines):
            self._lines = []
            self._next = 0
        return line
