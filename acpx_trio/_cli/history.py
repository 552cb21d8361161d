"""``acpx-trio sessions history KEY [--json]``: the past turns of a session, from its
transcript (prompt, reply text, tool calls, stop reason, timings)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import trio

from acpx_trio._cli.exits import EXIT_OK
from acpx_trio._cli.output import Output
from acpx_trio._cli.text import printable
from acpx_trio._errors import replace_secrets
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.transcript import config_credentials, read_transcript, transcript_path
from acpx_trio._store.transcript_history import PastTurn, past_turns

__all__ = ["history_command"]

_encoder = msgspec.json.Encoder()


def _load(config: AcpxConfig, key: str) -> list[PastTurn]:
    """The past turns, with every credential known now (the environment's, ``config``'s
    ``auth`` and MCP servers') redacted from the reassembled text (a transcript written
    before a credential was known, or by an older version, still prints none).  Blocking."""
    turns = past_turns(read_transcript(transcript_path(config.state_dir, key)))
    secrets = config_credentials(config)
    if not secrets:
        return turns
    # a past turn's numbers are our own clock's: none came from the agent
    return [msgspec.convert(replace_secrets(msgspec.to_builtins(t), secrets, numbers="keep"),
                            PastTurn) for t in turns]


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _text(index: int, turn: PastTurn) -> str:
    outcome = turn.stop_reason or (f"error {turn.error}" if turn.error else "unfinished")
    took = "" if turn.duration_seconds is None else f"  {turn.duration_seconds:.2f}s"
    lines = [f"#{index} {_when(turn.started_at)}  {outcome}{took}", f"> {turn.prompt}"]
    if turn.reply:
        lines.append(turn.reply.rstrip("\n"))
    for call in turn.tool_calls:
        lines.append(f"  [tool] {call.title or call.tool_call_id} ({call.status or '?'})")
    return "\n".join(lines) + "\n"


async def history_command(state_dir: Path, config: AcpxConfig, key: str,
                          json_mode: bool, out: Output) -> int:
    """Print the session's past turns, oldest first (none recorded: a note, exit 0).  A live
    warm owner first writes out what it buffers."""
    from acpx_trio._cli.warm import flush_transcript

    await flush_transcript(state_dir, key)
    turns = await trio.to_thread.run_sync(_load, config, key)
    if json_mode:
        for turn in turns:
            out.write(_encoder.encode(turn).decode() + "\n")
    elif not turns:
        out.write(f"no recorded turns for {printable(key)} (transcripts are kept for warm "
                  "sessions: prompt --session)\n", err=True)
    else:
        out.write(printable("\n".join(_text(i, t) for i, t in enumerate(turns, 1)),
                            keep_lines=True))
    await out.drain()
    return EXIT_OK
