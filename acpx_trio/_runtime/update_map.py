"""Mapping ACP ``session/update`` payloads to turn events (pure functions, no I/O).

:func:`decode_notification` decodes known update kinds in one typed pass and falls back to the
tolerant decoder (unknown kinds, odd shapes) so it never fails on a well-formed notification.
"""

from __future__ import annotations

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
from acpx_trio._events import AcpRuntimeEvent, StatusEvent, TextDeltaEvent, ToolCallEvent

__all__ = ["MAPPERS", "decode_notification", "map_update"]


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
    text: str
    if isinstance(update, Plan):
        items = "; ".join(f"[{e.status}] {e.content}" for e in update.entries)
        text, tag = f"plan: {items}" if items else "plan: (empty)", "plan"
    elif isinstance(update, AvailableCommandsUpdate):
        names = ", ".join(c.name for c in update.available_commands)
        text, tag = f"available commands: {names}", "available_commands_update"
    elif isinstance(update, CurrentModeUpdate):
        text, tag = f"mode: {update.current_mode_id}", "current_mode_update"
    elif isinstance(update, ConfigOptionUpdate):
        ids = ", ".join(o.id for o in update.config_options)
        text, tag = f"config options: {ids}", "config_option_update"
    elif isinstance(update, SessionInfoUpdate):
        tag = "session_info_update"
        error = reported_error(update.meta)
        if error:
            text = f"agent error: {error}"
        elif update.title:
            text = f"session: {update.title}"
        else:  # nothing to say (an empty title): no blank status line
            return None
    elif isinstance(update, UsageUpdate):
        text, tag = f"usage: {update.used}/{update.size}", "usage_update"
    else:
        assert isinstance(update, UnknownSessionUpdate)
        tag = update.session_update or "unknown"
        text = f"{tag} update"
    return StatusEvent(text=text, tag=tag)


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
