"""JSON text that is valid JSON but no Unicode text: the repair both readers of an agent's
lines share (the connection, :mod:`acpx_trio._acp._jsonrpc`, and the transcript,
:mod:`acpx_trio._store.transcript`), so the two read every line alike.

A leaf: imports nothing of the package.
"""

from __future__ import annotations

import re

__all__ = ["repair_surrogates"]

_HEX = rb"[0-9a-fA-F]{2}"
#: A lone UTF-16 surrogate escape: a high one not followed by a low one, a low one not
#: preceded by a high one (applied to text in which every backslash starts an escape).
_LONE = re.compile(
    rb"\\u[dD][89abAB]" + _HEX + rb"(?!\\u[dD][c-fC-F]" + _HEX + rb")"
    rb"|(?<!\\u[dD][89abAB]" + _HEX + rb")\\u[dD][c-fC-F]" + _HEX)
_ESCAPED_BACKSLASH = b"\\\\"


def repair_surrogates(line: bytes) -> bytes:
    """``line`` with every lone UTF-16 surrogate escape (``\\ud83d`` without its pair: a
    JavaScript string cut inside a character, or a file name that is no UTF-8) replaced by
    ``\\ufffd``, the replacement character; ``line`` itself when it has none.  Such a line
    is valid JSON but no Unicode text: msgspec refuses it, and dropping it would leave a
    request of the agent unanswered or an answer of it lost.

    Outside strings JSON has no backslash, so every backslash starts an escape; with the
    escaped backslashes (``\\\\``, paired left to right as a decoder reads them) masked
    by NULs, which no JSON text holds raw (a line that does is left as it is: it stays
    invalid), every backslash left starts one, and a regular expression reads them without
    a Python step per escape: the cost is linear in the line and the C library's, never
    seconds of the event loop (a line of megabytes of backslashes)."""
    if b"\\u" not in line or b"\0" in line:
        return line
    masked = line.replace(_ESCAPED_BACKSLASH, b"\0\0")
    if _LONE.search(masked) is None:
        return line
    return _LONE.sub(rb"\\ufffd", masked).replace(b"\0\0", _ESCAPED_BACKSLASH)
