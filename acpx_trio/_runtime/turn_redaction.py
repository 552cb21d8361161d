"""Credentials out of a turn's events, on what a consumer reassembles.

An agent streams its reply in pieces, so a credential it echoes can arrive split across
several ``TextDeltaEvent`` s: redacting each piece alone misses it, and the joined reply (what
``--json`` consumers, ``run_turn`` callers and terminals show) carries it whole.
:class:`TurnRedactor` redacts each text stream (``output``, ``thought``) as one text
(:class:`~acpx_trio._errors.StreamRedactor`: a tail that could start a credential is held
back until the next piece decides, and emitted before the final event), and every other event
by value, keys included.  Only known credentials are replaced (the ones handed to the agent,
config ``auth``, credential-like environment variables of 4 characters or more); nothing is
guessed at, and with none known every event passes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from acpx_trio._errors import RawSecrets, StreamRedactor, replace_secrets
from acpx_trio._events import AcpRuntimeEvent, DoneEvent, ErrorEvent, TextDeltaEvent

__all__ = ["TurnRedactor"]

_STREAMS = ("output", "thought")


class TurnRedactor:
    """The events of one turn with every known credential replaced (see the module)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(secrets)
        self._streams = {name: StreamRedactor(self._secrets) for name in _STREAMS}
        self._raw = RawSecrets(self._secrets)
        self.active = bool(self._streams["output"])

    def batch(self, events: list[AcpRuntimeEvent]) -> list[AcpRuntimeEvent]:
        """``events`` as a consumer may see them (held text comes out before the final
        event; a piece held whole is dropped from its place)."""
        if not self.active:
            return events
        clean, others = self._clean(events)
        if clean:  # the common case, checked on the batch's joined text per stream
            return [e if type(e) is TextDeltaEvent else self._scrub(e)
                    for e in events] if others else events
        out: list[AcpRuntimeEvent] = []
        for ev in events:
            if type(ev) is TextDeltaEvent:
                text = self._streams[ev.stream].feed(ev.text)
                if text:
                    out.append(ev if text == ev.text else msgspec.structs.replace(ev, text=text))
                continue
            if type(ev) in (DoneEvent, ErrorEvent):
                for name, stream in self._streams.items():
                    rest = stream.flush()
                    if rest:
                        out.append(TextDeltaEvent(text=rest, stream=name))  # type: ignore[arg-type]
            out.append(self._scrub(ev))
        return out

    def _clean(self, events: list[AcpRuntimeEvent]) -> tuple[bool, bool]:
        """Whether every text stream of ``events``, joined, passes unchanged; and whether
        there are other events."""
        parts: dict[str, list[str]] = {"output": [], "thought": []}
        others = False
        for ev in events:
            if type(ev) is TextDeltaEvent:
                parts[ev.stream].append(ev.text)
            else:
                others = True
        clean = all(self._streams[name].clean("".join(texts))
                    for name, texts in parts.items() if texts or self._streams[name].held)
        return clean, others

    def _scrub(self, ev: AcpRuntimeEvent) -> AcpRuntimeEvent:
        raw = msgspec.json.encode(ev)
        if not self._raw(raw):
            return ev
        # a typed number holding a credential is withheld (every number field of an event
        # is optional); numbers inside free-form fields are withheld the same way
        clean: Any = replace_secrets(msgspec.to_builtins(ev), self._secrets, numbers="none")
        return msgspec.convert(clean, type(ev))
