"""Terminal output of the command line: ordered, batched writes off the event loop.

:class:`Output` queues text for stdout and stderr and writes it from a worker thread, in the
order it was queued, so a slow reader of a pipe never stalls the event loop (signals, the
agent connection and timeouts keep working while a write blocks).  :class:`TurnPrinter` turns
runtime events into that text: the reply on stdout as it arrives, thoughts, tool calls and
status on stderr (prefixed, dimmed on a terminal), or one JSON object a line with ``--json``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec
import trio

from acpx_trio._cli.exits import EXIT_ERROR, EXIT_OK
from acpx_trio._cli.text import first_line, printable
from acpx_trio._events import (
    AgentUsage,
    DoneEvent,
    ErrorEvent,
    StatusEvent,
    TextDeltaEvent,
    ToolCallEvent,
)

__all__ = ["Output", "TurnPrinter", "finish_output", "format_table", "short_rpc_data",
           "usage_text"]

#: Status tags shown without ``--verbose`` (the rest is noise for a person).
_SHOWN_STATUS = frozenset({"plan", "current_mode_update", "elicitation", "elicitation_complete"})


#: Longest short form of an error's ``rpc_data`` on the human error line.
RPC_DATA_CHARS = 300
#: Text (characters) waiting to be written past which a turn's reader stops reading (see
#: :attr:`Output.full`): a stdout read slowly, or not at all, never makes the command hold
#: more than about this much.
OUTPUT_HIGH_WATER = 16 << 20
#: At most this many characters are handed to one blocking write.
OUTPUT_SLICE = 256 << 10
#: Once the turn is over, how long the command waits for stdout to take anything before it
#: gives up the rest (:func:`finish_output`).
STDOUT_STALL_SECONDS = 30.0


def short_rpc_data(data: Any) -> str | None:
    """A one-line form of a JSON-RPC error's ``data`` for people: validation errors as
    ``field: message`` (the official SDK's pydantic list), a string as itself, anything else
    as compact JSON; cut at :data:`RPC_DATA_CHARS`.  ``None`` when there is no data."""
    if data is None or data == "" or data == {} or data == []:
        return None
    if isinstance(data, list) and all(isinstance(d, dict) and "msg" in d for d in data):
        parts = []
        for d in data:
            loc = d.get("loc")
            where = ".".join(str(x) for x in loc) if isinstance(loc, list | tuple) else ""
            parts.append(f"{where}: {d['msg']}" if where else str(d["msg"]))
        text = "; ".join(parts)
    elif isinstance(data, str):
        text = data
    elif isinstance(data, dict) and len(data) == 1 and isinstance(
            data.get("details", data.get("message")), str):
        text = next(iter(data.values()))
    else:
        text = msgspec.json.encode(data).decode()
    text = " ".join(text.split())
    return text if len(text) <= RPC_DATA_CHARS else text[:RPC_DATA_CHARS - 3] + "..."


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces, header first, no trailing blanks."""
    cells = [[str(c) for c in header], *[[printable(str(c)) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _write_batch(batch: list[tuple[TextIO, str]], gone: list[TextIO]) -> None:
    """Write and flush ``batch``; a stream whose terminal hung up (``EIO``) joins ``gone``
    and is skipped from then on (a closed pipe still raises ``BrokenPipeError``)."""
    touched: list[TextIO] = []
    for stream, text in batch:
        if stream in gone:
            continue
        try:
            stream.write(text)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            gone.append(stream)
            continue
        if stream not in touched:
            touched.append(stream)
    for stream in touched:
        try:
            stream.flush()
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            gone.append(stream)


class Output:
    """Queue of writes to stdout/stderr, written in order by :meth:`run` in a worker thread.

    ``write`` never blocks; :meth:`drain` waits until everything queued so far is written.
    Without a running :meth:`run` task, :meth:`drain` writes the queue itself.  Text is
    written in slices of at most :data:`OUTPUT_SLICE` characters, so a slow stdout shows
    progress slice by slice.  A write that blocks forever (a pipe nobody reads) is abandoned
    when its waiter is cancelled; a terminal that hung up (SIGHUP, ``EIO``) is written no
    more, the command goes on.  A producer keeps the queue bounded by waiting in
    :meth:`wait_room` whenever :attr:`full` (until :meth:`unbound`: a command that is
    stopping takes the rest of its turn whatever stdout does)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out: TextIO = out if out is not None else sys.stdout
        self.err: TextIO = err if err is not None else sys.stderr
        self._pending: collections.deque[tuple[TextIO, str]] = collections.deque()
        #: streams whose terminal hung up: nothing more is written to them
        self._gone: list[TextIO] = []
        #: characters ever queued, and ever written (or given up on a hung-up terminal)
        self._queued = 0
        self._written = 0
        self._bounded = True
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._lock = trio.Lock()

    def write(self, text: str, *, err: bool = False) -> None:
        """Queue ``text`` for stderr (``err``) or stdout."""
        if text:
            self._pending.append((self.err if err else self.out, text))
            self._queued += len(text)
            self._wake.set()

    @property
    def unwritten(self) -> int:
        """Characters queued and not written yet."""
        return self._queued - self._written

    @property
    def full(self) -> bool:
        """Whether more than :data:`OUTPUT_HIGH_WATER` characters wait to be written."""
        return self._bounded and self._queued - self._written > OUTPUT_HIGH_WATER

    def unbound(self) -> None:
        """Stop bounding the queue (a signal asked the command to stop: the turn's end must
        be read whatever stdout does); wakes :meth:`wait_room`."""
        self._bounded = False
        self._progress.set()
        self._progress = trio.Event()

    async def wait_room(self) -> None:
        """Return once no more than :data:`OUTPUT_HIGH_WATER` characters wait to be written
        (or :meth:`unbound` was called).  Needs :meth:`run` running: the caller never
        writes itself, so :meth:`unbound` always frees it.  Cancellable."""
        await trio.lowlevel.checkpoint()
        while self.full:
            await self._progress.wait()

    async def _step(self) -> None:
        """Write a slice, or wait for the slice being written."""
        if self._pending and not self._lock.locked():
            await self._write_pending()
        else:
            await self._progress.wait()

    def _take_slice(self) -> list[tuple[TextIO, str]]:
        batch: list[tuple[TextIO, str]] = []
        room = OUTPUT_SLICE
        pending = self._pending
        while pending and room > 0:
            stream, text = pending[0]
            if len(text) > room:  # the rest stays first in the queue
                pending[0] = (stream, text[room:])
                text = text[:room]
            else:
                pending.popleft()
            batch.append((stream, text))
            room -= len(text)
        return batch

    async def _write_pending(self) -> None:
        async with self._lock:
            batch = self._take_slice()
            if batch:
                try:
                    await trio.to_thread.run_sync(_write_batch, batch, self._gone,
                                                  abandon_on_cancel=True)
                finally:
                    self._written += sum(len(text) for _stream, text in batch)
                    self._progress.set()
                    self._progress = trio.Event()

    async def run(self) -> None:
        """Write queued text as it comes, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending:
                await self._write_pending()

    async def drain(self) -> None:
        """Return once everything queued before this call has been written."""
        await self.drain_moving(math.inf)

    async def drain_moving(self, seconds: float) -> bool:
        """Wait until everything queued before this call has been written, giving up once
        stdout takes nothing for ``seconds``; whether everything was written."""
        target = self._queued
        while self._written < target:
            before = self._written
            with trio.move_on_after(seconds):
                await self._step()
                while self._written == before:  # a wake-up without a write is no progress
                    await self._step()
                continue
            return False
        return True

    async def emit(self, text: str, *, err: bool = False) -> None:
        """Queue ``text`` plus a newline and wait until it is written."""
        self.write(text + "\n", err=err)
        await self.drain()


async def finish_output(output: Output, code: int) -> int:
    """Wait until the command's output is written; the exit code: ``code``, or 1 in place
    of 0 when stdout took nothing for :data:`STDOUT_STALL_SECONDS` and the rest was given
    up (said on stderr when stderr takes it)."""
    if await output.drain_moving(STDOUT_STALL_SECONDS):
        return code
    message = (f"acpx-trio: stdout took nothing for {STDOUT_STALL_SECONDS:g}s: "
               f"{output.unwritten} characters of output were not written\n").encode()
    with trio.move_on_after(1), contextlib.suppress(OSError):
        await trio.to_thread.run_sync(os.write, 2, message, abandon_on_cancel=True)
    return EXIT_ERROR if code == EXIT_OK else code


class TurnPrinter:
    """Renders turn events onto an :class:`Output`.

    Text mode: the reply streams to stdout unchanged (a final newline is added if it lacks
    one); thoughts, tool calls and plan/mode status go to stderr as ``[thought] ...``-prefixed
    lines, dimmed when stderr is a terminal (``NO_COLOR`` disables).  JSON mode: every event is
    one JSON object on its own stdout line (NDJSON), exactly ``msgspec.json.encode(event)``."""

    def __init__(
        self, output: Output, *, json_mode: bool, verbose: bool = False, quiet: bool = False,
    ) -> None:
        self.output = output
        self.json_mode = json_mode
        self.verbose = verbose
        #: ``--format quiet``: the reply text only (no thought, tool or status lines; errors
        #: still go to stderr).
        self.quiet = quiet and not json_mode
        isatty = getattr(output.err, "isatty", None)
        self.dim = bool(isatty and isatty()) and not os.environ.get("NO_COLOR")
        out_isatty = getattr(output.out, "isatty", None)
        #: On a terminal the reply's control characters are shown escaped (newlines and
        #: tabs kept); a pipe or file gets the reply byte for byte.
        self.escape_reply = bool(out_isatty and out_isatty())
        self._encoder = msgspec.json.Encoder()
        self._reply_open = False  # reply text written that did not end with a newline
        self._thought = ""
        self._titles: dict[str, str] = {}

    def side(self, label: str, text: str) -> None:
        """One prefixed line per line of ``text`` on stderr (none in quiet mode)."""
        if self.quiet:
            return
        for line in text.rstrip("\n").splitlines() or [""]:
            body = f"[{label}] {printable(line)}".rstrip()
            self.output.write(f"\x1b[2m{body}\x1b[0m\n" if self.dim else body + "\n", err=True)

    def _flush_thought(self) -> None:
        if self._thought.strip():
            self.side("thought", self._thought)
        self._thought = ""

    def _end_reply_line(self) -> None:
        if self._reply_open:
            self.output.write("\n")
            self._reply_open = False

    def json(self, obj: Any) -> None:
        """One NDJSON line on stdout."""
        self.output.write(self._encoder.encode(obj).decode() + "\n")

    def event(self, ev: Any) -> None:
        if self.json_mode:
            self.json(ev)
            return
        if isinstance(ev, TextDeltaEvent):
            if ev.stream == "thought":
                self._thought += ev.text
                head, sep, rest = self._thought.rpartition("\n")
                if sep:
                    self.side("thought", head)
                    self._thought = rest
                return
            self._flush_thought()
            if ev.text:
                self.output.write(printable(ev.text, keep_lines=True) if self.escape_reply
                                  else ev.text)
                self._reply_open = not ev.text.endswith("\n")
            return
        self._flush_thought()
        if isinstance(ev, ToolCallEvent):
            if ev.tool_call_id and ev.title:
                self._titles[ev.tool_call_id] = ev.title
            title = ev.title or self._titles.get(ev.tool_call_id or "", "") or ev.text
            self.side("tool", f"{title} ({ev.status})" if ev.status else title)
        elif isinstance(ev, StatusEvent):
            if not ev.text.strip() or ev.text.rstrip().endswith(":"):
                return  # an update with nothing to say: no blank status line
            if self.verbose or ev.tag in _SHOWN_STATUS or ev.text.startswith("agent error:"):
                self.side("status", ev.text)
        elif isinstance(ev, DoneEvent | ErrorEvent):
            self._end_reply_line()

    def finish(self) -> None:
        """Flush a pending thought and end an open reply line (text mode)."""
        if not self.json_mode:
            self._flush_thought()
            self._end_reply_line()

    def error(self, message: str) -> None:
        """``acpx-trio: <first line>`` on stderr (both modes: stdout stays machine-readable)."""
        self.finish()
        self.output.write(f"acpx-trio: {printable(first_line(message))}\n", err=True)

    def failure(
        self, code: str, message: str, detail: str | None = None, rpc_data: Any = None,
    ) -> None:
        """``acpx-trio: CODE: <first line>`` on stderr, then the detail (the agent's reason or
        its redacted stderr tail) when the first line does not already say it, then a short
        form of the JSON-RPC error data (:func:`short_rpc_data`) when neither says it."""
        head = first_line(message)
        self.error(f"{code}: {head}")
        if detail and detail.strip() not in head:
            for line in detail.strip().splitlines()[-10:]:
                self.output.write(f"acpx-trio:   {printable(line.rstrip())}\n", err=True)
        data = short_rpc_data(rpc_data)
        if data and data not in head and data not in (detail or ""):
            self.output.write(f"acpx-trio:   data: {printable(data)}\n", err=True)

    def note(self, message: str) -> None:
        """An informational line on stderr."""
        self.output.write(f"acpx-trio: {printable(message)}\n", err=True)


def usage_text(usage: AgentUsage | None) -> str:
    """``cpu 1.25s mem 40.0MiB pids 3`` (the measures the leaf cgroup has), ``n/a`` when it
    has none (never a made-up zero)."""
    if usage is None:
        return "n/a"
    parts = []
    if usage.cpu_seconds is not None:
        parts.append(f"cpu {usage.cpu_seconds:.2f}s")
    if usage.memory_bytes is not None:
        parts.append(f"mem {usage.memory_bytes / 1048576:.1f}MiB")
    if usage.pids is not None:
        parts.append(f"pids {usage.pids}")
    return " ".join(parts) or "n/a"
