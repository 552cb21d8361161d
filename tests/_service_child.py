"""Subprocess driver for the service crash test (``tests/test_service_crash.py``).

Usage::

    python tests/_service_child.py STATE_DIR [--sessions N] [--busy M] [--grandchildren K]
        [--agent-arg=--ignore-stdin-eof ...] [--workspace DIR] [--more-on-stdin]

Starts :func:`acpx_trio._service.open_service.open_runtime_service` on ``STATE_DIR``, opens
``N`` sessions
with the bundled mock agent (``python -m acpx_trio.testing.mock_agent`` plus the given agent
args) through ``runtime.ensure_session(session_key=..., agent="mock")``, has the first ``K``
of them spawn a grandchild (``/spawn-grandchild``: stdio on /dev/null, so it survives its
owner's death the way leaked agent helpers do), starts a ``/sleep 60000`` turn on the first
``M``, and prints one JSON line per started process to stdout:
``{"pid": PID, "session_key": KEY, "kind": "agent"|"grandchild", "busy": BOOL}``.
Then it sleeps until killed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import trio

from acpx_trio._service.open_service import open_runtime_service


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def _turn_text(runtime: Any, handle: Any, text: str) -> str:
    said: list[str] = []
    async for event in runtime.run_turn(handle=handle, text=text):
        said.append(str(getattr(event, "text", "") or ""))
    return "".join(said)


async def _busy_turn(runtime: Any, handle: Any) -> None:
    async for _event in runtime.run_turn(handle=handle, text="/sleep 60000"):
        pass


async def _prompt_sent(runtime: Any, key: str) -> None:
    """Wait until the session's turn has sent its prompt to the agent (re-checked on a short
    back-off: the runtime has no event for it)."""
    built = getattr(runtime, "built", None) or runtime
    pause = 0.001
    with trio.fail_after(30):
        while True:
            session = built._sessions.get(key)
            turn = None if session is None else session.turn
            if turn is not None and turn.prompt_sent:
                return
            await trio.sleep(pause)
            pause = min(pause * 2, 0.02)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--busy", type=int, default=1)
    parser.add_argument("--grandchildren", type=int, default=0)
    parser.add_argument("--agent-arg", action="append", default=[])
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--containment", default=None, help="config containment")
    parser.add_argument("--sweep-interval", type=float, default=None,
                        help="the service's sweepIntervalSeconds")
    parser.add_argument("--more-on-stdin", action="store_true",
                        help="then open one more session per line read on stdin")
    args = parser.parse_args(argv)
    workspace = args.workspace or args.state_dir / "workspace"
    await trio.to_thread.run_sync(lambda: workspace.mkdir(parents=True, exist_ok=True))
    agent = {
        "command": sys.executable,
        "args": ["-m", "acpx_trio.testing.mock_agent", *args.agent_arg],
    }
    async with open_runtime_service(
        workspace_dir=workspace,
        state_dir=args.state_dir,
        plugin_config={"agents": {"mock": agent}, **(
            {} if args.sweep_interval is None else {"sweepIntervalSeconds": args.sweep_interval}
        ), **({} if args.containment is None else {"containment": args.containment})},
    ) as service:
        runtime = service.runtime
        if runtime is None:
            raise SystemExit("runtime service did not start (OPENCLAW_SKIP_ACPX_RUNTIME set?)")
        async with trio.open_nursery() as nursery:
            for i in range(args.sessions):
                key = f"crash-test:{i}"
                handle = await runtime.ensure_session(session_key=key, agent="mock")
                pid = handle.agent_pid
                if pid is None:
                    pid = (await runtime.get_status(handle=handle)).agent_pid
                busy = i < args.busy
                if i < args.grandchildren:
                    said = await _turn_text(runtime, handle, "/spawn-grandchild")
                    found = re.search(r"grandchild pid=(\d+)", said)
                    if found is None:
                        raise SystemExit(f"mock agent did not report a grandchild: {said!r}")
                    _emit(
                        {"pid": int(found.group(1)), "session_key": key, "kind": "grandchild",
                         "busy": False}
                    )
                if busy:
                    nursery.start_soon(_busy_turn, runtime, handle)
                    await _prompt_sent(runtime, key)
                _emit({"pid": pid, "session_key": key, "kind": "agent", "busy": busy})
            extra = 0
            while args.more_on_stdin and await trio.to_thread.run_sync(
                    sys.stdin.readline, abandon_on_cancel=True):
                key = f"crash-test:more-{extra}"
                extra += 1
                handle = await runtime.ensure_session(session_key=key, agent="mock")
                pid = handle.agent_pid or (await runtime.get_status(handle=handle)).agent_pid
                _emit({"pid": pid, "session_key": key, "kind": "agent", "busy": False})
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
