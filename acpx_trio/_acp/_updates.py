"""Content blocks and ``session/update`` payloads (the tolerant part of the ACP wire model).

Guarantees for everything decoded from the wire:

- unknown fields are ignored; free-form enumerations (``kind``, ``status`` ...) are ``str``;
- content blocks are one tolerant :class:`ContentBlock` Struct that accepts any ``type``;
- :func:`decode_session_update` maps an unknown or malformed ``sessionUpdate`` kind to
  :class:`UnknownSessionUpdate` instead of raising.
"""

from __future__ import annotations

import logging
import re
import typing
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "AgentMessageChunk",
    "AgentThoughtChunk",
    "AvailableCommand",
    "AvailableCommandsUpdate",
    "ConfigOptionUpdate",
    "ContentBlock",
    "CurrentModeUpdate",
    "FastSessionNotification",
    "PermissionToolCall",
    "Plan",
    "PlanEntry",
    "SessionConfigOption",
    "SessionConfigSelectOption",
    "SessionInfoUpdate",
    "SessionNotification",
    "SessionUpdate",
    "SessionUpdateLine",
    "ToolCall",
    "ToolCallContent",
    "ToolCallLocation",
    "ToolCallUpdate",
    "UnknownSessionUpdate",
    "UsageUpdate",
    "UserMessageChunk",
    "decode_session_notification",
    "decode_session_update",
    "decode_session_update_line",
    "decode_session_update_lines",
    "text_block",
]


class _Wire(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, gc=False):
    """Base of every ACP Struct (rename/omit_defaults/gc are inherited; kw_only is per class).

    ``gc=False``: wire values are trees decoded from JSON (never cycles), and not tracking them
    keeps a 10,000-chunk stream from triggering full garbage collections."""


_META = msgspec.field(default=None, name="_meta")

# --------------------------------------------------------------------------- content


class ContentBlock(_Wire, kw_only=True):
    """One content block of any ``type`` (text, image, audio, resource_link, resource, ...).

    Only the fields of the block's type are set; unknown types decode too.
    """

    type: str
    text: str | None = None
    data: str | None = None
    mime_type: str | None = None
    uri: str | None = None
    name: str | None = None
    title: str | None = None
    description: str | None = None
    size: int | None = None
    resource: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None


def text_block(text: str) -> ContentBlock:
    """A ``{"type": "text", "text": ...}`` content block."""
    return ContentBlock(type="text", text=text)


class SessionConfigSelectOption(_Wire, kw_only=True):
    """A select value (``value``, ``name``) or a group of them (``group``, ``options``)."""

    value: str | None = None
    name: str = ""
    description: str | None = None
    group: str | None = None
    options: list[SessionConfigSelectOption] | None = None


class SessionConfigOption(_Wire, kw_only=True):
    id: str
    name: str = ""
    type: str = "select"
    current_value: str | bool | None = None
    options: list[SessionConfigSelectOption] | None = None
    category: str | None = None
    description: str | None = None


# --------------------------------------------------------------------------- session/update


class ToolCallLocation(_Wire, kw_only=True):
    path: str
    line: int | None = None


class ToolCallContent(_Wire, kw_only=True):
    """A tool call content item: ``content`` (a block), ``diff`` or ``terminal``, or unknown."""

    type: str
    content: ContentBlock | None = None
    path: str | None = None
    old_text: str | None = None
    new_text: str | None = None
    terminal_id: str | None = None


class _ToolCallFields(_Wire, kw_only=True):
    tool_call_id: str
    title: str | None = None
    kind: str | None = None
    status: str | None = None
    content: list[ToolCallContent] | None = None
    locations: list[ToolCallLocation] | None = None
    raw_input: Any = None
    raw_output: Any = None


class PermissionToolCall(_ToolCallFields, kw_only=True):
    """The ``toolCall`` of a permission request (a tool call update without a tag)."""


class _Update(_Wire, kw_only=True, tag_field="sessionUpdate"):
    pass


class _ToolCallUpdateBase(_ToolCallFields, kw_only=True, tag_field="sessionUpdate"):
    pass


class UserMessageChunk(_Update, kw_only=True, tag="user_message_chunk"):
    content: ContentBlock
    message_id: str | None = None


class AgentMessageChunk(_Update, kw_only=True, tag="agent_message_chunk"):
    content: ContentBlock
    message_id: str | None = None


class AgentThoughtChunk(_Update, kw_only=True, tag="agent_thought_chunk"):
    content: ContentBlock
    message_id: str | None = None


