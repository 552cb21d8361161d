"""A JSON-RPC 2.0 peer over a pair of Trio byte streams (an agent's stdin/stdout)."""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec
import trio

from acpx_trio._acp._answers import RequestAnswers, RequestHandler, RequestKind
from acpx_trio._acp._framing import DEFAULT_MAX_LINE_BYTES, LineReader
from acpx_trio._acp._jsonrpc import (
    ErrorResponse,
    Notification,
    NotJsonRpc,
    OutNotification,
    OutRequest,
    Request,
    RequestId,
    Response,
    parse_message,
)
from acpx_trio._acp._pending import Pending as _Pending
from acpx_trio._acp._pending import copy_error as _copy_error
from acpx_trio._errors import (
    REDACTED,
    AcpConnectionClosedError,
    AcpProtocolError,
    AcpRuntimeError,
    AcpxError,
    number_holds_secret,
    redact,
    redact_value,
)

__all__ = ["AcpConnection", "NotificationHandler", "RequestHandler"]

T = TypeVar("T")

NotificationHandler = Callable[[msgspec.Raw], None]
#: marker, line decoder, handler, batch decoder (see set_fast_notification_handler)
_FastPath = tuple[
    bytes,
    Callable[[bytes], Any],
    Callable[[list[Any], int], None],
    Callable[[bytes], list[Any] | None] | None,
]

_JUNK_TAIL: Final = 5
_JUNK_BYTES: Final = 200
_ABANDONED_MAX: Final = 10_000
#: Warnings reported per connection; later ones are dropped (one line says so).
_MAX_WARNINGS: Final = 100
_NULL: Final = b"null"


#: JSON-RPC cancellation of an in-flight request (LSP's ``$/cancelRequest``, as ACP names it)
CANCEL_REQUEST = "$/cancel_request"


class _Progress:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


async def _write_counted(stream: trio.lowlevel.FdStream, data: bytes, progress: _Progress) -> None:
    """``stream.send_all(data)``, counting in ``progress`` the bytes already written, so a
    cancel before the first byte leaves the stream whole (Trio's ``send_all`` takes its
    schedule point before writing, and a cancel there cannot be told from one midway).  A
    checkpoint: cancellable before the first write and while the pipe is full."""
    fd = stream.fileno()
    blocked = False
    with memoryview(data) as view:
        while progress.sent < len(data):
            try:
                progress.sent += os.write(fd, view[progress.sent:])
            except BlockingIOError:
                blocked = True
                await trio.lowlevel.wait_writable(fd)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the agent's input was closed") from None
                raise trio.BrokenResourceError(str(exc)) from exc
    if not blocked:
        await trio.lowlevel.cancel_shielded_checkpoint()


