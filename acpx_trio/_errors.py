"""Typed errors.  Every error acpx-trio raises is an :class:`AcpxError` with a stable ``code``.

Codes are upper-case strings meant for programs (``except`` by class, branch on ``code``);
messages are meant for people and say what to do next.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AcpConnectionClosedError",
    "AcpProtocolError",
    "AcpRuntimeError",
    "AcpxError",
    "AgentProcessError",
    "ConfigError",
    "GatewayInstanceIdError",
    "LeaseStateError",
    "LeaseStoreError",
    "StateFileError",
]


class AcpxError(Exception):
    """Base class of every acpx-trio error.  ``code`` is stable; ``message`` is for people."""

    code: str = "ACPX_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(AcpxError, ValueError):
    """A configuration value is invalid.  ``field`` names it (dotted path), ``value`` is what
    was given, ``allowed`` says what would be accepted."""

    code = "ACPX_CONFIG_INVALID"

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid config {field}={value!r}: {allowed}")


class GatewayInstanceIdError(AcpxError):
    """The gateway instance id file exists but cannot be trusted or recovered.

    Raised instead of silently minting a new id, which would orphan every lease of the old one.
    """

    code = "ACPX_GATEWAY_ID_INVALID"


class LeaseStoreError(AcpxError):
    """The lease file could not be read or written."""

    code = "ACPX_LEASE_STORE_FAILED"


class LeaseStateError(AcpxError, ValueError):
    """An illegal lease state move (e.g. ``closed -> open``) was requested."""

    code = "ACPX_LEASE_STATE_INVALID"

    def __init__(self, lease_id: str, current: str, requested: str) -> None:
        self.lease_id = lease_id
        self.current = current
        self.requested = requested
        super().__init__(
            f"lease {lease_id}: illegal state move {current} -> {requested} "
            "(allowed: open->closing, open->closed, closing->closed, closing->lost; "
            "closed and lost are final)"
        )


class AgentProcessError(AcpxError):
    """An agent process could not be started or died.  ``stderr_tail`` holds its last words."""

    code = "ACP_AGENT_PROCESS_FAILED"

    def __init__(self, message: str, *, code: str | None = None, stderr_tail: str = "") -> None:
        self.stderr_tail = stderr_tail
        if stderr_tail.strip():
            message = f"{message}\n--- agent stderr (tail) ---\n{stderr_tail.rstrip()}"
        super().__init__(message, code=code)


class AcpRuntimeError(AcpxError):
    """A runtime operation failed.  ``code`` follows OpenClaw's ACP runtime codes
    (``ACP_SESSION_INIT_FAILED``, ``ACP_TURN_FAILED``, ``ACP_BACKEND_UNAVAILABLE``, ...) or
    carries the agent's JSON-RPC error (``rpc_code``/``rpc_data``).  ``retryable`` tells whether
    the same call may succeed if tried again."""

    code = "ACP_RUNTIME_ERROR"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        rpc_code: int | None = None,
        rpc_data: Any = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.rpc_code = rpc_code
        self.rpc_data = rpc_data


class AcpProtocolError(AcpRuntimeError):
    """The agent broke the protocol (non-JSON line, oversized line, bad message shape).

    Like :class:`trio.BrokenResourceError`: the connection is unusable afterwards."""

    def __init__(self, message: str, *, code: str = "ACP_PROTOCOL_ERROR") -> None:
        super().__init__(code, message, retryable=False)


class AcpConnectionClosedError(AcpRuntimeError):
    """The agent closed its stdout (or died) while a request was waiting for its answer."""

    def __init__(self, message: str, *, code: str = "ACP_CONNECTION_CLOSED") -> None:
        super().__init__(code, message, retryable=True)


class StateFileError(AcpxError):
    """A state file or the state directory cannot be trusted: a FIFO, a device, a directory
    or a symbolic link where a regular file belongs, a file larger than its cap, or a state
    directory that is not a directory, belongs to another user or is group/world-writable.
    ``path`` names it; the message says how to fix it.  Nothing was read, written or
    ``chmod``-ed through it."""

    code = "ACPX_STATE_FILE_UNSAFE"

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}; {fix}")
