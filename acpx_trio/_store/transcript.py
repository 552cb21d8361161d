"""Session transcripts: every ACP message of a session, both directions, as NDJSON.

One file per session key next to its session record (``transcript-<sha256(key)>.ndjson``),
each line a :class:`TranscriptEntry`: ``t`` (epoch seconds), ``d`` (``out`` to the agent,
``in`` from it), ``m`` (the message as it was on the wire, after redaction) and ``replay``
(an update the agent replayed while answering ``session/load``).

Guarantees:

* Bounded: when the file would pass ``max_bytes`` it is rotated (``.1`` is the newest old
  file); at most ``keep`` files exist in all (``keep`` 0 counts as 1).
* Credentials never reach the file: the params of ``authenticate`` are replaced, and every
  known credential (config ``auth`` values; environment values of credential-like names; 4
  characters or more) is replaced by ``"[redacted]"`` in every string, object keys included,
  and in the text a reader reassembles: the agent's streamed ``agent_message_chunk`` /
  ``agent_thought_chunk`` texts are redacted as one text per kind
  (:class:`~acpx_trio._errors.StreamRedactor`), so no concatenation of stored chunks holds a
  credential, whole or split.  A chunk's tail that could start a credential is moved to the
  next chunk of its kind (across any other message between them: a tool call, a plan, a
  request of the agent), or stored as a chunk of its own (same envelope) before the next
  answer of the agent (the prompt's: the turn's end) or at the close; only chunk
  boundaries move, never text.
* Files are 0600, created without following symlinks; the directory is 0700.
* :meth:`TranscriptWriter.on_chunk` (the agent's stream tap) only appends to a memory buffer;
  redaction, encoding and writing happen in :meth:`TranscriptWriter.flush`'s worker thread
  (call it per turn; it is also scheduled each time the buffer passes ``flush_bytes``, which
  bounds the memory a long turn holds).  A write error is logged
  once and the transcript is disabled, never failing a turn.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import trio

from acpx_trio._errors import (
    MIN_SECRET_LENGTH,
    RawSecrets,
    StateFileError,
    StreamRedactor,
    environment_credentials,
    replace_secrets,
)
from acpx_trio._errors import REDACTED as _REDACTED
from acpx_trio._jsontext import repair_surrogates
from acpx_trio._log import Logger
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.config_entries import McpServerConfig
from acpx_trio._store.fsio import StateDecoder, ensure_private_dir, open_private_file
from acpx_trio._store.sessions import SyncSessionStore

__all__ = [
    "DEFAULT_FLUSH_BYTES",
    "REDACTED",
    "TranscriptEntry",
    "TranscriptWriter",
    "config_credentials",
    "known_credentials",
    "read_transcript",
    "transcript_path",
]

#: The transcript's credential marker (the one the rest of acpx-trio uses).
REDACTED = _REDACTED
_CHUNK_KINDS = frozenset({"agent_message_chunk", "agent_thought_chunk"})
#: Buffered bytes that schedule a flush before the turn ends.  Large on purpose: encoding in
#: a thread still takes the GIL from a CPU-bound stream, so it is best done after the turn.
DEFAULT_FLUSH_BYTES = 8 * 1024 * 1024
_log = logging.getLogger("acpx_trio.transcript")
#: ``(time, direction, raw bytes)`` as the tap received them.
Entry = tuple[float, str, bytes]


class TranscriptEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    t: float
    d: Literal["out", "in"]
    m: msgspec.Raw
    replay: bool = False


class _Head(msgspec.Struct):
    """Just enough of a JSON-RPC message to route it."""

    id: int | str | None = None
    method: str | None = None


_encoder = msgspec.json.Encoder()
_head_decoder = StateDecoder(_Head)  # a line an agent wrote: untrusted
_entry = StateDecoder(TranscriptEntry)  # read back from the file: untrusted


def _head(raw: bytes) -> _Head | None:
    """The routing fields of a JSON object line; ``None`` if it is not one."""
    try:
        return _head_decoder.decode(raw)
    except msgspec.DecodeError:  # not one (nested past msgspec's limit included)
        return None


def transcript_path(session_dir: str | Path, session_key: str) -> Path:
    """The transcript file of ``session_key`` beside its record in ``session_dir``."""
    record = SyncSessionStore(session_dir).path_for(session_key)
    stem = record.name.removeprefix("session-").removesuffix(".json")
    return record.with_name(f"transcript-{stem}.ndjson")


def known_credentials(auth: Mapping[str, str] | None = None,
                      environ: Mapping[str, str] | None = None,
                      mcp_servers: Iterable[McpServerConfig] = ()) -> list[str]:
    """Credential values to redact: config ``auth`` values, the values of environment
    variables whose names look like credentials (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ...)
    and the credentials configured for MCP servers (:meth:`McpServerConfig.credentials`)."""
    found = {v for v in (auth or {}).values() if isinstance(v, str)}
    found.update(environment_credentials(environ))
    found.update(v for server in mcp_servers for v in server.credentials())
    return sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def config_credentials(config: AcpxConfig) -> list[str]:
    """:func:`known_credentials` of ``config`` (its ``auth`` and MCP servers) and of this
    process's environment: the one set every holder of a config redacts."""
    return known_credentials(config.auth, mcp_servers=config.mcp_servers)



