"""The owner's socket protocol: newline-delimited JSON frames, each one msgspec Struct.

A client opens one connection per request, sends one request frame and reads reply frames
until a final one (see :func:`is_final`).  Turn events are the runtime's own event Structs
(:data:`~acpx_trio._events.AcpRuntimeEvent`) wrapped in :class:`EventFrame`.

Guarantees: a frame longer than :data:`MAX_FRAME_BYTES` or one that does not decode is a
:class:`OwnerProtocolError` (the connection is then dropped), never a hang.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import trio

from acpx_trio._errors import AcpxError
from acpx_trio._events import AcpRuntimeEvent, DoneEvent, ErrorEvent

__all__ = [
    "MAX_FRAME_BYTES",
    "PER_REQUEST_KEYS",
    "AcceptedFrame",
    "CancelRequest",
    "CancelResult",
    "CloseRequest",
    "CloseResult",
    "EventFrame",
    "FrameReader",
    "OwnerErrorFrame",
    "OwnerLaunch",
    "OwnerProtocolError",
    "PromptRequest",
    "Reply",
    "Request",
    "SessionState",
    "ShutdownRequest",
    "StatusRequest",
    "StatusResult",
    "config_fingerprint",
    "decode_reply",
    "decode_request",
    "encode_frame",
    "is_final",
]

#: Upper bound of one frame (a prompt text included).
MAX_FRAME_BYTES = 16 * 1024 * 1024


class OwnerProtocolError(AcpxError):
    """A peer sent a frame that is too long or does not decode."""

    code = "ACPX_OWNER_PROTOCOL"


# -- requests (client -> owner) ---------------------------------------------------------------
class PromptRequest(msgspec.Struct, tag_field="kind", tag="prompt", kw_only=True, frozen=True):
    """Queue a turn.  ``wait=False``: the owner answers :class:`AcceptedFrame` and closes.

    ``config_fingerprint`` must match the owner's (see ``client.config_fingerprint``);
    ``ttl_seconds`` is the session's idle TTL (``None``: the owner's default; 0: forever)."""

    request_id: str
    session_key: str
    agent: str
    text: str
    cwd: str
    config_fingerprint: str
    wait: bool = True
    ttl_seconds: float | None = None


class CancelRequest(msgspec.Struct, tag_field="kind", tag="cancel", kw_only=True, frozen=True):
    """Cancel ``request_id``'s turn (queued: dropped; active: cancelled), or with no id the
    session's active turn.  Nothing to cancel is a success (``cancelled=False``)."""

    session_key: str
    request_id: str | None = None


class StatusRequest(msgspec.Struct, tag_field="kind", tag="status", kw_only=True, frozen=True):
    """State of the owner (of one session).  ``flush_transcript``: first write out what the
    session's transcript buffers (``sessions history`` then sees the turn that just ended)."""

    session_key: str | None = None
    flush_transcript: bool = False


class CloseRequest(msgspec.Struct, tag_field="kind", tag="close", kw_only=True, frozen=True):
    """End the session's agent (queued turns end ``cancelled``); the owner exits when no
    session is left."""

    session_key: str


class ShutdownRequest(msgspec.Struct, tag_field="kind", tag="shutdown", kw_only=True,
                      frozen=True):
    """Close every session and exit."""


Request = PromptRequest | CancelRequest | StatusRequest | CloseRequest | ShutdownRequest


# -- replies (owner -> client) ----------------------------------------------------------------
class AcceptedFrame(msgspec.Struct, tag_field="kind", tag="accepted", kw_only=True, frozen=True):
    """The prompt is queued; ``position`` 0 means it runs now, N means N turns go first."""

    request_id: str
    position: int
    owner_pid: int


class EventFrame(msgspec.Struct, tag_field="kind", tag="event", kw_only=True, frozen=True):
    request_id: str
    event: AcpRuntimeEvent
    agent_pid: int | None = None


