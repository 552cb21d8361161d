"""Escapes per variant through an agent close (``AgentProcess.aclose``, what ``close()`` and
runtime close use) in the mode the build uses.  Usage:
``python benchmarks/attack/escapes.py [TRIALS] [VARIANT ...]``; prints one JSON line per
variant: escapes/trials, decoy deaths, escaped leases recorded ``closed``."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests")]

from _attack_agent import VARIANTS  # noqa: E402
from _attack_helpers import one_close  # noqa: E402

from acpx_trio._store.lease_model import LeaseState  # noqa: E402


async def main(n: int, variants: list[str], commit: str) -> None:
    for variant in variants:
        esc = dead = closed_esc = 0
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            for i in range(n):
                tmp = Path(d) / str(i)
                tmp.mkdir()
                e, decoys_ok, state = await one_close(tmp, variant)
                esc += e
                dead += not decoys_ok
                closed_esc += e and state is LeaseState.CLOSED
        print(json.dumps({"path": "agent-close", "variant": variant, "escapes": esc,
                          "trials": n, "decoy_deaths": dead, "escaped_but_closed": closed_esc,
                          "commit": commit, "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)


if __name__ == "__main__":
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 30,
             sys.argv[2:] or list(VARIANTS), head)