def _chunk_text(msg: Any) -> tuple[str, dict[str, Any]] | None:
    """``(kind, content)`` of a ``session/update`` streamed text chunk, else ``None``."""
    if not isinstance(msg, dict) or msg.get("method") != "session/update":
        return None
    params = msg.get("params")
    update = params.get("update") if isinstance(params, dict) else None
    if not isinstance(update, dict) or update.get("sessionUpdate") not in _CHUNK_KINDS:
        return None
    content = update.get("content")
    if not isinstance(content, dict) or content.get("type") != "text" or not isinstance(
            content.get("text"), str):
        return None
    return str(update["sessionUpdate"]), content


class TranscriptWriter:
    """The transcript of one session (see the module docstring)."""

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024, keep: int = 5,
                 credentials: Iterable[str] = (), flush_bytes: int = DEFAULT_FLUSH_BYTES,
                 nursery: trio.Nursery | None = None, logger: Logger | None = None) -> None:
        self.path = path
        self._log: Logger = logger or _log
        self.max_bytes = max(1, max_bytes)
        self.keep = max(1, keep)
        self.flush_bytes = flush_bytes
        self._secrets = [s for s in credentials if len(s) >= MIN_SECRET_LENGTH]
        self._raw_secrets = RawSecrets(self._secrets)
        #: per chunk kind: the stream redactor and the envelope of its last chunk
        self._streams: dict[str, tuple[StreamRedactor, Any]] = {}
        self._nursery = nursery
        self._pending: list[Entry] = []
        self._partial: dict[str, bytes] = {}  # per direction: a line split across chunks
        self._pending_bytes = 0
        self._lock = trio.Lock()
        self._flush_scheduled = False
        self._load_id: int | str | None = None
        #: ids of the prompts sent whose answer has not come (their turns are running)
        self._prompts: set[int | str] = set()
        self._fd: int | None = None
        self._size = 0
        self.disabled = False

    # -- the tap (synchronous, in the agent's stream reader/writer) ------------------------
    def on_chunk(self, direction: str, data: bytes) -> None:
        """Buffer raw stdio bytes (the agent's stream tap, one call per chunk read or message
        written): one tuple append; line splitting, parsing, redaction and encoding happen in
        the flush's worker thread, in order."""
        self._pending.append((time.time(), direction, data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.flush_bytes and not self._flush_scheduled and (
                self._nursery is not None):
            self._flush_scheduled = True
            self._nursery.start_soon(self.flush)

    def on_message(self, direction: str, line: bytes) -> None:
        """Buffer one whole line (for a per-line tap such as ``AcpConnection.on_message``)."""
        self.on_chunk(direction, line + b"\n")

    def _encode(self, items: list[Entry]) -> bytes:
        buf = bytearray()
        for t, direction, data in items:
            lines = (self._partial.pop(direction, b"") + data).split(b"\n")
            rest = lines.pop()  # after the last newline: the start of a line still coming
            if rest:
                self._partial[direction] = rest
            for line in lines:
                self._encode_line(buf, t, direction, line)
        return bytes(buf)

    def _encode_line(self, buf: bytearray, t: float, direction: str, line: bytes) -> None:
        raw = line.strip()
        replay = False
        if not raw:
            return
        if direction == "out":
            if b'"session/load"' in raw or b'"authenticate"' in raw:
                raw = self._outgoing(raw)
            elif b'"session/prompt"' in raw:
                self._prompt_out(buf, t, raw)
        else:
            head = _head(raw)
            if head is None:  # valid JSON but no Unicode text: read as the connection reads it
                raw = repair_surrogates(raw)
                head = _head(raw)
            if head is None:
                return  # blank or junk: not a message (the connection reports junk)
            if self._load_id is not None:
                if head.method is None and head.id == self._load_id:
                    self._load_id = None  # the load's answer: replay is over
                else:
                    replay = head.method is not None
        if self._secrets and direction == "in":
            if b'_chunk"' in raw:
                msg = msgspec.json.decode(raw)
                chunk = _chunk_text(msg)
                if chunk is not None:  # redacted as one text with the chunks before it
                    self._chunk(buf, t, raw, msg, chunk, replay)
                    return
            if head is not None and head.method is None and head.id in self._prompts:
                # the prompt's answer: the turn is over, a held tail is no credential.  Not
                # at any other message: a reader joins the chunks of a kind across a tool
                # call, a plan, a request of the agent or the answer to a mode change sent
                # during the turn, as the turn's events do
                self._prompts.discard(head.id)
                self._release_held(buf, t)
        if self._raw_secrets and self._may_hold_secret(raw):
            raw = _encoder.encode(replace_secrets(msgspec.json.decode(raw), self._secrets))
        self._entry(buf, t, direction, raw, replay)

    def _entry(self, buf: bytearray, t: float, direction: str, raw: bytes,
               replay: bool) -> None:
        entry = TranscriptEntry(t=t, d="in" if direction == "in" else "out",
                                m=msgspec.Raw(raw), replay=replay)
        _encoder.encode_into(entry, buf, len(buf))
        buf += b"\n"

    def _chunk(self, buf: bytearray, t: float, raw: bytes, msg: Any,
               chunk: tuple[str, dict[str, Any]], replay: bool) -> None:
        kind, content = chunk
        stream = self._streams.get(kind)
        redactor = stream[0] if stream is not None else StreamRedactor(self._secrets)
        text = redactor.feed(content["text"])
        self._streams[kind] = (redactor, msg)
        if text == content["text"] and not self._may_hold_secret(raw):
            self._entry(buf, t, "in", raw, replay)
            return
        content["text"] = text
        self._entry(buf, t, "in", _encoder.encode(replace_secrets(msg, self._secrets)),
                    replay)

    def _may_hold_secret(self, raw: bytes) -> bool:
        """Whether the message line ``raw`` may hold a credential (:class:`RawSecrets`), or
        any character is written as a ``\\u`` escape (then it is decoded to be sure)."""
        return self._raw_secrets(raw) or b"\\u" in raw

    def _release_held(self, buf: bytearray, t: float) -> None:
        """Store every held chunk tail as a chunk of its own (the stream of that kind ended
        here, so the tail was not a credential)."""
        for kind, (redactor, envelope) in list(self._streams.items()):
            rest = redactor.flush()
            if rest:
                chunk = _chunk_text(envelope)
                assert chunk is not None
                chunk[1]["text"] = rest
                self._entry(buf, t, "in", _encoder.encode(
                    replace_secrets(envelope, self._secrets)), False)
            del self._streams[kind]

    def _prompt_out(self, buf: bytearray, t: float, raw: bytes) -> None:
        """A prompt goes out: a new turn begins (whatever is held of the one before, whose
        answer never came, ends with it: its agent died), and its answer will end it."""
        head = _head(raw)
        if head is not None and head.method == "session/prompt" and head.id is not None:
            self._release_held(buf, t)
            self._prompts.add(head.id)

    def _outgoing(self, raw: bytes) -> bytes:
        head = _head(raw) or _Head()
        if head.method == "session/load":
            self._load_id = head.id
        elif head.method == "authenticate":
            msg = msgspec.json.decode(raw)
            params = msg.get("params")
            if isinstance(params, dict):
                msg["params"] = {k: (v if k == "methodId" else REDACTED)
                                 for k, v in params.items()}
            return _encoder.encode(msg)
        return raw

    # -- writing (worker thread) ------------------------------------------------------------
    async def flush(self, *, final: bool = False) -> None:
        """Encode and write what is buffered (in a worker thread); returns once written.
        ``final``: the stream ends here (a held chunk tail is stored too)."""
        async with self._lock:
            self._flush_scheduled = False
            items, self._pending, self._pending_bytes = self._pending, [], 0
            final = final and bool(self._streams)
            if (items or final) and not self.disabled:  # (disabled: dropped, bounded)
                try:
                    await trio.to_thread.run_sync(self._encode_and_write, items, final)
                except (OSError, StateFileError, msgspec.DecodeError) as exc:
                    # (a refused dir too: a symlink or a file in its place is never written
                    # through, and the session goes on without its transcript)
                    self.disabled = True
                    self._log.warning(f"transcript {self.path} disabled: {exc}")

    def _encode_and_write(self, items: list[Entry], final: bool = False) -> None:
        data = self._encode(items)
        if final:
            tail = bytearray()
            self._release_held(tail, time.time())
            data += bytes(tail)
        self._write(data)

    def _open(self) -> None:
        # a FIFO, a device or a link in the file's place is refused, never waited on: the
        # transcript is then disabled and the session goes on (see flush)
        ensure_private_dir(self.path.parent)
        self._fd, st = open_private_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self._size = st.st_size

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if i == self.keep - 1:
                older.unlink(missing_ok=True)
            else:
                newer = self.path.with_name(f"{self.path.name}.{i + 1}")
                if older.exists():
                    os.replace(older, newer)
        if self.keep > 1:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    async def aclose(self) -> None:
        """Flush and close the file (a held chunk tail is stored first)."""
        await self.flush(final=True)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _files_oldest_first(path: Path) -> list[Path]:
    rotated = sorted(path.parent.glob(f"{path.name}.*"),
                     key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else -1,
                     reverse=True)
    here = [path] if os.path.lexists(path) else []  # a dangling link is refused, not missed
    return [p for p in rotated if p.suffix[1:].isdigit()] + here


def read_transcript(path: Path) -> Iterator[TranscriptEntry]:
    """Every readable entry of the transcript at ``path`` (rotated files first), oldest first.
    Unreadable lines (a torn last write) are skipped.  A file in its place that is not a
    regular file of ours (a symlink, a FIFO, a directory) raises
    :class:`~acpx_trio.StateFileError` naming it and the fix, never read through, never
    waited on; a file rotated away meanwhile is skipped.  Blocking."""
    for file in _files_oldest_first(path):
        try:
            fd, _st = open_private_file(file)
        except FileNotFoundError:
            continue
        with os.fdopen(fd, "rb") as fh:
            for line in fh:
                try:
                    yield _entry.decode(line)
                except (msgspec.DecodeError, UnicodeDecodeError):
                    continue
