"""Wire Structs and persisted state of the mock agent (stdlib + msgspec only).

Kept separate from ``acpx_trio._acp`` on purpose: the mock agent is an independent
implementation of the agent side, so a shared bug cannot hide on both ends.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

AGENT_NAME = "acpx-trio-mock-agent"
AGENT_VERSION = "0.1.0"
MODES = {
    "default": "Default: ask before edits",
    "plan": "Plan: read-only",
    "yolo": "YOLO: never ask",
}
MODELS = ("mock-small", "mock-large")


class _W(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    pass


# ---------------------------------------------------------------------------- envelope


class Msg(msgspec.Struct, kw_only=True):
    """One outgoing JSON-RPC message; UNSET fields are left out (``jsonrpc`` is always sent)."""

    jsonrpc: str = "2.0"
    id: int | str | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: Any = UNSET
    result: Any = UNSET
    error: Any = UNSET


class RpcErr(_W, kw_only=True):
    code: int
    message: str
    data: Any = None


# ---------------------------------------------------------------------------- incoming


class InMsg(msgspec.Struct):
    id: int | str | UnsetType | None = UNSET
    method: str | UnsetType = UNSET
    params: Raw = Raw()
    result: Raw = Raw()
    error: Raw = Raw()


class RpcFailure(Exception):
    """Answer the current request with this JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Block(_W, kw_only=True):
    type: str
    text: str | None = None


class Params(_W, kw_only=True):
    """Lenient union of every params shape the mock reads."""

    session_id: str = ""
    cwd: str = ""
    mcp_servers: list[Any] = msgspec.field(default_factory=list)
    mode_id: str = ""
    config_id: str = ""
    value: str | bool | None = None
    method_id: str = ""
    model_id: str = ""
    prompt: list[Block] = msgspec.field(default_factory=list)
    meta: dict[str, Any] | None = msgspec.field(default=None, name="_meta")
    cursor: str | None = None


class PermissionResult(_W, kw_only=True):
    outcome: dict[str, Any]


class ReadResult(_W, kw_only=True):
    content: str


# ---------------------------------------------------------------------------- outgoing


class UpdateParams(_W, kw_only=True):
    session_id: str
    update: Any


class Text(_W, kw_only=True):
    type: str
    text: str


class Chunk(_W, kw_only=True):
    session_update: str
    content: Text

    @classmethod
    def make(cls, kind: str, text: str) -> Chunk:
        return cls(session_update=kind, content=Text(type="text", text=text))


class ModeUpdate(_W, kw_only=True, tag_field="sessionUpdate", tag="current_mode_update"):
    current_mode_id: str


class ToolContent(_W, kw_only=True):
    type: str
    content: Text


class ToolCallStart(_W, kw_only=True, tag_field="sessionUpdate", tag="tool_call"):
    tool_call_id: str
    title: str
    kind: str
    status: str
    raw_input: Any = None


class ToolCallUpdate(_W, kw_only=True, tag_field="sessionUpdate", tag="tool_call_update"):
    tool_call_id: str
    status: str
    content: list[ToolContent] | None = None
    raw_output: Any = None


class PermissionToolCall(_W, kw_only=True):
    tool_call_id: str
    title: str
    kind: str
    status: str
    raw_input: Any = None


class PermissionOption(_W, kw_only=True):
    option_id: str
    name: str
    kind: str


class PermissionParams(_W, kw_only=True):
    session_id: str
    tool_call: PermissionToolCall
    options: list[PermissionOption]


class ReadParams(_W, kw_only=True):
    session_id: str
    path: str


class WriteParams(_W, kw_only=True):
    session_id: str
    path: str
    content: str


class StopResult(_W, kw_only=True):
    stop_reason: str
    usage: dict[str, Any] | None = None


class Info(_W, kw_only=True):
    name: str
    version: str


class AuthMethod(_W, kw_only=True):
    id: str
    name: str
    description: str
    type: str | None = None
    args: list[str] | None = None