class ToolCall(_ToolCallUpdateBase, kw_only=True, tag="tool_call"):
    pass


class ToolCallUpdate(_ToolCallUpdateBase, kw_only=True, tag="tool_call_update"):
    pass


class PlanEntry(_Wire, kw_only=True):
    content: str
    priority: str = "medium"
    status: str = "pending"


class Plan(_Update, kw_only=True, tag="plan"):
    entries: list[PlanEntry] = msgspec.field(default_factory=list)


class AvailableCommand(_Wire, kw_only=True):
    name: str
    description: str = ""
    input: dict[str, Any] | None = None


class AvailableCommandsUpdate(_Update, kw_only=True, tag="available_commands_update"):
    available_commands: list[AvailableCommand] = msgspec.field(default_factory=list)


class CurrentModeUpdate(_Update, kw_only=True, tag="current_mode_update"):
    current_mode_id: str


class ConfigOptionUpdate(_Update, kw_only=True, tag="config_option_update"):
    config_options: list[SessionConfigOption] = msgspec.field(default_factory=list)


class SessionInfoUpdate(_Update, kw_only=True, tag="session_info_update"):
    title: str | None = None
    updated_at: str | None = None
    #: codex-acp 1.x reports a failed turn only here (``_meta.codex.error``, empty title).
    meta: dict[str, Any] | None = _META


class UsageUpdate(_Update, kw_only=True, tag="usage_update"):
    used: int | float | None = None
    size: int | float | None = None
    cost: dict[str, Any] | None = None


class UnknownSessionUpdate(_Wire, kw_only=True):
    """A ``session/update`` of a kind acpx-trio does not know, or of a known kind in a shape it
    could not decode (``problem`` says why).  ``raw`` is the undecoded ``update`` object."""

    session_update: str
    raw: msgspec.Raw
    problem: str | None = None


_KnownUpdate = (
    UserMessageChunk
    | AgentMessageChunk
    | AgentThoughtChunk
    | ToolCall
    | ToolCallUpdate
    | Plan
    | AvailableCommandsUpdate
    | CurrentModeUpdate
    | ConfigOptionUpdate
    | SessionInfoUpdate
    | UsageUpdate
)
SessionUpdate = _KnownUpdate | UnknownSessionUpdate
"""What :func:`decode_session_update` returns."""

_KNOWN_KINDS: Final = frozenset(
    {
        "user_message_chunk",
        "agent_message_chunk",
        "agent_thought_chunk",
        "tool_call",
        "tool_call_update",
        "plan",
        "available_commands_update",
        "current_mode_update",
        "config_option_update",
        "session_info_update",
        "usage_update",
    }
)


class _UpdateKind(msgspec.Struct, rename="camel"):
    session_update: str = ""


class _SessionNotificationWire(_Wire, kw_only=True):
    session_id: str
    update: msgspec.Raw
    meta: dict[str, Any] | None = _META


class SessionNotification(_Wire, kw_only=True):
    """Decoded ``session/update`` params (build it with :func:`decode_session_notification`)."""

    session_id: str
    update: SessionUpdate
    meta: dict[str, Any] | None = _META


_known_decoder = msgspec.json.Decoder(_KnownUpdate)
_kind_decoder = msgspec.json.Decoder(_UpdateKind)
_notification_decoder = msgspec.json.Decoder(_SessionNotificationWire)


class FastSessionNotification(_Wire, kw_only=True):
    """``session/update`` params whose update is of a known kind and shape."""

    session_id: str
    update: _KnownUpdate
    meta: dict[str, Any] | None = _META


class SessionUpdateLine(msgspec.Struct, gc=False):
    """A whole ``session/update`` notification line (envelope and typed params in one pass).

    ``method`` must be present and exactly ``session/update``; ``id`` must be absent (a line
    with an id is a request, not a notification).  (A required ``Literal`` field, not a
    struct tag: a lone tagged struct would take a line without ``method``, and a union that
    makes the tag required costs about a sixth of the decode.)"""

    method: Literal["session/update"]
    params: FastSessionNotification
    id: msgspec.UnsetType = msgspec.UNSET


_line_decode = msgspec.json.Decoder(SessionUpdateLine).decode


def decode_session_update_line(line: bytes) -> SessionUpdateLine:
    """Decodes one wire line that is a ``session/update`` notification of a known kind.

    Raises a ``msgspec.MsgspecError`` for anything else (another method, a request, an
    unknown or malformed update, not JSON): the caller then takes the generic, tolerant path."""
    return _line_decode(line)


