"""Answering the peer's requests: each in a task of its own, by the handler registered for
its method, within bounds that keep memory bounded whatever the peer asks (also a peer that
stops reading the answers) and never make reading wait on the peer, and cancelled by the
peer's ``$/cancel_request``."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import msgspec
import trio

from acpx_trio._acp._jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    REQUEST_CANCELLED,
    OutError,
    OutErrorResponse,
    OutResponse,
    Request,
    RequestId,
)
from acpx_trio._errors import AcpConnectionClosedError, AcpProtocolError, AcpRuntimeError

__all__ = ["HEAVY_ANSWERS", "MAX_ANSWERS", "MAX_HANDLING_BYTES", "MAX_HELD_BYTES",
           "MAX_WAITING_ANSWER_BYTES", "RequestAnswers", "RequestHandler", "RequestKind"]

RequestHandler = Callable[[msgspec.Raw], Awaitable[Any]]
#: What a method's handler does, which decides its bounds (see :class:`RequestAnswers`):
#: ``"work"`` a change that ends without the peer (a file write, a terminal started, killed
#: or released): once started it runs to its end and its answer says what it did;
#: ``"heavy"`` a read with a large answer (file contents, terminal output); ``"wait"`` a wait
#: on the peer or the host (a terminal's exit, a permission, an elicitation).  The last two
#: change nothing: ``$/cancel_request`` may end them midway.
RequestKind = Literal["work", "heavy", "wait"]

#: The peer's requests unanswered at once at most; one more is fatal to the connection
#: (``ACP_TOO_MANY_REQUESTS``).  Far past any pipelining (thousands of requests written
#: before the first answer is read are answered): only a peer that never reads its answers
#: gets there.
MAX_ANSWERS: Final = 10_000
#: Bytes of the lines of ``"work"`` requests being handled at most: past it the connection
#: reads no more until one is handled.  Those handlers end without the peer, so the pause
#: cannot wait on a peer that is itself waiting for us to read (a single longer line runs
#: alone).
MAX_HANDLING_BYTES: Final = 64 * 1024 * 1024
#: ``"heavy"`` requests made or waiting to be written at once at most; the others wait their
#: lane unmade.
HEAVY_ANSWERS: Final = 2
#: Bytes of the lines of ``"heavy"`` requests waiting for a lane and of ``"wait"`` requests
#: at most; one more is fatal (``ACP_TOO_MANY_REQUESTS``): such a request names a file, a
#: terminal or a question in a few hundred bytes, so only padding gets there.
MAX_HELD_BYTES: Final = 32 * 1024 * 1024
#: Bytes of answers waiting for the peer to read them at most (large answers aside: they
#: have their lanes); past it the next request is fatal (``ACP_TOO_MANY_REQUESTS``).  An
#: answer echoes the request's id, which the peer chooses.
MAX_WAITING_ANSWER_BYTES: Final = 64 * 1024 * 1024
#: How much of a method name an error answer repeats.
_SHOWN_METHOD = 200


class _CancelParams(msgspec.Struct, rename="camel"):
    request_id: int | str


def _too_many(what: str) -> AcpProtocolError:
    return AcpProtocolError(f"the agent {what} (it does not read our answers, or pads its "
                            "requests)", code="ACP_TOO_MANY_REQUESTS")


class RequestAnswers:
    """The peer's requests of one connection, answered through ``send`` (one whole message
    at a time; a closed connection drops the answer) as ``encode`` writes them.

    Guarantees: every request is answered once (its handler's result; -32601 for a method
    without one; -32602 for bad params or a request read with U+FFFD in place of a lone
    surrogate, which is never run; -32603 for any other failure; -32800 when the peer's
    ``$/cancel_request`` came before its handler started, even in the same read, or while a
    ``"heavy"`` or ``"wait"`` one ran: a ``"work"`` one, once started, runs to its end and
    answers what it did).  Memory stays bounded whatever the peer asks, also a peer that
    stops reading the answers: :data:`HEAVY_ANSWERS` large answers exist at once,
    :data:`MAX_HANDLING_BYTES` of ``"work"`` lines are being handled (then :meth:`start`
    waits: those handlers end without the peer), and past :data:`MAX_ANSWERS` requests
    unanswered, :data:`MAX_HELD_BYTES` of lines waiting on the peer or a lane, or
    :data:`MAX_WAITING_ANSWER_BYTES` of answers waiting to be written, :meth:`start` raises
    :class:`~acpx_trio.AcpProtocolError` (``ACP_TOO_MANY_REQUESTS``).  Reading never waits
    on the peer (a peer that writes all its requests before reading an answer is served)."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]],
                 encode: Callable[[Any], bytes]) -> None:
        self._send = send
        self._encode = encode
        self._handlers: dict[str, tuple[RequestHandler, RequestKind]] = {}
        self._lanes = trio.Semaphore(HEAVY_ANSWERS)
        #: the requests being answered, by id (``$/cancel_request`` cancels one)
        self._answering: dict[RequestId, trio.CancelScope] = {}
        self._count = 0  # requests unanswered
        self._handling = 0  # bytes of the lines of "work" requests being handled
        self._held = 0  # bytes of the lines of requests waiting on the peer or for a lane
        self._out = 0  # bytes of answers waiting to be written (large ones aside)
        self._room = trio.lowlevel.ParkingLot()  # the reader, waiting for a handler to end

    def set_handler(self, method: str, handler: RequestHandler, *, kind: RequestKind) -> None:
        """Answer ``method`` with ``handler``, bounded as ``kind`` says."""
        self._handlers[method] = (handler, kind)

    def cancel(self, params: msgspec.Raw) -> None:
        """``$/cancel_request {requestId}``: the peer no longer wants our answer to that
        request (see the class for what is answered); an unknown or finished id is ignored,
        as JSON-RPC cancellation is best effort."""
        try:
            request_id = msgspec.json.decode(params, type=_CancelParams).request_id
        except (msgspec.DecodeError, TypeError):
            return
        scope = self._answering.get(request_id)
        if scope is not None:
            scope.cancel()

    async def start(self, nursery: trio.Nursery | None, request: Request, size: int) -> None:
        """Answer ``request`` (a line of ``size`` bytes) in a task of ``nursery``, once the
        requests being handled leave room (see the class); until then this waits (and its
        caller, the reader, reads nothing more)."""
        assert nursery is not None
        if self._count >= MAX_ANSWERS:
            raise _too_many(f"has {MAX_ANSWERS} requests of its own unanswered")
        if self._out > MAX_WAITING_ANSWER_BYTES:
            raise _too_many(f"has over {MAX_WAITING_ANSWER_BYTES} bytes of answers unread")
        entry = self._handlers.get(request.method)
        kind: RequestKind = "work" if entry is None else entry[1]
        if kind == "work":
            while self._handling and self._handling + size > MAX_HANDLING_BYTES:
                await self._room.park()
            self._handling += size
        else:
            if self._held and self._held + size > MAX_HELD_BYTES:
                raise _too_many(f"holds over {MAX_HELD_BYTES} bytes of requests that wait "
                                "for it or for their turn")
            self._held += size
        self._count += 1
        # registered now, not when its task first runs: a ``$/cancel_request`` read in the
        # same batch right after it must find it
        scope = trio.CancelScope()
        if request.id is not None:
            self._answering[request.id] = scope
        nursery.start_soon(self._answer, request, size, kind, scope)

    async def _answer(self, request: Request, size: int, kind: RequestKind,
                      scope: trio.CancelScope) -> None:
        line = size

        def handled() -> None:  # the request's line is no longer needed
            nonlocal line
            if line:
                if kind == "work":
                    self._handling -= line
                else:
                    self._held -= line
                line = 0
                self._room.unpark_all()

        rid = request.id
        lane = False
        out = 0
        try:
            reply: OutResponse | OutErrorResponse | None = None
            started = False
            with scope:
                if kind == "heavy":
                    await self._lanes.acquire()
                    lane = True
                    handled()  # its line waits no more: what it holds now is a lane's
                await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before it started
                started = True
                if kind != "work":  # changes nothing: the peer's cancel may end it midway
                    reply = await self._reply(request, handled)
            if started and kind == "work":  # once started, to its end (it says what it did)
                reply = await self._reply(request, handled)
            if reply is None:  # the peer's $/cancel_request
                reply = OutErrorResponse("2.0", rid,
                                         OutError(REQUEST_CANCELLED, "Request cancelled"))
            handled()
            if rid is not None and self._answering.get(rid) is scope:
                del self._answering[rid]
            del request  # only the answer waits for the peer to read it
            try:
                data = self._encode(reply)
            except (TypeError, ValueError, OverflowError) as exc:
                error = OutError(INTERNAL_ERROR, f"Internal error: result not encodable: {exc}")
                data = self._encode(OutErrorResponse("2.0", rid, error))
            del reply
            if not lane:  # a large answer is its lane's; the rest count until written
                out = len(data)
                self._out += out
            with contextlib.suppress(AcpConnectionClosedError):  # nobody is left to read it
                await self._send(data)
        finally:
            handled()
            self._out -= out
            if rid is not None and self._answering.get(rid) is scope:
                del self._answering[rid]
            if lane:
                self._lanes.release()
            self._count -= 1

    async def _reply(self, request: Request,
                     handled: Callable[[], None]) -> OutResponse | OutErrorResponse:
        """What ``request`` is answered with (its handler's result or error); ``handled``
        is called once the handler returned."""
        entry = self._handlers.get(request.method)
        if request.lossy:  # run on U+FFFD instead of what the agent meant: never
            return OutErrorResponse("2.0", request.id, OutError(
                INVALID_PARAMS, "Invalid params: a string is no Unicode text (a lone UTF-16 "
                "surrogate escape)"))
        if entry is None:
            return OutErrorResponse("2.0", request.id, OutError(
                METHOD_NOT_FOUND, f"Method not found: {request.method[:_SHOWN_METHOD]}"))
        try:
            result = await entry[0](request.params)
        except AcpRuntimeError as exc:
            code = INTERNAL_ERROR if exc.rpc_code is None else exc.rpc_code
            return OutErrorResponse("2.0", request.id, OutError(code, exc.message, exc.rpc_data))
        except msgspec.ValidationError as exc:
            return OutErrorResponse("2.0", request.id,
                                    OutError(INVALID_PARAMS, f"Invalid params: {exc}"))
        except Exception as exc:
            return OutErrorResponse("2.0", request.id,
                                    OutError(INTERNAL_ERROR, f"Internal error: {exc}"))
        finally:
            handled()
        return OutResponse("2.0", request.id, result)
