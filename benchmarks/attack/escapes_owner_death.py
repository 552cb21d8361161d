"""Escapes per variant after the owner dies: ``acpx-trio prompt`` (watchdog disabled, i.e.
an owner SIGKILLed together with its watchdog) starts an agent that starts an escaper and
ignores stdin EOF; the CLI is SIGKILLed mid-turn; then ``acpx-trio reap``.  Counts escapers
alive after the reap, and decoys killed.  Usage:
``python benchmarks/attack/escapes_owner_death.py [TRIALS] [VARIANT ...]``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests")]

from _attack_agent import VARIANTS  # noqa: E402
from _attack_helpers import AGENT  # noqa: E402
from _cli_helpers import background_cli, kill_gateway_processes, run_cli  # noqa: E402
from _escape_helpers import Decoys, cleanup_marker, marked, new_marker  # noqa: E402


def one(tmp: Path, variant: str) -> tuple[bool, bool, int]:
    marker = new_marker()
    decoys = Decoys(marker, "lease-decoy")
    agent = f"{sys.executable} {AGENT} {variant} {marker} 0.1 --ignore-stdin-eof"
    try:
        with cleanup_marker(marker, []):
            with background_cli("-v", "prompt", "--agent-command", agent, "/sleep 60000",
                                state_dir=tmp, env={"ACPX_TRIO_WATCHDOG": "0"}) as cli:
                cli.wait_stderr("turn started")
                cli.popen.send_signal(signal.SIGKILL)
                cli.popen.wait(timeout=30)
            done = run_cli("reap", state_dir=tmp)
            escaped = False
            for _ in range(5):
                if set(marked(marker)) - set(decoys.pids):
                    escaped = True
                    break
                time.sleep(0.05)
            return escaped, decoys.alive(), done.returncode
    finally:
        kill_gateway_processes(tmp)
        decoys.close()


def main(n: int, variants: list[str]) -> None:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for variant in variants:
        esc = dead = bad = 0
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            for i in range(n):
                tmp = Path(d) / str(i)
                tmp.mkdir()
                e, ok, rc = one(tmp, variant)
                esc += e
                dead += not ok
                bad += rc != 0
        print(json.dumps({"path": "owner-killed+reap", "variant": variant, "escapes": esc,
                          "trials": n, "decoy_deaths": dead, "reap_nonzero": bad,
                          "commit": commit, "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30, sys.argv[2:] or list(VARIANTS))
