"""Mapping ACP ``session/update`` payloads to turn events (pure functions, no I/O).

:func:`decode_notification` decodes known update kinds in one typed pass and falls back to the
tolerant decoder (unknown kinds, odd shapes) so it never fails on a well-formed notification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from acpx_trio._acp import (
    AgentMessageChunk,
    AgentThoughtChunk,
    AvailableCommandsUpdate,
    ConfigOptionUpdate,
    ContentBlock,
    CurrentModeUpdate,
    FastSessionNotification,
    Plan,
    SessionConfigOption,
    SessionInfoUpdate,
    SessionNotification,
    SessionUpdate,
    ToolCall,
    ToolCallUpdate,
    UnknownSessionUpdate,
    UsageUpdate,
    UserMessageChunk,
    decode_session_notification,
)
from acpx_trio._events import (
    AcpRuntimeEvent,
    CommandInfo,
    ConfigOptionInfo,
    PlanItem,
    SessionInfo,
    StatusEvent,
    TextDeltaEvent,
    TokenUsage,
    ToolCallEvent,
    UsageInfo,
)

__all__ = ["MAPPERS", "config_option_info", "decode_notification", "map_update", "token_usage"]

_log = logging.getLogger("acpx_trio.acp.decode")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def token_usage(raw: object) -> TokenUsage | None:
    """``PromptResponse.usage`` as :class:`TokenUsage`; an invalid field takes its default
    (``None``) and a non-object is ignored, both logged at debug, never an error."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        _log.debug("ignoring malformed PromptResponse.usage: %r", type(raw).__name__)
        return None
    fields = {
        "total_tokens": raw.get("totalTokens"), "input_tokens": raw.get("inputTokens"),
        "output_tokens": raw.get("outputTokens"), "thought_tokens": raw.get("thoughtTokens"),
        "cached_read_tokens": raw.get("cachedReadTokens"),
        "cached_write_tokens": raw.get("cachedWriteTokens"),
    }
    clean = {k: _int(v) for k, v in fields.items()}
    bad = sum(1 for k, v in fields.items() if v is not None and clean[k] is None)
    if bad:
        _log.debug("PromptResponse.usage: %d invalid field(s) defaulted", bad)
    return TokenUsage(**clean)


def _cost(cost: object) -> tuple[float | None, str | None]:
    if not isinstance(cost, dict):
        return None, None
    amount = cost.get("amount")
    currency = cost.get("currency")
    ok_amount = isinstance(amount, (int, float)) and not isinstance(amount, bool)
    return (float(amount) if ok_amount else None,  # type: ignore[arg-type]
            currency if isinstance(currency, str) else None)


def _amount_text(amount: float) -> str:
    """``amount`` with every digit it has (a rounded form could show the first digits of a
    credential that redaction, which looks for the whole, would not find)."""
    return str(int(amount)) if amount.is_integer() and abs(amount) < 1e16 else repr(amount)


def config_option_info(option: SessionConfigOption) -> ConfigOptionInfo:
    """The public view of one wire config option (select groups flattened into ``values``)."""
    values: list[str] = []
    for choice in option.options or ():
        if choice.value is not None:
            values.append(choice.value)
        values.extend(c.value for c in choice.options or () if c.value is not None)
    return ConfigOptionInfo(id=option.id, name=option.name, type=option.type,
                            category=option.category, current_value=option.current_value,
                            values=tuple(values))


def _block_text(block: ContentBlock) -> str:
    if block.type == "text":
        return block.text or ""
    label = block.uri or block.name or block.title or block.mime_type or ""
    return f"[{block.type}{': ' + label if label else ''}]"


def _message(update: AgentMessageChunk) -> AcpRuntimeEvent:
    block = update.content
    text = (block.text or "") if block.type == "text" else _block_text(block)
    return TextDeltaEvent(text=text, stream="output", tag="agent_message_chunk")


def _thought(update: AgentThoughtChunk) -> AcpRuntimeEvent:
    block = update.content
    text = (block.text or "") if block.type == "text" else _block_text(block)
    return TextDeltaEvent(text=text, stream="thought", tag="agent_thought_chunk")


def _tool(update: ToolCall | ToolCallUpdate) -> AcpRuntimeEvent:
    kind = "tool_call" if type(update) is ToolCall else "tool_call_update"
    parts = [update.title or update.tool_call_id]
    if update.status:
        parts.append(f"({update.status})")
    return ToolCallEvent(text=" ".join(parts), tool_call_id=update.tool_call_id,
                         status=update.status, title=update.title, tag=kind)


