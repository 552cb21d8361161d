"""ACP (Agent Client Protocol) over stdio: framing, wire Structs and the JSON-RPC connection.

Internal API of acpx-trio; the runtime builds on :class:`AcpConnection` and the Structs of
:mod:`._messages`.
"""

from acpx_trio._acp._answers import RequestKind
from acpx_trio._acp._connection import AcpConnection, NotificationHandler, RequestHandler
from acpx_trio._acp._extra import *  # noqa: F403
from acpx_trio._acp._extra import __all__ as _extra_all
from acpx_trio._acp._framing import DEFAULT_MAX_LINE_BYTES, LineReader, LineSplitter
from acpx_trio._acp._hooks import StreamTap, stream_tap, tap_streams
from acpx_trio._acp._jsonrpc import (
    AUTH_REQUIRED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    RESOURCE_NOT_FOUND,
)
from acpx_trio._acp._messages import *  # noqa: F403
from acpx_trio._acp._messages import __all__ as _messages_all

__all__ = [
    "AUTH_REQUIRED",
    "DEFAULT_MAX_LINE_BYTES",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "REQUEST_CANCELLED",
    "RESOURCE_NOT_FOUND",
    "AcpConnection",
    "LineReader",
    "LineSplitter",
    "NotificationHandler",
    "RequestHandler",
    "RequestKind",
    "StreamTap",
    "stream_tap",
    "tap_streams",
    *_messages_all,
    *_extra_all,
]
