"""A request waiting for its answer, and the per-waiter copy of a connection error."""

from __future__ import annotations

import trio

from acpx_trio._acp._jsonrpc import ErrorResponse, Response
from acpx_trio._errors import AcpConnectionClosedError, AcpProtocolError, AcpxError

__all__ = ["Pending", "copy_error"]


class Pending:
    __slots__ = ("done", "error", "method", "outcome")

    def __init__(self, method: str) -> None:
        self.method = method
        self.done = trio.Event()
        self.outcome: Response | ErrorResponse | None = None
        self.error: AcpxError | None = None


def copy_error(exc: AcpxError) -> AcpxError:
    """A fresh instance for each waiter, so tracebacks do not pile up on one object."""
    if isinstance(exc, AcpProtocolError):
        return AcpProtocolError(exc.message, code=exc.code)
    return AcpConnectionClosedError(exc.message, code=exc.code)
