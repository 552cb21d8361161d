"""The prompt of ``prompt``/``exec``: TEXT words, ``-f/--file FILE``, or stdin (``-f -``, or
no TEXT with stdin not a terminal).  Every problem is a :class:`UsageError` (exit 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from acpx_trio._cli.options import UsageError

__all__ = ["prompt_text"]


def _read_prompt_file(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"--file {path}: cannot read it ({why})") from exc


async def prompt_text(ns: argparse.Namespace) -> str:
    """The prompt (a trailing newline removed).  Raises :class:`UsageError` for TEXT and
    ``--file`` both given, an unreadable file, a prompt that is empty or blank (from TEXT, a
    file or stdin alike), or no prompt at all; reading stdin is abandoned when cancelled."""
    words: list[str] = ns.text
    source: str | None = ns.file
    if source is not None and words:
        raise UsageError("give the prompt as TEXT or with --file, not both")
    if source is not None and source != "-":
        content = await trio.to_thread.run_sync(_read_prompt_file, source)
        if not content.strip():
            raise UsageError(f"--file {source}: the prompt is empty")
        return content.rstrip("\n")
    if words and words != ["-"]:
        joined = " ".join(words)
        if not joined.strip():
            raise UsageError("the prompt is empty")
        return joined
    if sys.stdin is None or (source is None and sys.stdin.isatty()):
        raise UsageError("no prompt given: pass TEXT, or pipe it on stdin")
    stdin = sys.stdin
    text: str = await trio.to_thread.run_sync(stdin.read, abandon_on_cancel=True)
    if not text.strip():
        raise UsageError("the prompt read from stdin is empty")
    return text.rstrip("\n")
