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
import io
import math
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec
import trio

from acpx_trio._cli.exits import EXIT_ERROR, EXIT_OK
from acpx_trio._cli.text import first_line, printable
from acpx_trio._errors import AcpxError
from acpx_trio._events import (
    AgentUsage,
    DoneEvent,
    ErrorEvent,
    StatusEvent,
    TextDeltaEvent,
    ToolCallEvent,
)

__all__ = ["Output", "OutputError", "TurnPrinter", "finish_output", "format_table",
           "short_rpc_data", "usage_text"]

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


class OutputError(AcpxError):
    """The command's output cannot be written: stdout or stderr failed with an error other
    than a hang-up or a closed pipe (a full disk, a device error).  The command stops (its
    agent is closed as on any failure) and exits 1, saying why on stderr when stderr still
    works; ``fd`` is the descriptor that failed."""

    code = "ACPX_OUTPUT_FAILED"

    def __init__(self, stream: TextIO, exc: OSError) -> None:
        name = "stdout" if stream is sys.stdout else "stderr" if stream is sys.stderr else (
            "the output")
        super().__init__(f"cannot write to {name}: {exc.strerror or exc}")
        try:
            self.fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            self.fd = None


def _failed(stream: TextIO, exc: OSError, gone: list[TextIO]) -> None:
    """A failed write or flush of ``stream``: a terminal that hung up (``EIO``) joins
    ``gone``; a closed pipe raises ``BrokenPipeError`` as it is; anything else
    :class:`OutputError`."""
    if exc.errno == errno.EIO:
        gone.append(stream)
    elif isinstance(exc, BrokenPipeError):
        raise exc
    else:
        raise OutputError(stream, exc) from exc


def _write_batch(batch: list[tuple[TextIO, str]], gone: list[TextIO]) -> None:
    """Write ``batch`` in order, flushing each stream before the next one is written (two
    streams into one file stay in order) and at the end; a stream whose terminal hung up
    (``EIO``) joins ``gone`` and is skipped from then on (a closed pipe still raises
    ``BrokenPipeError``, any other failure :class:`OutputError`)."""
    current: TextIO | None = None
    for stream, text in batch:
        if stream in gone:
            continue
        if current is not None and stream is not current:
            _flush(current, gone)
        current = stream
        try:
            stream.write(text)
        except OSError as exc:
            _failed(stream, exc, gone)
            current = None
    if current is not None:
        _flush(current, gone)


#: Writes under way, by ``id`` of their stream (a write whose waiter gave up goes on in its
#: worker thread, holding that stream's lock until the stream takes it).
_writing: collections.Counter[int] = collections.Counter()
_writing_lock = threading.Lock()


def _write_counted(batch: list[tuple[TextIO, str]], gone: list[TextIO],
                   streams: set[int]) -> None:
    try:
        _write_batch(batch, gone)
    finally:
        with _writing_lock:
            _writing.subtract(streams)


def blocked_streams() -> set[int]:
    """The ``id`` of every stream a write is still blocked on (called once the event loop is
    over: any write under way then is one a stalled or interrupted command gave up on).  The
    interpreter's exit would flush such a stream and wait on its lock for ever, or abort
    ("could not acquire lock ... at interpreter shutdown")."""
    with _writing_lock:
        return {stream for stream, count in _writing.items() if count > 0}


def _flush(stream: TextIO, gone: list[TextIO]) -> None:
    try:
        stream.flush()
    except OSError as exc:
        _failed(stream, exc, gone)


def _discard() -> TextIO:
    return open(os.devnull, "w", encoding="utf-8")  # lives as long as the process


def _same_file(a: TextIO, b: TextIO) -> bool:
    """Whether ``a`` and ``b`` write to one file (one terminal, one pipe: ``2>&1``); streams
    without a descriptor count as one."""
    if a is b:
        return True
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return True
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class _Lane:
    """Writes that keep their order: to one file, or to two that are one (see
    :class:`Output`)."""

    __slots__ = ("lock", "pending", "queued", "wake", "written")

    def __init__(self) -> None:
        self.pending: collections.deque[tuple[TextIO, str]] = collections.deque()
        #: characters ever queued, and ever written (or given up on a hung-up terminal)
        self.queued = 0
        self.written = 0
        self.wake = trio.Event()
        self.lock = trio.Lock()

    def take_slice(self) -> list[tuple[TextIO, str]]:
        batch: list[tuple[TextIO, str]] = []
        room = OUTPUT_SLICE
        pending = self.pending
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


