"""JSON-RPC 2.0 envelopes: classifying one incoming line, and the outgoing message shapes.

:func:`parse_message` turns one line into a :class:`Request`, :class:`Notification`,
:class:`Response` or :class:`ErrorResponse`, keeping ``params``/``result`` as ``msgspec.Raw``
for lazy typed decoding.  It raises :class:`NotJsonRpc` for anything else (not JSON, not an
object, or an object that is not a JSON-RPC message); it never raises anything else.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from acpx_trio._jsontext import repair_surrogates

__all__ = [
    "AUTH_REQUIRED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "REQUEST_CANCELLED",
    "RESOURCE_NOT_FOUND",
    "ErrorResponse",
    "Message",
    "NotJsonRpc",
    "Notification",
    "OutError",
    "OutErrorResponse",
    "OutNotification",
    "OutRequest",
    "OutResponse",
    "Request",
    "RequestId",
    "Response",
    "RpcError",
    "parse_message",
]

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
AUTH_REQUIRED: Final = -32000
RESOURCE_NOT_FOUND: Final = -32002
REQUEST_CANCELLED: Final = -32800

RequestId = int | str
"""A JSON-RPC id.  ``0`` is valid; ``null`` ids are not accepted on requests."""

_ABSENT: Final = msgspec.Raw()


class _Envelope(msgspec.Struct):
    # An absent raw field decodes to the empty default Raw; JSON ``null`` is b"null".
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw = _ABSENT
    result: msgspec.Raw = _ABSENT
    error: msgspec.Raw = _ABSENT


class RpcError(msgspec.Struct):
    """A JSON-RPC error object."""

    code: int
    message: str = ""
    data: Any = None


class Request(msgspec.Struct, frozen=True):
    id: RequestId
    method: str
    params: msgspec.Raw  # b"null" when absent
    #: the line held a lone UTF-16 surrogate (read as U+FFFD): the request is answered with
    #: an "invalid params" error, never run on altered text
    lossy: bool = False


class Notification(msgspec.Struct, frozen=True):
    method: str
    params: msgspec.Raw  # b"null" when absent


class Response(msgspec.Struct, frozen=True):
    id: RequestId | None
    result: msgspec.Raw


class ErrorResponse(msgspec.Struct, frozen=True):
    id: RequestId | None
    error: RpcError


Message = Request | Notification | Response | ErrorResponse


class NotJsonRpc(Exception):
    """The line is not a JSON-RPC 2.0 message; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_error_decoder = msgspec.json.Decoder(RpcError)
_NULL: Final = msgspec.Raw(b"null")


def parse_message(line: bytes) -> Message:
    """Classifies one line.  Unknown envelope fields (``jsonrpc`` included) are ignored.

    A malformed ``error`` object still yields an :class:`ErrorResponse` (code -32603, the
    raw text as message), so a waiting request is always answered.  A lone UTF-16 surrogate
    escape reads as U+FFFD (see :func:`repair_surrogates`; a request so read is marked
    :attr:`Request.lossy`).
    """
    try:
        env = _envelope_decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise NotJsonRpc(f"not a JSON-RPC message: {exc}") from None
    except msgspec.DecodeError as exc:
        repaired = repair_surrogates(line)
        if repaired == line:
            raise NotJsonRpc(f"not JSON: {exc}") from None
        message = parse_message(repaired)
        if isinstance(message, Request):
            return Request(message.id, message.method, message.params, lossy=True)
        return message
    except RecursionError:  # msgspec's own depth limit (about 1,000 levels)
        raise NotJsonRpc("JSON nested too deeply") from None
    params = env.params if len(env.params) else _NULL
    if not isinstance(env.method, msgspec.UnsetType):
        if isinstance(env.id, msgspec.UnsetType):
            return Notification(env.method, params)
        if env.id is None:
            raise NotJsonRpc("request with a null id")
        return Request(env.id, env.method, params)
    if isinstance(env.id, msgspec.UnsetType):
        raise NotJsonRpc("object has neither 'method' nor 'id'")
    if len(env.error):
        try:
            error = _error_decoder.decode(env.error)
        except msgspec.ValidationError:
            error = RpcError(-32603, f"malformed error object: {bytes(env.error)[:200]!r}")
        return ErrorResponse(env.id, error)
    if len(env.result):
        return Response(env.id, env.result)
    raise NotJsonRpc("response has neither 'result' nor 'error'")


class OutRequest(msgspec.Struct):
    jsonrpc: Literal["2.0"]
    id: RequestId
    method: str
    params: Any = msgspec.UNSET


class OutNotification(msgspec.Struct):
    jsonrpc: Literal["2.0"]
    method: str
    params: Any = msgspec.UNSET


class OutResponse(msgspec.Struct):
    jsonrpc: Literal["2.0"]
    id: RequestId
    result: Any  # None is sent as null, never omitted


class OutError(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class OutErrorResponse(msgspec.Struct):
    jsonrpc: Literal["2.0"]
    id: RequestId
    error: OutError
