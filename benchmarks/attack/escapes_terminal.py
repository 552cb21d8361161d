"""Escapes per variant through ``terminal/release``: the mock agent's ``/terminal CMD``
(create, wait for exit, release) runs a command that starts an escaper, lets it settle
100 ms and exits; release must take the escaper down.  Usage:
``python benchmarks/attack/escapes_terminal.py [TRIALS] [VARIANT ...]``."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests")]

from _attack_agent import VARIANTS  # noqa: E402
from _attack_helpers import AGENT  # noqa: E402
from _escape_helpers import Decoys, cleanup_marker, marked, new_marker  # noqa: E402
from _runtime_helpers import make_env, output, run  # noqa: E402


async def one(tmp: Path, variant: str) -> tuple[bool, bool, str]:
    marker = new_marker()
    env = make_env(tmp, f"gw-attack-{uuid.uuid4().hex[:8]}")
    decoys = Decoys(marker, "lease-decoy")
    try:
        with cleanup_marker(marker, []), trio.fail_after(90):
            async with env.runtime(permissionMode="approve-all") as rt:
                handle = await rt.ensure_session(session_key="t", agent="mock")
                text = output(await run(
                    rt, handle,
                    f"/terminal {sys.executable} {AGENT} {variant} {marker} 0.1 --no-exec"))
                escaped = False
                for _ in range(5):
                    if set(marked(marker)) - set(decoys.pids):
                        escaped = True
                        break
                    await trio.sleep(0.05)
            return escaped, decoys.alive(), text
    finally:
        decoys.close()


async def main(n: int, variants: list[str], commit: str) -> None:
    for variant in variants:
        esc = dead = 0
        t0 = time.monotonic()
        texts: set[str] = set()
        with tempfile.TemporaryDirectory() as d:
            for i in range(n):
                tmp = Path(d) / str(i)
                tmp.mkdir()
                e, ok, text = await one(tmp, variant)
                esc += e
                dead += not ok
                texts.add(text[:40])
        print(json.dumps({"path": "terminal-release", "variant": variant, "escapes": esc,
                          "trials": n, "decoy_deaths": dead, "outputs": sorted(texts),
                          "commit": commit, "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)


if __name__ == "__main__":
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 30,
             sys.argv[2:] or list(VARIANTS), head)
