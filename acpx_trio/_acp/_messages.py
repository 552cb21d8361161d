"""msgspec Structs for the ACP v1 methods acpx-trio uses (params and results).

Wire names are camelCase; Python names are snake_case; unknown fields are ignored when
decoding.  Optional fields whose value is the default are omitted when encoding; required
fields have no default, so they are always sent.  Content blocks and ``session/update``
payloads live in :mod:`._updates` and are re-exported here.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from acpx_trio._acp._updates import (
    _META,
    AgentMessageChunk,
    AgentThoughtChunk,
    AvailableCommand,
    AvailableCommandsUpdate,
    ConfigOptionUpdate,
    ContentBlock,
    CurrentModeUpdate,
    FastSessionNotification,
    PermissionToolCall,
    Plan,
    PlanEntry,
    SessionConfigOption,
    SessionConfigSelectOption,
    SessionInfoUpdate,
    SessionNotification,
    SessionUpdate,
    SessionUpdateLine,
    ToolCall,
    ToolCallContent,
    ToolCallLocation,
    ToolCallUpdate,
    UnknownSessionUpdate,
    UsageUpdate,
    UserMessageChunk,
    _Wire,
    decode_session_notification,
    decode_session_update,
    decode_session_update_line,
    decode_session_update_lines,
    text_block,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AgentCapabilities",
    "AgentMessageChunk",
    "AgentThoughtChunk",
    "AuthCapabilities",
    "AuthMethod",
    "AuthenticateRequest",
    "AuthenticateResponse",
    "AvailableCommand",
    "AvailableCommandsUpdate",
    "CancelNotification",
    "CancelledOutcome",
    "ClientCapabilities",
    "CompleteElicitationNotification",
    "ConfigOptionUpdate",
    "ContentBlock",
    "CreateElicitationRequest",
    "CurrentModeUpdate",
    "DeleteSessionRequest",
    "EmptyResponse",
    "EnvVariable",
    "FastSessionNotification",
    "FileSystemCapability",
    "HttpHeader",
    "Implementation",
    "InitializeRequest",
    "InitializeResponse",
    "LoadSessionRequest",
    "LoadSessionResponse",
    "McpCapabilities",
    "McpServer",
    "McpServerHttp",
    "McpServerSse",
    "McpServerStdio",
    "ModelInfo",
    "NewSessionRequest",
    "NewSessionResponse",
    "PermissionOption",
    "PermissionOutcome",
    "PermissionToolCall",
    "Plan",
    "PlanEntry",
    "PromptCapabilities",
    "PromptRequest",
    "PromptResponse",
    "ReadTextFileRequest",
    "ReadTextFileResponse",
    "RequestPermissionRequest",
    "RequestPermissionResponse",
    "SelectedOutcome",
    "SessionCapabilities",
    "SessionConfigOption",
    "SessionConfigSelectOption",
    "SessionInfoUpdate",
    "SessionMode",
    "SessionModeState",
    "SessionModelState",
    "SessionNotification",
    "SessionUpdate",
    "SessionUpdateLine",
    "SetSessionConfigOptionRequest",
    "SetSessionConfigOptionResponse",
    "SetSessionModeRequest",
    "SetSessionModeResponse",
    "SetSessionModelRequest",
    "ToolCall",
    "ToolCallContent",
    "ToolCallLocation",
    "ToolCallUpdate",
    "UnknownSessionUpdate",
    "UsageUpdate",
    "UserMessageChunk",
    "WriteTextFileRequest",
    "WriteTextFileResponse",
    "decode_session_notification",
    "decode_session_update",
    "decode_session_update_line",
    "decode_session_update_lines",
    "text_block",
]

PROTOCOL_VERSION: Final = 1
"""The only ACP protocol version acpx-trio speaks."""


# --------------------------------------------------------------------------- initialize


class Implementation(_Wire, kw_only=True):
    name: str
    version: str = ""
    title: str | None = None


class FileSystemCapability(_Wire, kw_only=True, omit_defaults=False):
    read_text_file: bool = False
    write_text_file: bool = False


class ClientCapabilities(_Wire, kw_only=True, omit_defaults=False):
    """Always encoded in full (``terminal: false`` is sent explicitly)."""

    fs: FileSystemCapability = msgspec.field(default_factory=FileSystemCapability)
    terminal: bool = False
    #: ``{"form": {}, "url": {}}``: the elicitation modes we answer (``None``: none)
    elicitation: dict[str, Any] | None = None
    #: ``{"configOptions": {"boolean": {}}}``: we take boolean config options
    session: dict[str, Any] | None = None


class InitializeRequest(_Wire, kw_only=True):
    protocol_version: int
    client_capabilities: ClientCapabilities = msgspec.field(default_factory=ClientCapabilities)
    client_info: Implementation | None = None


class PromptCapabilities(_Wire, kw_only=True):
    image: bool = False
    audio: bool = False
    embedded_context: bool = False


class McpCapabilities(_Wire, kw_only=True):
    http: bool = False
    sse: bool = False


class SessionCapabilities(_Wire, kw_only=True):
    """Each field is ``{}`` (an object) when supported, absent/None when not."""

    list_sessions: dict[str, Any] | None = msgspec.field(default=None, name="list")
    delete: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None
    close: dict[str, Any] | None = None
    additional_directories: dict[str, Any] | None = None


class AuthCapabilities(_Wire, kw_only=True):
    """``logout`` is ``{}`` when the agent supports the ``logout`` method."""

    logout: dict[str, Any] | None = None


class AgentCapabilities(_Wire, kw_only=True):
    load_session: bool = False
    prompt_capabilities: PromptCapabilities = msgspec.field(default_factory=PromptCapabilities)
    mcp_capabilities: McpCapabilities = msgspec.field(default_factory=McpCapabilities)
    session_capabilities: SessionCapabilities = msgspec.field(default_factory=SessionCapabilities)
    auth: AuthCapabilities = msgspec.field(default_factory=AuthCapabilities)


class CreateElicitationRequest(_Wire, kw_only=True):
    """``elicitation/create`` (agent -> client): ``mode`` ``form`` (``requested_schema``) or
    ``url`` (``url``, ``elicitation_id``); scoped to ``session_id`` (and ``tool_call_id``)
    or to ``request_id``."""

    mode: str
    message: str = ""
    session_id: str | None = None
    tool_call_id: str | None = None
    request_id: int | str | None = None
    requested_schema: dict[str, Any] | None = None
    url: str | None = None
    elicitation_id: str | None = None


class CompleteElicitationNotification(_Wire, kw_only=True):
    """``elicitation/complete``: the out-of-band interaction of a URL elicitation ended."""

    elicitation_id: str


class DeleteSessionRequest(_Wire, kw_only=True):
    session_id: str


class AuthMethod(_Wire, kw_only=True):
    id: str
    name: str = ""
    description: str | None = None
    type: str | None = None
    #: ``type: "terminal"``: arguments to run the agent's own command with, in a terminal.
    args: list[str] | None = None


class InitializeResponse(_Wire, kw_only=True):
    protocol_version: int
    agent_capabilities: AgentCapabilities = msgspec.field(default_factory=AgentCapabilities)
    auth_methods: list[AuthMethod] = msgspec.field(default_factory=list)
    agent_info: Implementation | None = None


class AuthenticateRequest(_Wire, kw_only=True):
    method_id: str


class EmptyResponse(_Wire, kw_only=True):
    """A result that carries nothing (``{}``; a ``null`` result also decodes to it)."""

    meta: dict[str, Any] | None = _META


AuthenticateResponse = EmptyResponse
SetSessionModeResponse = EmptyResponse
WriteTextFileResponse = EmptyResponse

# --------------------------------------------------------------------------- sessions


class EnvVariable(_Wire, kw_only=True):
    name: str
    value: str


class McpServerStdio(_Wire, kw_only=True):
    """A stdio MCP server entry (``args`` and ``env`` are required on the wire)."""

    name: str
    command: str
    args: list[str]
    env: list[EnvVariable]


class HttpHeader(_Wire, kw_only=True):
    name: str
    value: str


class McpServerHttp(_Wire, kw_only=True):
    """An MCP server over HTTP (only for agents advertising ``mcpCapabilities.http``)."""

    type: str  # "http" (required on the wire: never omitted as a default)
    name: str
    url: str
    headers: list[HttpHeader]


class McpServerSse(_Wire, kw_only=True):
    """An MCP server over SSE (only for agents advertising ``mcpCapabilities.sse``)."""

    type: str  # "sse"
    name: str
    url: str
    headers: list[HttpHeader]


McpServer = McpServerStdio | McpServerHttp | McpServerSse


class NewSessionRequest(_Wire, kw_only=True):
    cwd: str
    mcp_servers: list[McpServer]


class SessionMode(_Wire, kw_only=True):
    id: str
    name: str = ""
    description: str | None = None


class SessionModeState(_Wire, kw_only=True):
    current_mode_id: str
    available_modes: list[SessionMode] = msgspec.field(default_factory=list)


class ModelInfo(_Wire, kw_only=True):
    """One model of the legacy (pre-config-option) model selection."""

    model_id: str
    name: str = ""
    description: str | None = None


class SessionModelState(_Wire, kw_only=True):
    """The legacy ``models`` of ``session/new|load`` (before models became a config option
    of category ``model``; still answered by many agents)."""

    current_model_id: str
    available_models: list[ModelInfo] = msgspec.field(default_factory=list)


class SetSessionModelRequest(_Wire, kw_only=True):
    """Legacy ``session/set_model``."""

    session_id: str
    model_id: str


class NewSessionResponse(_Wire, kw_only=True):
    session_id: str
    modes: SessionModeState | None = None
    config_options: list[SessionConfigOption] | None = None
    #: legacy model selection, left raw: decoded leniently (a malformed value is ignored)
    models: Any = None
    meta: dict[str, Any] | None = _META


class LoadSessionRequest(_Wire, kw_only=True):
    session_id: str
    cwd: str
    mcp_servers: list[McpServer]


class LoadSessionResponse(_Wire, kw_only=True):
    modes: SessionModeState | None = None
    config_options: list[SessionConfigOption] | None = None
    models: Any = None
    meta: dict[str, Any] | None = _META


class PromptRequest(_Wire, kw_only=True):
    session_id: str
    prompt: list[ContentBlock]
    #: the caller's ``_meta`` (e.g. a W3C ``traceparent``), passed through unchanged
    meta: dict[str, Any] | None = _META


class PromptResponse(_Wire, kw_only=True):
    """``stop_reason``: end_turn, max_tokens, max_turn_requests, refusal, cancelled (or new)."""

    stop_reason: str
    #: ``Usage`` object (totalTokens, inputTokens, ...); left raw so a malformed value never
    #: fails the turn (decoded leniently by ``update_map.token_usage``).
    usage: Any = None
    meta: dict[str, Any] | None = _META


class CancelNotification(_Wire, kw_only=True):
    session_id: str


class SetSessionModeRequest(_Wire, kw_only=True):
    session_id: str
    mode_id: str


class SetSessionConfigOptionRequest(_Wire, kw_only=True):
    """``value`` is a select value id, or a bool with ``type="boolean"``."""

    session_id: str
    config_id: str
    value: str | bool
    type: str | None = None


class SetSessionConfigOptionResponse(_Wire, kw_only=True):
    config_options: list[SessionConfigOption] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------- agent -> client


class PermissionOption(_Wire, kw_only=True):
    """``kind``: allow_once, allow_always, reject_once, reject_always."""

    option_id: str
    name: str = ""
    kind: str = "allow_once"


class RequestPermissionRequest(_Wire, kw_only=True):
    session_id: str
    tool_call: PermissionToolCall
    options: list[PermissionOption] = msgspec.field(default_factory=list)


class SelectedOutcome(_Wire, kw_only=True, tag_field="outcome", tag="selected"):
    option_id: str


class CancelledOutcome(_Wire, kw_only=True, tag_field="outcome", tag="cancelled"):
    pass


PermissionOutcome = SelectedOutcome | CancelledOutcome


class RequestPermissionResponse(_Wire, kw_only=True):
    outcome: PermissionOutcome


class ReadTextFileRequest(_Wire, kw_only=True):
    """``line`` is 1-based; ``limit`` is a number of lines."""

    session_id: str
    path: str
    line: int | None = None
    limit: int | None = None


class ReadTextFileResponse(_Wire, kw_only=True):
    content: str


class WriteTextFileRequest(_Wire, kw_only=True):
    session_id: str
    path: str
    content: str
