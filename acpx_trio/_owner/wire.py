"""The owner's socket protocol: newline-delimited JSON frames, each one msgspec Struct.

A client opens one connection per request, sends one request frame and reads reply frames
until a final one (see :func:`is_final`).  Turn events are the runtime's own event Structs
(:data:`~acpx_trio._events.AcpRuntimeEvent`) wrapped in :class:`EventFrame`.

Guarantees: a frame longer than the reader's limit (config ``ownerFrameMaxBytes``), one
that would take the owner's buffered partial frames past their shared budget (config
``ownerPartialMaxBytes``), or one that does not decode is a :class:`OwnerProtocolError` (the
connection gets an error frame and is dropped), never a hang.  Every field of every request
is validated on decode (lengths, ranges, patterns: the ``Meta`` constraints below); a bad
frame never reaches the owner's state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import msgspec
import trio

from acpx_trio._errors import CREDENTIAL_NAME, AcpxError
from acpx_trio._events import AcpRuntimeEvent, DoneEvent, ErrorEvent

__all__ = [
    "MAX_FRAME_BYTES",
    "PER_REQUEST_KEYS",
    "AcceptedFrame",
    "CancelRequest",
    "CancelResult",
    "CloseRequest",
    "CloseResult",
    "ControlRequest",
    "ControlResult",
    "EventFrame",
    "FrameBudget",
    "FrameReader",
    "HeartbeatFrame",
    "OwnerErrorFrame",
    "OwnerLaunch",
    "OwnerProtocolError",
    "OwnerStreamCutError",
    "PromptRequest",
    "Reply",
    "Request",
    "SessionState",
    "ShutdownRequest",
    "StatusRequest",
    "StatusResult",
    "config_fingerprint",
    "credential_env_digests",
    "credential_env_mismatch",
    "decode_reply",
    "decode_request",
    "encode_frame",
    "encode_frames",
    "is_final",
]

#: Upper bound of one frame (a prompt text included) when the config does not say.
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Upper bounds of the request fields (a bad value is a typed error reply, never state).
MAX_ID = 128
MAX_KEY = 1024
MAX_SECONDS = 1e9
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
SessionKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY)]
Path_ = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Fingerprint = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
Digest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Ttl = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
EnvName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
#: a mode id, config option id or value, model id
OptionText = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class OwnerProtocolError(AcpxError):
    """A peer sent a frame that is too long or does not decode."""

    code = "ACPX_OWNER_PROTOCOL"


class OwnerStreamCutError(OwnerProtocolError):
    """The connection ended in the middle of a frame (the peer died, or dropped a client
    that stopped reading)."""


# -- requests (client -> owner) ---------------------------------------------------------------
class PromptRequest(msgspec.Struct, tag_field="kind", tag="prompt", kw_only=True, frozen=True):
    """Queue a turn.  ``wait=False``: the owner answers :class:`AcceptedFrame` and closes.

    ``config_fingerprint`` must match the owner's (see :func:`config_fingerprint`);
    ``ttl_seconds`` is the session's idle TTL (``None``: the owner's default; 0: forever);
    ``timeout_seconds`` bounds this turn once it runs (``None``: unbounded);
    ``credential_env`` digests the sender's credential-like environment (see
    :func:`credential_env_digests`: names and digests, never values)."""

    request_id: RequestId
    session_key: SessionKey
    agent: Name
    text: str
    cwd: Path_
    config_fingerprint: Fingerprint
    wait: bool = True
    ttl_seconds: Ttl | None = None
    timeout_seconds: Timeout | None = None
    credential_env: dict[EnvName, Digest] = {}
    #: select this model (``set_model``) after the session starts, before the prompt
    model: OptionText | None = None


class CancelRequest(msgspec.Struct, tag_field="kind", tag="cancel", kw_only=True, frozen=True):
    """Cancel ``request_id``'s turn (queued: dropped; active: cancelled), or with no id the
    session's active turn.  Nothing to cancel is a success (``cancelled=False``)."""

    session_key: SessionKey
    request_id: RequestId | None = None