class AcpConnection:
    """One JSON-RPC 2.0 peer: sends requests/notifications, answers the agent's requests.

    Run :meth:`serve` (``await nursery.start(conn.serve)``) for answers to arrive.

    Guarantees:

    - No request waits forever because of the peer's output: on EOF, on a fatal protocol error,
      or when :meth:`serve` is cancelled, every pending :meth:`request` fails
      (:class:`AcpConnectionClosedError`, or the :class:`AcpProtocolError` itself).
    - Junk lines (not JSON, or JSON that is not JSON-RPC) are skipped, counted in
      :attr:`junk_lines` and reported to ``on_warning`` (code ``ACP_JUNK_LINE``); the
      ``max_junk_lines + 1``-th one is fatal (``ACP_PROTOCOL_GARBAGE``).  A line longer than
      ``max_line_bytes`` is always fatal (``ACP_LINE_TOO_LONG``).  Blank lines are ignored.
    - A response with an unknown id is reported (``ACP_UNKNOWN_RESPONSE_ID``) and dropped; the
      late answer to a request whose caller was cancelled is dropped quietly.
    - Each message is written whole (one JSON object and ``\\n``), one writer at a time.  If a
      write is cancelled midway the stream is in an unknown state, so the connection stops
      sending: later sends raise :class:`AcpConnectionClosedError`.
    - ``on_warning`` is called synchronously from the reader task and must not raise or block;
      at most 101 times per connection, redacted like the agent's ``ACP_RPC_ERROR``\\ s.
    - Memory stays bounded whatever the agent requests, also from an agent that stops reading
      its answers (see :class:`~acpx_trio._acp._answers.RequestAnswers`: a few large answers
      at a time, reading paused only while handlers that end without the agent catch up,
      ``ACP_TOO_MANY_REQUESTS`` past its bounds on what waits for the agent).
    """

    def __init__(
        self,
        send_stream: trio.abc.SendStream,
        receive_stream: trio.abc.ReceiveStream,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_junk_lines: int = 100,
        on_warning: Callable[[AcpProtocolError], None] | None = None,
    ) -> None:
        self._send_stream = send_stream
        self._reader = LineReader(receive_stream, max_line_bytes)
        self._max_junk_lines = max_junk_lines
        self._on_warning = on_warning
        self._send_lock = trio.Lock()
        self._encoder = msgspec.json.Encoder()
        self._next_id = 0
        self._pending: dict[RequestId, _Pending] = {}
        self._abandoned: dict[RequestId, None] = {}  # insertion-ordered, bounded
        self._answers = RequestAnswers(self._send, self._encode)
        self._notification_handlers: dict[str, NotificationHandler] = {}
        self._junk_lines = 0
        self._last_junk: deque[bytes] = deque(maxlen=_JUNK_TAIL)
        self._serve_started = False
        self._nursery: trio.Nursery | None = None
        self._closed_reason: str | None = None
        self._send_broken: str | None = None
        self._fast: _FastPath | None = None
        #: Credentials handed to the agent: redacted from the errors it answers with.
        self.redact_secrets: tuple[str, ...] = ()
        self._warnings = 0

    # ------------------------------------------------------------------ properties

    @property
    def closed(self) -> bool:
        """True once the reader ended (EOF, fatal error, cancel) or :meth:`aclose` was called."""
        return self._closed_reason is not None

    @property
    def junk_lines(self) -> int:
        """How many junk lines were skipped so far."""
        return self._junk_lines

    @property
    def last_junk(self) -> list[bytes]:
        """The last few junk lines (oldest first), each truncated to 200 bytes."""
        return list(self._last_junk)

    # ------------------------------------------------------------------ handlers

    def set_request_handler(self, method: str, handler: RequestHandler, *,
                            kind: RequestKind = "work") -> None:
        """Serves agent->client requests for ``method``; ``kind`` says what its handler does
        and so how it is bounded and whether the agent's ``$/cancel_request`` may end it
        midway (:data:`~acpx_trio._acp._answers.RequestKind`).

        Handlers run concurrently in the connection's nursery and are cancelled when the
        reader stops.  The return value (Struct, dict, None, ...) is sent as the result.
        :class:`AcpRuntimeError` with an ``rpc_code`` answers with that error;
        ``msgspec.ValidationError`` with -32602; any other exception with -32603.  Requests
        for a method without a handler get -32601.
        """
        self._answers.set_handler(method, handler, kind=kind)

    def set_notification_handler(self, method: str, handler: NotificationHandler) -> None:
        """Handles agent->client notifications for ``method``, synchronously, in wire order.

        The handler must not block.  If it raises, the error is reported to ``on_warning``
        (code ``ACP_NOTIFICATION_FAILED``) and reading goes on.  Notifications without a
        handler are dropped.
        """
        self._notification_handlers[method] = handler

    def set_fast_notification_handler(
        self,
        method: str,
        decode: Callable[[bytes], T],
        handler: Callable[[list[T], int], None],
        *,
        decode_batch: Callable[[bytes], list[T] | None] | None = None,
    ) -> None:
        """A one-pass path for one hot notification ``method`` (``session/update``).

        A line that mentions ``"method"`` is decoded whole by ``decode`` (envelope and typed
        params at once).  If ``decode`` raises a ``msgspec`` error the line takes the generic
        path (classification, junk counting, the :meth:`set_notification_handler` handler),
        so ``decode`` only has to accept the common shapes.  ``handler`` gets the decoded
        objects of one read batch in wire order and the bytes their lines took, always before
        any later message of the batch is dispatched; it runs synchronously and must not
        block.  If it raises, the error is reported like a failing notification handler.

        ``decode_batch``, if given, is tried first on each whole read batch (its lines joined
        by ``\\n``, as read): it returns one decoded object per line, exactly what ``decode``
        would return for each, or ``None`` when that does not hold for every line (the batch
        then goes line by line as above).
        """
        self._fast = (b'"' + method.encode() + b'"', decode, handler, decode_batch)

    # ------------------------------------------------------------------ sending

    def _closed_error(self) -> AcpConnectionClosedError:
        return AcpConnectionClosedError(f"ACP connection is closed: {self._closed_reason}")

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            if self._send_broken is not None:
                raise AcpConnectionClosedError(
                    f"cannot send to the agent: {self._send_broken}", code="ACP_CONNECTION_CLOSED"
                )
            await trio.lowlevel.checkpoint_if_cancelled()
            stream = self._send_stream
            progress = _Progress()
            try:
                if isinstance(stream, trio.lowlevel.FdStream):
                    await _write_counted(stream, data, progress)
                else:  # how much left is unknown: a cancel counts as a write cut midway
                    progress.sent = -1
                    await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._send_broken = f"the agent's input is closed ({type(exc).__name__})"
                raise AcpConnectionClosedError(
                    f"cannot send to the agent: {self._send_broken}"
                ) from exc
            except trio.Cancelled:
                if progress.sent:  # part of a message is out: nothing can follow it
                    self._send_broken = "a write was cancelled midway"
                raise

    def _encode(self, message: Any) -> bytes:
        buf = bytearray()
        self._encoder.encode_into(message, buf)
        buf += b"\n"
        return bytes(buf)

    async def request(self, method: str, params: Any, result_type: type[T]) -> T:
        """Sends a request and waits for its answer, decoded into ``result_type``.

        A ``null`` result decodes as ``{}`` when ``null`` itself does not fit ``result_type``.
        Raises :class:`AcpRuntimeError` (``ACP_RPC_ERROR``, with ``rpc_code``/``rpc_data``)
        for a JSON-RPC error answer; :class:`AcpProtocolError` (``ACP_BAD_MESSAGE``) for a
        result that does not decode; :class:`AcpConnectionClosedError` if the connection is
        or becomes closed; the fatal :class:`AcpProtocolError` if the reader dies of one.
        If the caller is cancelled, the request is abandoned and its late answer ignored.
        """
        if self._closed_reason is not None:
            raise self._closed_error()
        request_id = self._next_id
        data = self._encode(
            OutRequest("2.0", request_id, method, msgspec.UNSET if params is None else params)
        )
        self._next_id += 1
        pending = _Pending(method)
        self._pending[request_id] = pending
        try:
            await self._send(data)
            await pending.done.wait()
        finally:
            del self._pending[request_id]
            if pending.outcome is None:  # cancelled, or failed first: its answer may still come
                self._abandon(request_id)
        return self._result(pending, result_type)

    def _abandon(self, request_id: RequestId) -> None:
        self._abandoned[request_id] = None
        if len(self._abandoned) > _ABANDONED_MAX:
            del self._abandoned[next(iter(self._abandoned))]

    def _result(self, pending: _Pending, result_type: type[T]) -> T:
        if pending.error is not None:
            raise pending.error
        outcome = pending.outcome
        if isinstance(outcome, ErrorResponse):
            err, secrets = outcome.error, self.redact_secrets  # an agent may echo its key
            # a credential of digits may come as the error's code: never shown, never kept
            hidden = number_holds_secret(err.code, secrets)
            raise AcpRuntimeError(
                "ACP_RPC_ERROR",
                f"agent answered {pending.method} with JSON-RPC error "
                f"{REDACTED if hidden else err.code}: {redact(err.message, secrets)}",
                rpc_code=None if hidden else err.code,
                rpc_data=redact_value(err.data, secrets),
            )
        assert outcome is not None
        raw = outcome.result
        try:
            try:
                result: T = msgspec.json.decode(raw, type=result_type)
            except msgspec.ValidationError:
                if bytes(raw).strip() != _NULL:
                    raise
                result = msgspec.json.decode(b"{}", type=result_type)
        except msgspec.ValidationError as exc:
            name = getattr(result_type, "__name__", repr(result_type))
            raise AcpProtocolError(
                f"agent answered {pending.method} with a result that is not a valid {name}: {exc}",
                code="ACP_BAD_MESSAGE",
            ) from None
        return result

    async def notify(self, method: str, params: Any) -> None:
        """Sends a notification.  Raises :class:`AcpConnectionClosedError` if closed."""
        if self._closed_reason is not None:
            raise self._closed_error()
        data = self._encode(
            OutNotification("2.0", method, msgspec.UNSET if params is None else params)
        )
        await self._send(data)

    async def aclose(self) -> None:
        """Closes the send side (the agent sees EOF on its stdin); fails pending requests with
        :class:`AcpConnectionClosedError`.  :meth:`serve` keeps reading until the agent's EOF.
        Idempotent; completes even if cancelled."""
        if self._closed_reason is None:
            self._closed_reason = "closed by the client"
        if self._send_broken is None:
            self._send_broken = "the connection was closed by the client"
        self._fail_pending(AcpConnectionClosedError("ACP connection closed by the client"))
        await self._send_stream.aclose()

    # ------------------------------------------------------------------ reading

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reads and dispatches messages until EOF.  May run once.

        Returns at EOF; raises the fatal :class:`AcpProtocolError` on a protocol violation.
        Either way, and also when cancelled, running request handlers are cancelled and every
        pending request fails (see the class).  A broken receive stream counts as EOF.
        """
        if self._serve_started:
            raise RuntimeError("AcpConnection.serve() may only run once")
        self._serve_started = True
        fatal: AcpProtocolError | None = None
        reason = "the reader was cancelled"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await self._read_loop()
                    reason = "the agent closed its output (EOF)"
                except AcpProtocolError as exc:
                    fatal = exc
                    reason = f"protocol error: {exc.message}"
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    reason = f"the agent's output broke ({type(exc).__name__})"
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if self._closed_reason is None:
                self._closed_reason = reason
            self._fail_pending(
                fatal or AcpConnectionClosedError(f"ACP connection closed: {reason}")
            )
        if fatal is not None:
            raise fatal

    def _fail_pending(self, exc: AcpxError) -> None:
        for pending in self._pending.values():
            if pending.outcome is None and pending.error is None:
                pending.error = _copy_error(exc)
                pending.done.set()

    async def _read_loop(self) -> None:
        reader = self._reader
        while True:
            block = await reader.receive_block()
            if block is None:
                return
            fast = self._fast
            if fast is None:
                for line in block.split(b"\n"):
                    if (request := self._dispatch(line)) is not None:
                        await self._answers.start(self._nursery, request, len(line))
                continue
            marker, decode, handler, decode_batch = fast
            if decode_batch is not None and (whole := decode_batch(block)) is not None:
                self._fast_deliver(handler, whole, len(block) + 1)
                continue
            decoded: list[Any] = []
            size = 0
            for line in block.split(b"\n"):
                if marker in line:
                    try:
                        decoded.append(decode(line))
                        size += len(line) + 1
                        continue
                    except (msgspec.MsgspecError, RecursionError):
                        pass  # not the common shape: the generic path decides
                if decoded:
                    self._fast_deliver(handler, decoded, size)
                    decoded = []
                    size = 0
                if (request := self._dispatch(line)) is not None:
                    await self._answers.start(self._nursery, request, len(line))
            if decoded:
                self._fast_deliver(handler, decoded, size)

    def _fast_deliver(self, handler: Callable[[list[Any], int], None], decoded: list[Any],
                      size: int) -> None:
        try:
            handler(decoded, size)
        except Exception as exc:
            self._warn(f"fast notification handler failed: {exc!r}", "ACP_NOTIFICATION_FAILED")

    def _dispatch(self, line: bytes) -> Request | None:
        """Handles one line; a request is returned, for :meth:`RequestAnswers.start`."""
        if not line or (line[:1].isspace() and not line.strip()):
            return None
        try:
            message = parse_message(line)
        except NotJsonRpc as exc:
            self._junk(line, exc.reason)
            return None
        if isinstance(message, Request):
            return message
        if isinstance(message, Notification):
            self._notify_handler(message)
        else:
            self._resolve(message)
        return None

    def _warn(self, message: str, code: str) -> None:
        self._warnings += 1  # bounded: an agent must not be able to fill the owner's log
        if self._on_warning is None or self._warnings > _MAX_WARNINGS + 1:
            return
        if self._warnings > _MAX_WARNINGS:
            message = f"{_MAX_WARNINGS} warnings from this agent; further ones are dropped"
        self._on_warning(AcpProtocolError(redact(message, self.redact_secrets), code=code))

    def _shown(self, line: bytes) -> bytes:
        """``line`` with credentials redacted before any cut for display (a cut must not
        leave part of one); byte-exact where it holds none."""
        text = line.decode("utf-8", "surrogateescape")
        clean = redact(text, self.redact_secrets)
        return line if clean == text else clean.encode("utf-8", "surrogateescape")

    def _junk(self, line: bytes, reason: str) -> None:
        self._junk_lines += 1
        line = self._shown(line)
        self._last_junk.append(line[:_JUNK_BYTES])
        preview = line[:80]
        if self._junk_lines > self._max_junk_lines:
            raise AcpProtocolError(
                f"the agent wrote {self._junk_lines} lines on stdout that are not ACP JSON-RPC "
                f"messages (limit {self._max_junk_lines}); last one: {preview!r} ({reason})",
                code="ACP_PROTOCOL_GARBAGE",
            )
        self._warn(
            f"skipped a non-ACP line from the agent: {preview!r} ({reason})", "ACP_JUNK_LINE"
        )

    def _notify_handler(self, message: Notification) -> None:
        if message.method == CANCEL_REQUEST:
            self._answers.cancel(message.params)
            return
        handler = self._notification_handlers.get(message.method)
        if handler is None:
            return
        try:
            handler(message.params)
        except Exception as exc:
            self._warn(
                f"handler for notification {message.method} failed: {exc!r}",
                "ACP_NOTIFICATION_FAILED",
            )

    def _resolve(self, message: Response | ErrorResponse) -> None:
        request_id = message.id
        pending = self._pending.get(request_id) if request_id is not None else None
        if pending is None or pending.outcome is not None or pending.error is not None:
            if request_id is not None and request_id in self._abandoned:
                del self._abandoned[request_id]
                return  # late answer to a request whose caller gave up: quietly dropped
            if pending is not None and pending.error is not None:
                return  # its caller already has the connection's error: quietly dropped
            detail = ""
            if isinstance(message, ErrorResponse):
                detail = f" (error {message.error.code}: {message.error.message})"
            self._warn(
                f"the agent answered an unknown request id {request_id!r}{detail}; ignored",
                "ACP_UNKNOWN_RESPONSE_ID",
            )
            return
        pending.outcome = message
        pending.done.set()
