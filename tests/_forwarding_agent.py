"""An agent with a helper it started in a session of its own and with an empty environment
(a tool server, a terminal: no tags, provably ours only through the agent's leaf cgroup).
On SIGTERM the agent tells the helper (SIGTERM), cleans up for ``AGENT_CLEANUP`` seconds and
exits; the helper needs ``HELPER_CLEANUP`` seconds, then writes ``DIR/helper.done``.  Then it
serves as the mock agent.  Usage: ``_forwarding_agent.py MARKER DIR``.  Standard library
and the mock agent only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

AGENT_CLEANUP = 0.05
HELPER_CLEANUP = 0.4

_HELPER = (
    "import os, signal, sys, time\n"
    "d = sys.argv[1]\n"
    "def done(sig, frame):\n"
    "    open(os.path.join(d, 'helper.term'), 'w').close()\n"
    "    time.sleep({cleanup})\n"
    "    open(os.path.join(d, 'helper.done'), 'w').close()\n"
    "    os._exit(0)\n"
    "signal.signal(signal.SIGTERM, done)\n"
    "open(os.path.join(d, 'helper.up'), 'w').close()\n"
    "while True: time.sleep(3600)\n"
)


def main(marker: str, directory: str) -> None:
    helper = subprocess.Popen(
        [sys.executable, "-c", _HELPER.format(cleanup=HELPER_CLEANUP), directory, marker],
        env={}, start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def on_term(sig: int, frame: FrameType | None) -> None:
        helper.send_signal(signal.SIGTERM)
        time.sleep(AGENT_CLEANUP)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    from acpx_trio.testing.mock_agent import main as serve

    serve(["--ignore-stdin-eof"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
