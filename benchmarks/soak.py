"""Soak and hostile-environment runs: nothing leaks, nothing is lost, nothing wrong is killed.

    python benchmarks/soak.py [--scenario NAME] [--cycles N] [--seed S]

Scenarios (default: all, in this order; default cycles in brackets):

``crash``     [50]  SIGKILL a gateway child with 5 live sessions (busy, grandchild, setsid
                    daemon, SIGTERM-ignoring, idle) at random moments, including right after a
                    pending lease is saved and right after a spawn; restart; count.
``owners``    [5]   two gateways with different ids share one lease file and churn sessions
                    at full speed; one is SIGKILLed; each start-up touches only its own.
``files``     [200] hostile lease files (hypothesis bytes/JSON/lease shapes, truncations,
                    wrong shapes, symlink, 32 MiB garbage, 100k leases) at start-up.
``agents``    [3]   hostile agents: crash, hang, garbage, a 64 MiB line, SIGTERM ignored,
                    stdout closed with stdin open, a flood while we cancel.
``escape``    [10]  pid hoppers, ``env -i`` group members and setsid double-fork daemons
                    started by agents that ignore SIGTERM: closed normally, and under a
                    gateway that is SIGKILLed and never restarted (its watchdog must end
                    everything within killGrace + 1 s; ``owner_death_cleanup_max_*``),
                    in cgroup mode (where usable) and in process-group mode.
``security``  [3]   fs confinement (``..``, absolute, symlinks, NUL, FIFO), 0700/0600 after
                    every operation, other users' processes with our tags (root only).

Each scenario prints ``NAME: cycles=N leaked=K decoys_killed=D lost=L`` plus figures; the
exit status is non-zero if anything leaked, was lost or was wrongly killed, or a check failed
(the broken checks are printed to stderr).  Every process a scenario starts is killed when it
ends, pass or fail.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _soak_agents import run_agents
from _soak_common import ScenarioResult
from _soak_crash import run_crash
from _soak_escape import run_escape
from _soak_files import run_files
from _soak_owners import run_owners
from _soak_security import run_security

Runner = Callable[[int, int], Awaitable[ScenarioResult]]
SCENARIOS: dict[str, tuple[Runner, int]] = {
    "crash": (run_crash, 50),
    "owners": (run_owners, 5),
    "files": (run_files, 200),
    "agents": (run_agents, 3),
    "escape": (run_escape, 10),
    "security": (run_security, 3),
}


def run_scenario(name: str, cycles: int | None, seed: int) -> ScenarioResult:
    runner, default = SCENARIOS[name]
    try:
        return trio.run(runner, default if cycles is None else cycles, seed)
    except Exception as exc:  # report, never hide: the scenario counts as failed
        result = ScenarioResult(name)
        result.fail(f"scenario raised {exc!r}")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--cycles", type=int, default=None,
                        help="cycles of every chosen scenario (default: per scenario)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    shown = logging.StreamHandler()
    shown.setLevel(logging.ERROR)  # warnings are expected here by the thousand; errors are not
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", handlers=[shown])
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    failed = False
    print(f"seed={args.seed}", flush=True)
    for name in names:
        started = time.perf_counter()
        result = run_scenario(name, args.cycles, args.seed)
        print(f"{result.line()} seconds={time.perf_counter() - started:.1f}", flush=True)
        for failure in result.failures[:20]:
            print(f"  {name}: {failure}", file=sys.stderr, flush=True)
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
