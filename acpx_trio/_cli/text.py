"""Text for a person's terminal: control characters made visible (:func:`printable`) and an
error's first line (:func:`first_line`).  Pure functions with no Trio, so the command line's
entry can report a usage or configuration error without loading the event loop."""

from __future__ import annotations

__all__ = ["first_line", "printable"]

#: C0 controls, DEL and C1 controls -> a visible escape (``\x1b`` prints as ``\x1b``).
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES_KEEP_LINES = {c: e for c, e in _ESCAPES.items() if c not in (0x09, 0x0A)}


def printable(text: str, *, keep_lines: bool = False) -> str:
    r"""``text`` safe for a person's terminal: every control character (escape sequences
    included) shown as ``\xNN``; ``keep_lines`` keeps newlines and tabs.  Every human-readable
    output of an agent- or user-controlled string (session keys, agent names, messages, tool
    titles) goes through it; ``--json`` output does not (JSON escapes controls itself)."""
    return text.translate(_ESCAPES_KEEP_LINES if keep_lines else _ESCAPES)


def first_line(message: str, default: str = "failed") -> str:
    """The first non-blank line of ``message`` (``default`` when there is none)."""
    for line in message.splitlines():
        if line.strip():
            return line.strip()
    return default