_lines_decode = msgspec.json.Decoder(SessionUpdateLine).decode_lines
#: the end of one JSON object and the start of another on the same line (possibly a false
#: alarm inside a string: that only costs the per-line path)
_TWO_ON_ONE_LINE: Final = re.compile(rb"\}[ \t\r]*\{")


def decode_session_update_lines(block: bytes) -> list[SessionUpdateLine] | None:
    """:func:`decode_session_update_line` of every line of ``block`` (lines joined by
    ``\\n``, as :meth:`LineReader.receive_block` returns them) in one C pass, or ``None``
    unless *each* line is exactly one ``session/update`` notification of a known kind: then
    the caller takes the per-line path, which decides line by line.

    Never accepts what the per-line decoder refuses: the batch decoder would also take two
    objects on one line or one object split over two, so a batch is taken only when it
    yields one object per line and no line holds the end of an object and the start of
    another (one object per line, each a line of its own)."""
    if _TWO_ON_ONE_LINE.search(block) is not None:
        return None
    try:
        messages = _lines_decode(block)
    except (msgspec.MsgspecError, RecursionError):  # the per-line path decides
        return None
    return messages if len(messages) == block.count(b"\n") + 1 else None


def decode_session_update(raw: msgspec.Raw | bytes) -> SessionUpdate:
    """Decodes one ``update`` object.  Never raises for an object of any shape: unknown kinds
    and undecodable known kinds (even a non-object) become :class:`UnknownSessionUpdate`.
    Raises ``msgspec.DecodeError`` only if ``raw`` is not valid JSON."""
    try:
        kind = _kind_decoder.decode(raw).session_update
    except msgspec.ValidationError:
        kind = ""
    raw_value = raw if isinstance(raw, msgspec.Raw) else msgspec.Raw(raw)
    if kind not in _KNOWN_KINDS:
        return UnknownSessionUpdate(session_update=kind, raw=raw_value)
    try:
        known: _KnownUpdate = _known_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        repaired = _lenient(kind, raw)
        if repaired is None:
            return UnknownSessionUpdate(session_update=kind, raw=raw_value, problem=str(exc))
        return repaired
    return known


_log = logging.getLogger("acpx_trio.acp.decode")

_KIND_TYPES: Final[dict[str, type[Any]]] = {
    cls.__struct_config__.tag: cls
    for cls in typing.get_args(_KnownUpdate)
}


def _lenient(kind: str, raw: msgspec.Raw | bytes) -> _KnownUpdate | None:
    """The schema's ``x-deserialize-default-on-error``: an invalid optional field takes its
    default and an invalid list entry is dropped (both counted, logged at debug).  ``None``
    when a required field is missing or invalid (the update then stays unknown)."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    cls = _KIND_TYPES[kind]
    good: dict[str, Any] = {"sessionUpdate": kind}
    optional: list[str] = []
    for field in msgspec.structs.fields(cls):
        if field.encode_name in obj:
            if field.required:
                good[field.encode_name] = obj[field.encode_name]
            else:
                optional.append(field.encode_name)
    dropped = 0
    for name in optional:
        value = obj[name]
        if _converts(cls, {**good, name: value}):
            good[name] = value
        elif isinstance(value, list):
            kept = [entry for entry in value if _converts(cls, {**good, name: [entry]})]
            dropped += len(value) - len(kept)
            good[name] = kept
        else:
            dropped += 1
    try:
        update: _KnownUpdate = msgspec.convert(good, cls)
    except msgspec.ValidationError:
        return None
    _log.debug("session/update %s: %d invalid field(s)/entr(y/ies) defaulted or skipped",
               kind, dropped)
    return update


def _converts(cls: type[Any], obj: dict[str, Any]) -> bool:
    try:
        msgspec.convert(obj, cls)
    except msgspec.ValidationError:
        return False
    return True


def decode_session_notification(params: msgspec.Raw | bytes) -> SessionNotification:
    """Decodes ``session/update`` params.  Raises ``msgspec.ValidationError`` (or
    ``DecodeError``) only when ``sessionId`` or ``update`` is missing or mistyped; the update
    itself never fails (see :func:`decode_session_update`)."""
    wire = _notification_decoder.decode(params)
    return SessionNotification(
        session_id=wire.session_id, update=decode_session_update(wire.update), meta=wire.meta
    )