class Output:
    """Queue of writes to stdout/stderr, written in order by :meth:`run` in worker threads.

    ``write`` never blocks; :meth:`drain` waits until everything queued so far is written.
    Without a running :meth:`run` task, :meth:`drain` writes the queue itself.  Text is
    written in slices of at most :data:`OUTPUT_SLICE` characters, so a slow stdout shows
    progress slice by slice.  When stdout and stderr are one file (a terminal, ``2>&1``)
    everything is written in the order it was queued; when they are two, each keeps its own
    order and a stdout nobody reads never holds back stderr (a note, an error line).  A
    write that blocks forever (a pipe nobody reads) is abandoned when its waiter is
    cancelled; a terminal that hung up (SIGHUP, ``EIO``) is written no more, the command
    goes on.  A producer keeps the queue bounded by waiting in :meth:`wait_room` whenever
    :attr:`full` (until :meth:`unbound`: a command that is stopping takes the rest of its
    turn whatever stdout does)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        # a closed stdout or stderr (``>&-``: Python's is None) takes the text and drops it
        self.out: TextIO = out if out is not None else sys.stdout or _discard()
        self.err: TextIO = err if err is not None else sys.stderr or _discard()
        self._out_lane = _Lane()
        self._err_lane = (self._out_lane if _same_file(self.out, self.err) else _Lane())
        self._lanes = tuple(dict.fromkeys((self._out_lane, self._err_lane)))
        #: streams whose terminal hung up: nothing more is written to them
        self._gone: list[TextIO] = []
        self._bounded = True
        #: set (and replaced) whenever a slice was written, and by :meth:`unbound`
        self._progress = trio.Event()

    def write(self, text: str, *, err: bool = False) -> None:
        """Queue ``text`` for stderr (``err``) or stdout."""
        if text:
            lane = self._err_lane if err else self._out_lane
            lane.pending.append((self.err if err else self.out, text))
            lane.queued += len(text)
            lane.wake.set()

    @property
    def unwritten(self) -> int:
        """Characters queued and not written yet."""
        out, err = self._out_lane, self._err_lane
        count = out.queued - out.written
        return count if err is out else count + err.queued - err.written

    @property
    def full(self) -> bool:
        """Whether more than :data:`OUTPUT_HIGH_WATER` characters wait to be written."""
        return self._bounded and self.unwritten > OUTPUT_HIGH_WATER

    def _moved(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def unbound(self) -> None:
        """Stop bounding the queue (a signal asked the command to stop: the turn's end must
        be read whatever stdout does); wakes :meth:`wait_room`."""
        self._bounded = False
        self._moved()

    async def wait_room(self) -> None:
        """Return once no more than :data:`OUTPUT_HIGH_WATER` characters wait to be written
        (or :meth:`unbound` was called).  Needs :meth:`run` running: the caller never
        writes itself, so :meth:`unbound` always frees it.  Cancellable."""
        await trio.lowlevel.checkpoint()
        while self.full:
            await self._progress.wait()

    async def _step(self, lane: _Lane) -> None:
        """Write a slice of ``lane``, or wait for a slice being written."""
        if lane.pending and not lane.lock.locked():
            await self._write_pending(lane)
        else:
            await self._progress.wait()

    async def _write_pending(self, lane: _Lane) -> None:
        async with lane.lock:
            batch = lane.take_slice()
            if batch:
                streams = {id(stream) for stream, _text in batch}
                with _writing_lock:
                    _writing.update(streams)
                try:
                    await trio.to_thread.run_sync(_write_counted, batch, self._gone, streams,
                                                  abandon_on_cancel=True)
                finally:
                    lane.written += sum(len(text) for _stream, text in batch)
                    self._moved()

    async def _run_lane(self, lane: _Lane) -> None:
        while True:
            await lane.wake.wait()
            lane.wake = trio.Event()
            while lane.pending:
                await self._write_pending(lane)

    async def run(self) -> None:
        """Write queued text as it comes, until cancelled."""
        async with trio.open_nursery() as nursery:
            for lane in self._lanes:
                nursery.start_soon(self._run_lane, lane)

    async def drain(self) -> None:
        """Return once everything queued before this call has been written."""
        await self.drain_moving(math.inf)

    async def drain_moving(self, seconds: float) -> bool:
        """Wait until everything queued before this call has been written, giving up once a
        stream takes nothing for ``seconds`` (stderr is drained first: a stdout that gives up
        leaves nothing behind on stderr); whether everything was written."""
        targets = [(lane, lane.queued) for lane in reversed(self._lanes)]
        for lane, target in targets:
            if not await self._drain_lane(lane, target, seconds):
                return False
        return True

    async def flush_notes(self, seconds: float = 1.0) -> None:
        """Give stderr, when it is a file of its own, up to ``seconds`` to take what waits
        for it (a command that stops without waiting for stdout still shows its last notes)."""
        lane = self._err_lane
        if lane is self._out_lane:  # one file: it moves only as stdout does
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(seconds):
            await self._drain_lane(lane, lane.queued, math.inf)

    async def _drain_lane(self, lane: _Lane, target: int, seconds: float) -> bool:
        while lane.written < target:
            before = lane.written
            with trio.move_on_after(seconds):
                await self._step(lane)
                while lane.written == before:  # no write of this lane: no progress
                    await self._step(lane)
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
