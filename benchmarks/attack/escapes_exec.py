"""Escapes per variant through ``acpx-trio exec`` (one prompt; the agent starts an escaper,
lets it settle 100 ms, answers; exec returns).  Also checks ``acpx-trio reap`` afterwards
does not touch the decoys.  Usage: ``python benchmarks/attack/escapes_exec.py [TRIALS]
[VARIANT ...]``; one JSON line per variant."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests")]

from _attack_agent import VARIANTS  # noqa: E402
from _attack_helpers import AGENT  # noqa: E402
from _cli_helpers import run_cli  # noqa: E402
from _escape_helpers import Decoys, cleanup_marker, marked, new_marker  # noqa: E402


def one(tmp: Path, variant: str) -> tuple[bool, bool, int]:
    marker = new_marker()
    decoys = Decoys(marker, "lease-decoy")
    try:
        with cleanup_marker(marker, []):
            done = run_cli("exec", "--agent-command",
                           f"{sys.executable} {AGENT} {variant} {marker} 0.1", "hi",
                           state_dir=tmp / "state")
            escaped = False
            for _ in range(5):
                if set(marked(marker)) - set(decoys.pids):
                    escaped = True
                    break
                time.sleep(0.05)
            return escaped, decoys.alive(), done.returncode
    finally:
        decoys.close()


def main(n: int, variants: list[str]) -> None:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for variant in variants:
        esc = dead = bad_rc = 0
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            for i in range(n):
                tmp = Path(d) / str(i)
                tmp.mkdir()
                e, ok, rc = one(tmp, variant)
                esc += e
                dead += not ok
                bad_rc += rc != 0
        print(json.dumps({"path": "exec", "variant": variant, "escapes": esc, "trials": n,
                          "decoy_deaths": dead, "nonzero_exit": bad_rc, "commit": commit,
                          "seconds": round(time.monotonic() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30, sys.argv[2:] or list(VARIANTS))
