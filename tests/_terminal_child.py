"""Subprocess driver for the terminal crash tests: ``python tests/_terminal_child.py STATE
[DIRECTIVE]`` (default: :data:`HOLD`).

Starts the runtime service on STATE (``permissionMode: approve-all``), opens a mock-agent
session, runs ``/terminal-hold`` of a ``sleep`` whose stdio is detached from the agent,
prints ``{"pid": TERMINAL_PID}`` and sleeps until killed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

from acpx_trio._service.open_service import open_runtime_service

HOLD = "/terminal-hold echo $$; exec sleep 60 </dev/null >/dev/null 2>&1"


async def _hold(runtime: Any, handle: Any, started: trio.Event, text: str) -> None:
    async for event in runtime.run_turn(handle=handle, text=text):
        text = str(getattr(event, "text", "") or "")
        if text.startswith("first="):
            sys.stdout.write(json.dumps({"pid": int(text.split("=")[1])}) + "\n")
            sys.stdout.flush()
            started.set()


async def main(state: Path, text: str) -> None:
    workspace = state / "workspace"
    await trio.to_thread.run_sync(lambda: workspace.mkdir(parents=True, exist_ok=True))
    async with open_runtime_service(
        workspace_dir=workspace, state_dir=state,
        plugin_config={"permissionMode": "approve-all"},
    ) as service:
        runtime = service.runtime
        assert runtime is not None
        handle = await runtime.ensure_session(session_key="term-crash", agent="mock")
        async with trio.open_nursery() as nursery:
            started = trio.Event()
            nursery.start_soon(_hold, runtime, handle, started, text)
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else HOLD)
