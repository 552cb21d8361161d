"""Escape artists the mock agent can start at launch (``--spawn-pid-hopper MARKER``,
``--spawn-setsid-hopper MARKER``, ``--spawn-scrubbed-child MARKER``, ``--spawn-daemon
MARKER``): processes that try to outlive their agent the ways real tools do.  Each carries
``MARKER`` as its last argv word so a test can find it; standard library only (the mock agent
must start fast)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

__all__ = ["spawn_escapers"]

#: Forever: sleep ``HOP_MS``, ``fork()``, the parent ``_exit()``s, so the process never keeps
#: a pid for long and is re-parented to init at every hop.
_HOP_LOOP = (
    "hop = float(os.environ.get('ACPX_MOCK_HOP_MS', '2')) / 1000\n"
    "while True:\n"
    "    if hop > 0:\n"
    "        time.sleep(hop)\n"
    "    if os.fork():\n"
    "        os._exit(0)\n"
)
#: The classic hopper: ``setsid()`` once, then the hop loop.
_HOPPER = "import os, sys, time\nos.setsid()\n" + _HOP_LOOP
#: The hopper that also leaves its session at every hop (the child ``setsid()``s: a new
#: group and session each time, so no ``killpg`` ever reaches the next hop).
_SETSID_HOPPER = "import os, sys, time\n" + _HOP_LOOP + "    os.setsid()\n"
_SLEEP = "import time\nwhile True: time.sleep(3600)\n"
#: double fork + ``setsid()``: a classic daemon, re-parented to init at once.
_DAEMON = (
    "import os, time\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "while True: time.sleep(3600)\n"
)


def _start(argv: list[str], keep: list[Any], **kwargs: Any) -> None:
    keep.append(
        subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **kwargs,
        )
    )


def spawn_escapers(
    *, hopper: str | None, scrubbed: str | None, daemon: str | None, keep: list[Any],
    setsid_hopper: str | None = None,
) -> None:
    """Start the requested escapers (each given its marker); ``keep`` holds the Popens."""
    if hopper:
        _start([sys.executable, "-c", _HOPPER, hopper], keep)
    if setsid_hopper:
        _start([sys.executable, "-c", _SETSID_HOPPER, setsid_hopper], keep)
    if scrubbed:
        env = shutil.which("env") or "/usr/bin/env"
        # ``env -i``: no variable at all survives, the ownership tags included
        _start([env, "-i", sys.executable, "-c", _SLEEP, scrubbed], keep, env={})
    if daemon:
        _start([sys.executable, "-c", _DAEMON, daemon], keep, env=dict(os.environ))
