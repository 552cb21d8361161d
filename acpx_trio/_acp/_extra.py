"""Wire Structs for ``terminal/*`` (agent -> client), ``session/resume`` and ``session/close``.

Same conventions as :mod:`._messages` (camelCase on the wire, unknown fields ignored).
"""

from __future__ import annotations

from typing import Any

import msgspec

from acpx_trio._acp._messages import EnvVariable, McpServer, SessionModeState
from acpx_trio._acp._updates import _META, SessionConfigOption, _Wire

__all__ = [
    "AgentSessionInfo",
    "CloseSessionRequest",
    "CreateTerminalRequest",
    "CreateTerminalResponse",
    "KillTerminalRequest",
    "ListSessionsRequest",
    "ListSessionsResponse",
    "ReleaseTerminalRequest",
    "ResumeSessionRequest",
    "ResumeSessionResponse",
    "TerminalExitStatus",
    "TerminalOutputRequest",
    "TerminalOutputResponse",
    "WaitForTerminalExitRequest",
]


class ResumeSessionRequest(_Wire, kw_only=True):
    session_id: str
    cwd: str
    mcp_servers: list[McpServer] = msgspec.field(default_factory=list)


class ResumeSessionResponse(_Wire, kw_only=True):
    modes: SessionModeState | None = None
    config_options: list[SessionConfigOption] | None = None
    models: Any = None
    meta: dict[str, Any] | None = _META


class CloseSessionRequest(_Wire, kw_only=True):
    session_id: str


class CreateTerminalRequest(_Wire, kw_only=True):
    session_id: str
    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: list[EnvVariable] = msgspec.field(default_factory=list)
    cwd: str | None = None
    output_byte_limit: int | None = None


class CreateTerminalResponse(_Wire, kw_only=True):
    terminal_id: str


class TerminalOutputRequest(_Wire, kw_only=True):
    session_id: str
    terminal_id: str


WaitForTerminalExitRequest = TerminalOutputRequest
KillTerminalRequest = TerminalOutputRequest
ReleaseTerminalRequest = TerminalOutputRequest


class TerminalExitStatus(_Wire, kw_only=True, omit_defaults=False):
    exit_code: int | None = None
    signal: str | None = None


class TerminalOutputResponse(_Wire, kw_only=True):
    output: str
    truncated: bool
    exit_status: TerminalExitStatus | None = None


class ListSessionsRequest(_Wire, kw_only=True):
    """``session/list`` (when ``sessionCapabilities.list`` is advertised)."""

    cwd: str | None = None
    cursor: str | None = None


class AgentSessionInfo(_Wire, kw_only=True):
    session_id: str
    cwd: str = ""
    title: str | None = None
    updated_at: str | None = None


def _skip_bad(entries: list[Any]) -> list[AgentSessionInfo]:
    out = []
    for entry in entries:
        try:
            out.append(msgspec.convert(entry, AgentSessionInfo))
        except msgspec.ValidationError:
            continue
    return out


class ListSessionsResponse(_Wire, kw_only=True):
    """``sessions`` left raw: a malformed entry is skipped (see :meth:`items`), never an error."""

    sessions: list[Any] = msgspec.field(default_factory=list)
    next_cursor: str | None = None

    def items(self) -> list[AgentSessionInfo]:
        return _skip_bad(self.sessions)