class CancelResult(msgspec.Struct, tag_field="kind", tag="cancel_result", kw_only=True,
                   frozen=True):
    cancelled: bool


class SessionState(msgspec.Struct, kw_only=True, frozen=True):
    """One warm session as the owner sees it.  ``idle_seconds`` is ``None`` while busy."""

    session_key: str
    agent: str
    agent_pid: int | None
    backend_session_id: str | None
    queue_depth: int
    active_request_id: str | None
    #: ``idle``, ``starting`` (agent start-up / ``session/load``) or ``active``.
    turn_state: str
    idle_seconds: float | None
    ttl_seconds: float


class StatusResult(msgspec.Struct, tag_field="kind", tag="status_result", kw_only=True,
                   frozen=True):
    owner_pid: int
    state_dir: str
    uptime_seconds: float
    sessions: list[SessionState]


class CloseResult(msgspec.Struct, tag_field="kind", tag="close_result", kw_only=True,
                  frozen=True):
    closed: bool
    owner_exiting: bool


class OwnerErrorFrame(msgspec.Struct, tag_field="kind", tag="error", kw_only=True, frozen=True):
    """The request failed before any turn event (bad request, config mismatch, shutting
    down).  ``retryable``: a new owner may accept it."""

    code: str
    message: str
    retryable: bool = False


Reply = AcceptedFrame | EventFrame | CancelResult | StatusResult | CloseResult | OwnerErrorFrame

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)


def encode_frame(frame: Request | Reply) -> bytes:
    """One frame: the JSON object and a newline."""
    buf = bytearray()
    _encoder.encode_into(frame, buf)
    buf += b"\n"
    return bytes(buf)


def decode_request(line: bytes) -> Request:
    try:
        return _request_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise OwnerProtocolError(f"bad request frame: {exc}") from exc


def decode_reply(line: bytes) -> Reply:
    try:
        return _reply_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise OwnerProtocolError(f"bad reply frame: {exc}") from exc


def is_final(frame: Reply, *, waiting: bool) -> bool:
    """Whether ``frame`` is the last one of its request (``waiting``: a prompt with wait)."""
    if isinstance(frame, EventFrame):
        return isinstance(frame.event, DoneEvent | ErrorEvent)
    if isinstance(frame, AcceptedFrame):
        return not waiting
    return True


class FrameReader:
    """Splits a byte stream into frames (lines).  ``receive`` returns ``None`` at EOF."""

    def __init__(self, stream: trio.abc.ReceiveStream, *, limit: int = MAX_FRAME_BYTES) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._limit = limit
        self._scan = 0

    async def receive(self) -> bytes | None:
        while True:
            nl = self._buf.find(b"\n", self._scan)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                self._scan = 0
                return line
            self._scan = len(self._buf)
            if self._scan > self._limit:
                raise OwnerProtocolError(f"frame longer than {self._limit} bytes")
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                if self._buf:
                    raise OwnerProtocolError("connection closed in the middle of a frame")
                return None
            self._buf += chunk




class OwnerLaunch(msgspec.Struct, kw_only=True, frozen=True):
    """What a client hands a new owner on its stdin (never in argv or env: the raw config
    may hold credentials)."""

    raw_config: dict[str, Any]
    workspace_dir: str
    default_ttl_seconds: float = 300.0


#: Config keys that may differ between a client and the owner: they are per request.
PER_REQUEST_KEYS = frozenset({"cwd", "timeoutSeconds", "queueOwnerTtlSeconds"})


def config_fingerprint(raw: dict[str, Any]) -> str:
    """A digest of the config keys that shape the owner's runtime (everything but
    :data:`PER_REQUEST_KEYS`); a prompt whose fingerprint differs is refused."""
    shaped = {k: v for k, v in raw.items() if k not in PER_REQUEST_KEYS}
    return hashlib.sha256(msgspec.json.encode(shaped, order="sorted")).hexdigest()[:32]