class PromptCaps(_W, kw_only=True, omit_defaults=False):
    image: bool = False
    audio: bool = False
    embedded_context: bool = False


class McpCaps(_W, kw_only=True, omit_defaults=False):
    http: bool = False
    sse: bool = False


class AgentCaps(_W, kw_only=True, omit_defaults=False):
    load_session: bool
    prompt_capabilities: PromptCaps = msgspec.field(default_factory=PromptCaps)
    mcp_capabilities: McpCaps = msgspec.field(default_factory=McpCaps)
    session_capabilities: dict[str, Any] = msgspec.field(default_factory=dict)
    auth: dict[str, Any] = msgspec.field(default_factory=dict)


class InitResult(_W, kw_only=True):
    protocol_version: int
    agent_capabilities: AgentCaps
    auth_methods: list[AuthMethod]
    agent_info: Info


class Mode(_W, kw_only=True):
    id: str
    name: str
    description: str


class ModeState(_W, kw_only=True):
    current_mode_id: str
    available_modes: list[Mode]


class SelectValue(_W, kw_only=True):
    value: str
    name: str


class ConfigOption(_W, kw_only=True):
    id: str
    name: str
    category: str
    type: str
    current_value: str
    options: list[SelectValue]


class ModelEntry(_W, kw_only=True):
    model_id: str
    name: str


class ModelState(_W, kw_only=True):
    """The legacy ``models`` (``--legacy-models``: no model config option)."""

    current_model_id: str
    available_models: list[ModelEntry]


class SessionResult(_W, kw_only=True):
    session_id: str | UnsetType = UNSET
    modes: ModeState
    config_options: list[ConfigOption]
    models: ModelState | UnsetType = UNSET


def legacy_models(model: str) -> ModelState:
    return ModelState(current_model_id=model,
                      available_models=[ModelEntry(model_id=m, name=m) for m in MODELS])


class ConfigResult(_W, kw_only=True):
    config_options: list[ConfigOption]


class Empty(_W, kw_only=True):
    pass


def modes_state(current: str) -> ModeState:
    return ModeState(
        current_mode_id=current,
        available_modes=[
            Mode(id=mode_id, name=mode_id.capitalize(), description=description)
            for mode_id, description in MODES.items()
        ],
    )


def config_options(model: str) -> list[ConfigOption]:
    return [
        ConfigOption(
            id="model",
            name="Model",
            category="model",
            type="select",
            current_value=model,
            options=[SelectValue(value=m, name=m) for m in MODELS],
        )
    ]


# ---------------------------------------------------------------------------- persisted state


class Turn(msgspec.Struct):
    user: str
    agent: str


class SessionRecord(msgspec.Struct, kw_only=True):
    """One session, persisted as ``<session-dir>/<sessionId>.json``."""

    session_id: str
    cwd: str = ""
    mode_id: str = "default"
    model: str = MODELS[0]
    turns: list[Turn] = msgspec.field(default_factory=list)
    #: the MCP servers it was given, as ``name:type``
    mcp: list[str] = msgspec.field(default_factory=list)
    #: the same servers whole, as JSON (env and headers included)
    mcp_given: list[str] = msgspec.field(default_factory=list)


# ---------------------------------------------------------------------------- terminals


class TermEnv(_W, kw_only=True):
    name: str
    value: str


class TermCreateParams(_W, kw_only=True):
    session_id: str
    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: list[TermEnv] = msgspec.field(default_factory=list)
    cwd: str | None = None
    output_byte_limit: int | None = None


class TermRef(_W, kw_only=True):
    session_id: str
    terminal_id: str


class TermCreated(_W, kw_only=True):
    terminal_id: str


class TermExit(_W, kw_only=True):
    exit_code: int | None = None
    signal: str | None = None


class TermOutput(_W, kw_only=True):
    output: str
    truncated: bool = False
    exit_status: TermExit | None = None
