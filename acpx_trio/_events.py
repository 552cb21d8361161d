"""Turn events and the small result records of the runtime API (msgspec Structs).

Events are a tagged union on ``type``; encode them with ``msgspec.json.encode`` for NDJSON.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from acpx_trio._errors import AcpxError

__all__ = [
    "AcpRuntimeCapabilities",
    "AcpRuntimeEvent",
    "AcpRuntimeHandle",
    "AcpRuntimeStatus",
    "AgentSession",
    "AgentUsage",
    "CommandInfo",
    "ConfigOptionInfo",
    "DoctorReport",
    "DoneEvent",
    "ElicitationAnswer",
    "ElicitationRequest",
    "ErrorEvent",
    "PlanItem",
    "SessionInfo",
    "StatusEvent",
    "TextDeltaEvent",
    "TokenUsage",
    "ToolCallEvent",
    "UsageInfo",
]


class AgentSession(msgspec.Struct, kw_only=True, frozen=True):
    """One of an agent's own sessions, as its ``session/list`` reports it."""

    session_id: str
    cwd: str = ""
    title: str | None = None
    updated_at: str | None = None


class PlanItem(msgspec.Struct, kw_only=True, frozen=True):
    """One plan entry (ACP ``PlanEntry``): ``priority`` high/medium/low, ``status``
    pending/in_progress/completed (other strings passed through)."""

    content: str
    priority: str = "medium"
    status: str = "pending"


class UsageInfo(msgspec.Struct, kw_only=True, frozen=True):
    """Context-window usage (ACP ``usage_update``): ``used`` of ``size`` tokens, and the
    session's cost so far when the agent reports one."""

    used: int | float | None = None
    size: int | float | None = None
    cost_amount: float | None = None
    cost_currency: str | None = None


class CommandInfo(msgspec.Struct, kw_only=True, frozen=True):
    """A slash command the agent offers; ``input_hint`` is the hint for its free-text input."""

    name: str
    description: str = ""
    input_hint: str | None = None


class SessionInfo(msgspec.Struct, kw_only=True, frozen=True):
    """Session metadata the agent reported (``session_info_update``)."""

    title: str | None = None
    updated_at: str | None = None


class ConfigOptionInfo(msgspec.Struct, kw_only=True, frozen=True):
    """One session config option; ``values`` are the selectable values (flattened groups)."""

    id: str
    name: str = ""
    type: str = "select"
    category: str | None = None
    current_value: str | bool | None = None
    values: tuple[str, ...] = ()


class TokenUsage(msgspec.Struct, kw_only=True, frozen=True):
    """Token counts of one turn (ACP ``PromptResponse.usage``)."""

    total_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    thought_tokens: int | None = None
    cached_read_tokens: int | None = None
    cached_write_tokens: int | None = None


class TextDeltaEvent(msgspec.Struct, tag_field="type", tag="text_delta", kw_only=True, frozen=True):
    """A piece of agent text.  ``stream`` is ``output`` (the reply) or ``thought``."""

    text: str
    stream: Literal["output", "thought"] = "output"
    tag: str | None = None


class StatusEvent(msgspec.Struct, tag_field="type", tag="status", kw_only=True, frozen=True,
                  omit_defaults=True):
    """Anything else the agent reported (plan, mode change, commands, usage, unknown kinds).

    ``text`` is a one-line summary for display; the typed field matching ``tag`` carries the
    data (``plan`` for ``plan``, ``usage`` for ``usage_update``, ``commands`` for
    ``available_commands_update``, ``session_info``, ``mode`` for ``current_mode_update``,
    ``config_options`` for ``config_option_update``); the others stay ``None``."""

    text: str
    tag: str | None = None
    plan: tuple[PlanItem, ...] | None = None
    usage: UsageInfo | None = None
    commands: tuple[CommandInfo, ...] | None = None
    session_info: SessionInfo | None = None
    mode: str | None = None
    config_options: tuple[ConfigOptionInfo, ...] | None = None


class ToolCallEvent(msgspec.Struct, tag_field="type", tag="tool_call", kw_only=True, frozen=True):
    """A tool call started or changed (``tag`` is ``tool_call`` or ``tool_call_update``)."""

    text: str
    tool_call_id: str | None = None
    status: str | None = None
    title: str | None = None
    tag: str | None = None


