"""The floor for a one-shot prompt: stdlib-only Python that spawns the agent, sends
``initialize``, ``session/new`` and ``session/prompt``, prints the agent's text, closes stdin and
waits for the exit.  No trio, no msgspec, no state files: the baseline ``cli_vs_acpx.py`` holds
``acpx-trio exec`` against.

Run: ``python benchmarks/raw_oneshot.py --cwd DIR PROMPT [AGENT ARGV...]`` (default agent: the
bundled mock agent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import IO, Any


def request(
    stdin: IO[bytes], stdout: IO[bytes], rid: int, method: str, params: dict[str, Any],
    texts: list[str],
) -> dict[str, Any]:
    stdin.write(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                            "params": params}).encode() + b"\n")
    stdin.flush()
    while True:
        line = stdout.readline()
        if not line:
            raise SystemExit(f"agent closed its output during {method}")
        msg = json.loads(line)
        if msg.get("id") == rid and "method" not in msg:
            if "error" in msg:
                raise SystemExit(f"{method} failed: {msg['error']}")
            result: dict[str, Any] = msg["result"]
            return result
        if msg.get("method") == "session/update":
            update = msg["params"]["update"]
            if update.get("sessionUpdate") == "agent_message_chunk":
                texts.append(update["content"].get("text", ""))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--cwd":
        print(__doc__, file=sys.stderr)
        return 2
    cwd, prompt, agent = argv[1], argv[2], argv[3:] or [
        sys.executable, "-m", "acpx_trio.testing.mock_agent"]
    proc = subprocess.Popen(agent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd)
    assert proc.stdin is not None and proc.stdout is not None
    texts: list[str] = []
    try:
        request(proc.stdin, proc.stdout, 0, "initialize", {
            "protocolVersion": 1,
            "clientCapabilities": {"fs": {"readTextFile": True, "writeTextFile": True}}}, texts)
        sid = request(proc.stdin, proc.stdout, 1, "session/new",
                      {"cwd": os.path.abspath(cwd), "mcpServers": []}, texts)["sessionId"]
        request(proc.stdin, proc.stdout, 2, "session/prompt",
                {"sessionId": sid, "prompt": [{"type": "text", "text": prompt}]}, texts)
    finally:
        proc.stdin.close()
        proc.wait()
    sys.stdout.write("".join(texts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
