"""``sessions history KEY``: placeholder until transcripts land."""

from __future__ import annotations

from pathlib import Path

from acpx_trio._cli.output import Output


async def history_command(session_dir: str | Path, key: str, json_mode: bool,
                          out: Output) -> int:
    await out.emit("no transcript", err=True)
    return 4