class DoneEvent(msgspec.Struct, tag_field="type", tag="done", kw_only=True, frozen=True,
                omit_defaults=True):
    """The turn ended normally; ``stop_reason`` is ACP's (``end_turn``, ``cancelled``, ...).

    ``usage`` is the turn's token usage when the agent reported it (else ``None``)."""

    stop_reason: str
    usage: TokenUsage | None = None


class ErrorEvent(msgspec.Struct, tag_field="type", tag="error", kw_only=True, frozen=True):
    """The turn failed.  ``code`` is stable; ``retryable`` says whether retrying may help.

    ``rpc_code``/``rpc_data`` are the agent's JSON-RPC error when there was one; ``detail`` is
    the reason behind it (the agent's ``data.details``/``data.message``, or a redacted stderr
    tail) and is also part of ``message``.  All three default to ``None``."""

    message: str
    code: str
    retryable: bool = False
    rpc_code: int | None = None
    rpc_data: Any = None
    detail: str | None = None

    @classmethod
    def from_error(cls, exc: AcpxError, *, code: str | None = None) -> ErrorEvent:
        """The event for ``exc`` (its code, message, retryable and rpc fields)."""
        return cls(
            code=code or exc.code,
            message=exc.message,
            retryable=bool(getattr(exc, "retryable", False)),
            rpc_code=getattr(exc, "rpc_code", None),
            rpc_data=getattr(exc, "rpc_data", None),
            detail=getattr(exc, "detail", None),
        )


AcpRuntimeEvent = TextDeltaEvent | StatusEvent | ToolCallEvent | DoneEvent | ErrorEvent


class AcpRuntimeHandle(msgspec.Struct, kw_only=True, frozen=True):
    """Names a live session.  Minted by the runtime; pass it back to every session call."""

    session_key: str
    backend: str
    agent: str
    mode: Literal["persistent", "oneshot"]
    cwd: str
    backend_session_id: str
    lease_id: str | None = None
    agent_pid: int | None = None


class AcpRuntimeCapabilities(msgspec.Struct, kw_only=True, frozen=True):
    """Controls a session supports (``session/set_mode``, ``session/set_config_option``, ...)."""

    controls: tuple[str, ...] = ()
    config_option_keys: tuple[str, ...] = ()
    load_session: bool = False


class AgentUsage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What an agent's leaf cgroup says it uses (agent and everything it started).

    A measure the kernel does not provide here is ``None`` and ``unavailable`` says why
    (measure name -> reason); a ``None`` is never a zero."""

    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None
    unavailable: dict[str, str] = {}


class ElicitationRequest(msgspec.Struct, kw_only=True, frozen=True):
    """The agent asks the user for something (ACP ``elicitation/create``).

    ``mode`` ``form``: ``message`` and ``requested_schema`` (a flat JSON Schema object; never
    for secrets, by the spec).  ``mode`` ``url``: ``message`` and ``url`` (to open out of
    band, only with the user's consent; ``elicitation_id`` names it)."""

    session_key: str | None
    mode: str
    message: str
    requested_schema: dict[str, Any] | None = None
    url: str | None = None
    elicitation_id: str | None = None
    tool_call_id: str | None = None


class ElicitationAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """The user's answer: ``accept`` (with the form's ``content``; for a URL: consent to
    open it), ``decline`` or ``cancel`` (dismissed)."""

    action: Literal["accept", "decline", "cancel"]
    content: dict[str, Any] | None = None


class AcpRuntimeStatus(msgspec.Struct, kw_only=True, frozen=True):
    """What is known about a session right now.  ``usage``: what the agent's tree uses, from
    its leaf cgroup (cgroup containment; otherwise every measure is unavailable, with why)."""

    summary: str = ""
    backend_session_id: str | None = None
    agent_pid: int | None = None
    alive: bool = False
    current_mode: str | None = None
    details: dict[str, Any] = {}
    usage: AgentUsage | None = None


class DoctorReport(msgspec.Struct, kw_only=True, frozen=True):
    """Result of :meth:`AcpRuntimeProtocol.doctor`.  ``details`` may hold values of any type."""

    ok: bool
    message: str
    code: str | None = None
    install_command: str | None = None
    details: list[Any] = []
