"""Escapes per variant after the owner dies: ``acpx-trio prompt`` (watchdog disabled, i.e.
an owner SIGKILLed together with its watchdog) starts an agent that starts an escaper and
ignores stdin EOF; the CLI is SIGKILLed mid-turn; then ``acpx-trio reap``.  Counts escapers
alive after the reap, and decoys killed.  Usage:
``python benchmarks/attack/escapes_owner_death.py [--with-watchdog] [TRIALS] [VARIANT ...]``
(``--with-watchdog``: the watchdog runs and is SIGSTOPped, then SIGKILLed with the owner)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests")]

from _attack_agent import VARIANTS  # noqa: E402
from _attack_helpers import AGENT  # noqa: E402
from _cli_helpers import background_cli, kill_gateway_processes, run_cli  # noqa: E402
from _escape_helpers import Decoys, cleanup_marker, marked, new_marker  # noqa: E402

from acpx_trio._process.watchdog import WAIT_SCRIPT  # noqa: E402

PATHS = {True: "owner+watchdog-killed+reap", False: "owner-killed(no watchdog)+reap"}


def _watchdogs_of(owner_pid: int) -> list[int]:
    out = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            cmd = proc.cmdline()
            if WAIT_SCRIPT in cmd and str(owner_pid) in cmd:
                out.append(proc.pid)
    return out


def one(tmp: Path, variant: str, watchdog: bool) -> tuple[bool, bool, int]:
    marker = new_marker()
    decoys = Decoys(marker, "lease-decoy")
    agent = f"{sys.executable} {AGENT} {variant} {marker} 0.1 --ignore-stdin-eof"
    try:
        with cleanup_marker(marker, []):
            with background_cli("-v", "prompt", "--agent-command", agent, "/sleep 60000",
                                state_dir=tmp,
                                env={} if watchdog else {"ACPX_TRIO_WATCHDOG": "0"}) as cli:
                cli.wait_stderr("turn started")
                dogs = _watchdogs_of(cli.popen.pid) if watchdog else []
                if watchdog and not dogs:
                    raise RuntimeError("no watchdog found")
                for pid in dogs:  # the owner and its watchdog die together
                    os.kill(pid, signal.SIGSTOP)
                cli.popen.send_signal(signal.SIGKILL)
                for pid in dogs:
                    os.kill(pid, signal.SIGKILL)
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


def main(n: int, variants: list[str], watchdog: bool) -> None:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for variant in variants:
        esc = dead = bad = 0
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            for i in range(n):
                tmp = Path(d) / str(i)
                tmp.mkdir()
                e, ok, rc = one(tmp, variant, watchdog)
                esc += e
                dead += not ok
                bad += rc != 0
        print(json.dumps({"path": PATHS[watchdog], "variant": variant, "escapes": esc,
                          "trials": n, "decoy_deaths": dead, "reap_nonzero": bad,
                          "commit": commit, "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    dog = "--with-watchdog" in args
    args = [a for a in args if a != "--with-watchdog"]
    main(int(args[0]) if args else 30, args[1:] or list(VARIANTS), dog)