class ControlRequest(msgspec.Struct, tag_field="kind", tag="control", kw_only=True,
                     frozen=True):
    """Change a running warm session: ``action`` ``mode`` (``session/set_mode`` to
    ``value``), ``option`` (``session/set_config_option`` ``key`` = ``value``) or ``model``
    (``value``; the config option of category model, or the legacy ``session/set_model``).
    Answered :class:`ControlResult`, or :class:`OwnerErrorFrame` with the runtime's code
    (``ACP_INVALID_RUNTIME_OPTION`` naming the choices, ``ACP_SESSION_NOT_FOUND``, ...)."""

    session_key: SessionKey
    action: Literal["mode", "option", "model"]
    value: OptionText
    key: OptionText | None = None


class ControlResult(msgspec.Struct, tag_field="kind", tag="control_result", kw_only=True,
                    frozen=True):
    applied: bool
    agent_pid: int | None = None


class StatusRequest(msgspec.Struct, tag_field="kind", tag="status", kw_only=True, frozen=True):
    """State of the owner (of one session).  ``flush_transcript``: first write out what the
    session's transcript buffers (``sessions history`` then sees the turn that just ended)."""

    session_key: SessionKey | None = None
    flush_transcript: bool = False


class CloseRequest(msgspec.Struct, tag_field="kind", tag="close", kw_only=True, frozen=True):
    """End the session's agent (queued turns end ``cancelled``); the owner exits when no
    session is left."""

    session_key: SessionKey


class ShutdownRequest(msgspec.Struct, tag_field="kind", tag="shutdown", kw_only=True,
                      frozen=True):
    """Close every session and exit."""


Request = (PromptRequest | CancelRequest | ControlRequest | StatusRequest | CloseRequest
           | ShutdownRequest)


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


class HeartbeatFrame(msgspec.Struct, tag_field="kind", tag="heartbeat", kw_only=True,
                     frozen=True):
    """Sent while a waiting prompt is queued or its turn is silent, every
    ``HEARTBEAT_SECONDS`` (see ``server``): the client bounds the owner's silence."""

    owner_pid: int


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


Reply = (AcceptedFrame | EventFrame | HeartbeatFrame | CancelResult | ControlResult
         | StatusResult | CloseResult | OwnerErrorFrame)

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)


def encode_frame(frame: Request | Reply) -> bytes:
    """One frame: the JSON object and a newline."""
    return encode_frames((frame,))


def encode_frames(frames: Iterable[Request | Reply]) -> bytes:
    """``frames``, one line each (what :func:`encode_frame` gives for each)."""
    return _encoder.encode_lines(frames)


def decode_request(line: bytes) -> Request:
    """The request ``line`` holds; :class:`OwnerProtocolError` for anything else (nested too
    deep to decode included)."""
    try:
        return _request_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise OwnerProtocolError(f"bad request frame: {exc}") from exc
    except RecursionError:
        raise OwnerProtocolError("bad request frame: JSON nested too deeply") from None


def decode_reply(line: bytes) -> Reply:
    """The reply ``line`` holds; :class:`OwnerProtocolError` for anything else (nested too
    deep to decode included)."""
    try:
        return _reply_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise OwnerProtocolError(f"bad reply frame: {exc}") from exc
    except RecursionError:
        raise OwnerProtocolError("bad reply frame: JSON nested too deeply") from None


def is_final(frame: Reply, *, waiting: bool) -> bool:
    """Whether ``frame`` is the last one of its request (``waiting``: a prompt with wait)."""
    if isinstance(frame, EventFrame):
        return isinstance(frame.event, DoneEvent | ErrorEvent)
    if isinstance(frame, AcceptedFrame):
        return not waiting
    return not isinstance(frame, HeartbeatFrame)


