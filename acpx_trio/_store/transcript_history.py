"""Past turns of a session, rebuilt from its transcript (see :mod:`.transcript`).

A turn is a ``session/prompt`` request we sent and everything the agent sent for it until
its answer: reply text, thoughts, tool calls, the stop reason (or error), and timings.
Updates replayed by ``session/load`` are not part of any turn.  Pure functions over entries.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from acpx_trio._store.fsio import StateDecoder
from acpx_trio._store.transcript import TranscriptEntry

__all__ = ["PastToolCall", "PastTurn", "past_turns"]


class PastToolCall(msgspec.Struct, kw_only=True):
    tool_call_id: str
    title: str | None = None
    status: str | None = None


class PastTurn(msgspec.Struct, kw_only=True):
    """One turn.  ``stop_reason`` is ``None`` (and ``error`` set) when it failed, both
    ``None`` when the transcript ends before its answer (the owner died mid-turn)."""

    prompt: str
    reply: str = ""
    thought: str = ""
    tool_calls: list[PastToolCall] = []
    stop_reason: str | None = None
    error: str | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    duration_seconds: float | None = None


class _Block(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _PromptParams(msgspec.Struct):
    prompt: list[_Block] = []


class _Update(msgspec.Struct, rename="camel"):
    session_update: str = ""
    content: _Block | list[object] | None = None
    tool_call_id: str | None = None
    title: str | None = None
    status: str | None = None


class _UpdateParams(msgspec.Struct):
    update: _Update | None = None


class _RpcError(msgspec.Struct):
    message: str = ""
    code: int | str = 0  # text: a code that held a credential was redacted


class _Result(msgspec.Struct, rename="camel"):
    stop_reason: str | None = None


class _Message(msgspec.Struct):
    id: int | str | None = None
    method: str | None = None
    params: msgspec.Raw = msgspec.Raw()
    result: msgspec.Raw = msgspec.Raw()
    error: _RpcError | None = None


# A transcript is read back from disk: untrusted bytes (nested too deeply: DecodeError).
_message = StateDecoder(_Message)
_decoders: dict[type[msgspec.Struct], StateDecoder[msgspec.Struct]] = {
    kind: StateDecoder(kind) for kind in (_PromptParams, _UpdateParams, _Result)
}


def _decode(raw: msgspec.Raw, kind: type[msgspec.Struct]) -> object | None:
    if not len(raw):
        return None
    try:
        return _decoders[kind].decode(raw)
    except msgspec.DecodeError:
        return None


def _apply_update(turn: PastTurn, params: msgspec.Raw) -> None:
    decoded = _decode(params, _UpdateParams)
    update = decoded.update if isinstance(decoded, _UpdateParams) else None
    if update is None:
        return
    kind = update.session_update
    text = update.content.text if isinstance(update.content, _Block) else None
    if kind == "agent_message_chunk" and text:
        turn.reply += text
    elif kind == "agent_thought_chunk" and text:
        turn.thought += text
    elif kind in ("tool_call", "tool_call_update") and update.tool_call_id:
        call = next((c for c in turn.tool_calls if c.tool_call_id == update.tool_call_id), None)
        if call is None:
            call = PastToolCall(tool_call_id=update.tool_call_id)
            turn.tool_calls.append(call)
        call.title = update.title or call.title
        call.status = update.status or call.status


def past_turns(entries: Iterable[TranscriptEntry]) -> list[PastTurn]:
    """The turns in ``entries`` (oldest first)."""
    turns: list[PastTurn] = []
    open_turn: tuple[int | str, PastTurn] | None = None
    for entry in entries:
        try:
            msg = _message.decode(entry.m)
        except msgspec.DecodeError:
            continue
        if entry.d == "out":
            if msg.method == "session/prompt" and msg.id is not None:
                params = _decode(msg.params, _PromptParams)
                blocks = params.prompt if isinstance(params, _PromptParams) else []
                text = "".join(b.text or "" for b in blocks if b.type == "text")
                turn = PastTurn(prompt=text, started_at=entry.t)
                turns.append(turn)
                open_turn = (msg.id, turn)
            continue
        if open_turn is None or entry.replay:
            continue
        request_id, turn = open_turn
        if msg.method == "session/update":
            _apply_update(turn, msg.params)
        elif msg.method is None and msg.id == request_id:
            if msg.error is not None:
                turn.error = f"{msg.error.code}: {msg.error.message}"
            else:
                result = _decode(msg.result, _Result)
                turn.stop_reason = result.stop_reason if isinstance(result, _Result) else None
            turn.ended_at = entry.t
            turn.duration_seconds = max(0.0, entry.t - turn.started_at)
            open_turn = None
    return turns
