"""Answering the peer's requests: each in a task of its own, by the handler registered for
its method, within bounds that keep memory bounded whatever the peer asks (also a peer that
stops reading the answers) and never make reading wait on the peer, and cancelled by the
peer's ``$/cancel_request``."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

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

__all__ = ["HEAVY_ANSWERS", "MAX_ANSWERS", "MAX_HANDLING_BYTES", "MAX_QUEUED_HEAVY_BYTES",
           "RequestAnswers", "RequestHandler"]

RequestHandler = Callable[[msgspec.Raw], Awaitable[Any]]

#: The peer's requests unanswered at once at most; one more is fatal to the connection
#: (``ACP_TOO_MANY_REQUESTS``).  Far past any pipelining (thousands of requests written
#: before the first answer is read are answered): only a peer that never reads its answers
#: gets there, and each waiting answer is small (the large ones wait their lane unmade).
MAX_ANSWERS: Final = 10_000
#: Bytes of the lines of requests whose handler runs at most (a file to write, a permission
#: to ask): past it the connection reads no more until one is handled.  Those handlers end
#: without the peer (a disk write, the host's answer, a command's exit), so the pause cannot
#: wait on a peer that is itself waiting for us to read (a single longer line runs alone).
MAX_HANDLING_BYTES: Final = 64 * 1024 * 1024
#: Requests of a ``heavy`` method (a large answer: file contents, terminal output) made or
#: waiting to be written at once at most; the others wait their lane unmade.
HEAVY_ANSWERS: Final = 2
#: Bytes of the lines of heavy requests waiting for a lane at most; one more is fatal
#: (``ACP_TOO_MANY_REQUESTS``): such a request names a file or a terminal in a few hundred
#: bytes, so only padding gets there.
MAX_QUEUED_HEAVY_BYTES: Final = 32 * 1024 * 1024


class _CancelParams(msgspec.Struct, rename="camel"):
    request_id: int | str


class RequestAnswers:
    """The peer's requests of one connection, answered through ``send`` (one whole message
    at a time; a closed connection drops the answer) as ``encode`` writes them.

    Guarantees: every request is answered once (its handler's result; -32601 for a method
    without one; -32602 for bad params or a request read with U+FFFD in place of a lone
    surrogate, which is never run; -32800 when the peer cancelled it, also while it waited
    for its lane; -32603 for any other failure).  Memory stays bounded whatever the peer
    asks, also a peer that stops reading the answers: :data:`HEAVY_ANSWERS` large answers
    exist at once, :data:`MAX_HANDLING_BYTES` of request lines are being handled (then
    :meth:`start` waits: those handlers end without the peer), and past
    :data:`MAX_ANSWERS` requests unanswered or :data:`MAX_QUEUED_HEAVY_BYTES` of heavy ones
    waiting, :meth:`start` raises :class:`~acpx_trio.AcpProtocolError`
    (``ACP_TOO_MANY_REQUESTS``).  Reading never waits on an answer that waits for the peer
    to read (a peer that writes all its requests before reading an answer is served)."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]],
                 encode: Callable[[Any], bytes]) -> None:
        self._send = send
        self._encode = encode
        self._handlers: dict[str, RequestHandler] = {}
        self._heavy_methods: set[str] = set()
        self._heavy = trio.Semaphore(HEAVY_ANSWERS)
        #: the requests being answered, by id (``$/cancel_request`` cancels one)
        self._answering: dict[RequestId, trio.CancelScope] = {}
        self._count = 0  # requests unanswered
        self._handling = 0  # bytes of the lines of requests whose handler runs
        self._queued_heavy = 0  # bytes of the lines of heavy requests waiting for a lane
        self._room = trio.lowlevel.ParkingLot()  # the reader, waiting for a handler to end

    def set_handler(self, method: str, handler: RequestHandler, *, heavy: bool) -> None:
        """Answer ``method`` with ``handler`` (``heavy``: its answers may be large)."""
        self._handlers[method] = handler
        if heavy:
            self._heavy_methods.add(method)
        else:
            self._heavy_methods.discard(method)

    def cancel(self, params: msgspec.Raw) -> None:
        """``$/cancel_request {requestId}``: the peer no longer wants our answer to that
        request; its handler (or its wait for a lane) is cancelled and it is answered
        ``-32800`` (an unknown or finished id is ignored, as JSON-RPC cancellation is best
        effort)."""
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
            raise AcpProtocolError(
                f"the agent has {MAX_ANSWERS} requests of its own unanswered (it does not "
                "read the answers)", code="ACP_TOO_MANY_REQUESTS")
        heavy = request.method in self._heavy_methods
        if heavy:
            if self._queued_heavy and self._queued_heavy + size > MAX_QUEUED_HEAVY_BYTES:
                raise AcpProtocolError(
                    f"the agent's requests for file contents or terminal output waiting to be "
                    f"answered hold over {MAX_QUEUED_HEAVY_BYTES} bytes",
                    code="ACP_TOO_MANY_REQUESTS")
            self._queued_heavy += size
        else:
            while self._handling and self._handling + size > MAX_HANDLING_BYTES:
                await self._room.park()
            self._handling += size
        self._count += 1
        # registered now, not when its task first runs: a ``$/cancel_request`` read in the
        # same batch right after it must find it
        scope = trio.CancelScope()
        if request.id is not None:
            self._answering[request.id] = scope
        nursery.start_soon(self._answer, request, size, heavy, scope)

    async def _answer(self, request: Request, size: int, heavy: bool,
                      scope: trio.CancelScope) -> None:
        queued, handling = (size, 0) if heavy else (0, size)

        def handled() -> None:  # the request's line is no longer needed
            nonlocal queued, handling
            if queued or handling:
                self._queued_heavy -= queued
                self._handling -= handling
                queued = handling = 0
                self._room.unpark_all()

        rid = request.id
        lane = False
        try:
            reply: OutResponse | OutErrorResponse | None = None
            with scope:
                if heavy:
                    await self._heavy.acquire()
                    lane = True
                    handled()  # its line waits no more: what it holds now is a lane's
                reply = await self._reply(request, handled)
            if reply is None or scope.cancelled_caught:  # the peer's $/cancel_request
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
            with contextlib.suppress(AcpConnectionClosedError):  # nobody is left to read it
                await self._send(data)
        finally:
            handled()
            if rid is not None and self._answering.get(rid) is scope:
                del self._answering[rid]
            if lane:
                self._heavy.release()
            self._count -= 1

    async def _reply(self, request: Request,
                     handled: Callable[[], None]) -> OutResponse | OutErrorResponse:
        """What ``request`` is answered with (its handler's result or error); ``handled``
        is called once the handler returned."""
        handler = self._handlers.get(request.method)
        if request.lossy:  # run on U+FFFD instead of what the agent meant: never
            return OutErrorResponse("2.0", request.id, OutError(
                INVALID_PARAMS, "Invalid params: a string is no Unicode text (a lone UTF-16 "
                "surrogate escape)"))
        if handler is None:
            return OutErrorResponse("2.0", request.id, OutError(
                METHOD_NOT_FOUND, f"Method not found: {request.method}"))
        try:
            result = await handler(request.params)
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