class FrameBudget:
    """Bytes of unfinished frames that all readers sharing it may buffer together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class FrameReader:
    """Splits a byte stream into frames (lines).  ``receive`` returns ``None`` at EOF."""

    def __init__(self, stream: trio.abc.ReceiveStream, *, limit: int = MAX_FRAME_BYTES,
                 budget: FrameBudget | None = None) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._limit = limit
        self._scan = 0
        self._budget = budget
        self._charged = 0

    def _charge(self, size: int) -> None:
        budget = self._budget
        if budget is None:
            return
        delta = size - self._charged
        if delta > 0 and budget.used + delta > budget.limit:
            raise OwnerProtocolError(
                f"the warm owner is busy reading other requests ({budget.used} bytes of "
                f"unfinished frames, ownerPartialMaxBytes {budget.limit}); retry")
        budget.used += delta
        self._charged = size

    def release(self) -> None:
        """Give back this reader's share of the budget and the memory of what it read (call
        once the last frame wanted is read: a bytearray keeps its size after the frame is
        cut off it)."""
        if self._budget is not None:
            self._budget.used -= self._charged
            self._charged = 0
        self._buf = bytearray(self._buf)

    async def receive(self) -> bytes | None:
        """The next frame; ``None`` at EOF.  :class:`OwnerProtocolError` once the frame
        being read passes the limit, :class:`OwnerStreamCutError` at EOF inside one."""
        while (nl := self._buf.find(b"\n", self._scan)) < 0:
            if not await self._read_more():
                return None
        line = bytes(self._buf[:nl])
        self._cut(nl)
        return line

    async def receive_lines(self) -> list[bytes] | None:
        """Every frame complete in what was read so far, in order, waiting for the stream
        only while there is none: :meth:`receive`'s answers, several at a time (the same
        errors, raised once the frames before them are returned)."""
        while (end := self._buf.rfind(b"\n", self._scan)) < 0:
            if not await self._read_more():
                return None
        lines = bytes(self._buf[:end]).split(b"\n")
        self._cut(end)
        return lines

    def _cut(self, end: int) -> None:
        del self._buf[: end + 1]
        self._scan = 0
        self._charge(len(self._buf))

    async def _read_more(self) -> bool:
        """One more read; ``False`` at EOF with nothing unfinished."""
        self._scan = len(self._buf)
        if self._scan > self._limit:
            raise OwnerProtocolError(f"frame longer than {self._limit} bytes")
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            if self._buf:
                raise OwnerStreamCutError("connection closed in the middle of a frame")
            return False
        self._charge(len(self._buf) + len(chunk))
        self._buf += chunk
        return True


class OwnerLaunch(msgspec.Struct, kw_only=True, frozen=True):
    """What a client hands a new owner on its stdin (never in argv or env: the raw config
    may hold credentials)."""

    raw_config: dict[str, Any]
    workspace_dir: str
    default_ttl_seconds: float = 300.0
    #: Environment names the auth lookup tries for the config's ``auth`` methods (besides
    #: the credential-like names): compared with each prompt's (names only, no values).
    credential_names: list[str] = []


#: Config keys that may differ between a client and the owner: they are per request.
PER_REQUEST_KEYS = frozenset({"cwd", "timeoutSeconds", "queueOwnerTtlSeconds"})

def credential_env_digests(environ: Mapping[str, str],
                           names: Iterable[str] = ()) -> dict[str, str]:
    """Name -> SHA-256 digest of every credential-relevant variable set in ``environ``: the
    credential-like names and ``names`` (the ones the auth lookup tries for config ``auth``
    methods, see :attr:`OwnerLaunch.credential_names`).  Values never leave this function."""
    wanted = {n for n in environ if CREDENTIAL_NAME.search(n)}
    wanted.update(n for n in names if n in environ)
    return {_wire_name(n): hashlib.sha256(
        b"acpx-trio-env\0" + environ[n].encode("utf-8", "surrogateescape")).hexdigest()
        for n in sorted(wanted)}


def _wire_name(name: str) -> str:
    """A variable name as the wire carries it: a name that is no UTF-8 (bytes the
    environment passed through) with those bytes written as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def credential_env_mismatch(environ: Mapping[str, str], names: Iterable[str],
                            theirs: Mapping[str, str]) -> list[str]:
    """The variables whose digests differ between ``environ`` (with ``names``) and a
    client's ``theirs``: set on one side only, or to another value."""
    mine = credential_env_digests(environ, [*names, *theirs])
    return sorted(n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n))


def config_fingerprint(raw: dict[str, Any]) -> str:
    """A digest of the config keys that shape the owner's runtime (everything but
    :data:`PER_REQUEST_KEYS`); a prompt whose fingerprint differs is refused."""
    shaped = {k: v for k, v in raw.items() if k not in PER_REQUEST_KEYS}
    return hashlib.sha256(msgspec.json.encode(shaped, order="sorted")).hexdigest()[:32]
