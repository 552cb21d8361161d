"""Answering the peer's requests: each in a task of its own, by the handler registered for
its method, within bounds that keep memory bounded whatever the peer asks (also a peer that
stops reading the answers), and cancelled by the peer's ``$/cancel_request``."""

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
from acpx_trio._errors import AcpConnectionClosedError, AcpRuntimeError

__all__ = ["HEAVY_ANSWERS", "MAX_ANSWERS", "MAX_ANSWER_BYTES", "RequestAnswers",
           "RequestHandler"]

RequestHandler = Callable[[msgspec.Raw], Awaitable[Any]]

#: The peer's requests answered at once at most: past it (or past :data:`MAX_ANSWER_BYTES`
#: of their lines) the connection reads no more until one is answered.  Generous, so that
#: long waits (a terminal's exit, a permission) never hold up the rest: four times the cap
#: on terminals a session may hold.
MAX_ANSWERS: Final = 256
#: Bytes of request lines being answered at most (a single longer one is admitted alone).
MAX_ANSWER_BYTES: Final = 32 * 1024 * 1024
#: Requests of a ``heavy`` method (a large answer: file contents, terminal output) produced or
#: waiting to be written at once at most; the others wait their turn before their handler runs.
HEAVY_ANSWERS: Final = 2


class _CancelParams(msgspec.Struct, rename="camel"):
    request_id: int | str


class _PeerCancelled(Exception):
    """Our handler of a peer request was cancelled by the peer (internal)."""


class RequestAnswers:
    """The peer's requests of one connection, answered through ``send`` (one whole message
    at a time; a closed connection drops the answer) as ``encode`` writes them.

    Guarantees: every request is answered once (its handler's result; -32601 for a method
    without one; -32602 for bad params or a request read with U+FFFD in place of a lone
    surrogate, which is never run; -32800 when the peer cancelled it; -32603 for any other
    failure); at most :data:`MAX_ANSWERS` (:data:`MAX_ANSWER_BYTES` of their lines) are being
    answered and :data:`HEAVY_ANSWERS` large answers exist at once, :meth:`start` waiting
    for room before it takes another."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]],
                 encode: Callable[[Any], bytes]) -> None:
        self._send = send
        self._encode = encode
        self._handlers: dict[str, RequestHandler] = {}
        self._heavy_methods: set[str] = set()
        self._heavy = trio.Semaphore(HEAVY_ANSWERS)
        #: the requests whose handler runs, by id (``$/cancel_request`` cancels one)
        self._answering: dict[RequestId, trio.CancelScope] = {}
        self._count = 0  # requests being answered, and the bytes of their lines
        self._bytes = 0
        self._room = trio.lowlevel.ParkingLot()  # the reader, waiting for an answer to end

    def set_handler(self, method: str, handler: RequestHandler, *, heavy: bool) -> None:
        """Answer ``method`` with ``handler`` (``heavy``: its answers may be large)."""
        self._handlers[method] = handler
        if heavy:
            self._heavy_methods.add(method)
        else:
            self._heavy_methods.discard(method)

    def cancel(self, params: msgspec.Raw) -> None:
        """``$/cancel_request {requestId}``: the peer no longer wants our answer to that
        request; its handler is cancelled and it is answered ``-32800`` (an unknown or
        finished id is ignored, as JSON-RPC cancellation is best effort)."""
        try:
            request_id = msgspec.json.decode(params, type=_CancelParams).request_id
        except (msgspec.DecodeError, TypeError):
            return
        scope = self._answering.get(request_id)
        if scope is not None:
            scope.cancel()

    async def start(self, nursery: trio.Nursery | None, request: Request, size: int) -> None:
        """Answer ``request`` (a line of ``size`` bytes) in a task of ``nursery``, once there
        is room (:data:`MAX_ANSWERS`, :data:`MAX_ANSWER_BYTES`): until then, this waits (and
        its caller, the reader, reads nothing more)."""
        assert nursery is not None
        while self._count and (self._count >= MAX_ANSWERS
                               or self._bytes + size > MAX_ANSWER_BYTES):
            await self._room.park()
        self._count += 1
        self._bytes += size
        nursery.start_soon(self._answer, request, size)

    async def _answer(self, request: Request, size: int) -> None:
        try:
            if request.method in self._heavy_methods:
                async with self._heavy:
                    await self._answer_now(request)
            else:
                await self._answer_now(request)
        finally:
            self._count -= 1
            self._bytes -= size
            self._room.unpark_all()

    async def _answer_now(self, request: Request) -> None:
        handler = self._handlers.get(request.method)
        reply: OutResponse | OutErrorResponse
        if request.lossy:  # run on U+FFFD instead of what the agent meant: never
            error = OutError(INVALID_PARAMS, "Invalid params: a string is no Unicode text "
                             "(a lone UTF-16 surrogate escape)")
            reply = OutErrorResponse("2.0", request.id, error)
        elif handler is None:
            error = OutError(METHOD_NOT_FOUND, f"Method not found: {request.method}")
            reply = OutErrorResponse("2.0", request.id, error)
        else:
            reply = await self._run(handler, request)
        try:
            data = self._encode(reply)
        except (TypeError, ValueError, OverflowError) as exc:
            error = OutError(INTERNAL_ERROR, f"Internal error: result not encodable: {exc}")
            data = self._encode(OutErrorResponse("2.0", request.id, error))
        with contextlib.suppress(AcpConnectionClosedError):  # nobody is left to read it
            await self._send(data)

    async def _run(self, handler: RequestHandler,
                   request: Request) -> OutResponse | OutErrorResponse:
        scope = trio.CancelScope()
        if request.id is not None:
            self._answering[request.id] = scope
        try:
            with scope:
                result = await handler(request.params)
            if scope.cancelled_caught:  # the peer sent $/cancel_request for it
                raise _PeerCancelled
        except _PeerCancelled:
            return OutErrorResponse("2.0", request.id,
                                    OutError(REQUEST_CANCELLED, "Request cancelled"))
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
            if request.id is not None:
                self._answering.pop(request.id, None)
        return OutResponse("2.0", request.id, result)