#: Longest agent-reported error kept (from ``_meta``).
REPORTED_ERROR_CHARS = 2000


def reported_error(meta: Any) -> str | None:
    """An error the agent reported in an update's ``_meta`` (``{"<vendor>": {"error": ...}}``
    or ``{"error": ...}``; a string, or an object with ``message``), else ``None``."""
    if not isinstance(meta, dict):
        return None
    for scope in (meta, *(v for v in meta.values() if isinstance(v, dict))):
        error = scope.get("error")
        if isinstance(error, dict):
            error = error.get("message") or msgspec.json.encode(error).decode()
        if isinstance(error, str) and error.strip():
            return error.strip()[:REPORTED_ERROR_CHARS]
    return None


def _status(update: SessionUpdate) -> AcpRuntimeEvent | None:
    if isinstance(update, Plan):
        items = "; ".join(f"[{e.status}] {e.content}" for e in update.entries)
        plan = tuple(PlanItem(content=e.content, priority=e.priority, status=e.status)
                     for e in update.entries)
        return StatusEvent(text=f"plan: {items}" if items else "plan: (empty)", tag="plan",
                           plan=plan)
    if isinstance(update, AvailableCommandsUpdate):
        names = ", ".join(c.name for c in update.available_commands)
        commands = tuple(
            CommandInfo(name=c.name, description=c.description, input_hint=_hint(c.input))
            for c in update.available_commands
        )
        return StatusEvent(text=f"available commands: {names}",
                           tag="available_commands_update", commands=commands)
    if isinstance(update, CurrentModeUpdate):
        return StatusEvent(text=f"mode: {update.current_mode_id}", tag="current_mode_update",
                           mode=update.current_mode_id)
    if isinstance(update, ConfigOptionUpdate):
        ids = ", ".join(o.id for o in update.config_options)
        return StatusEvent(text=f"config options: {ids}", tag="config_option_update",
                           config_options=tuple(map(config_option_info, update.config_options)))
    if isinstance(update, SessionInfoUpdate):
        info = SessionInfo(title=update.title, updated_at=update.updated_at)
        error = reported_error(update.meta)
        if error:
            text = f"agent error: {error}"
        elif update.title:
            text = f"session: {update.title}"
        elif update.updated_at:
            text = f"session: updated {update.updated_at}"
        else:  # nothing to say (an empty title): no blank status line
            return None
        return StatusEvent(text=text, tag="session_info_update", session_info=info)
    if isinstance(update, UsageUpdate):
        amount, currency = _cost(update.cost)
        text = f"usage: {update.used}/{update.size}"
        if amount is not None:
            text += f" (cost {_amount_text(amount)}{' ' + currency if currency else ''})"
        return StatusEvent(text=text, tag="usage_update", usage=UsageInfo(
            used=update.used, size=update.size, cost_amount=amount, cost_currency=currency))
    assert isinstance(update, UnknownSessionUpdate)
    tag = update.session_update or "unknown"
    return StatusEvent(text=f"{tag} update", tag=tag)


def _hint(command_input: dict[str, Any] | None) -> str | None:
    hint = (command_input or {}).get("hint")
    return hint if isinstance(hint, str) else None


def _hidden(update: SessionUpdate) -> None:
    return None


#: One dict lookup per update instead of an ``isinstance`` chain (exact types: the wire
#: Structs are never subclassed).
MAPPERS: dict[type[Any], Callable[[Any], AcpRuntimeEvent | None]] = {
    AgentMessageChunk: _message,
    AgentThoughtChunk: _thought,
    ToolCall: _tool,
    ToolCallUpdate: _tool,
    UserMessageChunk: _hidden,
}


def map_update(update: SessionUpdate) -> AcpRuntimeEvent | None:
    """The turn event for one ``session/update`` (``None``: not shown, e.g. user echoes)."""
    return MAPPERS.get(type(update), _status)(update)


_fast_decode = msgspec.json.Decoder(FastSessionNotification).decode


def decode_notification(raw: msgspec.Raw) -> FastSessionNotification | SessionNotification:
    """``session/update`` params; raises ``msgspec`` errors only for a malformed envelope."""
    try:  # one typed decode for the known kinds; the tolerant decoder for the rest
        return _fast_decode(raw)
    except msgspec.ValidationError:
        return decode_session_notification(raw)
